"""lambda_handler for the enqueuer: parse the event, call sluice.enqueue, shape the response.

Two callers, one body: an HTTP API payload-v2.0 event for ``POST /jobs`` gets an HTTP
response ``{statusCode, headers, body}``; a direct invoke whose event IS the body
(``{"items": [...]}``) gets the response as a dict (``{"statusCode": 202, "accepted": ...}``).
Bad input is a 4xx with its reason; an AWS failure is a 503; never a traceback.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2
from aws_lambda_powertools.utilities.typing import LambdaContext

from sluice.aws import AwsError, Queue
from sluice.enqueue import Enqueuer, EnqueueRequestError
from sluice.observability import count, logger, metrics
from sluice.runtime import RuntimeConfig, SettingsError

ROUTE_PATH = "/jobs"
_enqueuer: Enqueuer | None = None


def get_enqueuer() -> Enqueuer:
    """Built once per container, on first use (a bad environment fails the request, not the import)."""
    global _enqueuer
    if _enqueuer is None:
        config = RuntimeConfig.from_env()
        _enqueuer = Enqueuer.from_config(config, Queue(config.queue_url))
    return _enqueuer


def reset() -> None:
    """Forget the cached dependencies (tests change the environment between cases)."""
    global _enqueuer
    _enqueuer = None


def _is_http_event(event: Any) -> bool:
    return isinstance(event, dict) and isinstance(event.get("requestContext"), dict) and \
        "http" in event["requestContext"]


def enqueue(body: bytes | str | dict[str, Any], trace_id: str | None) -> tuple[int, dict[str, Any]]:
    """The one call into sluice, mapped to (status, body)."""
    try:
        enqueuer = get_enqueuer()
    except (SettingsError, AwsError) as exc:
        logger.error("enqueuer is misconfigured", extra={"error": str(exc)})
        return 503, {"error": f"the enqueuer is not configured: {exc}"}
    try:
        result = enqueuer.enqueue(body, trace_id=trace_id)
    except EnqueueRequestError as exc:
        count("enqueue_rejected")
        logger.info("enqueue request rejected", extra={"status": exc.status, "reason": exc.message,
                                                        "bad_items": len(exc.errors)})
        return exc.status, exc.body
    except AwsError as exc:
        logger.error("enqueue failed on SQS", extra={"error": str(exc)})
        return 503, {"error": f"the queue is unavailable: {exc}"}
    count("enqueued", len(result.sent))
    if result.failed:
        count("enqueue_failed", len(result.failed))
        logger.warning("some items were not enqueued", extra={"failed": len(result.failed)})
    return result.status_code, result.body


def _http_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json", **(headers or {})},
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


def handle_http(event: APIGatewayProxyEventV2) -> dict[str, Any]:
    path = event.raw_path or event.path or ""
    # A named stage prefixes the path (/dev/jobs); the $default stage does not.
    stage = event.request_context.stage
    if stage and stage != "$default" and path.startswith(f"/{stage}/"):
        path = path[len(stage) + 1:]
    if path.rstrip("/") != ROUTE_PATH:
        return _http_response(404, {"error": f"no route {path!r}; POST {ROUTE_PATH} enqueues work items"})
    method = event.request_context.http.method.upper()
    if method != "POST":
        return _http_response(405, {"error": f"method {method} is not allowed on {ROUTE_PATH}; use POST"},
                              {"Allow": "POST"})
    raw: bytes | str = event.body or ""
    if event.is_base64_encoded and raw:
        try:
            raw = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            return _http_response(400, {"error": "request body is flagged base64 but does not decode"})
    status, body = enqueue(raw, trace_id=event.request_context.request_id or None)
    return _http_response(status, body)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    count("enqueue_requests")
    if _is_http_event(event):
        return handle_http(APIGatewayProxyEventV2(event))
    if isinstance(event, dict) and "items" in event:
        status, body = enqueue(event, trace_id=getattr(context, "aws_request_id", None))
        return {"statusCode": status, **body}
    return {"statusCode": 400, "error": 'expected an HTTP API event or a direct invoke with {"items": [...]}',
            "errors": []}
