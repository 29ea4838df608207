"""The drain loop against a real (moto) SQS FIFO queue, with a worker stand-in that really
deletes its messages. The stand-in is the Lambda client: it has boto3's ``invoke`` shape."""

from __future__ import annotations

import io
import json
import threading
import time
from collections import defaultdict
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sluice.aws import FunctionInvoker, Queue
from sluice.budget import BatchBudget
from sluice.contract import Outcome, WorkerResponse, WorkerResult
from sluice.drain import Drainer
from sluice.enqueue import Enqueuer
from sluice.envelope import Envelope
from tests.helpers import depth, eventually

pytestmark = pytest.mark.functional


class WorkerStandIn:
    """Applies each record by noting it, deletes it from the queue, answers like sluice's worker.

    ``throttle_first`` invokes are refused with a 429, ``fail_first`` answer as a function error;
    ``work_s`` is how long one batch pretends to work (the duration the budget measures); from
    call ``slow_from`` on, each batch takes ``slow_s`` instead (a database that slows down)."""

    def __init__(
        self, sqs: Any, *, throttle_first: int = 0, fail_first: int = 0, work_s: float = 0.0,
        slow_from: int | None = None, slow_s: float = 0.0,
    ) -> None:
        self.sqs = sqs
        self.throttle_first = throttle_first
        self.fail_first = fail_first
        self.work_s = work_s
        self.slow_from = slow_from
        self.slow_s = slow_s
        self.lock = threading.Lock()
        self.calls = 0
        self.running = 0
        self.peak = 0
        self.applied: dict[str, list[str]] = defaultdict(list)  # group -> keys in applied order
        self.batches: list[list[str]] = []
        self.receive_counts: list[int] = []

    def invoke(self, FunctionName: str, InvocationType: str, Payload: bytes) -> dict[str, Any]:  # noqa: N803
        event = json.loads(Payload)
        with self.lock:
            self.calls += 1
            call = self.calls
            if call <= self.throttle_first:
                raise ClientError({"Error": {"Code": "TooManyRequestsException", "Message": "Rate Exceeded"},
                                   "ResponseMetadata": {"HTTPStatusCode": 429}}, "Invoke")
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            work_s = self.slow_s if self.slow_from is not None and call >= self.slow_from else self.work_s
            if work_s:
                time.sleep(work_s)  # the work itself, not a wait for something
            if call <= self.throttle_first + self.fail_first:
                return {"StatusCode": 200, "FunctionError": "Unhandled",
                        "Payload": io.BytesIO(b'{"errorMessage": "boom", "errorType": "RuntimeError"}')}
            results = []
            with self.lock:
                self.batches.append([r["attributes"]["MessageGroupId"] for r in event["Records"]])
            for record in event["Records"]:
                envelope = Envelope.from_body(record["body"])
                with self.lock:
                    self.applied[record["attributes"]["MessageGroupId"]].append(envelope.key)
                    self.receive_counts.append(int(record["attributes"]["ApproximateReceiveCount"]))
                self.sqs.delete_message(QueueUrl=event["queueUrl"], ReceiptHandle=record["receiptHandle"])
                results.append(WorkerResult(record["messageId"], Outcome.DONE, 1))
            body = WorkerResponse.of(results).to_payload()
            return {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(body).encode())}
        finally:
            with self.lock:
                self.running -= 1


def fill(fifo: Any, groups: int, per_group: int) -> list[str]:
    items = [{"task": "invoice.record", "key": f"g{g}-{n:03d}", "group": f"g{g}",
              "payload": {"customer": "acme", "amount_cents": 1 + n, "currency": "EUR"}}
             for n in range(per_group) for g in range(groups)]
    Enqueuer(Queue(fifo.url, sqs=fifo.sqs)).enqueue({"items": items})
    return [i["key"] for i in items]


