"""The local HTTP API: what API Gateway (HTTP API, payload format 2.0) does in front of the enqueuer.

Each request becomes a payload-v2.0 event, is invoked on the enqueuer through the local Lambda
service (RequestResponse), and the function's ``{statusCode, headers, body}`` goes back as
the HTTP response. As on API Gateway: a function error or timeout is a 502, a body above
10 MB a 413 (the function never sees it). ``GET /openapi.yaml`` serves docs/openapi.yaml.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from sluice.aws import AwsError, InvokeResult, ThrottledError
from sluice_tools.local.processes import LOOPBACK, LocalServiceError, choose_port

# API Gateway's payload limit for HTTP APIs.
MAX_BODY_BYTES = 10 * 1024 * 1024
JOBS_ROUTE = ("POST", "/jobs")
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/x-www-form-urlencoded",
               "application/javascript", "application/yaml", "application/x-yaml")

Invoke = Callable[[dict[str, Any]], InvokeResult]


def route_key(method: str, path: str) -> str:
    return f"{method} {path}" if (method, path) == JOBS_ROUTE else "$default"


def build_event(method: str, raw_path: str, raw_query: str, headers: dict[str, str], body: bytes,
                source_ip: str, api_id: str = "local") -> dict[str, Any]:
    """An API Gateway HTTP API payload-v2.0 event (headers lower-cased, duplicates comma-joined)."""
    content_type = headers.get("content-type", "")
    is_text = content_type.startswith(_TEXT_TYPES) or not content_type
    try:
        text = body.decode() if is_text else None
    except UnicodeDecodeError:
        text = None
    now = datetime.now(UTC)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key(method, raw_path),
        "rawPath": raw_path,
        "rawQueryString": raw_query,
        "headers": {k: v for k, v in headers.items() if k != "cookie"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": api_id,
            "domainName": headers.get("host", LOOPBACK),
            "domainPrefix": api_id,
            "http": {
                "method": method,
                "path": raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": uuid.uuid4().hex[:16] + "=",
            "routeKey": route_key(method, raw_path),
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": text is None,
    }
    if "cookie" in headers:
        event["cookies"] = [c.strip() for c in headers["cookie"].split(";") if c.strip()]
    if raw_query:
        params: dict[str, str] = {}
        for key, value in parse_qsl(raw_query, keep_blank_values=True):
            params[key] = f"{params[key]},{value}" if key in params else value
        event["queryStringParameters"] = params
    if body:
        event["body"] = text if text is not None else base64.b64encode(body).decode()
    return event


def to_http(result: Any) -> tuple[int, dict[str, str], bytes]:
    """Map a payload-v2.0 function result to (status, headers, body) the way API Gateway does."""
    if isinstance(result, dict) and "statusCode" in result:
        try:
            status = int(result["statusCode"])
        except (TypeError, ValueError):
            return _bad_gateway()
        headers = {str(k): str(v) for k, v in (result.get("headers") or {}).items()}
        for name, values in (result.get("multiValueHeaders") or {}).items():
            headers[str(name)] = ",".join(str(v) for v in values)
        raw = result.get("body")
        if raw is None:
            body = b""
        elif result.get("isBase64Encoded"):
            try:
                body = base64.b64decode(raw)
            except ValueError:
                return _bad_gateway()
        else:
            body = (raw if isinstance(raw, str) else json.dumps(raw)).encode()
        return status, headers, body
    # Payload 2.0: anything else is taken as the JSON body of a 200.
    return 200, {"content-type": "application/json"}, json.dumps(result).encode()


def _bad_gateway() -> tuple[int, dict[str, str], bytes]:
    return 502, {"content-type": "application/json"}, b'{"message":"Internal Server Error"}'


class BodyTooLargeError(Exception):
    """A chunked body grew past the limit."""


class BadChunkedBodyError(ValueError):
    """A chunked body that does not follow HTTP/1.1's chunked coding."""


# Bounds on the framing lines, so a client cannot make the server buffer an endless size line.
_MAX_CHUNK_LINE = 4096
_MAX_TRAILER_LINES = 100


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...
    def readline(self, size: int = ..., /) -> bytes: ...


def _chunk_line(stream: _Readable) -> bytes:
    line = stream.readline(_MAX_CHUNK_LINE + 1)
    if not line.endswith(b"\n"):
        raise BadChunkedBodyError("truncated or overlong chunk line" if line else "body ended early")
    return line.rstrip(b"\r\n")


def read_chunked(stream: _Readable, limit: int) -> bytes:
    """The body of a ``Transfer-Encoding: chunked`` request (RFC 9112 section 7.1); trailers are
    read and dropped. Raises BodyTooLargeError as soon as the body passes ``limit`` bytes."""
    parts: list[bytes] = []
    total = 0
    while True:
        size_text = _chunk_line(stream).split(b";", 1)[0].strip()
        if not size_text or size_text.strip(b"0123456789abcdefABCDEF"):
            raise BadChunkedBodyError(f"chunk size {size_text[:20]!r} is not hexadecimal")
        size = int(size_text, 16)
        if size == 0:
            break
        total += size
        if total > limit:
            raise BodyTooLargeError()
        data = stream.read(size)
        if len(data) != size:
            raise BadChunkedBodyError("body ended inside a chunk")
        parts.append(data)
        if _chunk_line(stream) != b"":
            raise BadChunkedBodyError("chunk data longer than its size")
    for _ in range(_MAX_TRAILER_LINES):
        if _chunk_line(stream) == b"":
            return b"".join(parts)
    raise BadChunkedBodyError("too many trailer lines")


