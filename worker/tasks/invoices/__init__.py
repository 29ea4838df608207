"""The invoice example: record an invoice for a known customer, exactly once.

Its tables (``customers``, ``invoices``) are this module's own: created by the migrations in
``migrations/`` beside it, written by the task below, read by the queries at the end (which
the demo's summary and the tests use). Nothing in ``sluice/`` knows them.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sluice import PermanentTaskError, Transaction, WorkItem, task
from sluice.db import starts_with
from sluice.observability import logger

# ISO 4217 codes this deployment invoices in; anything else is refused at enqueue time.
KNOWN_CURRENCIES: frozenset[str] = frozenset(
    {"EUR", "USD", "GBP", "CHF", "JPY", "SEK", "NOK", "DKK", "PLN", "CZK", "CAD", "AUD"}
)


class InvoicePayload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    customer: str = Field(min_length=1, max_length=64)
    amount_cents: int = Field(gt=0, lt=10**12)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    description: str | None = Field(default=None, max_length=500)

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        if value not in KNOWN_CURRENCIES:
            raise ValueError(f"currency {value!r} is not one of {', '.join(sorted(KNOWN_CURRENCIES))}")
        return value


def customer_id(tx: Transaction, code: str) -> int | None:
    found = tx.scalar("SELECT id FROM customers WHERE code = %s", (code,))
    return int(found) if found is not None else None


def insert_invoice(tx: Transaction, *, item_key: str, customer: int, payload: InvoicePayload) -> bool:
    """Record one invoice; False when an invoice with that key exists (it is not inserted again).

    The UNIQUE key keeps the row single, so a second application would leave no trace in a
    row count: instead it bumps the row's ``apply_count``, which the exactly-once checks read.
    The server reports 1 affected row for an insert and 2 for the update of an existing row.
    """
    affected = tx.execute(
        "INSERT INTO invoices (item_key, customer_id, amount_cents, currency, description, created_at) "
        "VALUES (%s, %s, %s, %s, %s, UTC_TIMESTAMP(3)) ON DUPLICATE KEY UPDATE apply_count = apply_count + 1",
        (item_key, customer, payload.amount_cents, payload.currency, payload.description),
    )
    return affected == 1


@task("invoice.record", InvoicePayload)
def record_invoice(tx: Transaction, payload: InvoicePayload, item: WorkItem) -> None:
    customer = customer_id(tx, payload.customer)
    if customer is None:
        # A business rule, not a glitch: retrying cannot make the customer exist.
        raise PermanentTaskError(f"unknown customer {payload.customer!r}")
    if not insert_invoice(tx, item_key=item.key, customer=customer, payload=payload):
        # The ledger had no row but the invoice exists (e.g. the ledger was pruned): the UNIQUE key
        # kept it single, its apply_count records this second application (so the exactly-once
        # checks see it), and the ledger row written with this transaction records it from now on.
        logger.warning("invoice already recorded; not inserted again")


# -- this module's queries: the demo's summary and the tests read the invoices through them ------
class Reader(Protocol):
    """What the queries need: ``sluice.db.Database`` (reads outside a work transaction)."""

    def scalar(self, sql: str, args: Any = ...) -> Any: ...

    def read(self, sql: str, args: Any = ...) -> list[tuple[Any, ...]]: ...


def count(db: Reader, *, key_prefix: str = "") -> int:
    """Invoice rows whose key starts with ``key_prefix`` (all by default)."""
    return int(db.scalar("SELECT COUNT(*) FROM invoices WHERE item_key LIKE %s", (starts_with(key_prefix),)))


def applications(db: Reader, item_key: str) -> int:
    """How many times the invoice of ``item_key`` was applied: 0 when it never was; above 1 when
    an application got past the ledger (its ``apply_count``; one row either way)."""
    return int(db.scalar("SELECT COALESCE(SUM(apply_count), 0) FROM invoices WHERE item_key = %s",
                         (item_key,)))


def keys(db: Reader, key_prefix: str) -> list[str]:
    """Keys of the invoices whose key starts with ``key_prefix``, in the order they were committed."""
    rows = db.read("SELECT item_key FROM invoices WHERE item_key LIKE %s ORDER BY id", (starts_with(key_prefix),))
    return [str(r[0]) for r in rows]


def duplicates(db: Reader, key_prefix: str = "") -> int:
    """Keys (starting with ``key_prefix``) applied more than once: an ``apply_count`` above 1, or
    more than one row (which the UNIQUE key should make impossible; counted all the same)."""
    return int(db.scalar(
        "SELECT COUNT(*) FROM (SELECT item_key FROM invoices WHERE item_key LIKE %s GROUP BY item_key "
        "HAVING COUNT(*) > 1 OR MAX(apply_count) > 1) d", (starts_with(key_prefix),)
    ))

