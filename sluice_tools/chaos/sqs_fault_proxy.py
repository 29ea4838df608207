"""An HTTP proxy in front of an SQS endpoint that fails a set share of calls, as SQS would.

It sits between sluice and any SQS server (fauxqs, moto, AWS) and, for the operations it is
told to break, answers a share of calls with the errors a real SQS sends in the JSON
protocol: ``500 InternalFailure``, ``503 ServiceUnavailable`` and ``400 RequestThrottled``
(``__type`` body plus the ``x-amzn-query-error`` header botocore reads). Everything else is
forwarded byte for byte.

A fault is injected either *before* forwarding (the call had no effect) or *after* (the call
took effect upstream but the caller is told it failed): the second kind is the one that
tests idempotency, because a retried send or a "failed" delete really happened.

A *hold* (``proxy.hold(operations, queue_url)``) stops the calls it matches before they are
forwarded, for as long as a test needs: the caller sits in that call (a consumer between its
StartExecution and its delete) until the test has killed it, and ``release()`` then drops what
was held (answered with a 503, never forwarded: the call had no effect) or forwards it.

    python -m sluice_tools.chaos.sqs_fault_proxy --upstream http://127.0.0.1:9324 --rate 0.2

prints the proxy's URL; give it to the stack as ``sluice local up --sqs URL``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sluice_tools.local.http_reply import send_reply

# The calls on sluice's path: enqueue, receive, and delete (one at a time or in batches).
DEFAULT_OPERATIONS = ("SendMessageBatch", "ReceiveMessage", "DeleteMessage", "DeleteMessageBatch")

# (HTTP status, error code, sender fault): what SQS answers when it is unwell or throttling.
FAULTS: dict[str, tuple[int, str, bool]] = {
    "server_error": (500, "InternalFailure", False),
    "unavailable": (503, "ServiceUnavailable", False),
    "throttle": (400, "RequestThrottled", True),
}
# Headers that describe one hop, not the message (RFC 9110 section 7.6.1).
_HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                "upgrade", "host", "content-length"}


class FaultProxyError(Exception):
    """The proxy was configured with something it cannot do."""


@dataclass
class FaultPlan:
    """What to break: ``rate`` of the calls to ``operations``, with ``kinds`` chosen at random."""

    rate: float = 0.0
    operations: tuple[str, ...] = DEFAULT_OPERATIONS
    kinds: tuple[str, ...] = ("server_error", "unavailable", "throttle")
    # Share of injected faults that happen after the call reached the server (effect done, reply lost).
    after_forward_share: float = 0.5
    # > 0: instead of ``rate``, fail every Nth call of each operation (deterministic, for small runs).
    every: int = 0

    def validate(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise FaultProxyError(f"fault rate {self.rate} must be within 0..1")
        if self.every < 0:
            raise FaultProxyError(f"every={self.every} must be 0 (use rate) or a positive call count")
        if not 0.0 <= self.after_forward_share <= 1.0:
            raise FaultProxyError(f"after_forward_share {self.after_forward_share} must be within 0..1")
        unknown = [k for k in self.kinds if k not in FAULTS]
        if unknown or not self.kinds:
            raise FaultProxyError(f"fault kinds {unknown or '(none)'} unknown; choose from {sorted(FAULTS)}")


def operation_of(headers: Any, body: bytes) -> str:
    """The SQS operation of a request: ``X-Amz-Target`` (JSON protocol) or ``Action`` (query protocol)."""
    target = headers.get("X-Amz-Target", "")
    if target:
        return str(target).rsplit(".", 1)[-1]
    try:
        form = urllib.parse.parse_qs(body.decode("utf-8", errors="replace"))
    except ValueError:
        return ""
    return form.get("Action", [""])[0]


def error_reply(kind: str) -> tuple[int, dict[str, str], bytes]:
    status, code, sender = FAULTS[kind]
    body = json.dumps({"__type": f"com.amazonaws.sqs#{code}", "message": f"injected fault: {code}"}).encode()
    headers = {
        "Content-Type": "application/x-amz-json-1.0",
        # botocore takes the error code from this header for SQS (a query-compatible JSON service).
        "x-amzn-query-error": f"{code};{'Sender' if sender else 'Receiver'}",
        "x-amzn-RequestId": "00000000-0000-0000-0000-000000000000",
    }
    return status, headers, body


def _queue_url_of(body: bytes) -> str:
    """The ``QueueUrl`` of a request body (JSON protocol, else a query-protocol form)."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        return str(data.get("QueueUrl", ""))
    form = urllib.parse.parse_qs(body.decode("utf-8", errors="replace"))
    return form.get("QueueUrl", [""])[0]


