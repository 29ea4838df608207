"""notify.send against the stand-in vendor API, moto's SQS and Secrets Manager, and MariaDB:
one effect per item at the vendor (idempotency keys), one delivery row per item (the ledger),
and the vendor's answers turned into sluice's errors."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from sluice.backoff import VisibilityBackoff as Backoff
from sluice.db import Database, TransientDbError
from sluice_tools.local.vendor_api import VendorApi, VendorSettings
from sluice_tools.local.vendor_client import VendorClient
from tests.conftest import FifoQueues, free_port
from tests.helpers import vendor_token
from tests.integration.test_work import dead_letters, outcomes, receive_event, run, send
from worker.tasks import notify

pytestmark = pytest.mark.integration

AT_ONCE = Backoff(base_s=0, cap_s=0)


@pytest.fixture(scope="module")
def vendor_secret(moto_aws: str) -> str:
    """The token in the secret config/local.yml names, as the local stack makes it."""
    return vendor_token(moto_aws)


@pytest.fixture
def vendors(vendor_secret: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[VendorClient]:
    api = VendorApi({"fast": VendorSettings(token=vendor_secret, rate_per_s=1000, burst=1000),
                     "tight": VendorSettings(token=vendor_secret, rate_per_s=0.01, burst=1)})
    api.start()
    monkeypatch.setenv(notify.URL_OVERRIDE_ENV, api.url)
    yield VendorClient(api.url)
    api.stop()


def message(vendor: str = "fast", to: str = "+4915112345678") -> dict[str, Any]:
    return {"vendor": vendor, "to": to, "text": "your parcel is on its way"}


def new_key() -> str:
    return f"N-{uuid.uuid4().hex[:10]}"


def test_an_item_is_delivered_once_with_its_dedup_id_as_the_key(fifo_queues: FifoQueues, db: Database,
                                                               vendors: VendorClient) -> None:
    # GIVEN one notification item
    key = new_key()
    envelope = send(fifo_queues, key, message(), task="notify.send")
    # WHEN a worker applies it
    result = run(receive_event(fifo_queues, 1), fifo_queues, db)
    # THEN the vendor applied one message, under the item's dedup id, and the delivery is recorded once
    assert outcomes(result) == ["done"]
    assert vendors.counters("fast").effects_applied == 1
    assert [m.key for m in vendors.messages("fast")] == [envelope.dedup_id]
    assert notify.applications(db, key) == 1


def test_a_call_repeated_after_a_lost_commit_is_one_effect_at_the_vendor(
        fifo_queues: FifoQueues, db: Database, vendors: VendorClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN an item whose first application reached the vendor, then lost its transaction (the
    # database went away before the commit: no ledger row, no delivery row)
    key = new_key()
    send(fifo_queues, key, message(), task="notify.send")
    original = notify.record_delivery
    calls = {"n": 0}

    def lose_the_first_commit(*args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise TransientDbError("OperationalError: (2013, 'Lost connection to server during query')", 2013)
        original(*args)

    monkeypatch.setattr(notify, "record_delivery", lose_the_first_commit)
    first = run(receive_event(fifo_queues, 1), fifo_queues, db, backoff=AT_ONCE)
    assert outcomes(first) == ["retry"] and notify.applications(db, key) == 0
    # WHEN the message comes back and is applied again (same item, same idempotency key)
    second = run(receive_event(fifo_queues, 1), fifo_queues, db)
    # THEN the vendor saw the key twice, applied it once, and the delivery is recorded once
    assert outcomes(second) == ["done"]
    counters = vendors.counters("fast")
    assert (counters.requests, counters.replays, counters.effects_applied) == (2, 1, 1)
    assert notify.applications(db, key) == 1
    assert db.scalar("SELECT replayed FROM notifications WHERE item_key = %s", (key,)) == 1


def test_a_vendor_429_is_retried_after_its_retry_after(fifo_queues: FifoQueues, db: Database,
                                                      vendors: VendorClient) -> None:
    # GIVEN the tight vendor's one token already spent
    send(fifo_queues, new_key(), message("tight"), task="notify.send", group="g1")
    send(fifo_queues, new_key(), message("tight"), task="notify.send", group="g2")
    # WHEN both are applied
    result = run(receive_event(fifo_queues, 2), fifo_queues, db, backoff=AT_ONCE)
    # THEN the second is a retry (not a dead letter), kept hidden for the vendor's Retry-After
    # although the worker's own backoff would show it at once
    assert sorted(outcomes(result)) == ["done", "retry"]
    assert vendors.counters("tight").throttled == 1
    assert not fifo_queues.sqs.receive_message(QueueUrl=fifo_queues.url, MaxNumberOfMessages=10).get("Messages")


def test_a_vendor_4xx_dead_letters_with_the_vendors_reason(fifo_queues: FifoQueues, db: Database,
                                                          vendors: VendorClient) -> None:
    # GIVEN an item the vendor refuses (not a phone number)
    key = new_key()
    send(fifo_queues, key, message(to="not-a-number"), task="notify.send")
    # WHEN applied / THEN dead-lettered at once with the vendor's own words, nothing recorded
    assert outcomes(run(receive_event(fifo_queues, 1), fifo_queues, db)) == ["dead_lettered"]
    reason = dead_letters(fifo_queues, 1)[0]["MessageAttributes"]["sluice_error"]["StringValue"]
    assert reason.startswith("vendor fast refused the message (422): ") and "E.164" in reason
    assert notify.applications(db, key) == 0


def test_an_unreachable_or_slow_vendor_is_transient(fifo_queues: FifoQueues, db: Database,
                                                    vendors: VendorClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a vendor URL nothing listens on
    monkeypatch.setenv(notify.URL_OVERRIDE_ENV, f"http://127.0.0.1:{free_port()}")
    send(fifo_queues, new_key(), message(), task="notify.send", group="g1")
    # THEN the item is retried, not dead-lettered
    assert outcomes(run(receive_event(fifo_queues, 1), fifo_queues, db, backoff=AT_ONCE)) == ["retry"]
    # AND GIVEN a vendor slower than the task's timeout
    monkeypatch.setenv(notify.URL_OVERRIDE_ENV, vendors.url)
    vendors.update("fast", latency_ms=2000)
    monkeypatch.setattr(notify, "_settings", lambda: {**notify.task_settings(notify.__name__), "timeout_s": 0.3})
    result = run(receive_event(fifo_queues, 1), fifo_queues, db, backoff=AT_ONCE)
    # THEN that is a retry too
    assert outcomes(result) == ["retry"]


def test_the_retry_after_header_reads_seconds_and_dates() -> None:
    assert notify.retry_after_s("3") == 3
    assert notify.retry_after_s("Thu, 01 Jan 1970 00:00:10 GMT", now=4.0) == 6
    assert notify.retry_after_s("soon") is None and notify.retry_after_s(None) is None
