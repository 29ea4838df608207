"""The vendor-API example: send one message through a vendor's HTTP API, exactly once in effect.

``notify.send`` POSTs ``{"to", "text"}`` to ``<url>/vendors/<vendor>/messages`` with the
stage's bearer token and the item's ``dedup_id`` as the ``Idempotency-Key``, then records the
delivery in ``notifications`` inside the ledger transaction. A redelivered message (the
worker died after the call, before the commit) calls again with the same key, and a vendor
that honours idempotency keys answers with the first call's result instead of sending
twice; the ledger row keeps the database side single.

How the vendor's answers map onto sluice's errors:

* 2xx -> delivered (the vendor's message id is stored);
* 429 or 5xx -> ``TransientTaskError`` with the vendor's ``Retry-After`` (seconds or an HTTP
  date) as the delay, so the message stays hidden as long as the vendor asked;
* any other 4xx -> ``PermanentTaskError`` with the vendor's reason (-> DLQ);
* a timeout or a refused connection -> ``TransientTaskError`` (the worker's backoff).

Settings (``tasks: - module: worker.tasks.notify, settings: {...}`` in config/<stage>.yml):
``url`` (the vendor API's base URL; ``urls: {vendor: url}`` for vendors with a base URL of their
own; ``SLUICE_VENDOR_URL_<VENDOR>`` and then ``SLUICE_VENDOR_URL`` override them, as the local
stack sets them), ``secret`` (a Secrets Manager secret holding ``{"token": "..."}``; the worker may
read secrets under ``<service>/<stage>/tasks/``; ``SLUICE_VENDOR_SECRET_ID`` overrides it),
``timeout_s`` (per call, default 5).
"""

from __future__ import annotations

import email.utils
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from sluice import PermanentTaskError, Transaction, TransientTaskError, WorkItem, task, task_settings
from sluice.db import starts_with
from sluice.observability import logger

URL_OVERRIDE_ENV = "SLUICE_VENDOR_URL"
SECRET_OVERRIDE_ENV = "SLUICE_VENDOR_SECRET_ID"  # the local stack's own secret, whatever the stage
MAX_REASON_CHARS = 300


class NotifyPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    vendor: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    to: str = Field(min_length=1, max_length=64)
    text: str = Field(min_length=1, max_length=1600)


class NotifySettingsError(RuntimeError):
    """The module's settings are missing or unusable (not any item's fault: items retry)."""


@dataclass(frozen=True)
class VendorConfig:
    url: str
    token: str
    timeout_s: float


@cache
def _settings() -> dict[str, Any]:
    return task_settings(__name__)


def vendor_url(vendor: str, settings: dict[str, Any]) -> str:
    """The base URL of ``vendor``'s API: its own override, the shared one, its own setting, the default."""
    urls = settings.get("urls")
    own: dict[str, Any] = urls if isinstance(urls, dict) else {}
    return (os.environ.get(f"{URL_OVERRIDE_ENV}_{vendor.upper().replace('-', '_')}")
            or os.environ.get(URL_OVERRIDE_ENV) or str(own.get(vendor) or settings.get("url") or ""))


