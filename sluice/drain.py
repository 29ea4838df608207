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

``Drainer.run`` is a list of named steps over the state of one drain (``DrainState``):
collect finished invocations, back off after a throttle, refill (receive), dispatch (pack,
rate-limit, start), and at the end finish (release what is held, wait for running workers up
to the deadline, settle, report). Each step is a method that reads and tests alone.

Throttles (429): the batch never ran, so it is held and retried after a backoff, with the
slots lowered; releasing it instead would cost each message a receive, and enough of those
make SQS move valid items to the DLQ with no reason. Only the finish step releases, whatever
is still held when the budget ends.

How many slots the dispatch step may fill comes from one place, ``free_slots``: the limit in
force, ``Drainer.limit`` (a ``sluice.concurrency.ConcurrencyLimit``: the adaptive controller,
or ``FixedLimit`` at the slots), bounded by the slots and by ``throttle_slots`` (after a 429,
what was still running; one more per invocation that ran), never below 1. The drain remembers
how many invocations were in flight when it dispatched each one and, once it has finished,
hands the controller a ``BatchSample`` (DESIGN.md section 12, docs/adr/0004).

Invariants: the loop returns before the consumer's timeout (it only starts a batch it has
time to wait for); at return it holds no received-but-undispatched message (those are made
visible again at once); the number of worker invocations in flight never exceeds the slots.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from sluice.aws import AwsError, FunctionInvoker, Queue, ReceivedMessage, ThrottledError
from sluice.backoff import exponential_backoff_s
from sluice.budget import BatchBudget
from sluice.concurrency import BatchSample, ConcurrencyLimit, FixedLimit
from sluice.contract import ContractError, DrainReport, Outcome, WorkerResponse
from sluice.observability import MetricUnit, count, logger, metrics
from sluice.ratelimit import TokenBucket
from sluice.runtime import MAX_BATCH_SIZE, RuntimeConfig

__all__ = ["DrainState", "Drainer", "FinishedInvocation", "ThreadWorkerPool", "WorkerPool", "pack_batches"]

# Time kept to settle, log the report and return once the drain stops waiting for workers.
RETURN_RESERVE_MS = 500
# Lambda refuses a synchronous invoke whose request payload exceeds 6 MB (6,291,456 bytes). A
# batch is closed before its records reach this, which leaves room for the event's envelope.
MAX_INVOKE_PAYLOAD_BYTES = 6 * 1024 * 1024 - 16 * 1024
RECEIVE_MAX = 10  # SQS returns at most 10 messages per ReceiveMessage
_T = TypeVar("_T")


def _first_fit(runs: Sequence[list[ReceivedMessage]], size: int, max_bytes: float,
               nbytes: Callable[[ReceivedMessage], int]) -> list[list[ReceivedMessage]]:
    batches: list[list[ReceivedMessage]] = []
    used: list[int] = []
    for run in runs:
        run_bytes = sum(nbytes(m) for m in run)
        for i, batch in enumerate(batches):
            if len(batch) + len(run) <= size and used[i] + run_bytes <= max_bytes:
                batch.extend(run)
                used[i] += run_bytes
                break
        else:
            batches.append(list(run))
            used.append(run_bytes)
    return batches


def _within_bytes(run: list[ReceivedMessage], max_bytes: float,
                  nbytes: Callable[[ReceivedMessage], int]) -> list[ReceivedMessage]:
    """The longest head of ``run`` whose records fit ``max_bytes`` (at least its first message:
    one that alone is too big fails its invoke and reaches the DLQ by its receive count)."""
    total = 0
    for i, message in enumerate(run):
        total += nbytes(message)
        if total > max_bytes:
            return run[:max(1, i)]
    return run


