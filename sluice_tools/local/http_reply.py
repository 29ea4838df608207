"""Writing one HTTP reply from a ``BaseHTTPRequestHandler``: the local servers all answer this way."""

from __future__ import annotations

import json
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any


def send_reply(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: Mapping[str, str]) -> None:
    """Status line, ``headers``, a Content-Length for ``body`` (keep-alive needs it), then ``body``.
    An OSError (the caller hung up) is the caller's to handle."""
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def json_reply(body: Any, headers: Mapping[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    """``body`` as JSON bytes, and ``headers`` with the JSON content type."""
    return json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