def vendor_config(vendor: str = "", settings: dict[str, Any] | None = None, module: str = __name__) -> VendorConfig:
    """``vendor``'s URL and token, read once per container (the secret through Powertools'
    cache, so a rotated token is picked up within its max age). ``settings`` and ``module``:
    another task module's own (default: this one's), for a task calling a vendor the same way."""
    settings = _settings() if settings is None else settings
    url = vendor_url(vendor, settings)
    if not url:
        raise NotifySettingsError(f"no vendor URL: set settings.url of {module} in config (or {URL_OVERRIDE_ENV})")
    token = str(settings.get("token") or "")
    secret = os.environ.get(SECRET_OVERRIDE_ENV) or str(settings.get("secret") or "")
    if secret:
        from aws_lambda_powertools.utilities import parameters

        try:
            value = parameters.get_secret(secret, transform="json", max_age=300)
        except parameters.exceptions.GetParameterError as exc:
            raise TransientTaskError(f"cannot read the vendor secret {secret!r}: {exc}") from None
        except parameters.exceptions.TransformParameterError:
            raise NotifySettingsError(f"the vendor secret {secret!r} is not JSON") from None
        token = str(value.get("token") or "") if isinstance(value, dict) else ""
        if not token:
            raise NotifySettingsError(f"the vendor secret {secret!r} has no 'token'")
    return VendorConfig(url=url.rstrip("/"), token=token, timeout_s=float(settings.get("timeout_s") or 5))


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header as seconds from now: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _reason(body: bytes) -> str:
    """The vendor's own words: its JSON error message when there is one, else the raw text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:MAX_REASON_CHARS]
    if isinstance(parsed, dict):
        for key in ("error", "message", "detail", "reason"):
            value = parsed.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value.get("code")
            if value:
                return str(value)[:MAX_REASON_CHARS]
    return text[:MAX_REASON_CHARS]


@dataclass(frozen=True)
class Delivery:
    message_id: str
    replayed: bool


def send_message(config: VendorConfig, payload: NotifyPayload, idempotency_key: str) -> Delivery:
    """One POST to the vendor; its answer classified into a Delivery or a task error."""
    request = urllib.request.Request(
        f"{config.url}/vendors/{quote(payload.vendor, safe='')}/messages",
        data=json.dumps({"to": payload.to, "text": payload.text}).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {config.token}",
                 "Idempotency-Key": idempotency_key},
    )
    try:
        with urllib.request.urlopen(request, timeout=config.timeout_s) as response:  # noqa: S310 (URL from config)
            body = response.read()
            replayed = (response.headers.get("Idempotent-Replayed") or "").lower() == "true"
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
        reason = _reason(body) or exc.reason
        if status == 429 or status >= 500:
            raise TransientTaskError(f"vendor {payload.vendor} answered {status}: {reason}",
                                     retry_after_s=retry_after_s(exc.headers.get("Retry-After"))) from None
        raise PermanentTaskError(f"vendor {payload.vendor} refused the message ({status}): {reason}") from None
    except TimeoutError as exc:
        raise TransientTaskError(f"vendor {payload.vendor} did not answer within {config.timeout_s:g} s: {exc}") \
            from None
    except (urllib.error.URLError, OSError) as exc:
        raise TransientTaskError(f"vendor {payload.vendor} unreachable: {getattr(exc, 'reason', exc)}") from None
    try:
        message_id = str(json.loads(body).get("id") or "")
    except (ValueError, AttributeError):
        message_id = ""
    return Delivery(message_id=message_id, replayed=replayed)


def record_delivery(tx: Transaction, item: WorkItem, payload: NotifyPayload, delivery: Delivery) -> None:
    tx.execute(
        "INSERT INTO notifications (item_key, vendor, recipient, vendor_message_id, replayed, delivered_at) "
        "VALUES (%s, %s, %s, %s, %s, UTC_TIMESTAMP(3)) ON DUPLICATE KEY UPDATE apply_count = apply_count + 1",
        (item.key, payload.vendor, payload.to, delivery.message_id[:128], delivery.replayed),
    )


@task("notify.send", NotifyPayload)
def send_notification(tx: Transaction, payload: NotifyPayload, item: WorkItem) -> None:
    try:
        config = vendor_config(payload.vendor)
    except NotifySettingsError as exc:
        # A deploy can fix it; until then the items wait (and dead-letter with this reason).
        raise TransientTaskError(str(exc)) from None
    delivery = send_message(config, payload, item.dedup_id)
    if delivery.replayed:
        logger.info("the vendor had this message already (idempotency key replayed)")
    record_delivery(tx, item, payload, delivery)


# -- this module's queries: the demo's summary and the tests read the deliveries through them ----
class Reader(Protocol):
    """What the queries need: ``sluice.db.Database`` (reads outside a work transaction)."""

    def scalar(self, sql: str, args: Any = ...) -> Any: ...

    def read(self, sql: str, args: Any = ...) -> list[tuple[Any, ...]]: ...


def delivered(db: Reader, *, key_prefix: str = "", vendor: str | None = None) -> int:
    """Deliveries recorded for items whose key starts with ``key_prefix`` (of one vendor, if given)."""
    if vendor is None:
        return int(db.scalar("SELECT COUNT(*) FROM notifications WHERE item_key LIKE %s", (starts_with(key_prefix),)))
    return int(db.scalar("SELECT COUNT(*) FROM notifications WHERE item_key LIKE %s AND vendor = %s",
                         (starts_with(key_prefix), vendor)))


def duplicates(db: Reader, key_prefix: str = "") -> int:
    """Items (keys starting with ``key_prefix``) whose delivery was recorded more than once."""
    return int(db.scalar("SELECT COUNT(*) FROM notifications WHERE item_key LIKE %s AND apply_count > 1",
                         (starts_with(key_prefix),)))


def applications(db: Reader, item_key: str) -> int:
    """How many times the delivery of ``item_key`` was recorded (0 never, above 1 past the ledger)."""
    return int(db.scalar("SELECT COALESCE(SUM(apply_count), 0) FROM notifications WHERE item_key = %s",
                         (item_key,)))


def keys(db: Reader, key_prefix: str) -> list[str]:
    """Keys of the items whose delivery is recorded, in the order they were committed."""
    rows = db.read("SELECT item_key FROM notifications WHERE item_key LIKE %s ORDER BY id", (starts_with(key_prefix),))
    return [str(r[0]) for r in rows]
