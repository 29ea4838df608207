"""The drain loop of one consumer (DESIGN.md section 4).

While the time left exceeds the predicted duration of one more worker batch plus the safety
margin, receive messages, pack them into worker batches (all of one group's messages in ONE
batch, in order; several groups may share a batch up to ``worker.batch_size``), and invoke
workers synchronously from a pool of this consumer's slots, never faster than its share of
``drain.max_rate``. Stop early when the queue is empty. What one receive brings is spread
over the FREE slots (about received / free per worker, never above ``batch_size``), so a
receive of ten messages from ten groups keeps four workers busy instead of one.

Why group messages are never split: SQS FIFO hands out no further message of a group while
one is in flight, so every message of a group this consumer holds arrived in one receive,
in order. Receiving at most ``batch_size`` messages per call keeps each such run small
enough for one worker batch, and giving the run to one worker keeps it in order.

Invariants: the loop returns before the consumer's timeout (it only starts a batch it has
time to wait for); at return it holds no received-but-undispatched message (those are made
visible again at once); the number of worker invocations in flight never exceeds the slots.

Counting: ``received``/``dispatched``/``released`` and the outcomes count messages;
``worker_batches``, ``throttled`` and ``invoke_errors`` count invocations.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import Any

from sluice.aws import AwsError, FunctionInvoker, InvokeResult, Queue, ReceivedMessage, ThrottledError
from sluice.budget import BatchBudget
from sluice.observability import MetricUnit, count, logger, metrics
from sluice.ratelimit import TokenBucket
from sluice.settings import RuntimeConfig

OUTCOMES = ("done", "duplicate", "dead_lettered", "retry")
# Time kept to settle, log the report and return once the drain stops waiting for workers.
RETURN_RESERVE_MS = 500


@dataclass
class DrainReport:
    received: int = 0
    dispatched: int = 0
    succeeded: int = 0
    duplicates: int = 0
    retried: int = 0
    dead_lettered: int = 0
    released: int = 0
    throttled: int = 0
    invoke_errors: int = 0
    budget_ms: int = 0
    used_ms: int = 0
    budget_used_pct: float = 0.0
    peak_parallel: int = 0
    worker_batches: int = 0
    predicted_batch_ms: int = 0
    stopped_because: str = ""
    unfinished: int = 0  # messages whose worker was still running when the drain had to return

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first_fit(runs: Sequence[list[ReceivedMessage]], size: int) -> list[list[ReceivedMessage]]:
    batches: list[list[ReceivedMessage]] = []
    for run in runs:
        for batch in batches:
            if len(batch) + len(run) <= size:
                batch.extend(run)
                break
        else:
            batches.append(list(run))
    return batches


def pack_batches(
    messages: Sequence[ReceivedMessage], batch_size: int, free_slots: int | None = None
) -> list[list[ReceivedMessage]]:
    """Runs of one group stay together and in order; runs are packed first-fit into batches.

    With ``free_slots``, what was received is spread over the free worker slots instead of
    filling one worker while the others sit idle: the target size starts at
    ceil(messages / free_slots) and grows (never above ``batch_size``) only until the batches
    fit the free slots. A run longer than the target (or than ``batch_size``, possible only if
    a caller received more than that at once) becomes a batch of its own rather than being
    split across parallel workers."""
    runs: dict[str, list[ReceivedMessage]] = {}
    for message in messages:
        runs.setdefault(message.group_id, []).append(message)
    if not free_slots or free_slots < 1 or not messages:
        return _first_fit(list(runs.values()), batch_size)
    target = min(batch_size, max(1, -(-len(messages) // free_slots)))
    while True:
        batches = _first_fit(list(runs.values()), target)
        if len(batches) <= free_slots or target >= batch_size:
            return batches
        target += 1


@dataclass(frozen=True)
class _Outcome:
    kind: str  # "ok" | "throttled" | "error"
    result: InvokeResult | None = None
    error: str = ""


class Drainer:
    def __init__(
        self,
        queue: Queue,
        invoker: FunctionInvoker,
        *,
        remaining_ms: Callable[[], float],
        slots: int,
        max_rate: float,
        batch_size: int = 10,
        wait_s: int = 1,
        safety_margin_ms: float = 5000,
        worker_timeout_ms: float = 30000,
        budget: BatchBudget | None = None,
        bucket: TokenBucket | None = None,
        queue_arn: str | None = None,
        throttle_backoff_s: float = 0.2,
        max_throttle_backoff_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if slots < 1 or not 1 <= batch_size <= 10:
            raise ValueError(f"slots must be >= 1 and batch_size 1..10 (got {slots}, {batch_size})")
        self.queue = queue
        self.invoker = invoker
        self.remaining_ms = remaining_ms
        self.slots = slots
        self.batch_size = batch_size
        self.wait_s = wait_s
        self.safety_margin_ms = safety_margin_ms
        self.budget = budget or BatchBudget(worker_timeout_ms)
        # A burst of one full batch, so a batch never waits for tokens it can never have.
        burst = max(float(batch_size), max_rate / 10)
        self.bucket = bucket or TokenBucket(max_rate, burst, clock=clock, sleep=sleep)
        self._queue_arn = queue_arn
        self.throttle_backoff_s = throttle_backoff_s
        self.max_throttle_backoff_s = max_throttle_backoff_s
        self._clock = clock
        self._sleep = sleep

    @classmethod
    def from_config(
        cls,
        config: RuntimeConfig,
        remaining_ms: Callable[[], float],
        *,
        queue: Queue | None = None,
        invoker: FunctionInvoker | None = None,
        budget: BatchBudget | None = None,
        queue_arn: str | None = None,
    ) -> Drainer:
        return cls(
            queue or Queue(config.queue_url),
            invoker or FunctionInvoker(config.worker_function, config.worker_timeout_s),
            remaining_ms=remaining_ms,
            slots=config.slots_per_consumer,
            max_rate=config.max_rate / config.consumers,
            batch_size=config.batch_size,
            wait_s=config.wait_s,
            safety_margin_ms=config.safety_margin_ms,
            worker_timeout_ms=config.worker_timeout_s * 1000,
            budget=budget,
            queue_arn=queue_arn,
        )

    # -- time ---------------------------------------------------------------------------
    def _until_return_s(self) -> float:
        """Seconds this drain may still block before it must wrap up and return."""
        return max(0.0, (self.remaining_ms() - RETURN_RESERVE_MS) / 1000)

    def _time_for(self, extra_ms: float = 0) -> bool:
        """Is there time to start one more batch (after ``extra_ms`` of long polling)?"""
        return self.remaining_ms() > self.budget.predict_ms() + self.safety_margin_ms + extra_ms

    # -- the loop -----------------------------------------------------------------------
    def run(self) -> DrainReport:
        report = DrainReport(budget_ms=int(self.remaining_ms()))
        started = self._clock()
        pending: list[ReceivedMessage] = []
        in_flight: dict[Future[_Outcome], list[ReceivedMessage]] = {}
        backoff_s = 0.0
        backoff_until = 0.0
        slot_limit = self.slots  # lowered after a 429, raised again as workers succeed
        pool = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="sluice-worker-slot")
        try:
            arn = self._queue_arn if self._queue_arn is not None else self.queue.arn
            while True:
                for future in [f for f in in_flight if f.done()]:
                    batch, outcome = in_flight.pop(future), future.result()
                    if outcome.kind == "throttled":
                        # Hold the batch and retry it after a backoff, with fewer slots: a release
                        # would cost each message one receive, and enough of those make SQS move
                        # valid items to the DLQ with no reason. What is still held when the budget
                        # ends is released by the finally block below.
                        report.throttled += 1
                        report.dispatched -= len(batch)
                        report.worker_batches -= 1
                        pending[:0] = batch
                        slot_limit = max(1, len(in_flight))
                        backoff_s = min(self.max_throttle_backoff_s, max(self.throttle_backoff_s, backoff_s * 2))
                        backoff_until = self._clock() + backoff_s
                        logger.warning("worker throttled; holding its batch for a retry",
                                       extra={"messages": len(batch), "backoff_s": backoff_s,
                                              "slots": slot_limit})
                        continue
                    backoff_s = self._settle(outcome, batch, report, backoff_s)
                    slot_limit = min(self.slots, slot_limit + 1)
                if not self._time_for():
                    report.stopped_because = "budget"
                    break
                now = self._clock()
                if now < backoff_until:
                    # Never back off past the budget: the loop must still stop in time.
                    spare_s = (self.remaining_ms() - self.budget.predict_ms() - self.safety_margin_ms) / 1000
                    self._wait_any(in_flight, max(0.0, min(backoff_until - now, spare_s)))
                    continue
                free = slot_limit - len(in_flight)
                if free <= 0:
                    self._wait_any(in_flight, self._until_return_s())
                    continue
                room = self.batch_size * free - len(pending)
                short = room <= 0
                if room > 0:
                    asked = min(self.batch_size, room)
                    idle = not in_flight and not pending
                    # Long-poll only when nothing else needs us; otherwise a finished worker
                    # would sit unnoticed for up to wait_s.
                    wait_s = self.wait_s if idle and self._time_for(self.wait_s * 1000) else 0
                    received = self.queue.receive(asked, wait_s=wait_s)
                    report.received += len(received)
                    pending.extend(received)
                    short = len(received) < asked
                    if not received and not pending:
                        if not in_flight:
                            report.stopped_because = "queue_empty"
                            break
                        # Groups held by running workers stay hidden until they finish.
                        self._wait_any(in_flight, self._until_return_s())
                        continue
                if short or len(pending) >= self.batch_size:
                    # Spread over every free slot: fauxqs (and SQS under load) hands out few
                    # messages per group, so one full batch would leave the other slots idle.
                    rate_bound = False
                    for batch in pack_batches(pending, self.batch_size, free)[:free]:
                        if not self._time_for():
                            break
                        token_wait_s = self.bucket.reserve(len(batch))
                        if token_wait_s > 0:
                            if not self._time_for(token_wait_s * 1000):
                                # The rate cap would start this batch later than the budget
                                # allows; nothing can be dispatched sooner, so stop now.
                                rate_bound = True
                                break
                            self._sleep(token_wait_s)
                        for message in batch:
                            pending.remove(message)
                        in_flight[pool.submit(self._invoke, batch, arn)] = batch
                        report.dispatched += len(batch)
                        report.worker_batches += 1
                        report.peak_parallel = max(report.peak_parallel, len(in_flight))
                    if rate_bound:
                        report.stopped_because = "budget"
                        break
        except AwsError as exc:
            report.stopped_because = f"sqs_error: {exc}"
            logger.error("drain stopped on an SQS error", extra={"error": str(exc)})
        finally:
            # Invariant: hold nothing undispatched; then wait for the workers we started, but
            # never past our own deadline. A worker still running then (it hangs, or the
            # prediction was beaten) goes on as its own invocation: it applies, deletes or hands
            # back its messages itself, and its reserved concurrency still bounds the cap. A
            # consumer killed by its timeout would only lose its report.
            self._release(pending, report)
            finished, running = wait(list(in_flight), timeout=self._until_return_s()) if in_flight else ((), ())
            for future in finished:
                self._settle(future.result(), in_flight[future], report, 0.0)
            report.unfinished = sum(len(in_flight[future]) for future in running)
            if running:
                logger.warning("returning while workers still run; they finish on their own",
                               extra={"messages": report.unfinished})
            pool.shutdown(wait=False, cancel_futures=True)
            report.used_ms = int((self._clock() - started) * 1000)
            if report.budget_ms:
                report.budget_used_pct = round(100 * report.used_ms / report.budget_ms, 1)
            report.predicted_batch_ms = int(self.budget.predict_ms())
        self._publish(report)
        return report

    def _wait_any(
        self, in_flight: dict[Future[_Outcome], list[ReceivedMessage]], timeout: float | None
    ) -> None:
        if in_flight:
            wait(list(in_flight), timeout=timeout, return_when=FIRST_COMPLETED)
        elif timeout:
            self._sleep(timeout)

    def _invoke(self, batch: list[ReceivedMessage], arn: str) -> _Outcome:
        payload = {"Records": [m.to_sqs_record(arn) for m in batch], "queueUrl": self.queue.url}
        try:
            return _Outcome("ok", self.invoker.invoke(payload))
        except ThrottledError as exc:
            return _Outcome("throttled", error=str(exc))
        except Exception as exc:  # any failure leaves the messages in flight: safe, never lost
            return _Outcome("error", error=f"{type(exc).__name__}: {exc}")

    def _settle(self, outcome: _Outcome, batch: list[ReceivedMessage], report: DrainReport,
                backoff_s: float) -> float:
        """Account for one finished invocation; returns the throttle backoff to apply next."""
        if outcome.kind == "throttled":
            # Never ran: its messages are counted as released, so not as dispatched too.
            report.throttled += 1
            report.dispatched -= len(batch)
            report.worker_batches -= 1
            logger.warning("worker throttled; releasing its messages", extra={"messages": len(batch)})
            self._release(batch, report)
            return min(self.max_throttle_backoff_s, max(self.throttle_backoff_s, backoff_s * 2))
        result = outcome.result
        if outcome.kind == "error" or result is None or result.function_error or not isinstance(
            result.payload, dict
        ):
            # Function error or timeout: the messages stay in flight until their visibility
            # timeout, then SQS counts the receive and eventually moves them to the DLQ.
            report.invoke_errors += 1
            detail = outcome.error or (result.payload if result is not None else "")
            logger.error("worker invoke failed; its messages stay in flight",
                         extra={"messages": len(batch), "error": str(detail)[:1000]})
            if result is not None:
                self.budget.record(result.duration_ms)
            return backoff_s
        self.budget.record(result.duration_ms)
        count_by_outcome = {name: 0 for name in OUTCOMES}
        seen: set[str] = set()
        for row in result.payload.get("results") or []:
            if isinstance(row, dict) and row.get("outcome") in count_by_outcome:
                count_by_outcome[row["outcome"]] += 1
                seen.add(str(row.get("messageId")))
        failures = {str(f.get("itemIdentifier")) for f in result.payload.get("batchItemFailures") or []
                    if isinstance(f, dict)}
        for message in batch:
            if message.message_id not in seen:
                # SQS partial-batch semantics: listed as a failure -> retried, else succeeded.
                count_by_outcome["retry" if message.message_id in failures else "done"] += 1
        report.succeeded += count_by_outcome["done"]
        report.duplicates += count_by_outcome["duplicate"]
        report.dead_lettered += count_by_outcome["dead_lettered"]
        report.retried += count_by_outcome["retry"]
        return 0.0

    def _release(self, messages: list[ReceivedMessage], report: DrainReport) -> None:
        if not messages:
            return
        try:
            refused = self.queue.release([m.receipt_handle for m in messages])
        except AwsError as exc:
            refused = [m.receipt_handle for m in messages]
            logger.error("could not release messages; they reappear after the visibility timeout",
                         extra={"messages": len(messages), "error": str(exc)})
        report.released += len(messages) - len(refused)
        messages.clear()

    @staticmethod
    def _publish(report: DrainReport) -> None:
        logger.info("drain finished", extra={"drain": report.to_dict()})
        for name in ("received", "dispatched", "released", "throttled", "invoke_errors", "worker_batches"):
            count(name, getattr(report, name))
        count("done", report.succeeded)
        count("duplicate", report.duplicates)
        count("dead_lettered", report.dead_lettered)
        count("retried", report.retried)
        metrics.add_metric(name="drain_budget_used_pct", unit=MetricUnit.Percent,
                           value=report.budget_used_pct)
        metrics.add_metric(name="peak_parallel", unit=MetricUnit.Count, value=report.peak_parallel)
