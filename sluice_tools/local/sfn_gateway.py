"""The port moto's Step Functions interpreter calls back on, so workflow lanes run locally.

moto executes state machines (FACTS.md, "moto Step Functions executes state machines"), and
its Task states call AWS at ``http://localhost:$MOTO_PORT`` whatever endpoint variables say:
Lambda tasks too, and moto's own Lambda needs Docker. So the moto process is started with
``MOTO_PORT`` set to this gateway, which sends ``/2015-03-31/functions/*`` (Lambda's Invoke) to
sluice's Lambda service (sluice_tools/local/lambda_service.py) and everything else (SNS, SQS,
DynamoDB, nested Step Functions) to moto itself. The same definition file then runs locally
and on AWS, its step Lambdas in the same warm function processes as the stack's workers.

Embed it with ``SfnGateway(moto_url, lambda_url).start()``, or run it as a process:
``python -m sluice_tools.local.sfn_gateway --moto URL --lambda URL [--port N]``.
"""

from __future__ import annotations

import argparse
import http.client
import signal
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler
from typing import Any

from sluice_tools.local.http_reply import send_reply
from sluice_tools.local.lambda_service import INVOKE_PREFIX
from sluice_tools.local.runtime_api import LOOPBACK, LoopbackHTTPServer

# A synchronous invoke may run for the function's whole timeout (Lambda allows 15 minutes).
FORWARD_TIMEOUT_S = 960
# Hop-by-hop headers (RFC 9110 section 7.6.1) and the ones the forwarded request sets itself.
_NOT_FORWARDED = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
                            "trailer", "upgrade", "host", "content-length"})


class SfnGatewayError(RuntimeError):
    """The gateway cannot start: a bad upstream URL or a port it cannot listen on."""


def _upstream(url: str, what: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SfnGatewayError(f"the {what} URL {url!r} must be http://host:port")
    return parts.hostname, parts.port or 80


class SfnGateway:
    def __init__(self, moto_url: str, lambda_url: str, *, host: str = LOOPBACK, port: int = 0) -> None:
        self.moto = _upstream(moto_url, "moto")
        self.lambda_ = _upstream(lambda_url, "Lambda service")
        self.host, self.port = host, port
        self._server: _GatewayServer | None = None
        self.forwarded = {"lambda": 0, "moto": 0}  # requests sent each way, for tests and the demo
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        if self._server is None:
            raise SfnGatewayError("the gateway is not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    @property
    def bound_port(self) -> int:
        """The port to give moto as MOTO_PORT."""
        if self._server is None:
            raise SfnGatewayError("the gateway is not started")
        return int(self._server.server_address[1])

    def start(self) -> SfnGateway:
        try:
            self._server = _GatewayServer((self.host, self.port), _GatewayHandler, self)
        except OSError as exc:
            raise SfnGatewayError(f"cannot listen on {self.host}:{self.port}: {exc}") from exc
        threading.Thread(target=self._server.serve_forever, name="sfn-gateway", daemon=True).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> SfnGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def route(self, path: str) -> tuple[str, tuple[str, int]]:
        if path.startswith(INVOKE_PREFIX):
            return "lambda", self.lambda_
        return "moto", self.moto

    def count(self, target: str) -> None:
        with self._lock:
            self.forwarded[target] += 1


class _GatewayServer(LoopbackHTTPServer):
    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 gateway: SfnGateway) -> None:
        self.gateway = gateway
        super().__init__(address, handler)


class _GatewayHandler(BaseHTTPRequestHandler):
    server: _GatewayServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _forward(self) -> None:
        gateway = self.server.gateway
        target, (host, port) = gateway.route(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _NOT_FORWARDED}
        headers["Host"] = f"{host}:{port}"
        connection = http.client.HTTPConnection(host, port, timeout=FORWARD_TIMEOUT_S)
        try:
            connection.request(self.command, self.path, body=body if body or self.command != "GET" else None,
                               headers=headers)
            response = connection.getresponse()
            reply = response.read()
            reply_headers = {k: v for k, v in response.getheaders() if k.lower() not in _NOT_FORWARDED}
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            # The caller (moto's interpreter) sees an AWS-shaped 502, and its task fails with it.
            status, reply = 502, f'{{"message": "sfn gateway: {target} unreachable: {exc}"}}'.encode()
            reply_headers = {"Content-Type": "application/json"}
        finally:
            connection.close()
        gateway.count(target)
        send_reply(self, status, reply, reply_headers)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward  # noqa: N815


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--moto", required=True, help="moto's URL, e.g. http://127.0.0.1:5000")
    parser.add_argument("--lambda", dest="lambda_url", required=True, help="the local Lambda service's URL")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        gateway = SfnGateway(args.moto, args.lambda_url, port=args.port).start()
    except SfnGatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(gateway.url, flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    gateway.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
