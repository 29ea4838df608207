"""A pass-through HTTP proxy in front of an SQS endpoint that counts calls by API action.

The consumer and the workers run in processes of their own (the local Lambda service), so
a botocore hook in the bench process cannot see their SQS calls; every one of them crosses
this proxy instead. It speaks only what boto3's SQS JSON protocol needs: a POST with the
action in ``X-Amz-Target`` (``AmazonSQS.ReceiveMessage``), answered with a body of known length.
"""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}
# send_response() writes these itself.
_OWN_HEADERS = _HOP_BY_HOP | {"content-length", "date", "server"}


class CountingProxy:
    def __init__(self, upstream_url: str) -> None:
        target = urlparse(upstream_url)
        self.upstream_host = target.hostname or "127.0.0.1"
        self.upstream_port = target.port or 80
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="sqs-counting-proxy",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> str:
        self._thread.start()
        return self.url

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)

    def _count(self, action: str) -> None:
        with self._lock:
            self.counts[action] += 1

    def _upstream(self) -> http.client.HTTPConnection:
        # One upstream connection per serving thread: keep-alive without sharing a socket.
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
            self._local.conn = conn
        return conn

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle on, the client's delayed ACK
            # would add ~40 ms to every call.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return  # one line per SQS call would drown the bench output

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                action = (self.headers.get("X-Amz-Target") or "").rpartition(".")[2] or "(query protocol)"
                proxy._count(action)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                for attempt in range(2):
                    conn = proxy._upstream()
                    try:
                        conn.request(self.command, self.path, body=body, headers=headers)
                        reply = conn.getresponse()
                        data = reply.read()
                        break
                    except (ConnectionError, http.client.HTTPException):
                        # A kept-alive upstream socket the server closed: reconnect once.
                        conn.close()
                        proxy._local.conn = None
                        if attempt:
                            self.send_error(502, "SQS upstream unreachable")
                            return
                self.send_response(reply.status)
                for key, value in reply.getheaders():
                    if key.lower() not in _OWN_HEADERS:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = _forward  # noqa: N815
            do_GET = _forward  # noqa: N815

        return Handler
