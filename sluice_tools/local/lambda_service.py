"""A local Lambda Invoke endpoint that runs functions in warm awslambdaric processes.

moto cannot run Lambda code without Docker, so the local stack serves Invoke itself:
`POST /2015-03-31/functions/{name}/invocations` (RequestResponse, Event, DryRun), reserved
concurrency (429 TooManyRequestsException above it), enforced timeouts, warm process reuse,
and `GET /sluice/stats` / `POST /sluice/stats/reset` for the demo, bench and chaos suites.
It also answers what the aws CLI asks about functions (shapes in ``function_config``):
`GET /2015-03-31/functions` (ListFunctions), `GET /2015-03-31/functions/{name}` (GetFunction)
and `GET /2015-03-31/functions/{name}/configuration` (GetFunctionConfiguration).

Embed it with `LambdaService(functions, log_dir=...).start()`, or run it as a process:
`python -m sluice_tools.local.lambda_service --spec spec.json` (see `load_spec` for the format).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import binascii
import collections
import contextlib
import json
import os
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import IO, Any

from sluice_tools.local.function_config import ListFunctionsError, get_function, list_functions
from sluice_tools.local.function_config import function_configuration as configuration_of
from sluice_tools.local.http_reply import json_reply, send_reply
from sluice_tools.local.runtime_api import (
    LOOPBACK,
    FunctionDefinition,
    Invocation,
    InvokeOutcome,
    LoopbackHTTPServer,
    Sandbox,
)

INVOKE_PREFIX = "/2015-03-31/functions/"
# Lambda's payload limits: 6 MB for a synchronous request, 1 MB for an asynchronous one.
MAX_SYNC_PAYLOAD = 6 * 1024 * 1024
MAX_ASYNC_PAYLOAD = 1024 * 1024
# An unreserved function on AWS shares the account's 1,000; a laptop cannot run that many
# processes, so unreserved functions get this bound instead (throttled above it, as on AWS).
DEFAULT_UNRESERVED_LIMIT = 32

__all__ = ["FunctionDefinition", "FunctionStats", "LambdaService", "LambdaServiceError", "load_spec"]


class LambdaServiceError(RuntimeError):
    """The service cannot start or was given a bad definition."""


class ThrottledInvokeError(Exception):
    """An invoke found the function at its concurrency limit."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class FunctionStats:
    busy: int
    peak_busy: int
    limit: int
    reserved_concurrency: int | None
    invocations: int
    errors: int
    throttles: int
    timeouts: int
    cold_starts: int
    async_queued: int
    pids: list[int]
    # Summed duration of the invocations finished since the last reset (what Lambda bills as
    # duration, before rounding): the bench's GB-s come from it.
    duration_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _FunctionPool:
    """Warm sandboxes of one function, its concurrency accounting, and its async queue."""

    def __init__(self, definition: FunctionDefinition, service: LambdaService, log_file: IO[bytes]) -> None:
        self.definition = definition
        self.limit = (definition.reserved_concurrency if definition.reserved_concurrency is not None
                      else service.unreserved_limit)
        self._service = service
        self._log_file = log_file
        self._cond = threading.Condition()
        self._idle: list[Sandbox] = []
        self._sandboxes: set[Sandbox] = set()
        self._async: collections.deque[Invocation] = collections.deque()
        self._stopping = False
        self.busy = self.peak_busy = 0
        self.invocations = self.errors = self.throttles = self.timeouts = self.cold_starts = 0
        self.duration_ms = 0.0
        self._dispatcher = threading.Thread(target=self._dispatch_async, name=f"async-{definition.name}",
                                            daemon=True)
        self._dispatcher.start()

    # -- concurrency ------------------------------------------------------------------------

    def _take_slot_locked(self) -> None:
        self.busy += 1
        self.invocations += 1
        self.peak_busy = max(self.peak_busy, self.busy)

    def invoke_sync(self, invocation: Invocation) -> InvokeOutcome:
        with self._cond:
            if self.busy >= self.limit:
                self.throttles += 1
                raise ThrottledInvokeError("ReservedFunctionConcurrentInvocationLimitExceeded"
                                           if self.definition.reserved_concurrency is not None
                                           else "ConcurrentInvocationLimitExceeded")
            self._take_slot_locked()
        return self._run(invocation)

    def invoke_async(self, invocation: Invocation) -> None:
        # Lambda's async queue never drops a throttled event: it waits for a free slot.
        with self._cond:
            self._async.append(invocation)
            self._cond.notify_all()

    def _dispatch_async(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not (self._async and self.busy < self.limit):
                    self._cond.wait()
                if self._stopping:
                    return
                invocation = self._async.popleft()
                self._take_slot_locked()
            threading.Thread(target=self._run, args=(invocation,), daemon=True,
                             name=f"event-{self.definition.name}").start()

    def _run(self, invocation: Invocation) -> InvokeOutcome:
        sandbox: Sandbox | None = None
        outcome: InvokeOutcome | None = None
        started = time.monotonic()
        # Lambda's own log lines, so a function log reads as it would in CloudWatch.
        self._log(f"START RequestId: {invocation.request_id} Version: $LATEST")
        try:
            sandbox = self._acquire_sandbox()
            outcome = sandbox.invoke(invocation)
        except OSError as exc:  # the process could not be started (bad python path, ...)
            outcome = InvokeOutcome.error(invocation.request_id, "Runtime.StartError", str(exc))
            invocation.finish(outcome)
        finally:
            ms = (time.monotonic() - started) * 1000
            # Whatever happened, the slot is given back: a leaked slot would throttle forever.
            with self._cond:
                self.busy -= 1
                self.duration_ms += ms
                if outcome is None or outcome.function_error:
                    self.errors += 1
                if outcome is not None and outcome.error_type == "Sandbox.Timedout":
                    self.timeouts += 1
                if sandbox is not None and sandbox.alive and not self._stopping:
                    self._idle.append(sandbox)
                self._cond.notify_all()
            self._log(f"END RequestId: {invocation.request_id}\nREPORT RequestId: {invocation.request_id}\t"
                      f"Duration: {ms:.2f} ms\tMemory Size: {self.definition.memory_mb} MB"
                      + (f"\tStatus: {outcome.error_type}" if outcome and outcome.error_type else ""))
        return outcome

    def _log(self, line: str) -> None:
        with contextlib.suppress(ValueError, OSError):  # closed at stop while an event still ran
            self._log_file.write(f"{line}\n".encode())

    def _acquire_sandbox(self) -> Sandbox:
        with self._cond:
            while self._idle:
                sandbox = self._idle.pop()  # the most recently used one: warmest, as Lambda tends to
                if sandbox.alive:
                    return sandbox
            if self._stopping:
                raise OSError("the service is stopping")
            self.cold_starts += 1
        sandbox = Sandbox(self.definition, region=self._service.region, log_file=self._log_file,
                          base_env=self._service.base_env, on_exit=self._forget)
        with self._cond:
            self._sandboxes.add(sandbox)
            stopping = self._stopping
        if stopping:  # stop() ran while this one was starting: it must not outlive the service
            sandbox.stop()
        return sandbox

    def _forget(self, sandbox: Sandbox) -> None:
        with self._cond:
            self._sandboxes.discard(sandbox)
            if sandbox in self._idle:
                self._idle.remove(sandbox)

    # -- stats and lifecycle -------------------------------------------------------------------

    def stats(self) -> FunctionStats:
        with self._cond:
            pids = sorted(s.pid for s in self._sandboxes if s.alive)
            return FunctionStats(
                busy=self.busy, peak_busy=self.peak_busy, limit=self.limit,
                reserved_concurrency=self.definition.reserved_concurrency, invocations=self.invocations,
                errors=self.errors, throttles=self.throttles, timeouts=self.timeouts,
                cold_starts=self.cold_starts, async_queued=len(self._async), pids=pids,
                duration_ms=round(self.duration_ms, 1))

    def reset_stats(self) -> None:
        with self._cond:
            self.peak_busy = self.busy
            self.invocations = self.errors = self.throttles = self.timeouts = self.cold_starts = 0
            self.duration_ms = 0.0

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            dropped = len(self._async)
            self._async.clear()
            sandboxes = list(self._sandboxes)
            self._idle.clear()
            self._cond.notify_all()
        if dropped:
            self._log(f"[sluice] stopped with {dropped} queued event(s) not run")
        for sandbox in sandboxes:  # kill them all first: each stop() then finds its process gone
            sandbox.kill()
        for sandbox in sandboxes:
            sandbox.stop()
        self._dispatcher.join(timeout=5)


class LambdaService:
    """The local Lambda endpoint. `start()` it, point boto3 at `.url`, `stop()` it."""

    def __init__(self, functions: Iterable[FunctionDefinition], *, host: str = LOOPBACK, port: int = 0,
                 log_dir: str | os.PathLike[str] = ".sluice/logs", region: str = "us-east-1",
                 unreserved_limit: int = DEFAULT_UNRESERVED_LIMIT, inherit_env: bool = True) -> None:
        self.definitions: dict[str, FunctionDefinition] = {}
        for definition in functions:
            if definition.name in self.definitions:
                raise LambdaServiceError(f"function {definition.name!r} is defined twice")
            if definition.timeout_s <= 0:
                raise LambdaServiceError(f"function {definition.name!r}: timeout_s must be positive")
            if definition.reserved_concurrency is not None and definition.reserved_concurrency < 0:
                raise LambdaServiceError(f"function {definition.name!r}: reserved_concurrency must be >= 0")
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in definition.environment.items()):
                raise LambdaServiceError(
                    f"function {definition.name!r}: environment names and values must be strings")
            if not Path(definition.cwd).is_dir():
                raise LambdaServiceError(
                    f"function {definition.name!r}: cwd {definition.cwd!r} is not a directory")
            self.definitions[definition.name] = definition
        self.host, self.port = host, port
        self.log_dir = Path(log_dir)
        self.region = region
        self.unreserved_limit = unreserved_limit
        # Local functions inherit this process's environment (credentials, endpoints, PATH) under
        # their own; on AWS they would get these from their role and configuration.
        self.base_env = dict(os.environ) if inherit_env else {"PATH": os.environ.get("PATH", "")}
        self._pools: dict[str, _FunctionPool] = {}
        self._logs: list[IO[bytes]] = []
        self._server: _InvokeServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # Every function is "last modified" when the service that defines it was made.
        self.created = datetime.now(UTC)

    @property
    def url(self) -> str:
        if self._server is None:
            raise LambdaServiceError("the service is not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> LambdaService:
        with self._lock:
            if self._server is not None:
                return self
            self.log_dir.mkdir(parents=True, exist_ok=True)
            try:
                server = _InvokeServer((self.host, self.port), _InvokeHandler, self)
            except OSError as exc:
                raise LambdaServiceError(f"cannot listen on {self.host}:{self.port}: {exc}") from exc
            for name, definition in self.definitions.items():
                log = (self.log_dir / f"{name}.log").open("ab", buffering=0)
                self._logs.append(log)
                self._pools[name] = _FunctionPool(definition, self, log)
            self._server = server
            self._thread = threading.Thread(target=server.serve_forever, name="lambda-service", daemon=True)
            self._thread.start()
            atexit.register(self.stop)
        return self

    def stop(self) -> None:
        """Stop serving and kill every function process (each in its own process group)."""
        with self._lock:
            server, self._server = self._server, None
            if server is None:
                return
            server.shutdown()
            server.server_close()
            for pool in self._pools.values():
                pool.stop()
            for log in self._logs:
                log.close()
            self._logs.clear()
            atexit.unregister(self.stop)

    def __enter__(self) -> LambdaService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, FunctionStats]:
        return {name: pool.stats() for name, pool in self._pools.items()}

    def reset_stats(self) -> None:
        for pool in self._pools.values():
            pool.reset_stats()

    def pool(self, name: str) -> _FunctionPool | None:
        return self._pools.get(name)