def drainer(fifo: Any, worker: WorkerStandIn, *, budget_ms: float = 20_000, slots: int = 2,
            max_rate: float = 1000, batch_size: int = 10, **kw: Any) -> Drainer:
    deadline = time.monotonic() + budget_ms / 1000
    return Drainer(
        Queue(fifo.url, sqs=fifo.sqs),
        FunctionInvoker("worker", 5, lambda_client=worker),
        remaining_ms=lambda: (deadline - time.monotonic()) * 1000,
        slots=slots, max_rate=max_rate, batch_size=batch_size, wait_s=0,
        safety_margin_ms=kw.pop("safety_margin_ms", 500),
        budget=kw.pop("budget", BatchBudget(5000, prior_ms=200)),
        queue_arn=fifo.arn, throttle_backoff_s=0.05, **kw,
    )


def test_drains_everything_in_group_order_within_the_cap(fifo_queues: Any) -> None:
    # GIVEN 7 groups of 5 ordered items
    fill(fifo_queues, groups=7, per_group=5)
    worker = WorkerStandIn(fifo_queues.sqs, work_s=0.02)
    # WHEN one drain runs with 2 slots and batches of 4
    report = drainer(fifo_queues, worker, slots=2, batch_size=4).run()
    # THEN every item was applied once, each group in its enqueue order
    assert report.stopped_because == "queue_empty"
    assert sum(len(keys) for keys in worker.applied.values()) == 35
    for g in range(7):
        assert worker.applied[f"g{g}"] == [f"g{g}-{n:03d}" for n in range(5)]
    # AND the counts agree, parallelism stayed within the cap, the queue is empty
    assert (report.received, report.dispatched, report.succeeded, report.released) == (35, 35, 35, 0)
    assert 1 <= worker.peak <= 2 and report.peak_parallel <= 2
    assert all(len(b) <= 4 for b in worker.batches)
    assert depth(fifo_queues.sqs, fifo_queues.url) == (0, 0)
    assert report.used_ms < report.budget_ms


def test_throttled_invokes_are_held_and_retried_without_costing_a_receive(fifo_queues: Any) -> None:
    # GIVEN a worker that is throttled on its first 2 invokes
    fill(fifo_queues, groups=3, per_group=2)
    worker = WorkerStandIn(fifo_queues.sqs, throttle_first=2)
    # WHEN drained
    report = drainer(fifo_queues, worker, slots=1).run()
    # THEN the throttled batches were held, retried after a backoff and applied
    assert report.throttled == 2
    assert sum(len(keys) for keys in worker.applied.values()) == 6
    assert report.succeeded == 6 and report.dispatched == 6
    # AND nothing was released and received again: each message was received once, so
    # throttling never walks a valid item towards maxReceiveCount and the DLQ
    assert report.released == 0 and report.received == 6
    assert worker.receive_counts == [1] * 6
    assert depth(fifo_queues.sqs, fifo_queues.url) == (0, 0)


def test_a_batch_still_throttled_when_the_budget_ends_is_released(fifo_queues: Any) -> None:
    # GIVEN a worker that throttles every invoke
    fill(fifo_queues, groups=2, per_group=1)
    worker = WorkerStandIn(fifo_queues.sqs, throttle_first=10**6)
    # WHEN a drain with a short budget runs
    report = drainer(fifo_queues, worker, slots=1, budget_ms=2500,
                     budget=BatchBudget(5000, prior_ms=100)).run()
    # THEN it stopped on its budget, applied nothing, and released what it held at once
    assert report.stopped_because == "budget" and report.throttled >= 1
    assert worker.applied == {}
    assert report.released == 2 and report.dispatched == 0
    assert depth(fifo_queues.sqs, fifo_queues.url) == (2, 0)
    assert report.used_ms < report.budget_ms


def test_function_error_leaves_messages_in_flight(fifo_queues: Any) -> None:
    # GIVEN a worker whose first invoke fails as a function error
    fill(fifo_queues, groups=1, per_group=3)
    worker = WorkerStandIn(fifo_queues.sqs, fail_first=1)
    # WHEN drained
    report = drainer(fifo_queues, worker, slots=1).run()
    # THEN the drain counted the error and did not release or retry the messages itself:
    # they stay in flight until their visibility timeout (then SQS redrives after maxReceiveCount)
    assert report.invoke_errors == 1
    assert report.released == 0 and report.succeeded == 0
    assert depth(fifo_queues.sqs, fifo_queues.url) == (0, 3)
    assert report.stopped_because == "queue_empty"


