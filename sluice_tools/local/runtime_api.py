"""One Lambda execution environment: a function process and the Runtime API it talks to.

Each warm process runs AWS's runtime interface client (`python -m awslambdaric module.attr`)
against a Runtime API served here. The client takes the API as host:port with fixed paths, so
every sandbox serves its own API on a port of its own. A sandbox runs one invocation at a time,
like a Lambda execution environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

from sluice_tools.local.http_reply import json_reply, send_reply

LOOPBACK = "127.0.0.1"
ACCOUNT_ID = "123456789012"
RUNTIME_PREFIX = "/2018-06-01/runtime"
# Lambda allows an on-demand init phase up to 10 s before the invoke's own timeout starts.
INIT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class FunctionDefinition:
    """What the local Lambda service needs to run one function."""

    name: str
    handler: str  # "module.attr" (a "path/module.attr" form is accepted too, as on Lambda)
    timeout_s: int = 3
    memory_mb: int = 128
    reserved_concurrency: int | None = None  # None: unreserved, bounded by the service's own limit
    environment: dict[str, str] = field(default_factory=dict)
    cwd: str = "."  # the task root: handler packages import from here
    python: str = sys.executable

    @classmethod
    def from_spec(cls, spec: Any, *, name: str, environment: dict[str, str] | None = None,
                  cwd: str = ".", python: str = sys.executable) -> FunctionDefinition:
        """Build from a sluice_tools.functions.FunctionSpec (its .module/.attribute name the handler)."""
        return cls(name=name, handler=f"{spec.module}.{spec.attribute}", timeout_s=int(spec.timeout_s),
                   memory_mb=int(spec.memory_mb), reserved_concurrency=spec.reserved_concurrency,
                   environment=dict(environment or {}), cwd=cwd, python=python)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FunctionDefinition:
        known = {"name", "handler", "timeout_s", "memory_mb", "reserved_concurrency", "environment", "cwd",
                 "python"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown function field(s): {', '.join(unknown)}")
        if not data.get("name") or not data.get("handler"):
            raise ValueError("a function needs 'name' and 'handler'")
        return cls(**data)

    def arn(self, region: str) -> str:
        return f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{self.name}"


@dataclass(frozen=True)
class InvokeOutcome:
    """What the caller of Invoke gets: the payload, and the function error kind if any."""

    payload: bytes
    function_error: str | None = None  # "Unhandled" on any failure, as Lambda reports it
    error_type: str | None = None  # errorType inside the payload, for stats ("Sandbox.Timedout", ...)

    @classmethod
    def error(cls, request_id: str, error_type: str, message: str) -> InvokeOutcome:
        body = {"errorType": error_type, "errorMessage": f"RequestId: {request_id} Error: {message}"}
        return cls(json.dumps(body).encode(), "Unhandled", error_type)


class Invocation:
    """One invoke in flight: the event, its deadline, and the single outcome that ends it."""

    def __init__(self, payload: bytes, *, client_context: str | None = None) -> None:
        self.request_id = str(uuid.uuid4())
        self.trace_id = (f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};"
                         f"Parent={uuid.uuid4().hex[:16]};Sampled=0")
        self.payload = payload
        self.client_context = client_context
        self.deadline_epoch_s = 0.0  # set when the runtime picks the event up
        self.delivered = threading.Event()
        self.done = threading.Event()
        self.outcome: InvokeOutcome | None = None
        self._lock = threading.Lock()

    def finish(self, outcome: InvokeOutcome) -> bool:
        """Record the first outcome; later ones (a kill after a reply) are ignored."""
        with self._lock:
            if self.outcome is not None:
                return False
            self.outcome = outcome
        self.delivered.set()
        self.done.set()
        return True


class Sandbox:
    """A warm function process plus its private Runtime API server."""

    def __init__(self, definition: FunctionDefinition, *, region: str, log_file: IO[bytes],
                 base_env: dict[str, str], on_exit: Any) -> None:
        self.definition = definition
        self.region = region
        self._inbox: queue.Queue[Invocation | None] = queue.Queue()
        self._assigned: Invocation | None = None
        self._on_exit = on_exit
        self.init_error: bytes | None = None
        self.alive = True
        self._server = _RuntimeApiServer((LOOPBACK, 0), _RuntimeApiHandler, self)
        self.api_address = f"{LOOPBACK}:{self._server.server_address[1]}"
        # A short poll interval: stopping many sandboxes waits on each server's loop.
        threading.Thread(target=self._server.serve_forever, args=(0.1,),
                         name=f"runtime-api-{definition.name}", daemon=True).start()
        try:
            self.process = subprocess.Popen(
                [definition.python, "-m", "awslambdaric", definition.handler],
                cwd=definition.cwd, env=self._environment(base_env), stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT,
                # A group of its own: a kill reaches anything the handler spawned, and Ctrl-C in
                # the parent's terminal does not hit the function directly (we stop it ourselves).
                start_new_session=True,
            )
        except OSError:
            self._server.shutdown()
            self._server.server_close()
            raise
        threading.Thread(target=self._watch, name=f"sandbox-watch-{self.process.pid}", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _environment(self, base_env: dict[str, str]) -> dict[str, str]:
        d = self.definition
        task_root = str(Path(d.cwd).resolve())
        env = dict(base_env)
        env.update(d.environment)
        py = f"python{sys.version_info.major}.{sys.version_info.minor}"
        env.update({
            "AWS_LAMBDA_RUNTIME_API": self.api_address,
            "AWS_LAMBDA_FUNCTION_NAME": d.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(d.memory_mb),
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(d.timeout_s),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{d.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"{time.strftime('%Y/%m/%d')}/[$LATEST]{uuid.uuid4().hex}",
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{py}",
            "_HANDLER": d.handler,
            "LAMBDA_TASK_ROOT": task_root,
            "LAMBDA_RUNTIME_DIR": task_root,
            "LAMBDA_DISABLE_PREVIEW_WARN": "1",
            "PYTHONUNBUFFERED": "1",
        })
        env["PYTHONPATH"] = os.pathsep.join(p for p in (task_root, env.get("PYTHONPATH", "")) if p)
        return env

    # -- the invoke side -------------------------------------------------------------------

    def invoke(self, invocation: Invocation) -> InvokeOutcome:
        """Run one invocation to its outcome: reply, error, init failure, exit, or timeout."""
        self._assigned = invocation
        if not self.alive:  # died between being picked and now
            self._fail_exited(invocation)
        self._inbox.put(invocation)
        try:
            if not invocation.delivered.wait(INIT_TIMEOUT_S):
                if invocation.finish(InvokeOutcome.error(
                        invocation.request_id, "Runtime.InitTimeout",
                        f"Init timed out after {INIT_TIMEOUT_S:.2f} seconds")):
                    self.kill()
            else:
                left = invocation.deadline_epoch_s - time.time()
                if not invocation.done.wait(max(0.0, left)) and invocation.finish(InvokeOutcome.error(
                        invocation.request_id, "Sandbox.Timedout",
                        f"Task timed out after {self.definition.timeout_s:.2f} seconds")):
                    self.kill()
        finally:
            self._assigned = None
        assert invocation.outcome is not None
        return invocation.outcome

    def kill(self) -> None:
        """SIGKILL the whole process group (Lambda gives a timed-out sandbox no grace either)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def stop(self) -> None:
        self.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self._close_server()

    def _close_server(self) -> None:
        self._inbox.put(None)  # wakes a GET /next blocked in the server so shutdown can finish
        self._server.shutdown()
        self._server.server_close()

    def _watch(self) -> None:
        code = self.process.wait()
        self.alive = False
        invocation = self._assigned
        if invocation is not None:
            self._fail_exited(invocation, code)
        threading.Thread(target=self._close_server, daemon=True).start()
        self._on_exit(self)

    def _fail_exited(self, invocation: Invocation, code: int | None = None) -> None:
        if self.init_error is not None:
            invocation.finish(InvokeOutcome(self.init_error, "Unhandled", _error_type(self.init_error)))
            return
        code = self.process.returncode if code is None else code
        reason = f"signal: {signal.Signals(-code).name.lower().removeprefix('sig')}" if code and code < 0 \
            else f"exit status {code}"
        if code == -signal.SIGKILL:
            reason = "signal: killed"
        invocation.finish(InvokeOutcome.error(invocation.request_id, "Runtime.ExitError",
                                              f"Runtime exited with error: {reason}"))

    # -- the Runtime API side (called from the server's threads) ------------------------------

    def next_invocation(self) -> Invocation | None:
        while True:
            invocation = self._inbox.get()
            if invocation is None or not invocation.done.is_set():
                return invocation

    def deliver(self, invocation: Invocation) -> None:
        invocation.deadline_epoch_s = time.time() + self.definition.timeout_s
        invocation.delivered.set()

    def respond(self, request_id: str, body: bytes, *, error: bool) -> bool:
        invocation = self._assigned
        if invocation is None or invocation.request_id != request_id:
            return False
        if error:
            invocation.finish(InvokeOutcome(body, "Unhandled", _error_type(body)))
        else:
            invocation.finish(InvokeOutcome(body))
        return True

    def report_init_error(self, body: bytes) -> None:
        # The client exits right after this; the exit watcher fails the pending invocation with it.
        self.init_error = body
        invocation = self._assigned
        if invocation is not None:
            invocation.finish(InvokeOutcome(body, "Unhandled", _error_type(body)))