def _entries_of(body: bytes) -> int:
    """How many messages a call names: a batch's entries, else one."""
    try:
        data = json.loads(body)
    except ValueError:
        return 1
    entries = data.get("Entries") if isinstance(data, dict) else None
    return len(entries) if isinstance(entries, list) else 1


class Hold:
    """Calls to ``operations`` on ``queue_url`` wait here, unforwarded, until ``release()``.

    ``reached`` is set when the first one arrives; ``calls`` and ``messages`` count what was
    held (a batch counts its entries). Released calls are dropped (503, no effect) unless
    ``release(forward=True)``; calls arriving after the release pass untouched.
    """

    def __init__(self, operations: Iterable[str], queue_url: str) -> None:
        self.operations = frozenset(operations)
        self.queue_url = queue_url
        self.reached = threading.Event()
        self._released = threading.Event()
        self._forward = False
        self._lock = threading.Lock()
        self.calls = 0
        self.messages = 0

    @property
    def released(self) -> bool:
        return self._released.is_set()

    def matches(self, operation: str, body: bytes) -> bool:
        return (not self.released and operation in self.operations
                and _queue_url_of(body) == self.queue_url)

    def wait(self, body: bytes) -> bool:
        """Block one matching call until the release; True when it is to be forwarded."""
        with self._lock:
            self.calls += 1
            self.messages += _entries_of(body)
        self.reached.set()
        self._released.wait()
        return self._forward

    def release(self, *, forward: bool = False) -> None:
        self._forward = forward
        self._released.set()


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A caller killed mid-call (what the chaos suite does to consumers) hangs up on its reply.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class SqsFaultProxy:
    """A threaded proxy on 127.0.0.1 (free port). Change ``plan`` at any time; read ``counts``."""

    def __init__(self, upstream: str, plan: FaultPlan | None = None, *, seed: int | None = None) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme != "http" or not parsed.hostname:
            raise FaultProxyError(f"upstream {upstream!r} must be an http://host:port URL")
        self.upstream = upstream
        self._host = parsed.hostname
        self._port = parsed.port or 80
        self.plan = plan or FaultPlan()
        self.plan.validate()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        # "<Operation>:forwarded", "<Operation>:<kind>:before", "<Operation>:<kind>:after"
        self.counts: Counter[str] = Counter()
        self._calls: Counter[str] = Counter()  # matching calls seen, per operation
        self._local = threading.local()
        self._holds: list[Hold] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise FaultProxyError("the proxy is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def set_plan(self, plan: FaultPlan) -> None:
        plan.validate()
        with self._lock:
            self.plan = plan

    def hold(self, operations: Iterable[str], queue_url: str) -> Hold:
        """Hold every call to ``operations`` on ``queue_url`` until the returned Hold's release."""
        unknown = set(operations) - set(DEFAULT_OPERATIONS)
        if unknown:
            raise FaultProxyError(f"cannot hold {sorted(unknown)}: choose from {list(DEFAULT_OPERATIONS)}")
        hold = Hold(operations, queue_url)
        with self._lock:
            self._holds.append(hold)
        return hold

    def _held(self, operation: str, body: bytes) -> Hold | None:
        with self._lock:
            self._holds = [h for h in self._holds if not h.released]
            return next((h for h in self._holds if h.matches(operation, body)), None)

    def injected(self, operations: Iterable[str] | None = None) -> int:
        ops = set(operations) if operations is not None else None
        with self._lock:
            return sum(n for k, n in self.counts.items()
                       if not k.endswith(":forwarded") and (ops is None or k.split(":")[0] in ops))

    def _decide(self, operation: str) -> tuple[str, bool] | None:
        """None = forward cleanly; else (fault kind, inject after forwarding?)."""
        with self._lock:
            plan = self.plan
            if operation not in plan.operations:
                return None
            self._calls[operation] += 1
            if plan.every:
                if self._calls[operation] % plan.every:
                    return None
            elif self._random.random() >= plan.rate:
                return None
            return self._random.choice(plan.kinds), self._random.random() < plan.after_forward_share

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes
                 ) -> tuple[int, list[tuple[str, str]], bytes]:
        # One keep-alive connection per proxy thread: thousands of calls would otherwise pile up
        # sockets in TIME_WAIT.
        for attempt in range(2):
            conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=60)
                self._local.conn = conn
            try:
                conn.request(method, path, body=body, headers=headers)
                reply = conn.getresponse()
                data = reply.read()
                return reply.status, reply.getheaders(), data
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        operation = operation_of(request.headers, body)
        hold = self._held(operation, body)
        if hold is not None and not hold.wait(body):
            self._count(f"{operation}:held:dropped")
            self._reply(request, *error_reply("unavailable"))
            return
        decision = self._decide(operation)
        if decision is not None and not decision[1]:
            self._count(f"{operation}:{decision[0]}:before")
            self._reply(request, *error_reply(decision[0]))
            return
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        headers["Host"] = f"{self._host}:{self._port}"
        try:
            status, reply_headers, data = self._forward(request.command, request.path, headers, body)
        except (OSError, http.client.HTTPException):
            # The upstream is down: say so as SQS's front end would, so the client retries.
            self._count(f"{operation}:upstream_down")
            self._reply(request, *error_reply("unavailable"))
            return
        if decision is not None:
            self._count(f"{operation}:{decision[0]}:after")
            self._reply(request, *error_reply(decision[0]))
            return
        self._count(f"{operation}:forwarded")
        self._reply(request, status, {k: v for k, v in reply_headers if k.lower() not in _HOP_HEADERS}, data)

    @staticmethod
    def _reply(request: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes) -> None:
        send_reply(request, status, body, headers)

    def start(self, port: int = 0) -> str:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                proxy.handle(self)

            do_GET = do_POST  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                return

        server = _ProxyServer(("127.0.0.1", port), Handler)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="sqs-fault-proxy", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        with self._lock:
            holds, self._holds = self._holds, []
        for hold in holds:  # a held call must not keep a server thread (or its caller) waiting
            hold.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> SqsFaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fault-injecting proxy in front of an SQS endpoint.")
    parser.add_argument("--upstream", required=True, help="the SQS endpoint to forward to (http://host:port)")
    parser.add_argument("--rate", type=float, default=0.1, help="share of matching calls that fail (0..1)")
    parser.add_argument("--operations", default=",".join(DEFAULT_OPERATIONS),
                        help="comma-separated SQS operations")
    parser.add_argument("--kinds", default=",".join(FAULTS),
                        help=f"comma-separated fault kinds: {', '.join(FAULTS)}")
    parser.add_argument("--after-share", type=float, default=0.5,
                        help="share of faults injected after forwarding")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    plan = FaultPlan(rate=args.rate, operations=tuple(o for o in args.operations.split(",") if o),
                     kinds=tuple(k for k in args.kinds.split(",") if k), after_forward_share=args.after_share)
    try:
        proxy = SqsFaultProxy(args.upstream, plan, seed=args.seed)
        url = proxy.start(args.port)
    except (FaultProxyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