def test_stops_at_its_budget_holding_no_undispatched_message(fifo_queues: Any) -> None:
    # GIVEN 8 groups of 4 and a worker taking 0.3 s per batch; a 1.6 s budget with 0.5 s margin
    fill(fifo_queues, groups=8, per_group=4)
    worker = WorkerStandIn(fifo_queues.sqs, work_s=0.3)
    started = time.monotonic()
    # WHEN drained with one slot and batches of 4
    report = drainer(fifo_queues, worker, budget_ms=1600, slots=1, batch_size=4,
                     budget=BatchBudget(5000, prior_ms=300)).run()
    elapsed_ms = (time.monotonic() - started) * 1000
    # THEN it stopped for its budget, before the deadline
    assert report.stopped_because == "budget"
    assert elapsed_ms < 1600
    assert report.used_ms <= report.budget_ms
    # AND what it did not dispatch is visible again now: nothing held, nothing lost
    visible, in_flight = depth(fifo_queues.sqs, fifo_queues.url)
    assert in_flight == 0
    assert visible + report.succeeded == 32
    assert 0 < report.succeeded < 32
    assert report.received == report.dispatched + report.released


def test_dispatch_rate_is_capped(fifo_queues: Any) -> None:
    # GIVEN 30 items in 10 groups and a cap of 40 messages/s (burst of one batch of 10)
    fill(fifo_queues, groups=10, per_group=3)
    worker = WorkerStandIn(fifo_queues.sqs)
    started = time.monotonic()
    # WHEN drained
    report = drainer(fifo_queues, worker, slots=2, max_rate=40).run()
    elapsed = time.monotonic() - started
    # THEN the 20 messages past the burst took at least 20/40 s
    assert report.succeeded == 30
    assert elapsed >= 0.45


def test_a_receive_is_spread_over_every_free_slot(fifo_queues: Any) -> None:
    # GIVEN 8 groups of 1 item (one receive takes them all) and a worker busy 0.3 s per batch
    fill(fifo_queues, groups=8, per_group=1)
    worker = WorkerStandIn(fifo_queues.sqs, work_s=0.3)
    # WHEN drained with 4 slots and batches of up to 10
    report = drainer(fifo_queues, worker, slots=4, batch_size=10).run()
    # THEN the 8 messages went to 4 workers running at once (2 each), not to one worker with 8
    assert report.succeeded == 8
    assert sorted(len(b) for b in worker.batches) == [2, 2, 2, 2]
    assert worker.peak == 4 and report.peak_parallel == 4
    assert depth(fifo_queues.sqs, fifo_queues.url) == (0, 0)


def test_the_rate_cap_never_holds_a_batch_past_the_budget(fifo_queues: Any) -> None:
    # GIVEN 30 items and a cap of 2 messages/s: after the first 10 (the burst) the next batch
    # of 5 may start only 2.5 s later, past a 1.5 s budget
    fill(fifo_queues, groups=10, per_group=3)
    worker = WorkerStandIn(fifo_queues.sqs)
    started = time.monotonic()
    # WHEN drained with 2 slots
    report = drainer(fifo_queues, worker, budget_ms=1500, slots=2, max_rate=2).run()
    elapsed_ms = (time.monotonic() - started) * 1000
    # THEN it stopped for its budget instead of waiting for tokens past it
    assert report.stopped_because == "budget"
    assert elapsed_ms < 1500
    assert report.used_ms <= report.budget_ms
    # AND it holds nothing undispatched: every message is done or visible again
    visible, in_flight = depth(fifo_queues.sqs, fifo_queues.url)
    assert in_flight == 0
    assert visible + report.succeeded == 30
    assert report.received == report.dispatched + report.released


