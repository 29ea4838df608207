"""Enqueue against a real (moto) SQS FIFO queue: batching, all-or-nothing, partial failures."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from sluice.aws import Queue
from sluice.enqueue import Enqueuer, EnqueueRequestError
from tests.fixtures.events import http_api_event
from tests.helpers import SteppedClock

pytestmark = pytest.mark.functional


def invoice(n: int, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"task": "invoice.record", "key": f"INV-{n:05d}",
                            "payload": {"customer": "acme", "amount_cents": 100 + n, "currency": "EUR"}}
    item.update(extra)
    return item


def depth(fifo: Any) -> int:
    attrs = fifo.sqs.get_queue_attributes(QueueUrl=fifo.url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attrs["Attributes"]["ApproximateNumberOfMessages"])


@dataclass
class BatchCalls:
    """Every SendMessageBatch the client makes: the entry ids of each call."""

    calls: list[list[str]]
    lock: threading.Lock

    def hook(self, params: dict[str, Any], **_: Any) -> None:
        with self.lock:
            self.calls.append([e["Id"] for e in params["Entries"]])


@pytest.fixture
def batch_calls(fifo_queues: Any) -> Iterator[BatchCalls]:
    calls = BatchCalls([], threading.Lock())
    events = fifo_queues.sqs.meta.events
    events.register("provide-client-params.sqs.SendMessageBatch", calls.hook, unique_id="count-batches")
    yield calls
    events.unregister("provide-client-params.sqs.SendMessageBatch", unique_id="count-batches")


def enqueuer(fifo: Any, **kw: Any) -> Enqueuer:
    return Enqueuer(Queue(fifo.url, sqs=fifo.sqs), max_items=kw.pop("max_items", 1000),
                    max_body_bytes=kw.pop("max_body_bytes", 1048576), backoff_s=0.01, **kw)


def test_25_items_take_exactly_3_batch_calls_and_return_ids_in_order(fifo_queues: Any,
                                                                     batch_calls: BatchCalls) -> None:
    # GIVEN 25 valid items
    items = [invoice(i) for i in range(25)]
    # WHEN enqueued
    result = enqueuer(fifo_queues).enqueue(json.dumps({"items": items}))
    # THEN exactly ceil(25/10) = 3 SendMessageBatch calls carried all 25 entries once
    assert len(batch_calls.calls) == 3
    assert sorted(int(i) for call in batch_calls.calls for i in call) == list(range(25))
    # AND the response is 202 with per-item ids in request order
    assert result.status_code == 202
    body = result.body
    assert body["accepted"] == 25
    assert [row["key"] for row in body["items"]] == [f"INV-{i:05d}" for i in range(25)]
    assert all(row["message_id"] and row["sequence_number"] and row["group"].startswith("invoice.record:")
               for row in body["items"])
    assert set(body["items"][0]) == {"key", "message_id", "sequence_number", "group", "lane"}
    assert {row["lane"] for row in body["items"]} == {"default"}
    assert depth(fifo_queues) == 25


def test_one_invalid_item_among_100_enqueues_nothing(fifo_queues: Any, batch_calls: BatchCalls) -> None:
    # GIVEN 100 items, number 57 with an unknown currency
    items = [invoice(i) for i in range(100)]
    items[57]["payload"]["currency"] = "XXX"
    # WHEN enqueued / THEN 400 naming item 57 and why
    with pytest.raises(EnqueueRequestError) as caught:
        enqueuer(fifo_queues).enqueue({"items": items})
    assert caught.value.status == 400
    assert [e["index"] for e in caught.value.errors] == [57]
    assert "currency" in caught.value.errors[0]["reason"]
    # AND no call was made, the queue is empty
    assert batch_calls.calls == []
    assert depth(fifo_queues) == 0


@pytest.mark.parametrize(
    ("raw", "status", "reason"),
    [
        (b'{"items": [', 400, "not valid JSON"),
        (json.dumps({"items": [{"key": "k", "payload": {}}]}), 400, "task is required"),
        (json.dumps({"items": [{"task": "nope", "payload": {}}]}), 400, "unknown task 'nope'"),
        (json.dumps({"items": [invoice(1, payload={"customer": "acme"})]}), 400, "amount_cents"),
        (json.dumps({"items": [invoice(i) for i in range(3)], "pad": "x" * 5000}), 413, "limit is 4096"),
        (json.dumps({"items": [invoice(i) for i in range(21)]}), 413, "limit is 20"),
        (json.dumps({"items": []}), 400, "'items' is empty"),
        # valid JSON inside the size limit, nested past the parser's recursion limit
        ('{"items": ' + "[" * 1500 + "]" * 1500 + "}", 400, "nests arrays or objects too deeply"),
    ],
    ids=["bad-json", "missing-task", "unknown-task", "schema", "oversized", "too-many", "empty", "deep"],
)
def test_bad_requests_get_4xx_with_reason_and_queue_stays_empty(
    fifo_queues: Any, batch_calls: BatchCalls, raw: bytes | str, status: int, reason: str
) -> None:
    # GIVEN a bad request / WHEN enqueued
    with pytest.raises(EnqueueRequestError) as caught:
        enqueuer(fifo_queues, max_items=20, max_body_bytes=4096).enqueue(raw)
    # THEN the status and reason say what is wrong, and nothing was sent
    assert caught.value.status == status
    assert reason in json.dumps(caught.value.body)
    assert batch_calls.calls == []
    assert depth(fifo_queues) == 0


def fail_entries_once(fifo: Any, entry_ids: set[str], *, times: int = 1, sender_fault: bool = False) -> None:
    """Rewrite the parsed SendMessageBatch reply so some entries come back as Failed.

    moto cannot be told to refuse single entries of a batch, and a partial failure is exactly
    what real SQS does under internal errors; so we let moto take the whole batch and then move
    chosen entries from Successful to Failed in the parsed reply (an after-call hook, seen by
    the code under test just as a real partial reply would be). moto really stored those
    messages, so a correct retry (same dedup id) is dropped as a duplicate: the queue must end
    up with each item exactly once either way.
    """
    remaining = {"n": times}

    def rewrite(parsed: dict[str, Any], **_: Any) -> None:
        if remaining["n"] <= 0:
            return
        remaining["n"] -= 1
        ok = parsed.get("Successful", [])
        parsed["Successful"] = [s for s in ok if s["Id"] not in entry_ids]
        parsed["Failed"] = [{"Id": s["Id"], "Code": "InternalError", "Message": "injected",
                             "SenderFault": sender_fault} for s in ok if s["Id"] in entry_ids]

    fifo.sqs.meta.events.register("after-call.sqs.SendMessageBatch", rewrite, unique_id="fail-entries")


def test_partial_batch_failure_resends_only_the_failed_entries(fifo_queues: Any,
                                                                batch_calls: BatchCalls) -> None:
    # GIVEN SQS refuses entries 2, 5 and 7 of a 10-item batch once
    fail_entries_once(fifo_queues, {"2", "5", "7"})
    try:
        # WHEN 10 items are enqueued
        result = enqueuer(fifo_queues).enqueue({"items": [invoice(i) for i in range(10)]})
    finally:
        fifo_queues.sqs.meta.events.unregister("after-call.sqs.SendMessageBatch", unique_id="fail-entries")
    # THEN the retry carried only those three entries, and every item is accepted
    assert batch_calls.calls[1:] == [["2", "5", "7"]]
    assert len(batch_calls.calls[0]) == 10
    assert result.status_code == 202
    assert result.body["accepted"] == 10
    assert depth(fifo_queues) == 10


def test_entries_still_failing_after_retries_are_reported_per_item(fifo_queues: Any,
                                                                   batch_calls: BatchCalls) -> None:
    # GIVEN SQS keeps refusing entry 3 (more times than the enqueuer retries)
    fail_entries_once(fifo_queues, {"3"}, times=100)
    try:
        result = enqueuer(fifo_queues, max_attempts=3).enqueue({"items": [invoice(i) for i in range(12)]})
    finally:
        fifo_queues.sqs.meta.events.unregister("after-call.sqs.SendMessageBatch", unique_id="fail-entries")
    # THEN a 207 says which item failed and why; the others carry their ids
    assert result.status_code == 207
    body = result.body
    assert body["accepted"] == 11 and body["failed"] == 1
    assert "InternalError" in body["items"][3]["error"] and "message_id" not in body["items"][3]
    assert all("message_id" in row for i, row in enumerate(body["items"]) if i != 3)
    # AND only entry 3 was retried (2 retries after the first attempt)
    retried = [call for call in batch_calls.calls if call == ["3"]]
    assert len(retried) == 2


def test_sender_fault_entries_are_not_retried(fifo_queues: Any, batch_calls: BatchCalls) -> None:
    # GIVEN SQS refuses entry 0 as the sender's fault (retrying cannot help)
    fail_entries_once(fifo_queues, {"0"}, times=100, sender_fault=True)
    try:
        result = enqueuer(fifo_queues).enqueue({"items": [invoice(0), invoice(1)]})
    finally:
        fifo_queues.sqs.meta.events.unregister("after-call.sqs.SendMessageBatch", unique_id="fail-entries")
    # THEN one call only, and a 207 for item 0
    assert len(batch_calls.calls) == 1
    assert result.status_code == 207
    assert result.body["items"][0]["error"]


# --- through the Lambda handler ------------------------------------------------------------

@dataclass
class Context:
    function_name: str = "sluice-test-enqueuer"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:sluice-test-enqueuer"
    aws_request_id: str = "req-1"


def undecodable_base64_event() -> dict[str, Any]:
    """A request flagged base64 whose body does not decode."""
    event = http_api_event("{}")
    event["body"], event["isBase64Encoded"] = "not*base64", True
    return event


@pytest.fixture
def handler(fifo_queues: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from enqueuer import handler as module

    monkeypatch.setenv("SLUICE_QUEUE_URL", fifo_queues.url)
    monkeypatch.setenv("SLUICE_ENQUEUER_MAX_ITEMS", "50")
    module.reset()
    yield module
    module.reset()


@pytest.mark.parametrize("base64_body", [False, True], ids=["json", "base64"])
def test_http_post_enqueues_and_answers_202(handler: Any, fifo_queues: Any, base64_body: bool) -> None:
    # GIVEN AWS's HTTP API sample event as a POST /jobs with 3 items, as JSON text or base64-encoded
    event = http_api_event(json.dumps({"items": [invoice(i) for i in range(3)]}), base64_body=base64_body)
    # WHEN handled
    response = handler.lambda_handler(event, Context())
    # THEN 202 with the ids, and 3 messages are queued
    assert response["statusCode"] == 202
    assert json.loads(response["body"])["accepted"] == 3
    assert depth(fifo_queues) == 3


@pytest.mark.parametrize(
    ("event", "status", "reason"),
    [
        (http_api_event("{}", path="/other"), 404, "no route"),
        (http_api_event("", method="GET"), 405, "use POST"),
        (http_api_event("{oops"), 400, "not valid JSON"),
        (undecodable_base64_event(), 400, "does not decode"),
        (http_api_event(json.dumps({"items": [invoice(i) for i in range(51)]})), 413, "limit is 50"),
    ],
    ids=["route", "method", "json", "base64", "too-many"],
)
def test_http_bad_input_is_4xx_with_reason(handler: Any, fifo_queues: Any, event: dict[str, Any],
                                           status: int, reason: str) -> None:
    # GIVEN AWS's HTTP API sample event carrying one bad request
    # WHEN handled
    response = handler.lambda_handler(event, Context())
    # THEN the status names the reason, and nothing was queued
    assert response["statusCode"] == status
    assert reason in response["body"]
    assert depth(fifo_queues) == 0


def test_direct_invoke_returns_the_response_dict(handler: Any, fifo_queues: Any) -> None:
    # GIVEN a direct invoke whose event is the body itself
    response = handler.lambda_handler({"items": [invoice(1), invoice(2, group="acme")]}, Context())
    # THEN the answer is the response body plus its status
    assert response["statusCode"] == 202
    assert [row["group"] for row in response["items"]][1] == "acme"
    # AND a direct invoke of something else is a 400, not a crash
    assert handler.lambda_handler({"hello": 1}, Context())["statusCode"] == 400


def test_unreachable_queue_is_503(handler: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a queue URL that does not exist on the server
    monkeypatch.setenv("SLUICE_QUEUE_URL", "http://127.0.0.1:1/123456789012/missing.fifo")
    handler.reset()
    response = handler.lambda_handler({"items": [invoice(1)]}, Context())
    # THEN 503 with the reason
    assert response["statusCode"] == 503
    assert "not enqueued" in response["error"] or "unavailable" in response["error"]


def most_in_any_window(times: list[float], window_s: float = 1.0) -> int:
    ordered = sorted(times)
    return max(sum(1 for u in ordered[i:] if u < t + window_s) for i, t in enumerate(ordered))


def test_no_one_second_window_holds_more_than_max_tps_calls(fifo_queues: Any) -> None:
    # GIVEN an enqueuer capped at 5 calls/s on an injected clock, with the clock read at every
    # SendMessageBatch the client actually makes
    clock = SteppedClock()
    call_times: list[float] = []
    events = fifo_queues.sqs.meta.events
    events.register("before-send.sqs.SendMessageBatch", lambda **_: call_times.append(clock()),
                    unique_id="time-batches")
    try:
        # WHEN 180 items (18 calls, over 3 seconds' worth) are enqueued from the default 4 threads
        result = enqueuer(fifo_queues, max_tps=5, clock=clock, sleep=clock.sleep).enqueue(
            {"items": [invoice(i) for i in range(180)]})
    finally:
        events.unregister("before-send.sqs.SendMessageBatch", unique_id="time-batches")
    # THEN every item went in, and no one-second window (the first one included) saw more than 5 calls
    assert result.status_code == 202 and len(call_times) == 18
    # (At most, not exactly 5: the 4 threads' sleeps all advance the one stepped clock, so time
    # may run ahead of the pacing and a window hold fewer. Unlimited, one window would hold 18.)
    assert most_in_any_window(call_times) <= 5