class _InvokeServer(LoopbackHTTPServer):
    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 service: LambdaService) -> None:
        self.service = service
        super().__init__(address, handler)


def _function_name(raw: str) -> tuple[str, str | None]:
    """Name and qualifier from a name, a partial ARN or a full ARN, as Lambda accepts them."""
    name = urllib.parse.unquote(raw)
    if ":function:" in name:
        name = name.split(":function:", 1)[1]
    name, _, qualifier = name.partition(":")
    return name, qualifier or None


class _InvokeHandler(BaseHTTPRequestHandler):
    """Lambda's Invoke API (restJson1) as boto3 calls it, plus the stats endpoints."""

    server: _InvokeServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Quiet: the stats endpoint and the function logs say what happened."""

    def do_GET(self) -> None:  # noqa: N802
        parts = urllib.parse.urlsplit(self.path)
        service = self.server.service
        if parts.path == "/sluice/stats":
            stats = service.stats()
            self._json(HTTPStatus.OK, {name: s.as_dict() for name, s in stats.items()})
        elif parts.path.rstrip("/") == INVOKE_PREFIX.rstrip("/"):
            query = urllib.parse.parse_qs(parts.query)
            try:
                reply = list_functions(list(service.definitions.values()), service.region, service.created,
                                       query.get("Marker", [None])[0], query.get("MaxItems", [None])[0])
            except ListFunctionsError as exc:
                self._aws_error(HTTPStatus.BAD_REQUEST, "InvalidParameterValueException", str(exc))
                return
            self._json(HTTPStatus.OK, reply)
        elif parts.path.startswith(INVOKE_PREFIX):
            self._describe(parts.path[len(INVOKE_PREFIX):], parts.query)
        else:
            self._aws_error(HTTPStatus.NOT_FOUND, "UnknownOperationException",
                            f"no route for GET {self.path}")

    def _describe(self, rest: str, query: str) -> None:
        """GetFunction (``{name}``) or GetFunctionConfiguration (``{name}/configuration``)."""
        service = self.server.service
        raw_name, _, what = rest.partition("/")
        if what not in ("", "configuration"):
            self._aws_error(HTTPStatus.NOT_FOUND, "UnknownOperationException",
                            f"no route for GET {INVOKE_PREFIX}{rest}")
            return
        definition = self._definition(raw_name, query)
        if definition is None:
            return
        if what == "configuration":
            self._json(HTTPStatus.OK, configuration_of(definition, service.region, service.created))
        else:
            self._json(HTTPStatus.OK, get_function(definition, service.region, service.created))

    def _definition(self, raw_name: str, query: str) -> FunctionDefinition | None:
        """The function a path names (by name, partial or full ARN, optionally qualified), or
        None after answering Lambda's 404. Only $LATEST exists locally: no versions, no aliases."""
        service = self.server.service
        name, qualifier = _function_name(raw_name)
        qualifier = urllib.parse.parse_qs(query).get("Qualifier", [None])[0] or qualifier
        definition = service.definitions.get(name)
        if definition is None or qualifier not in (None, "$LATEST"):
            arn = f"arn:aws:lambda:{service.region}:123456789012:function:{name}"
            self._aws_error(HTTPStatus.NOT_FOUND, "ResourceNotFoundException",
                            f"Function not found: {arn}" + (f":{qualifier}" if qualifier else ""))
            return None
        return definition

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_SYNC_PAYLOAD:
            self.close_connection = True  # the body is not read; the connection cannot be reused
            self._aws_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "RequestEntityTooLargeException",
                            f"Request must be smaller than {MAX_SYNC_PAYLOAD} bytes for the Invoke operation")
            return
        body = self.rfile.read(length)
        parts = urllib.parse.urlsplit(self.path)
        if parts.path == "/sluice/stats/reset":
            self.server.service.reset_stats()
            self._json(HTTPStatus.OK, {"reset": True})
            return
        if not (parts.path.startswith(INVOKE_PREFIX) and parts.path.endswith("/invocations")):
            self._aws_error(HTTPStatus.NOT_FOUND, "UnknownOperationException",
                            f"no route for POST {parts.path}")
            return
        self._invoke(parts.path[len(INVOKE_PREFIX):-len("/invocations")], parts.query, body)

    def _invoke(self, raw_name: str, query: str, body: bytes) -> None:
        definition = self._definition(raw_name, query)
        pool = self.server.service.pool(definition.name) if definition is not None else None
        if pool is None:
            return
        kind = self.headers.get("X-Amz-Invocation-Type") or "RequestResponse"
        if kind not in ("RequestResponse", "Event", "DryRun"):
            self._aws_error(HTTPStatus.BAD_REQUEST, "InvalidParameterValueException",
                            f"Invalid invocation type {kind!r}: use RequestResponse, Event or DryRun")
            return
        payload = body or b"{}"  # Lambda hands an empty request to the handler as {}
        try:
            json.loads(payload)
        except ValueError:
            self._aws_error(HTTPStatus.BAD_REQUEST, "InvalidRequestContentException",
                            "Could not parse request body into json: the payload must be JSON")
            return
        try:
            client_context = self._client_context()
        except ValueError as exc:
            self._aws_error(HTTPStatus.BAD_REQUEST, "InvalidRequestContentException", str(exc))
            return
        if kind == "DryRun":
            self._send(HTTPStatus.NO_CONTENT, b"", {})
            return
        invocation = Invocation(payload, client_context=client_context)
        if kind == "Event":
            if len(payload) > MAX_ASYNC_PAYLOAD:
                self._aws_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "RequestEntityTooLargeException",
                                f"Request must be smaller than {MAX_ASYNC_PAYLOAD} bytes for an Event invoke")
                return
            pool.invoke_async(invocation)
            self._send(HTTPStatus.ACCEPTED, b"", {"x-amzn-RequestId": invocation.request_id})
            return
        try:
            outcome = pool.invoke_sync(invocation)
        except ThrottledInvokeError as exc:
            self._json(HTTPStatus.TOO_MANY_REQUESTS,
                       {"Type": "User", "message": "Rate Exceeded.", "Reason": exc.reason},
                       {"x-amzn-ErrorType": "TooManyRequestsException", "Retry-After": "1"})
            return
        headers = {"X-Amz-Executed-Version": "$LATEST", "x-amzn-RequestId": invocation.request_id,
                   "Content-Type": "application/json"}
        if outcome.function_error:
            headers["X-Amz-Function-Error"] = outcome.function_error
        self._send(HTTPStatus.OK, outcome.payload, headers)

    def _client_context(self) -> str | None:
        """The decoded X-Amz-Client-Context header (the runtime wants it as plain JSON)."""
        encoded = self.headers.get("X-Amz-Client-Context")
        if not encoded:
            return None
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
            json.loads(decoded)
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise ValueError("X-Amz-Client-Context must be base64-encoded JSON") from exc
        return decoded

    def _aws_error(self, status: HTTPStatus, code: str, message: str) -> None:
        self._json(status, {"Type": "User", "message": message}, {"x-amzn-ErrorType": code})

    def _json(self, status: HTTPStatus, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send(status, *json_reply(body, headers))

    def _send(self, status: HTTPStatus, body: bytes, headers: dict[str, str]) -> None:
        with contextlib.suppress(OSError):  # the caller hung up; nothing to tell it
            send_reply(self, status, body, headers)


# -- running it as a process -----------------------------------------------------------------

def load_spec(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a spec file: {"functions": [{name, handler, timeout_s, memory_mb, reserved_concurrency,
    environment, cwd, python}], "host"?, "port"?, "log_dir"?, "region"?, "unreserved_limit"?}."""
    try:
        spec = json.loads(Path(path).read_text())
    except OSError as exc:
        raise LambdaServiceError(f"cannot read spec {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise LambdaServiceError(f"spec {path} is not valid JSON: {exc}") from exc
    if not isinstance(spec, dict) or not isinstance(spec.get("functions"), list):
        raise LambdaServiceError(f"spec {path} needs a 'functions' list")
    try:
        spec["functions"] = [FunctionDefinition.from_dict(f) for f in spec["functions"]]
    except (TypeError, ValueError) as exc:
        raise LambdaServiceError(f"spec {path}: bad function definition: {exc}") from exc
    return spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sluice_tools.local.lambda_service",
        description="Serve Lambda Invoke locally for the functions in a spec file.")
    parser.add_argument("--spec", required=True, help="JSON file with the function definitions")
    parser.add_argument("--host", default=None, help="listen address (default: the spec's, else 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None,
                        help="listen port (default: the spec's, else a free one)")
    parser.add_argument("--ready-file", default=None, help="write the service URL here once it is serving")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        service = LambdaService(
            spec["functions"], host=args.host or spec.get("host", LOOPBACK),
            port=args.port if args.port is not None else int(spec.get("port", 0)),
            log_dir=spec.get("log_dir", ".sluice/logs"), region=spec.get("region", "us-east-1"),
            unreserved_limit=int(spec.get("unreserved_limit", DEFAULT_UNRESERVED_LIMIT)))
        service.start()
    except LambdaServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        print(json.dumps({"url": service.url, "pid": os.getpid()}), flush=True)
        if args.ready_file:
            tmp = Path(args.ready_file + ".tmp")
            tmp.write_text(service.url)
            tmp.replace(args.ready_file)  # atomic: a poller never reads half a URL
        while not stop.wait(1.0):
            pass
    finally:
        service.stop()
        if args.ready_file:
            with contextlib.suppress(OSError):
                Path(args.ready_file).unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
