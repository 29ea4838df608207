"""In-memory stand-ins for the drain loop's unit tests: a fake clock that is also a tiny
discrete-event scheduler, an SQS FIFO queue, a worker function and the pool that runs it.

Only for pure-logic tests of ``sluice.drain`` (tests/unit/test_drain_loop.py); the same loop
runs against moto in tests/functional/test_drain.py. Time is simulated: nothing here sleeps,
so a drain of a 60 s budget with slow workers runs in milliseconds and always the same way.

How time works: ``FakeClock.sleep`` moves time forward and runs what was scheduled up to
then. A worker invocation runs synchronously inside ``SimulatedPool.submit`` on the clock's
*call time* (its sleeps add up without moving the drain's time), and its effects (messages
applied, deleted) and its completion are scheduled for when it would have finished. So a
running worker's messages stay in flight, and its group blocked, until that moment, as on SQS.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sluice.aws import InvokeResult, ReceivedMessage, ThrottledError
from sluice.contract import Outcome, WorkerResponse, WorkerResult

T = TypeVar("T")


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._call_elapsed: float | None = None  # seconds spent inside the invocation running now

    def now(self) -> float:
        return self._now + (self._call_elapsed or 0.0)

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (when, next(self._seq), action))

    def next_event(self) -> float | None:
        return self._events[0][0] if self._events else None

    def sleep(self, seconds: float) -> None:
        if self._call_elapsed is not None:
            self._call_elapsed += max(0.0, seconds)
        else:
            self.advance_to(self._now + max(0.0, seconds))

    def advance_to(self, when: float) -> None:
        """Move time to ``when``, running each scheduled action at its own time on the way."""
        while self._events and self._events[0][0] <= when:
            at, _, action = heapq.heappop(self._events)
            self._now = max(self._now, at)
            action()
        self._now = max(self._now, when)

    @contextmanager
    def call(self) -> Iterator[list[float]]:
        """Run an invocation on its own time; yields a list that holds its duration afterwards."""
        assert self._call_elapsed is None, "invocations do not nest"
        self._call_elapsed = 0.0
        elapsed: list[float] = []
        try:
            yield elapsed
        finally:
            elapsed.append(self._call_elapsed)
            self._call_elapsed = None


@dataclass
class StoredMessage:
    message_id: str
    body: str
    group_id: str
    sent_at: float
    receive_count: int = 0
    receipt_handle: str = ""
    visible_at: float = 0.0  # in flight until then

    def in_flight(self, now: float) -> bool:
        return now < self.visible_at


class InMemoryFifoQueue:
    """SQS FIFO as the drain sees it: a receive hands out no message of a group that has one in
    flight (received, not deleted, visibility not over), messages of one group in send order;
    every receive counts (ApproximateReceiveCount) and gets a fresh receipt handle; with
    ``max_receive_count``, a message received that many times moves to ``dead_letters`` on
    its next receive, as a redrive policy does."""

    def __init__(self, clock: FakeClock, *, visibility_s: float = 30.0, max_receive_count: int | None = None,
                 name: str = "work.fifo") -> None:
        self.clock = clock
        self.visibility_s = visibility_s
        self.max_receive_count = max_receive_count
        self.url = f"memory://queue/{name}"
        self.arn = f"arn:aws:sqs:us-east-1:000000000000:{name}"
        self.messages: list[StoredMessage] = []  # not deleted, in send order
        self.deleted: list[StoredMessage] = []
        self.dead_letters: list[StoredMessage] = []
        self.receive_calls: list[tuple[int, int]] = []  # (asked, wait_s) per receive
        self._ids = itertools.count(1)

    # -- test side ---------------------------------------------------------------------
    def send(self, body: str, group_id: str) -> str:
        message = StoredMessage(f"m{next(self._ids)}", body, group_id, self.clock.now())
        self.messages.append(message)
        return message.message_id

    def visible(self) -> list[StoredMessage]:
        now = self.clock.now()
        return [m for m in self.messages if not m.in_flight(now)]

    def in_flight(self) -> list[StoredMessage]:
        now = self.clock.now()
        return [m for m in self.messages if m.in_flight(now)]

    def receive_counts(self) -> dict[str, int]:
        return {m.message_id: m.receive_count for m in self.messages + self.deleted + self.dead_letters}

    # -- what the drain calls ----------------------------------------------------------
    def receive(self, max_messages: int = 10, wait_s: int = 0, visibility_s: int | None = None
                ) -> list[ReceivedMessage]:
        self.receive_calls.append((max_messages, wait_s))
        deadline = self.clock.now() + wait_s
        taken = self._take(max_messages, visibility_s)
        while not taken and self.clock.now() < deadline:
            # Long poll: wait until something could change (a worker finishing, a visibility
            # running out) or the poll ends.
            expiries = [m.visible_at for m in self.in_flight()]
            upcoming = [t for t in [self.clock.next_event(), *expiries] if t is not None]
            self.clock.advance_to(min([deadline, *upcoming]))
            taken = self._take(max_messages, visibility_s)
        return taken

    def _take(self, max_messages: int, visibility_s: float | None) -> list[ReceivedMessage]:
        now = self.clock.now()
        blocked = {m.group_id for m in self.messages if m.in_flight(now)}
        taken: list[StoredMessage] = []
        for message in list(self.messages):
            if len(taken) == max_messages:
                break
            if message.group_id in blocked:
                continue
            if self.max_receive_count is not None and message.receive_count >= self.max_receive_count:
                self.messages.remove(message)
                self.dead_letters.append(message)
                continue
            taken.append(message)
        for message in taken:
            message.receive_count += 1
            message.receipt_handle = f"{message.message_id}#{message.receive_count}"
            message.visible_at = now + (self.visibility_s if visibility_s is None else visibility_s)
        return [ReceivedMessage(
            message_id=m.message_id, receipt_handle=m.receipt_handle, body=m.body, group_id=m.group_id,
            receive_count=m.receive_count, sent_timestamp_ms=int(m.sent_at * 1000),
            attributes={"MessageGroupId": m.group_id, "ApproximateReceiveCount": str(m.receive_count),
                        "SentTimestamp": str(int(m.sent_at * 1000)), "MessageDeduplicationId": m.message_id},
            message_attributes={}) for m in taken]

    def _current(self, receipt_handle: str) -> StoredMessage | None:
        """The message this handle names, if the handle is from its latest receive and its
        visibility has not run out (SQS refuses the others)."""
        now = self.clock.now()
        for message in self.messages:
            if message.receipt_handle == receipt_handle and message.in_flight(now):
                return message
        return None

    def release(self, receipt_handles: Iterable[str]) -> list[str]:
        return self.change_visibility_batch(receipt_handles, 0)

    def change_visibility_batch(self, receipt_handles: Iterable[str], seconds: float) -> list[str]:
        def push_out(message: StoredMessage) -> None:
            message.visible_at = self.clock.now() + seconds

        return self._each_current(receipt_handles, push_out)

    def change_visibility(self, receipt_handle: str, seconds: int) -> None:
        self.change_visibility_batch([receipt_handle], seconds)

    def delete_batch(self, receipt_handles: Iterable[str]) -> list[str]:
        def delete(message: StoredMessage) -> None:
            self.messages.remove(message)
            self.deleted.append(message)

        return self._each_current(receipt_handles, delete)

    def _each_current(self, receipt_handles: Iterable[str], action: Callable[[StoredMessage], None]) -> list[str]:
        """``action`` on the message of each current handle; returns the handles SQS would refuse."""
        refused = []
        for handle in receipt_handles:
            message = self._current(handle)
            if message is None:
                refused.append(handle)
            else:
                action(message)
        return refused

    def delete(self, receipt_handle: str) -> None:
        self.delete_batch([receipt_handle])


@dataclass
class Invocation:
    call: int
    started: float
    message_ids: list[str]
    result: str  # "ok" | "throttled" | "failed"


@dataclass
class InMemoryWorker:
    """The worker function behind an invoke: applies each record in order (notes its body per
    group) and deletes it when the invocation ends, answering with the contract's response.

    Per call number (1-based, in the order invocations start): ``throttle(call)`` -> refused
    with a 429 after ``throttle_s``; ``fail(call)`` -> a function error after its duration,
    messages left in flight; ``duration_s(call)`` -> how long the batch takes. With
    ``concurrency``, a call that finds that many invocations running is throttled (the
    function's reserved concurrency). ``outcome(body)`` is each message's outcome (done by
    default): done / duplicate / dead_lettered delete the message, retry pushes its
    visibility out by ``retry_visibility_s``."""

    queue: InMemoryFifoQueue
    clock: FakeClock
    duration_s: Callable[[int], float] = lambda call: 0.1
    throttle: Callable[[int], bool] = lambda call: False
    fail: Callable[[int], bool] = lambda call: False
    concurrency: int | None = None
    outcome: Callable[[str], Outcome] = lambda body: Outcome.DONE
    throttle_s: float = 0.005
    retry_visibility_s: float = 60.0
    invocations: list[Invocation] = field(default_factory=list)
    applied: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # group -> bodies
    _ends: list[float] = field(default_factory=list)

    def running(self) -> int:
        now = self.clock.now()
        return sum(1 for end in self._ends if end > now)

    def invoke(self, payload: Any, *, asynchronous: bool = False) -> InvokeResult:
        event = json.loads(json.dumps(payload))  # what crosses the wire
        call = len(self.invocations) + 1
        started = self.clock.now()
        ids = [r["messageId"] for r in event["Records"]]
        if self.throttle(call) or (self.concurrency is not None and self.running() >= self.concurrency):
            self.invocations.append(Invocation(call, started, ids, "throttled"))
            self.clock.sleep(self.throttle_s)
            raise ThrottledError("worker is throttled: Rate Exceeded")
        duration_s = self.duration_s(call)
        self._ends.append(started + duration_s)
        if self.fail(call):
            self.invocations.append(Invocation(call, started, ids, "failed"))
            self.clock.sleep(duration_s)
            return InvokeResult(200, {"errorMessage": "boom", "errorType": "RuntimeError"}, "Unhandled",
                                duration_s * 1000)
        self.invocations.append(Invocation(call, started, ids, "ok"))
        records = event["Records"]
        results = [WorkerResult(r["messageId"], self.outcome(r["body"]), 1000 * duration_s / len(records))
                   for r in records]
        self.clock.at(started + duration_s, lambda: self._finish(records, results))
        self.clock.sleep(duration_s)
        answer = json.loads(json.dumps(WorkerResponse.of(results).to_payload()))
        return InvokeResult(200, answer, None, duration_s * 1000)

    def _finish(self, records: list[dict[str, Any]], results: list[WorkerResult]) -> None:
        for record, result in zip(records, results, strict=True):
            if result.outcome is Outcome.RETRY:
                self.queue.change_visibility(record["receiptHandle"], int(self.retry_visibility_s))
                continue
            if result.outcome is Outcome.DONE:
                self.applied[record["attributes"]["MessageGroupId"]].append(record["body"])
            self.queue.delete(record["receiptHandle"])


class SimulatedPool:
    """The drain's worker pool on simulated time (see the module docstring); records how many
    invocations were running at once, and refuses to run more than its size."""

    def __init__(self, clock: FakeClock, size: int, on_submit: Callable[[int], None] | None = None) -> None:
        self.clock = clock
        self.size = size
        self.on_submit = on_submit
        self.running: set[Future[Any]] = set()
        self.peak = 0
        self.closed = False

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        assert not self.closed, "submit after close"
        assert len(self.running) < self.size, f"a {len(self.running) + 1}th invocation on {self.size} slots"
        future: Future[T] = Future()
        with self.clock.call() as elapsed:
            result = fn()
        self.running.add(future)
        self.peak = max(self.peak, len(self.running))
        if self.on_submit is not None:
            self.on_submit(len(self.running))

        def complete() -> None:
            self.running.discard(future)
            future.set_result(result)

        self.clock.at(self.clock.now() + elapsed[0], complete)
        return future

    def wait(self, futures: Collection[Future[Any]], timeout_s: float | None, *, first: bool) -> None:
        deadline = math.inf if timeout_s is None else self.clock.now() + timeout_s

        def satisfied() -> bool:
            done = [f.done() for f in futures]
            return any(done) if first else all(done)

        while not satisfied():
            upcoming = self.clock.next_event()
            if upcoming is None or upcoming > deadline:
                assert deadline < math.inf, "waiting forever: nothing is left to happen"
                self.clock.advance_to(deadline)
                return
            self.clock.advance_to(upcoming)

    def close(self) -> None:
        self.closed = True