class HttpApi:
    """A threaded HTTP server on 127.0.0.1 in front of the enqueuer function."""

    def __init__(self, invoke: Invoke, *, port: int | None = None, openapi_path: Path | None = None) -> None:
        self.invoke = invoke
        self.requested_port = port
        self.openapi_path = openapi_path
        self._server: _ApiServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise LocalServiceError("the HTTP API is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> str:
        port = choose_port(self.requested_port, "the HTTP API") if self.requested_port else 0
        try:
            self._server = _ApiServer((LOOPBACK, port), _ApiHandler, self)
        except OSError as exc:
            raise LocalServiceError(f"cannot serve the HTTP API on {LOOPBACK}:{port}: {exc}") from exc
        self._thread = threading.Thread(target=self._server.serve_forever, name="http-api", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class _ApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], api: HttpApi) -> None:
        self.api = api
        super().__init__(address, handler)


class _ApiHandler(BaseHTTPRequestHandler):
    server: _ApiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Quiet: the enqueuer's own log says what each request did."""

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        method = self.command
        if method == "GET" and parts.path == "/openapi.yaml":
            self._openapi()
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._reply(400, {"content-type": "application/json"}, b'{"message":"Bad Content-Length"}')
            return
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            # API Gateway accepts chunked bodies (curl sends one for `-T -` or `-H 'Transfer-Encoding:
            # chunked'`), bounded by the same 10 MB.
            try:
                body = read_chunked(self.rfile, MAX_BODY_BYTES)
            except BodyTooLargeError:
                self.close_connection = True  # the rest of the body is not read
                self._reply(413, {"content-type": "application/json"}, b'{"message":"Request Entity Too Large"}')
                return
            except BadChunkedBodyError as exc:
                self.close_connection = True
                self._reply(400, {"content-type": "application/json"},
                            json.dumps({"message": f"Bad chunked body: {exc}"}).encode())
                return
        elif length > MAX_BODY_BYTES:
            self._discard(length)
            self._reply(413, {"content-type": "application/json"}, b'{"message":"Request Entity Too Large"}')
            return
        else:
            body = self.rfile.read(length) if length else b""
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]},{value}" if key in headers else value
        event = build_event(method, parts.path, parts.query, headers, body, self.client_address[0])
        try:
            result = self.server.api.invoke(event)
        except ThrottledError:
            self._reply(429, {"content-type": "application/json"}, b'{"message":"Too Many Requests"}')
            return
        except AwsError:
            self._reply(*_bad_gateway())
            return
        if result.function_error:
            self._reply(*_bad_gateway())
            return
        self._reply(*to_http(result.payload))

    def _discard(self, length: int) -> None:
        """Read (and drop) an oversized body so the client sees the 413 rather than a broken pipe;
        past a sane bound just hang up."""
        self.close_connection = True
        remaining = length if length <= 8 * MAX_BODY_BYTES else 0
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle  # noqa: N815

    def do_HEAD(self) -> None:  # noqa: N802
        self._reply(405, {}, b"")

    def _openapi(self) -> None:
        path = self.server.api.openapi_path
        if path is None or not path.is_file():
            self._reply(404, {"content-type": "application/json"}, b'{"message":"Not Found"}')
            return
        self._reply(200, {"content-type": "application/yaml"}, path.read_bytes())

    def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        with contextlib.suppress(OSError):  # the client hung up: nothing to tell it
            self.send_response(status)  # the standard phrase, or none for a code it does not know
            for name, value in headers.items():
                if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("apigw-requestid", uuid.uuid4().hex[:16])
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)


def lambda_invoker(function_name: str, lambda_url: str, timeout_s: int, region: str) -> Invoke:
    """An ``Invoke`` that calls ``function_name`` on the local Lambda service (RequestResponse)."""
    import boto3
    from botocore.config import Config

    from sluice.aws import FunctionInvoker

    client = boto3.client(
        # The local service takes any credentials; these keep the caller's own (or none) out of it.
        "lambda", endpoint_url=lambda_url, region_name=region, aws_access_key_id="local",
        aws_secret_access_key="local", aws_session_token=None,
        # No retries: a retried RequestResponse invoke would enqueue twice (dedup ids make it
        # harmless, but API Gateway does not retry either).
        config=Config(read_timeout=timeout_s + 10, retries={"max_attempts": 1}, max_pool_connections=50),
    )
    invoker = FunctionInvoker(function_name, timeout_s, lambda_client=client)

    def invoke(event: dict[str, Any]) -> InvokeResult:
        return invoker.invoke(event)

    return invoke


