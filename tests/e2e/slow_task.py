"""A test-only task, loaded by the functions of the e2e stack through SLUICE_EXTRA_TASK_MODULES.

``test.slow_invoice`` records an invoice like ``invoice.record`` but, on the first receive
only, sleeps ``first_sleep_s`` first: long enough to outlast the worker's timeout, so Lambda
kills it mid-transaction and the message must come back through the visibility timeout.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field

from sluice import PermanentTaskError, Transaction, WorkItem, task
from worker.tasks.invoices import InvoicePayload, customer_id, insert_invoice


class SlowInvoicePayload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    customer: str
    amount_cents: int = Field(gt=0)
    first_sleep_s: float = Field(ge=0, le=60)


@task("test.slow_invoice", SlowInvoicePayload)
def slow_invoice(tx: Transaction, payload: SlowInvoicePayload, item: WorkItem) -> None:
    customer = customer_id(tx, payload.customer)
    if customer is None:
        raise PermanentTaskError(f"unknown customer {payload.customer!r}")
    # Write first, then stall: a timeout here must roll the row back, not leave it half-done.
    insert_invoice(tx, item_key=item.key, customer=customer,
                   payload=InvoicePayload(customer=payload.customer, amount_cents=payload.amount_cents,
                                          currency="EUR", description="slow"))
    if item.receive_count == 1:
        time.sleep(payload.first_sleep_s)
