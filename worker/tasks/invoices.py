"""The example task: record an invoice for a known customer, exactly once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sluice.observability import logger
from sluice.tasks import PermanentTaskError, task

if TYPE_CHECKING:
    from sluice.db import Transaction
    from sluice.work import WorkItem

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


@task("invoice.record", InvoicePayload)
def record_invoice(tx: Transaction, payload: InvoicePayload, item: WorkItem) -> None:
    customer_id = tx.customer_id(payload.customer)
    if customer_id is None:
        # A business rule, not a glitch: retrying cannot make the customer exist.
        raise PermanentTaskError(f"unknown customer {payload.customer!r}")
    inserted = tx.insert_invoice(item_key=item.key, customer_id=customer_id,
                                 amount_cents=payload.amount_cents, currency=payload.currency,
                                 description=payload.description)
    if not inserted:
        # The ledger had no row but the invoice exists (e.g. the ledger was pruned): the UNIQUE key
        # kept it single, its apply_count records this second application (so the exactly-once
        # checks see it), and the ledger row written with this transaction records it from now on.
        logger.warning("invoice already recorded; not inserted again")
