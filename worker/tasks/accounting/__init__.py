"""The seed's accounting step: post a large invoice to the accounting API, exactly once in effect.

``accounting.post`` runs as a step of the invoice flow (worker/flows/invoice.asl.json) on the
invoice item's own payload. It sends the invoice to the accounting vendor the way
``notify.send`` sends a message (same client, same error mapping: 429/5xx and timeouts are
transient, other 4xx permanent), with the step's ledger id as the ``Idempotency-Key``, and
records the post in ``accounting_posts`` inside the step's ledger transaction.

Settings (``tasks: - module: worker.tasks.accounting, settings: {...}``): ``url``,
``secret`` and ``timeout_s`` as notify's (``SLUICE_VENDOR_URL`` overrides the URL, as the local
stack sets it), ``vendor`` (the vendor's name on that API, default ``accounting``) and
``ledger`` (the account number posts go to, E.164-shaped as the stand-in's messages API wants).
"""

from __future__ import annotations

from typing import Any, Protocol

from sluice import Transaction, TransientTaskError, WorkItem, task, task_settings
from sluice.db import starts_with
from worker.tasks.invoices import InvoicePayload
from worker.tasks.notify import NotifyPayload, NotifySettingsError, send_message, vendor_config

DEFAULT_VENDOR = "accounting"
DEFAULT_LEDGER = "+10000000001"


@task("accounting.post", InvoicePayload)
def post_invoice(tx: Transaction, payload: InvoicePayload, item: WorkItem) -> None:
    settings = task_settings(__name__)
    vendor = str(settings.get("vendor") or DEFAULT_VENDOR)
    try:
        config = vendor_config(vendor, settings, __name__)
    except NotifySettingsError as exc:
        raise TransientTaskError(str(exc)) from None  # a deploy can fix it; until then the step retries
    entry = NotifyPayload(vendor=vendor,
                          to=str(settings.get("ledger") or DEFAULT_LEDGER),
                          text=f"invoice {item.key}: {payload.amount_cents} {payload.currency} ({payload.customer})")
    delivery = send_message(config, entry, item.dedup_id)
    tx.execute(
        "INSERT INTO accounting_posts (item_key, amount_cents, currency, vendor_message_id, replayed, posted_at) "
        "VALUES (%s, %s, %s, %s, %s, UTC_TIMESTAMP(3)) ON DUPLICATE KEY UPDATE apply_count = apply_count + 1",
        (item.key, payload.amount_cents, payload.currency, delivery.message_id[:128], delivery.replayed),
    )


class Reader(Protocol):
    def scalar(self, sql: str, args: Any = ...) -> Any: ...


def posted(db: Reader, *, key_prefix: str = "") -> int:
    """Posts recorded for invoices whose key starts with ``key_prefix``."""
    return int(db.scalar("SELECT COUNT(*) FROM accounting_posts WHERE item_key LIKE %s", (starts_with(key_prefix),)))


def duplicates(db: Reader, key_prefix: str = "") -> int:
    """Invoices (keys starting with ``key_prefix``) posted more than once."""
    return int(db.scalar("SELECT COUNT(*) FROM accounting_posts WHERE item_key LIKE %s AND apply_count > 1",
                         (starts_with(key_prefix),)))