def _error_type(body: bytes) -> str:
    try:
        return str(json.loads(body).get("errorType") or "Unhandled")
    except (ValueError, AttributeError):
        return "Unhandled"


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server tuned for many small request/response rounds on loopback."""

    daemon_threads = True

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = super().get_request()
        # http.server writes headers and body in two sends; with Nagle on, the client's delayed
        # ACK stalls every reply by about 40 ms.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A peer that hangs up (a killed function, a client gone at shutdown) is expected here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _RuntimeApiServer(LoopbackHTTPServer):
    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        super().__init__(address, handler)


class _RuntimeApiHandler(BaseHTTPRequestHandler):
    """The subset of the Lambda Runtime API that awslambdaric uses."""

    server: _RuntimeApiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Quiet: the runtime polls constantly; the function's own log is what matters."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path != f"{RUNTIME_PREFIX}/invocation/next":
            self._reply(HTTPStatus.NOT_FOUND, {"errorType": "NotFound", "errorMessage": self.path})
            return
        sandbox = self.server.sandbox
        invocation = sandbox.next_invocation()
        if invocation is None:  # shutting down
            self._reply(HTTPStatus.GONE, {"errorType": "ShuttingDown", "errorMessage": "sandbox stopped"})
            return
        sandbox.deliver(invocation)
        d = sandbox.definition
        headers = {
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(int(invocation.deadline_epoch_s * 1000)),
            "Lambda-Runtime-Invoked-Function-Arn": d.arn(sandbox.region),
            "Lambda-Runtime-Trace-Id": invocation.trace_id,
            "Content-Type": "application/json",
        }
        if invocation.client_context:
            headers["Lambda-Runtime-Client-Context"] = invocation.client_context
        self._send(HTTPStatus.OK, invocation.payload, headers)

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        sandbox = self.server.sandbox
        if self.path == f"{RUNTIME_PREFIX}/init/error":
            sandbox.report_init_error(body)
            self._reply(HTTPStatus.ACCEPTED, {"status": "OK"})
            return
        parts = self.path.removeprefix(f"{RUNTIME_PREFIX}/invocation/").split("/")
        if not self.path.startswith(f"{RUNTIME_PREFIX}/invocation/") or len(parts) != 2 \
                or parts[1] not in ("response", "error"):
            self._reply(HTTPStatus.NOT_FOUND, {"errorType": "NotFound", "errorMessage": self.path})
            return
        if sandbox.respond(parts[0], body, error=parts[1] == "error"):
            self._reply(HTTPStatus.ACCEPTED, {"status": "OK"})
        else:
            self._reply(HTTPStatus.BAD_REQUEST, {"errorType": "InvalidRequestID",
                                                 "errorMessage": f"no invocation {parts[0]} in progress"})

    def _reply(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        self._send(status, *json_reply(body))

    def _send(self, status: HTTPStatus, body: bytes, headers: dict[str, str]) -> None:
        with contextlib.suppress(OSError):  # the runtime died mid-reply; its exit watcher reports that
            send_reply(self, status, body, headers)