class SlowThrottleOnSecondCall(WorkerStandIn):
    """The second invoke is refused with a 429 only after 0.5 s (a throttle still in flight)."""

    def invoke(self, FunctionName: str, InvocationType: str, Payload: bytes) -> dict[str, Any]:  # noqa: N803
        with self.lock:
            slow_throttle = self.calls == 1
            if slow_throttle:
                self.calls += 1
        if slow_throttle:
            time.sleep(0.5)  # the invoke's own latency, not a wait for something
            raise ClientError({"Error": {"Code": "TooManyRequestsException", "Message": "Rate Exceeded"},
                               "ResponseMetadata": {"HTTPStatusCode": 429}}, "Invoke")
        return super().invoke(FunctionName, InvocationType, Payload)


def test_a_throttle_settled_at_return_counts_as_released_not_dispatched(fifo_queues: Any) -> None:
    # GIVEN 20 items in 20 groups, 2 slots, a cap of 2 messages/s (so the drain stops, rate
    # bound, right after its first receive is dispatched) and a second invoke whose 429 comes
    # back only after the drain has stopped
    fill(fifo_queues, groups=20, per_group=1)
    worker = SlowThrottleOnSecondCall(fifo_queues.sqs, work_s=0.1)
    # WHEN drained
    report = drainer(fifo_queues, worker, budget_ms=3000, slots=2, max_rate=2).run()
    # THEN the throttled batch is counted as released, not as dispatched as well
    assert report.throttled == 1 and report.succeeded == 5
    assert report.received == report.dispatched + report.released
    assert report.dispatched == report.succeeded == report.worker_batches * 5
    visible, in_flight = depth(fifo_queues.sqs, fifo_queues.url)
    assert in_flight == 0 and visible == 15


def test_a_hung_worker_never_keeps_the_drain_past_its_budget(fifo_queues: Any) -> None:
    # GIVEN a worker that takes far longer than its recent history predicts (a hang)
    fill(fifo_queues, groups=1, per_group=2)
    worker = WorkerStandIn(fifo_queues.sqs, work_s=4.0)
    # WHEN a drain with a 2 s budget dispatches to it, predicting 100 ms batches
    report = drainer(fifo_queues, worker, slots=1, budget_ms=2000, safety_margin_ms=300,
                     budget=BatchBudget(5000, prior_ms=100)).run()
    # THEN the drain returned inside its budget instead of waiting the worker out
    assert report.used_ms < report.budget_ms
    assert report.dispatched == 2 and report.unfinished == 2 and report.succeeded == 0
    # AND the worker, running on as its own invocation, still applied and deleted its batch
    assert eventually(lambda: sum(len(k) for k in worker.applied.values()) == 2 or None, 10,
                      "the hung worker to finish on its own")
    assert eventually(lambda: depth(fifo_queues.sqs, fifo_queues.url) == (0, 0) or None, 10, "the queue to be empty")


def test_a_database_that_slows_down_shrinks_what_the_drain_takes_on(fifo_queues: Any) -> None:
    # GIVEN an 8 s budget (margin 1 s: what a slow batch may overrun its prediction by on a busy
    # 2-core machine), a prior of 200 ms per batch, and a worker whose batches take 50 ms for the
    # first 4 calls and 2 s from then on
    fill(fifo_queues, groups=2, per_group=10)
    worker = WorkerStandIn(fifo_queues.sqs, work_s=0.05, slow_from=5, slow_s=2.0)
    budget = BatchBudget(8000, prior_ms=200)
    # WHEN one drain runs batches of 1 on one slot
    report = drainer(fifo_queues, worker, budget_ms=8000, slots=1, batch_size=1, safety_margin_ms=1000,
                     budget=budget).run()
    # THEN the prediction followed the measured durations up to the slow batches ...
    assert budget.predict_ms() >= 2000
    # ... so the drain kept starting slow batches only while one more fitted, and stopped at the
    # budget with none left running (a fixed 200 ms prediction would start one with ~1.5 s left)
    assert report.stopped_because == "budget"
    assert worker.calls >= 6 and report.unfinished == 0
    assert report.succeeded == report.dispatched == worker.calls
    assert report.used_ms < report.budget_ms
