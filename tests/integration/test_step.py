"""The step Lambda's logic (sluice.step) on MariaDB and the stand-in vendor API: one task applied
to one item once per step, a duplicate returns the same output, errors carry the names a
state machine's Retry and Catch match."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from sluice.db import Database
from sluice.envelope import Envelope
from sluice.flowitem import FlowItem
from sluice.step import PERMANENT_ERROR, TRANSIENT_ERROR, PermanentStepError, TransientStepError, run_step
from sluice_tools.local.vendor_api import VendorApi, VendorSettings
from sluice_tools.local.vendor_client import VendorClient
from tests.helpers import vendor_token
from worker.tasks import accounting, invoices, notify

pytestmark = pytest.mark.integration



@pytest.fixture(scope="module")
def token(moto_aws: str) -> str:
    return vendor_token(moto_aws)


@pytest.fixture
def vendor(token: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[VendorClient]:
    api = VendorApi({"accounting": VendorSettings(token=token, rate_per_s=1000, burst=1000)})
    api.start()
    monkeypatch.setenv(notify.URL_OVERRIDE_ENV, api.url)
    yield VendorClient(api.url)
    api.stop()


def step_event(task: str | None = None, customer: str = "acme", amount: int = 250_000) -> dict[str, Any]:
    envelope = Envelope.new("invoice.record", f"S-{uuid.uuid4().hex[:10]}",
                            {"customer": customer, "amount_cents": amount, "currency": "EUR"})
    event: dict[str, Any] = FlowItem.of(envelope, group="g1", message_id="m-1").execution_input()
    if task:
        event["task"] = task
    return event


def test_a_step_applies_once_and_a_repeat_returns_the_same_output(db: Database) -> None:
    # GIVEN a step running the item's own task
    event = step_event("invoice.record")
    key = event["item"]["key"]
    # WHEN it runs twice (a retried or redriven execution)
    first = run_step(event, db=db)
    second = run_step(event, db=db)
    # THEN the invoice is recorded once, under the item's own ledger key, and both outputs are equal
    assert first == second == {"task": "invoice.record", "ledger_id": event["item"]["dedup_id"]}
    assert invoices.applications(db, key) == 1
    assert db.is_processed(event["item"]["dedup_id"])


def test_a_step_of_another_task_has_a_ledger_id_of_its_own(db: Database, vendor: VendorClient) -> None:
    # GIVEN an invoice recorded by its first step
    event = step_event()
    run_step(event, db=db)
    # WHEN the accounting step runs on the same item, twice
    first = run_step({**event, "task": "accounting.post"}, db=db)
    second = run_step({**event, "task": "accounting.post"}, db=db)
    # THEN it applied once with a ledger id derived from the item's and the step's, which is also
    # the vendor's idempotency key: one post recorded, one effect at the vendor
    assert first == second and first["ledger_id"] not in (event["item"]["dedup_id"], "")
    assert accounting.posted(db, key_prefix=event["item"]["key"]) == 1
    counters = vendor.counters("accounting")
    assert counters.effects_applied == 1 and counters.requests == 1


def test_a_business_refusal_is_the_permanent_error(db: Database) -> None:
    # GIVEN an invoice for a customer that does not exist
    event = step_event("invoice.record", customer="nobody")
    # WHEN the step runs / THEN it fails with the name a Catch matches and the reason as message
    with pytest.raises(PermanentStepError) as caught:
        run_step(event, db=db)
    assert type(caught.value).__name__ == PERMANENT_ERROR == "sluice.PermanentTaskError"
    assert str(caught.value) == "business: unknown customer 'nobody'"
    assert not db.is_processed(event["item"]["dedup_id"])


@pytest.mark.parametrize("event, fault", [
    ({"task": "invoice.record"}, "no 'item' object"),
    ({"item": {"task": "invoice.record"}}, "item field 'key'"),
    ({**step_event(), "task": "no.such"}, "unknown_task: unknown task 'no.such'"),
    ({**step_event(amount=-5)}, "payload: payload does not match invoice.record"),
])
def test_bad_step_events_are_permanent(db: Database, event: dict[str, Any], fault: str) -> None:
    with pytest.raises(PermanentStepError, match=fault):
        run_step(event, db=db)


def test_a_database_that_is_down_is_the_transient_error(database_url: str) -> None:
    # GIVEN the database unreachable (a closed port)
    down = Database(url="mysql://root@127.0.0.1:1/nothing", connect_timeout=1)
    # WHEN a step runs / THEN it fails with the name a Retry matches, and applied nothing
    with pytest.raises(TransientStepError) as caught:
        run_step(step_event(), db=down)
    assert type(caught.value).__name__ == TRANSIENT_ERROR
    assert "DbUnavailableError" in str(caught.value)


def test_a_vendor_outage_is_the_transient_error(db: Database, vendor: VendorClient, token: str) -> None:
    # GIVEN the accounting vendor answering 503
    vendor.put("accounting", VendorSettings(token=token, down=True))
    event = step_event()
    # WHEN the accounting step runs / THEN it is to be retried, and nothing was recorded
    with pytest.raises(TransientStepError, match="answered 503"):
        run_step({**event, "task": "accounting.post"}, db=db)
    assert accounting.posted(db, key_prefix=event["item"]["key"]) == 0
