"""A toy Lambda function behind the local HTTP API in tests: echoes the event it was given."""

from __future__ import annotations

import json
from typing import Any


def handler(event: dict[str, Any], context: Any) -> Any:
    path = event.get("rawPath", "")
    if path == "/boom":
        raise RuntimeError("toy failure")
    if path == "/plain":
        return {"plain": True}  # payload 2.0: a bare JSON value is a 200 with that body
    return {
        "statusCode": 201 if event.get("routeKey") == "POST /jobs" else 404,
        "headers": {"content-type": "application/json", "x-toy": "yes"},
        "body": json.dumps({"event": event, "remaining_ms": context.get_remaining_time_in_millis()}),
    }
