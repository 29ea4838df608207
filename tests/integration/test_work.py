"""The worker against a real moto SQS server and the real MariaDB.

Messages are really sent and really received, then handed to the worker in the SQS Lambda
event shape, so every delete, visibility change and dead letter is a real SQS call.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from sluice.aws import OutgoingMessage, Queue
from sluice.backoff import VisibilityBackoff
from sluice.db import Database, DbUnavailableError, claim
from sluice.envelope import Envelope
from sluice.tasks import WorkItem, get_task
from sluice.work import work
from tests.conftest import FifoQueues, free_port
from tests.helpers import depth, sql
from worker.tasks import invoices

pytestmark = pytest.mark.integration

MAX_RECEIVES = 3
LONG_BACKOFF = VisibilityBackoff(base_s=120, cap_s=600)  # long enough that a pushed-out message stays hidden in a test


@pytest.fixture
def unreachable_db() -> Database:
    # A port nothing listens on: connects are refused at once, like a database that is down.
    return Database(url=f"mysql://root@127.0.0.1:{free_port()}/nowhere", connect_timeout=1)


def invoice(customer: str = "acme", amount_cents: int = 1250, currency: str = "EUR") -> dict[str, Any]:
    return {"customer": customer, "amount_cents": amount_cents, "currency": currency}


def send(queues: FifoQueues, key: str, payload: Any, group: str = "acme",
         task: str = "invoice.record") -> Envelope:
    envelope = Envelope.new(task, key, payload)
    Queue(queues.url).send(OutgoingMessage(id="0", body=envelope.to_body(), group_id=group,
                                           dedup_id=envelope.dedup_id))
    return envelope


def send_raw(queues: FifoQueues, body: str, group: str = "raw") -> None:
    Queue(queues.url).send(OutgoingMessage(id="0", body=body, group_id=group, dedup_id=uuid.uuid4().hex))


def receive_event(queues: FifoQueues, expected: int, url: str | None = None) -> dict[str, Any]:
    """Really receive ``expected`` messages (polling with a deadline) as an SQS Lambda event."""
    queue = Queue(url or queues.url)
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while len(records) < expected and time.monotonic() < deadline:
        records += [m.to_sqs_record(queues.arn) for m in queue.receive(max_messages=10, wait_s=0)]
    assert len(records) == expected, f"received {len(records)} of {expected} messages"
    return {"Records": records, "queueUrl": queue.url}


def run(event: dict[str, Any], queues: FifoQueues, db: Database, *, max_receive_count: int = MAX_RECEIVES,
        backoff: VisibilityBackoff = LONG_BACKOFF, remaining_ms: float = 60_000) -> dict[str, Any]:
    return work(event, db=db, queue=Queue(queues.url), dlq=Queue(queues.dlq_url),
                max_receive_count=max_receive_count, remaining_ms=lambda: remaining_ms, backoff=backoff)


def release_all(queues: FifoQueues, event: dict[str, Any]) -> None:
    """Stand-in for the visibility timeout running out: make the messages visible again now."""
    Queue(queues.url).release(r["receiptHandle"] for r in event["Records"])


def dead_letters(queues: FifoQueues, expected: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while len(messages) < expected and time.monotonic() < deadline:
        messages += queues.sqs.receive_message(
            QueueUrl=queues.dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
        ).get("Messages", [])
    assert len(messages) == expected, f"{len(messages)} dead letters, expected {expected}"
    return messages


def outcomes(result: dict[str, Any]) -> list[str]:
    return [r["outcome"] for r in result["results"]]


def test_a_message_delivered_twice_is_applied_once(fifo_queues: FifoQueues, db: Database) -> None:
    # GIVEN one invoice message, received by a first worker and - after its visibility ran out -
    # received again by a second worker (two copies in flight, as SQS allows)
    key = f"INV-{uuid.uuid4().hex[:8]}"
    send(fifo_queues, key, invoice())
    first = receive_event(fifo_queues, 1)
    release_all(fifo_queues, first)
    second = receive_event(fifo_queues, 1)

    # WHEN both workers run
    first_result = run(first, fifo_queues, db)
    second_result = run(second, fifo_queues, db)

    # THEN the invoice exists once, the second copy is recognised as a duplicate, the queue is empty
    assert outcomes(first_result) == ["done"]
    assert outcomes(second_result) == ["duplicate"]
    assert first_result["batchItemFailures"] == [] and second_result["batchItemFailures"] == []
    assert invoices.applications(db, key) == 1
    assert db.is_processed(Envelope.new("invoice.record", key, {}).dedup_id)
    assert depth(fifo_queues.sqs, fifo_queues.url) == (0, 0)


def test_a_crash_between_commit_and_delete_is_recognised_on_redelivery(fifo_queues: FifoQueues,
                                                                       db: Database) -> None:
    # GIVEN a message whose transaction committed but whose delete never happened (the worker died)
    key = f"INV-{uuid.uuid4().hex[:8]}"
    envelope = send(fifo_queues, key, invoice(customer="globex"))
    event = receive_event(fifo_queues, 1)
    record = event["Records"][0]
    task = get_task("invoice.record")
    item = WorkItem(task=envelope.task, key=key, dedup_id=envelope.dedup_id, message_id=record["messageId"],
                    group_id="acme", receive_count=1, enqueued_at=envelope.enqueued_at, trace_id="t")
    with db.transaction() as tx:
        assert claim(tx, dedup_id=item.dedup_id, task=item.task, item_key=key, message_id=item.message_id,
                        group_id=item.group_id)
        task.function(tx, task.parse(envelope.payload), item)
    release_all(fifo_queues, event)

    # WHEN the message is delivered again
    result = run(receive_event(fifo_queues, 1), fifo_queues, db)

    # THEN it is only deleted: still one invoice, nothing left in the queue
    assert outcomes(result) == ["duplicate"]
    assert invoices.applications(db, key) == 1
    assert depth(fifo_queues.sqs, fifo_queues.url) == (0, 0)


def test_a_second_application_past_a_lost_ledger_row_is_counted(fifo_queues: FifoQueues, db: Database,
                                                                  database_url: str) -> None:
    # GIVEN an invoice message received twice (two copies in flight), the first copy applied once
    key = f"INV-{uuid.uuid4().hex[:8]}"
    envelope = send(fifo_queues, key, invoice())
    first = receive_event(fifo_queues, 1)
    release_all(fifo_queues, first)
    second = receive_event(fifo_queues, 1)
    assert outcomes(run(first, fifo_queues, db)) == ["done"]
    assert sql(database_url, "SELECT apply_count FROM invoices WHERE item_key = %s", key) == [(1,)]
    assert invoices.duplicates(db, key) == 0

    # WHEN its ledger row is deleted (the ledger bypassed or broken) and the second copy is worked
    sql(database_url, "DELETE FROM processed_messages WHERE dedup_id = %s", envelope.dedup_id)
    result = run(second, fifo_queues, db)

    # THEN the worker cannot tell: the outcome is done again and the UNIQUE key keeps one row...
    assert outcomes(result) == ["done"]
    assert invoices.count(db, key_prefix=key) == 1
    # ...but the row records the second application, and the exactly-once checks fail on it
    assert sql(database_url, "SELECT apply_count FROM invoices WHERE item_key = %s", key) == [(2,)]
    assert invoices.applications(db, key) == 2
    assert invoices.duplicates(db, key) == 1
    assert db.is_processed(envelope.dedup_id)
    assert depth(fifo_queues.sqs, fifo_queues.url) == (0, 0)


@pytest.mark.parametrize(
    ("body_of", "error_type", "reason_part"),
    [
        (lambda key: Envelope.new("invoice.record", key, invoice(customer="nobody")).to_body(),
         "business", "unknown customer 'nobody'"),
        (lambda key: Envelope.new("invoice.record", key, invoice(amount_cents=-5)).to_body(),
         "payload", "amount_cents"),
        (lambda key: Envelope.new("invoice.record", key, invoice(currency="XYZ")).to_body(),
         "payload", "currency"),
        (lambda key: Envelope.new("no.such.task", key, {}).to_body(), "unknown_task", "no.such.task"),
        (lambda key: "this is {not json", "envelope", "not JSON"),
        (lambda key: '{"v": 99, "task": "invoice.record"}', "envelope", "version"),
    ],
    ids=["unknown-customer", "negative-amount", "unknown-currency", "unknown-task", "malformed",
         "wrong-version"],
)
def test_a_poison_message_goes_to_the_dlq_with_its_reason(fifo_queues: FifoQueues, db: Database, body_of: Any,
                                                         error_type: str, reason_part: str) -> None:
    # GIVEN a message retrying can never fix, followed by a good one in the same group
    key = f"INV-{uuid.uuid4().hex[:8]}"
    body = body_of(key)
    send_raw(fifo_queues, body, group="acme")
    good_key = f"{key}-good"
    send(fifo_queues, good_key, invoice(), group="acme")
    event = receive_event(fifo_queues, 2)

    # WHEN the worker runs
    result = run(event, fifo_queues, db)

    # THEN the poison message is in the DLQ with its original body, group and reason, gone from the
    # source, nothing of it was written, and the next item of its group was applied
    assert outcomes(result) == ["dead_lettered", "done"]
    assert result["batchItemFailures"] == []
    [letter] = dead_letters(fifo_queues, 1)
    assert letter["Body"] == body
    assert letter["Attributes"]["MessageGroupId"] == "acme"
    attributes = {k: v["StringValue"] for k, v in letter["MessageAttributes"].items()}
    assert attributes["sluice_error_type"] == error_type
    assert reason_part in attributes["sluice_error"]
    assert attributes["sluice_source_message_id"] == event["Records"][0]["messageId"]
    assert attributes["sluice_receive_count"] == "1"
    assert depth(fifo_queues.sqs, fifo_queues.url) == (0, 0)
    assert invoices.applications(db, key) == 0
    assert invoices.applications(db, good_key) == 1


def test_a_database_outage_retries_later_then_succeeds(fifo_queues: FifoQueues, db: Database,
                                                       unreachable_db: Database) -> None:
    # GIVEN a message and a database that refuses connections
    key = f"INV-{uuid.uuid4().hex[:8]}"
    send(fifo_queues, key, invoice(customer="initech"))
    event = receive_event(fifo_queues, 1)

    # WHEN the worker runs against the unreachable database
    result = run(event, fifo_queues, unreachable_db)

    # THEN the message is reported for retry, not deleted, and hidden for the backoff period
    assert outcomes(result) == ["retry"]
    assert result["batchItemFailures"] == [{"itemIdentifier": event["Records"][0]["messageId"]}]
    assert depth(fifo_queues.sqs, fifo_queues.url) == (0, 1)
    assert Queue(fifo_queues.url).receive(wait_s=0) == []

    # WHEN the backoff has passed and a worker with a working database gets it again
    release_all(fifo_queues, event)
    retried = receive_event(fifo_queues, 1)
    assert retried["Records"][0]["attributes"]["ApproximateReceiveCount"] == "2"
    result = run(retried, fifo_queues, db)

    # THEN it is applied once and deleted
    assert outcomes(result) == ["done"]
    assert invoices.applications(db, key) == 1
    assert depth(fifo_queues.sqs, fifo_queues.url) == (0, 0)


def test_a_transient_failure_on_the_last_allowed_receive_dead_letters_with_the_reason(
        fifo_queues: FifoQueues, unreachable_db: Database) -> None:
    # GIVEN a message on its last allowed receive and a database that stays down
    send(fifo_queues, f"INV-{uuid.uuid4().hex[:8]}", invoice())
    event = receive_event(fifo_queues, 1)

    # WHEN the worker fails on it once more
    result = run(event, fifo_queues, unreachable_db, max_receive_count=1)

    # THEN it goes to the DLQ with the reason now, instead of SQS moving it later without one
    assert outcomes(result) == ["dead_lettered"]
    [letter] = dead_letters(fifo_queues, 1)
    attributes = {k: v["StringValue"] for k, v in letter["MessageAttributes"].items()}
    assert attributes["sluice_error_type"] == "retries_exhausted"
    assert "cannot connect" in attributes["sluice_error"]
    assert depth(fifo_queues.sqs, fifo_queues.url) == (0, 0)


def test_an_item_held_back_on_its_last_allowed_receive_dead_letters_with_a_reason(
        fifo_queues: FifoQueues, unreachable_db: Database) -> None:
    # GIVEN two items of one group; the first fails transiently, the second is on its last allowed
    # receive (it was held back behind the first on earlier receives)
    prefix = f"HB-{uuid.uuid4().hex[:8]}-"
    send(fifo_queues, f"{prefix}1", invoice(), group="held")
    send(fifo_queues, f"{prefix}2", invoice(), group="held")
    event = receive_event(fifo_queues, 2)
    event["Records"][1]["attributes"]["ApproximateReceiveCount"] = "3"

    # WHEN the worker runs with the database down
    result = run(event, fifo_queues, unreachable_db, max_receive_count=3)

    # THEN the first waits for a retry, and the second goes to the DLQ now, with a reason, instead of
    # SQS moving it on its next receive without one
    assert outcomes(result) == ["retry", "dead_lettered"]
    [letter] = dead_letters(fifo_queues, 1)
    attributes = {k: v["StringValue"] for k, v in letter["MessageAttributes"].items()}
    assert attributes["sluice_error_type"] == "retries_exhausted"
    assert "held back 3 times" in attributes["sluice_error"]
    assert depth(fifo_queues.sqs, fifo_queues.url) == (0, 1)


def test_a_transient_failure_holds_back_the_rest_of_its_group_only(fifo_queues: FifoQueues, db: Database,
                                                                   database_url: str) -> None:
    # GIVEN three ordered items in group "hooli" and one in group "umbrella"; another session holds the
    # ledger row of hooli's first item, so applying it hits a lock wait timeout (a real transient error)
    prefix = f"ORD-{uuid.uuid4().hex[:8]}-"
    first = send(fifo_queues, f"{prefix}1", invoice(customer="hooli"), group="hooli")
    for n in (2, 3):
        send(fifo_queues, f"{prefix}{n}", invoice(customer="hooli"), group="hooli")
    other_key = f"{prefix}other"
    send(fifo_queues, other_key, invoice(customer="umbrella"), group="umbrella")
    event = receive_event(fifo_queues, 4)
    blocker = Database(url=database_url)

    # WHEN the worker runs while the lock is held
    with pytest.raises(RuntimeError), blocker.transaction() as tx:
        assert claim(tx, dedup_id=first.dedup_id, task=first.task, item_key=first.key, message_id="blocker",
                        group_id="hooli")
        result = run(event, fifo_queues, db)
        raise RuntimeError("roll the blocker back")
    blocker.close()

    # THEN no hooli item is applied (order holds), all of them wait, and umbrella's item went through
    by_key = {r["body"]: r["messageId"] for r in event["Records"]}
    assert len(by_key) == 4
    assert outcomes(result) == ["retry", "retry", "retry", "done"]
    assert {f["itemIdentifier"] for f in result["batchItemFailures"]} == {
        r["messageId"] for r in event["Records"][:3]
    }
    assert invoices.keys(db, prefix) == [other_key]
    assert depth(fifo_queues.sqs, fifo_queues.url) == (0, 3)

    # WHEN the wait is over and the group is delivered again
    release_all(fifo_queues, {"Records": event["Records"][:3]})
    result = run(receive_event(fifo_queues, 3), fifo_queues, db)

    # THEN all three are applied, in their order
    assert outcomes(result) == ["done", "done", "done"]
    assert invoices.keys(db, prefix) == [other_key, f"{prefix}1", f"{prefix}2", f"{prefix}3"]


def test_a_batch_stops_and_releases_the_rest_when_time_runs_short(fifo_queues: FifoQueues,
                                                                  db: Database) -> None:
    # GIVEN two messages and a worker whose remaining time is already below its reserve
    keys = [f"INV-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for key in keys:
        send(fifo_queues, key, invoice(), group=key)
    event = receive_event(fifo_queues, 2)

    # WHEN the worker runs
    result = run(event, fifo_queues, db, remaining_ms=500)

    # THEN nothing is applied and both messages are visible again at once
    assert outcomes(result) == ["retry", "retry"]
    assert [invoices.applications(db, k) for k in keys] == [0, 0]
    assert len(receive_event(fifo_queues, 2)["Records"]) == 2


def test_the_database_error_type_is_kept_for_unreachable_servers(unreachable_db: Database) -> None:
    # GIVEN a database nobody listens for / WHEN a transaction starts / THEN the error says so, classified
    with pytest.raises(DbUnavailableError, match="cannot connect"), unreachable_db.transaction():
        pass


class DeleteCalls:
    """Every delete the worker's SQS client makes, and whether each deleted message's ledger row
    was already committed at that moment (read from a connection of its own)."""

    def __init__(self, observer: Database, dedup_of: dict[str, str]) -> None:
        self.observer = observer
        self.dedup_of = dedup_of  # receipt handle -> dedup id
        self.batches: list[int] = []
        self.singles = 0
        self.uncommitted: list[str] = []

    def _check(self, handles: list[str]) -> None:
        self.uncommitted += [h for h in handles if not self.observer.is_processed(self.dedup_of[h])]

    def on_batch(self, params: dict[str, Any], **_: Any) -> None:
        handles = [e["ReceiptHandle"] for e in params["Entries"]]
        self.batches.append(len(handles))
        self._check([h for h in handles if h in self.dedup_of])

    def on_single(self, params: dict[str, Any], **_: Any) -> None:
        self.singles += 1
        self._check([params["ReceiptHandle"]])


@pytest.fixture
def delete_calls(fifo_queues: FifoQueues, database_url: str) -> Iterator[DeleteCalls]:
    from sluice.aws import client

    observer = Database(url=database_url, read_timeout=3)
    calls = DeleteCalls(observer, {})
    events = client("sqs").meta.events
    events.register("provide-client-params.sqs.DeleteMessageBatch", calls.on_batch, unique_id="t-del-batch")
    events.register("provide-client-params.sqs.DeleteMessage", calls.on_single, unique_id="t-del-one")
    yield calls
    events.unregister("provide-client-params.sqs.DeleteMessageBatch", unique_id="t-del-batch")
    events.unregister("provide-client-params.sqs.DeleteMessage", unique_id="t-del-one")
    observer.close()


def send_spread(queues: FifoQueues, n: int) -> tuple[dict[str, Any], dict[str, str]]:
    """n invoices in n groups, received as one event; returns it and receipt handle -> dedup id."""
    tag = uuid.uuid4().hex[:8]
    dedup_by_message: dict[str, str] = {}
    for i in range(n):
        envelope = send(queues, f"INV-{tag}-{i}", invoice(amount_cents=100 + i), group=f"g{tag}{i}")
        dedup_by_message[envelope.key] = envelope.dedup_id
    event = receive_event(queues, n)
    dedup_of = {}
    for record in event["Records"]:
        key = Envelope.from_body(record["body"]).key
        dedup_of[record["receiptHandle"]] = dedup_by_message[key]
    return event, dedup_of


def test_deletes_go_in_tens_and_only_after_each_commit(fifo_queues: FifoQueues, db: Database,
                                                       delete_calls: DeleteCalls) -> None:
    # GIVEN 25 invoices received as one worker batch
    event, dedup_of = send_spread(fifo_queues, 25)
    delete_calls.dedup_of.update(dedup_of)
    # WHEN the worker applies them
    result = run(event, fifo_queues, db)
    # THEN all are done, deleted in 3 DeleteMessageBatch calls (10 + 10 + 5) and no single deletes,
    # every message's ledger row was committed before its delete, and the queue is empty
    assert outcomes(result) == ["done"] * 25
    assert delete_calls.batches == [10, 10, 5] and delete_calls.singles == 0
    assert delete_calls.uncommitted == []
    assert depth(fifo_queues.sqs, fifo_queues.url) == (0, 0)


def test_entries_the_delete_batch_refuses_are_retried_alone(fifo_queues: FifoQueues, db: Database,
                                                           delete_calls: DeleteCalls) -> None:
    # GIVEN 4 invoices, and an SQS that refuses entry 1 of every DeleteMessageBatch (its receipt
    # handle garbled on the way) while single deletes go through
    from sluice.aws import client

    event, dedup_of = send_spread(fifo_queues, 4)
    delete_calls.dedup_of.update(dedup_of)

    def garble(params: dict[str, Any], **_: Any) -> None:
        params["Entries"][1]["ReceiptHandle"] = "garbled-" + uuid.uuid4().hex

    events = client("sqs").meta.events
    events.register("provide-client-params.sqs.DeleteMessageBatch", garble, unique_id="t-garble")
    try:
        # WHEN the worker applies them
        result = run(event, fifo_queues, db)
    finally:
        events.unregister("provide-client-params.sqs.DeleteMessageBatch", unique_id="t-garble")
    # THEN the outcomes stay done (the ledger has them), the refused one was deleted on its own
    # after its commit, and nothing is left in the queue
    assert outcomes(result) == ["done"] * 4
    assert delete_calls.batches == [4] and delete_calls.singles == 1
    assert delete_calls.uncommitted == []
    assert depth(fifo_queues.sqs, fifo_queues.url) == (0, 0)
