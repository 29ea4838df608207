"""Toy Lambda handlers for the local Lambda service tests (run by awslambdaric in a child process)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def echo(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Return the event with what the runtime told the handler about itself."""
    print(f"echo handling {event}")  # lands in the function's log file
    return {
        "event": event,
        "pid": os.getpid(),
        "function_name": context.function_name,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "invoked_function_arn": context.invoked_function_arn,
        "aws_request_id": context.aws_request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "env": {k: os.environ.get(k) for k in ("AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_TIMEOUT",
                                               "AWS_REGION", "_HANDLER", "TOY_SETTING")},
    }


class ToyBusinessError(Exception):
    """Raised on purpose to show the function error shape."""


def fail(event: dict[str, Any], context: Any) -> None:
    raise ToyBusinessError(f"cannot process {event.get('item')}")


def sleep(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Sleep for event['seconds'], then answer with this process's pid."""
    time.sleep(float(event.get("seconds", 0)))
    return {"pid": os.getpid(), "slept": event.get("seconds", 0)}


def write_file(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Side effect for Event invokes: write event['text'] to event['path'] (atomically)."""
    target = Path(event["path"])
    tmp = target.with_suffix(".tmp")
    tmp.write_text(event["text"])
    tmp.replace(target)
    return {"written": str(target)}