def pack_batches(
    messages: Sequence[ReceivedMessage], batch_size: int, free_slots: int | None = None, *,
    max_bytes: float = math.inf, nbytes: Callable[[ReceivedMessage], int] = lambda m: 0,
) -> list[list[ReceivedMessage]]:
    """Runs of one group stay together and in order; runs are packed first-fit into batches of
    at most ``batch_size`` messages and ``max_bytes`` of records (``nbytes`` of each).

    With ``free_slots``, what was received is spread over the free worker slots instead of
    filling one worker while the others sit idle: the target size starts at
    ceil(messages / free_slots) and grows (never above ``batch_size``) only until the batches
    fit the free slots. A run longer than the target (or than ``batch_size``, possible only if
    a caller received more than that at once) becomes a batch of its own rather than being
    split across parallel workers. A run whose records exceed ``max_bytes`` is cut: its head
    is packed, its tail is in no batch (the caller holds it until the head's worker is done,
    so the group's order holds)."""
    runs: dict[str, list[ReceivedMessage]] = {}
    for message in messages:
        runs.setdefault(message.group_id, []).append(message)
    if math.isfinite(max_bytes):
        sizes = {m.receipt_handle: nbytes(m) for m in messages}  # measured once per message
        nbytes = lambda m: sizes[m.receipt_handle]  # noqa: E731
    fitted = [_within_bytes(run, max_bytes, nbytes) for run in runs.values()]
    if not free_slots or free_slots < 1 or not messages:
        return _first_fit(fitted, batch_size, max_bytes, nbytes)
    count = sum(len(run) for run in fitted)
    target = min(batch_size, max(1, -(-count // free_slots)))
    while True:
        batches = _first_fit(fitted, target, max_bytes, nbytes)
        if len(batches) <= free_slots or target >= batch_size:
            return batches
        target += 1


@dataclass(frozen=True)
class FinishedInvocation:
    """What one worker invocation came back with."""

    batch: list[ReceivedMessage]
    throttled: bool = False  # refused with a 429: it never ran
    response: WorkerResponse | None = None  # None when it failed: function error, timeout, no response
    error: str = ""
    duration_ms: float | None = None  # what the invoke took, when it returned at all
    in_flight: int = 1  # this consumer's invocations in flight when it was dispatched, itself included

    def sample(self) -> BatchSample:
        """What this invocation tells the concurrency limit. An invoke that failed or timed out
        counts as all of its items retried; a throttled one never ran."""
        if self.throttled:
            return BatchSample(self.in_flight, len(self.batch), throttled=True)
        if self.response is None:
            return BatchSample(self.in_flight, len(self.batch), retries=len(self.batch))
        ids = {m.message_id for m in self.batch}
        rows = [r for r in self.response.results if r.message_id in ids]
        retries = self.response.outcomes(ids)[Outcome.RETRY]
        return BatchSample(self.in_flight, len(self.batch), item_ms=[r.ms for r in rows], retries=retries)


class WorkerPool(Protocol):
    """Where worker invocations run while the drain goes on (threads in production)."""

    def submit(self, fn: Callable[[], _T]) -> Future[_T]: ...

    def wait(self, futures: Collection[Future[Any]], timeout_s: float | None, *, first: bool) -> None:
        """Until the first (``first``) or every one of ``futures`` is done, or ``timeout_s``."""

    def close(self) -> None:
        """Stop taking work; never waits for what still runs."""


class ThreadWorkerPool:
    def __init__(self, size: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="sluice-worker-slot")

    def submit(self, fn: Callable[[], _T]) -> Future[_T]:
        return self._executor.submit(fn)

    def wait(self, futures: Collection[Future[Any]], timeout_s: float | None, *, first: bool) -> None:
        wait(futures, timeout=timeout_s, return_when=FIRST_COMPLETED if first else ALL_COMPLETED)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class DrainState:
    """Everything one drain changes as it runs; ``Drainer.begin`` makes a fresh one."""

    report: DrainReport
    started: float
    pool: WorkerPool
    held: list[ReceivedMessage] = field(default_factory=list)  # received, not (or no longer) dispatched
    running: dict[Future[FinishedInvocation], list[ReceivedMessage]] = field(default_factory=dict)
    throttles_in_a_row: int = 0
    backoff_until: float = 0.0
    record_bytes: dict[str, int] = field(default_factory=dict)  # receipt handle -> its record's JSON size


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
        limit: ConcurrencyLimit | None = None,
        make_pool: Callable[[int], WorkerPool] = ThreadWorkerPool,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if slots < 1 or not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"slots must be >= 1 and batch_size 1..{MAX_BATCH_SIZE} (got {slots}, {batch_size})")
        self.queue = queue
        self.invoker = invoker
        self.remaining_ms = remaining_ms
        self.slots = slots
        self.batch_size = batch_size
        self.max_payload_bytes: float = MAX_INVOKE_PAYLOAD_BYTES
        self.wait_s = wait_s
        self.safety_margin_ms = safety_margin_ms
        self.budget = budget or BatchBudget(worker_timeout_ms)
        # A burst of one full batch, so a batch never waits for tokens it can never have.
        burst = max(float(batch_size), max_rate / 10)
        self.bucket = bucket or TokenBucket(max_rate, burst, clock=clock, sleep=sleep)
        self.throttle_backoff_s = throttle_backoff_s
        self.max_throttle_backoff_s = max_throttle_backoff_s
        self.limit: ConcurrencyLimit = limit or FixedLimit(slots)
        # The drain's own bound after a 429 (the worker function's concurrency is used up
        # elsewhere): lowered to what still runs, raised by one per invocation that ran.
        self.throttle_slots = slots
        self._queue_arn = queue_arn
        self._make_pool = make_pool
        self._clock = clock
        self._sleep = sleep
        self._drain: DrainState | None = None

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
        limit: ConcurrencyLimit | None = None,
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
            limit=limit,
        )

    # -- the loop -----------------------------------------------------------------------
    def run(self) -> DrainReport:
        state = self.begin()
        try:
            state.report.stopped_because = self._steps_until_stopped()
        except AwsError as exc:
            state.report.stopped_because = f"sqs_error: {exc}"
            logger.error("drain stopped on an SQS error", extra={"error": str(exc)})
        finally:
            self.finish()
        self._publish(state.report)
        return state.report

    def _steps_until_stopped(self) -> str:
        """The steps, round after round; returns why the drain stopped."""
        if self._queue_arn is None:
            self._queue_arn = self.queue.arn
        while True:
            self.collect_finished()
            if not self._time_for(self._backoff_left_s() * 1000):
                # No time for one more batch (after the backoff, if one runs: a backoff that
                # outlasts the budget ends the drain now, and the finish step releases).
                return "budget"
            if self.back_off():
                continue
            free = self.free_slots()
            if free <= 0:
                self._wait_for_a_worker(self._until_return_s())
                continue
            if not self.refill(free):
                if not self.state.running:
                    return "queue_empty"
                # Groups held by running workers stay hidden until they finish.
                self._wait_for_a_worker(self._until_return_s())
                continue
            if not self.ready():
                # All that is held is the tail of a group whose head a worker still runs.
                self._wait_for_a_worker(self._until_return_s())
                continue
            if not self.dispatch(free):
                # The rate cap would start the next batch later than the budget allows; nothing
                # can be dispatched sooner, so stop now.
                return "budget"

    def begin(self) -> DrainState:
        """A fresh state (report, pool) for one drain."""
        self._drain = DrainState(DrainReport(budget_ms=int(self.remaining_ms())), self._clock(),
                                 self._make_pool(self.slots))
        return self._drain

    @property
    def state(self) -> DrainState:
        """The state of the drain in progress (or the last one)."""
        if self._drain is None:
            raise RuntimeError("no drain has begun: run() (or begin()) makes its state")
        return self._drain

    # -- the steps ----------------------------------------------------------------------
    def collect_finished(self) -> None:
        """Settle every invocation that has finished since the last look."""
        state = self.state
        for future in [f for f in state.running if f.done()]:
            del state.running[future]
            self.settle(future.result())

    def settle(self, finished: FinishedInvocation) -> None:
        """Account for one finished invocation. A throttled one is held for a retry after a
        backoff; a failed one (function error or timeout) leaves its messages in flight until
        their visibility timeout, when SQS counts the receive and eventually moves them to the
        DLQ; the rest count by the outcomes the worker reported."""
        state, report = self.state, self.state.report
        self.limit.on_batch(finished.sample())
        self.throttle_slots = (max(1, len(state.running)) if finished.throttled
                               else min(self.slots, self.throttle_slots + 1))
        if finished.throttled:
            # It never ran: its messages are held again, so not counted as dispatched.
            report.throttled += 1
            report.dispatched -= len(finished.batch)
            report.worker_batches -= 1
            state.held[:0] = finished.batch
            state.throttles_in_a_row += 1
            backoff_s = exponential_backoff_s(state.throttles_in_a_row, base_s=self.throttle_backoff_s,
                                              cap_s=self.max_throttle_backoff_s)
            state.backoff_until = self._clock() + backoff_s
            logger.warning("worker throttled; holding its batch for a retry",
                           extra={"messages": len(finished.batch), "backoff_s": backoff_s,
                                  "slots": self.throttle_slots})
            return
        if finished.duration_ms is not None:
            self.budget.record(finished.duration_ms)
        if finished.response is None:
            report.invoke_errors += 1
            logger.error("worker invoke failed; its messages stay in flight",
                         extra={"messages": len(finished.batch), "error": finished.error[:1000]})
            return
        state.throttles_in_a_row = 0
        report.add_outcomes(finished.response.outcomes(m.message_id for m in finished.batch))

    def back_off(self) -> bool:
        """While a throttle's backoff lasts, wait for it to end (or for a worker to finish,
        which the next collect settles). True when it waited. The loop starts no backoff it has
        no time to see the end of, so this never waits past the budget."""
        left_s = self._backoff_left_s()
        if left_s <= 0:
            return False
        self._wait_for_a_worker(left_s)
        return True

    def free_slots(self) -> int:
        """Slots the dispatch step may fill now: the limit in force (within the slots and the
        after-429 bound, at least 1) minus what is running. The one place the number of
        concurrent workers is decided."""
        return self.limit_in_force() - len(self.state.running)

    def limit_in_force(self) -> int:
        """How many invocations may run at once now."""
        return max(1, min(self.slots, self.throttle_slots, self.limit.current()))

    def refill(self, free: int) -> bool:
        """Receive what ``free`` slots can take beyond what is held; True when anything is held.

        One receive asks for at most ``batch_size`` (and SQS returns at most 10), so a run of
        one group always fits one batch. While every receive comes back full (a deep backlog)
        and the free slots would otherwise get partial batches, receive again at once (never
        long-polling, never past the budget or what the rate cap lets start now), so each
        worker invocation carries up to
        ``batch_size``, above 10 too. A receive that comes back short means the backlog (or
        the groups not in flight) is used up: dispatch what is held now."""
        state = self.state
        room = self.batch_size * free - len(state.held)
        # Long-poll only when nothing else needs us; otherwise a finished worker would sit
        # unnoticed for up to wait_s.
        idle = not state.running and not state.held
        wait_s = self.wait_s if idle and self._time_for(self.wait_s * 1000) else 0
        while room > 0:
            asked = min(RECEIVE_MAX, self.batch_size, room)
            received = self.queue.receive(asked, wait_s=wait_s)
            state.report.received += len(received)
            state.held.extend(received)
            room -= len(received)
            # Stop at a short receive (the backlog is used up), at the budget, and when the rate
            # cap would not let what is held start now (more would only wait, in flight).
            if len(received) < asked or not self._time_for() or len(state.held) >= self.bucket.available:
                break
            wait_s = 0
        return bool(state.held)

    def dispatch(self, free: int) -> bool:
        """Pack what is held into batches spread over the ``free`` slots (fauxqs, and SQS under
        load, hands out few messages per group, so one full batch would leave the other slots
        idle) and start each one there is time and rate for. A held message of a group that a
        running worker still has (the tail of a run cut at the payload limit) waits for it.
        False when the rate cap would start the next batch past the budget."""
        for batch in pack_batches(self.ready(), self.batch_size, free, max_bytes=self.max_payload_bytes,
                                  nbytes=self._record_bytes)[:free]:
            if not self._time_for():
                break
            token_wait_s = self.bucket.reserve(len(batch))
            if token_wait_s > 0:
                if not self._time_for(token_wait_s * 1000):
                    return False
                self._sleep(token_wait_s)
            self._start(batch)
        return True

    def ready(self) -> list[ReceivedMessage]:
        """What is held and may start now: not of a group a running worker still has."""
        busy = {m.group_id for batch in self.state.running.values() for m in batch}
        return [m for m in self.state.held if m.group_id not in busy]

    def finish(self) -> None:
        """Hold nothing undispatched; then wait for the workers we started, but never past our
        own deadline. A worker still running then (it hangs, or the prediction was beaten)
        goes on as its own invocation: it applies, deletes or hands back its messages itself,
        and its reserved concurrency still bounds the cap. A consumer killed by its timeout
        would only lose its report."""
        state = self.state
        report = state.report
        self._release(state.held)
        if state.running:
            state.pool.wait(list(state.running), self._until_return_s(), first=False)
        self.collect_finished()
        self._release(state.held)  # batches throttled while we waited
        report.unfinished = sum(len(batch) for batch in state.running.values())
        if state.running:
            logger.warning("returning while workers still run; they finish on their own",
                           extra={"messages": report.unfinished})
        state.pool.close()
        report.used_ms = int((self._clock() - state.started) * 1000)
        if report.budget_ms:
            report.budget_used_pct = round(100 * report.used_ms / report.budget_ms, 1)
        report.predicted_batch_ms = int(self.budget.predict_ms())
        report.limit = max(1, min(self.slots, self.limit.current()))
        report.limit_floor, report.limit_ceiling = self.limit.floor, self.limit.ceiling
        report.adaptive = self.limit.adaptive

    # -- helpers ------------------------------------------------------------------------
    def _until_return_s(self) -> float:
        """Seconds this drain may still block before it must wrap up and return."""
        return max(0.0, (self.remaining_ms() - RETURN_RESERVE_MS) / 1000)

    def _time_for(self, extra_ms: float = 0) -> bool:
        """Is there time to start one more batch after ``extra_ms`` more (a long poll, a
        backoff, a wait for rate tokens)?"""
        return self.remaining_ms() > self.budget.predict_ms() + self.safety_margin_ms + extra_ms

    def _backoff_left_s(self) -> float:
        return max(0.0, self.state.backoff_until - self._clock())

    def _wait_for_a_worker(self, timeout_s: float) -> None:
        state = self.state
        if state.running:
            state.pool.wait(list(state.running), timeout_s, first=True)
        elif timeout_s:
            self._sleep(timeout_s)

    def _start(self, batch: list[ReceivedMessage]) -> None:
        state = self.state
        for message in batch:
            state.held.remove(message)
            state.record_bytes.pop(message.receipt_handle, None)
        in_flight = len(state.running) + 1
        state.running[state.pool.submit(lambda: self._invoke(batch, in_flight))] = batch
        state.report.dispatched += len(batch)
        state.report.worker_batches += 1
        state.report.peak_parallel = max(state.report.peak_parallel, len(state.running))

    def _record_bytes(self, message: ReceivedMessage) -> int:
        """What ``message`` adds to an invoke payload: its record as JSON, and a comma (measured
        once per receive: a held message is packed again every round)."""
        sizes = self.state.record_bytes
        if message.receipt_handle not in sizes:
            sizes[message.receipt_handle] = len(json.dumps(message.to_sqs_record(self._queue_arn or "")).encode()) + 1
        return sizes[message.receipt_handle]

    def _invoke(self, batch: list[ReceivedMessage], in_flight: int) -> FinishedInvocation:
        arn = self._queue_arn or ""
        payload = {"Records": [m.to_sqs_record(arn) for m in batch], "queueUrl": self.queue.url}
        try:
            result = self.invoker.invoke(payload)
        except ThrottledError as exc:
            return FinishedInvocation(batch, throttled=True, error=str(exc), in_flight=in_flight)
        except Exception as exc:  # any failure leaves the messages in flight: safe, never lost
            return FinishedInvocation(batch, error=f"{type(exc).__name__}: {exc}", in_flight=in_flight)
        if result.function_error:
            return FinishedInvocation(batch, error=str(result.payload), duration_ms=result.duration_ms,
                                      in_flight=in_flight)
        try:
            response = WorkerResponse.from_payload(result.payload)
        except ContractError as exc:
            return FinishedInvocation(batch, error=f"{exc}: {str(result.payload)[:200]}",
                                      duration_ms=result.duration_ms, in_flight=in_flight)
        return FinishedInvocation(batch, response=response, duration_ms=result.duration_ms, in_flight=in_flight)

    def _release(self, messages: list[ReceivedMessage]) -> None:
        if not messages:
            return
        try:
            refused = self.queue.release([m.receipt_handle for m in messages])
        except AwsError as exc:
            refused = [m.receipt_handle for m in messages]
            logger.error("could not release messages; they reappear after the visibility timeout",
                         extra={"messages": len(messages), "error": str(exc)})
        self.state.report.released += len(messages) - len(refused)
        messages.clear()

    @staticmethod
    def _publish(report: DrainReport) -> None:
        logger.info("drain finished", extra={"drain": report.to_dict()})
        for name in ("received", "dispatched", "released", "throttled", "invoke_errors", "worker_batches"):
            count(name, getattr(report, name))
        for outcome in Outcome:
            count(outcome.metric, report.count(outcome))
        metrics.add_metric(name="drain_budget_used_pct", unit=MetricUnit.Percent,
                           value=report.budget_used_pct)
        metrics.add_metric(name="peak_parallel", unit=MetricUnit.Count, value=report.peak_parallel)
        metrics.add_metric(name="concurrency_limit", unit=MetricUnit.Count, value=report.limit)
