"""The drain loop's steps and invariants on an in-memory FIFO queue, worker and clock.

Time is simulated (tests/doubles.py), so budgets, backoffs and slow workers are exact and
instant; the same loop against moto's SQS is tests/functional/test_drain.py."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.aws import InvokeResult
from sluice.budget import BatchBudget
from sluice.concurrency import AdaptiveLimit, BatchSample, FixedLimit
from sluice.contract import Outcome, WorkerResponse
from sluice.drain import RETURN_RESERVE_MS, Drainer, FinishedInvocation
from tests.doubles import FakeClock, InMemoryFifoQueue, InMemoryWorker, SimulatedPool

pytestmark = pytest.mark.unit


@dataclass
class Rig:
    clock: FakeClock
    queue: InMemoryFifoQueue
    worker: InMemoryWorker
    drainer: Drainer
    deadline: float
    pools: list[SimulatedPool] = field(default_factory=list)

    @property
    def pool(self) -> SimulatedPool:
        return self.pools[-1]


def rig(*, groups: int = 0, per_group: int = 0, budget_s: float = 30, slots: int = 2, batch_size: int = 10,
        max_rate: float = 1000, prior_ms: float = 100, margin_ms: float = 500, wait_s: int = 0,
        limit: Any = None, on_submit: Any = None, max_receive_count: int | None = None,
        **worker: Any) -> Rig:
    clock = FakeClock()
    queue = InMemoryFifoQueue(clock, max_receive_count=max_receive_count)
    for n in range(per_group):
        for g in range(groups):
            queue.send(f"g{g}-{n:03d}", f"g{g}")
    stand_in = InMemoryWorker(queue, clock, **worker)
    deadline = clock.now() + budget_s
    pools: list[SimulatedPool] = []

    def make_pool(size: int) -> SimulatedPool:
        pools.append(SimulatedPool(clock, size, on_submit))
        return pools[-1]

    drainer = Drainer(queue, stand_in, remaining_ms=lambda: (deadline - clock.now()) * 1000,
                      slots=slots, max_rate=max_rate, batch_size=batch_size, wait_s=wait_s,
                      safety_margin_ms=margin_ms, budget=BatchBudget(60_000, prior_ms=prior_ms),
                      queue_arn=queue.arn, limit=limit, make_pool=make_pool, clock=clock.now, sleep=clock.sleep)
    return Rig(clock, queue, stand_in, drainer, deadline, pools)


def sent_order(groups: int, per_group: int) -> dict[str, list[str]]:
    return {f"g{g}": [f"g{g}-{n:03d}" for n in range(per_group)] for g in range(groups)}


# -- the loop's invariants ------------------------------------------------------------------

def test_drains_everything_in_group_order_within_the_slots() -> None:
    # GIVEN 6 groups of 5 ordered items, 3 slots, batches of up to 4, workers taking 0.2 s
    r = rig(groups=6, per_group=5, slots=3, batch_size=4, duration_s=lambda call: 0.2)
    # WHEN one drain runs
    report = r.drainer.run()
    # THEN every item was applied once, each group in its send order, each received once
    assert report.stopped_because == "queue_empty"
    assert r.worker.applied == sent_order(6, 5)
    assert set(r.queue.receive_counts().values()) == {1}
    # AND the counts add up, never more than 3 ran at once, every batch within its size
    assert (report.received, report.dispatched, report.succeeded, report.released) == (30, 30, 30, 0)
    assert 2 <= r.pool.peak <= 3 and report.peak_parallel <= 3
    assert all(len(i.message_ids) <= 4 for i in r.worker.invocations)
    # AND it holds nothing, the queue is empty, the pool is closed, and the drain ended in time
    assert r.drainer.state.held == [] and r.queue.messages == []
    assert r.pool.closed
    assert r.clock.now() < r.deadline and report.used_ms <= report.budget_ms


def test_a_group_is_never_split_across_running_workers() -> None:
    # GIVEN one group of 12 and 4 slots: a FIFO queue hands out the group's next messages only
    # once the worker holding its earlier ones has finished
    r = rig(groups=1, per_group=12, slots=4, batch_size=5, duration_s=lambda call: 1.0)
    # WHEN drained
    r.drainer.run()
    # THEN the group ran one batch at a time, in order
    assert r.pool.peak == 1
    assert r.worker.applied == sent_order(1, 12)
    starts = [i.started for i in r.worker.invocations]
    assert all(later - earlier >= 1.0 for earlier, later in zip(starts, starts[1:], strict=False))


def test_a_throttled_batch_is_held_and_retried_after_a_growing_backoff() -> None:
    # GIVEN a worker refused with a 429 on its first 3 invokes, one slot
    r = rig(groups=2, per_group=2, slots=1, throttle=lambda call: call <= 3)
    # WHEN drained
    report = r.drainer.run()
    # THEN the same batch was retried after 0.2, 0.4 and 0.8 s (the throttle backoff) and applied
    first = r.worker.invocations[:4]
    assert [i.result for i in first] == ["throttled", "throttled", "throttled", "ok"]
    assert all(i.message_ids == first[0].message_ids for i in first)
    gaps = [later.started - earlier.started for earlier, later in zip(first, first[1:], strict=False)]
    assert gaps == pytest.approx([0.2, 0.4, 0.8], abs=0.01)
    # AND nothing was released: every message was received exactly once, so a throttle never
    # walks a valid item towards maxReceiveCount and the DLQ
    assert report.throttled == 3 and report.released == 0
    assert report.succeeded == report.dispatched == report.received == 4
    assert set(r.queue.receive_counts().values()) == {1}
    assert r.worker.applied == sent_order(2, 2)


def test_a_batch_still_throttled_when_the_budget_ends_is_released_once() -> None:
    # GIVEN a worker that throttles every invoke, and a 3 s budget
    r = rig(groups=3, per_group=1, slots=1, budget_s=3, throttle=lambda call: True)
    # WHEN drained
    report = r.drainer.run()
    # THEN it kept retrying until the budget ended, applied nothing, then released what it held
    assert report.stopped_because == "budget" and report.throttled >= 3
    assert report.dispatched == 0 and report.worker_batches == 0
    assert report.released == report.received == 3
    # AND each message was received once and is visible again now
    assert set(r.queue.receive_counts().values()) == {1}
    assert len(r.queue.visible()) == 3 and r.drainer.state.held == []
    assert r.clock.now() < r.deadline


def test_throttles_never_cost_a_receive_even_with_a_redrive_policy() -> None:
    # GIVEN a queue that dead-letters on the 2nd receive and a worker whose reserved concurrency
    # (2) is below the drain's 4 slots, so invokes past 2 running are throttled
    r = rig(groups=8, per_group=3, slots=4, batch_size=2, max_receive_count=1, concurrency=2,
            duration_s=lambda call: 0.5)
    # WHEN drained
    report = r.drainer.run()
    # THEN throttles happened and were absorbed: everything applied, in order, nothing dead-lettered
    assert report.throttled >= 1
    assert r.worker.applied == sent_order(8, 3)
    assert r.queue.dead_letters == [] and report.released == 0


def test_a_function_error_leaves_its_messages_in_flight_and_its_group_blocked() -> None:
    # GIVEN 2 groups of 3, 2 slots, and a worker whose first invoke (g0's first two items) fails
    r = rig(groups=2, per_group=3, slots=2, batch_size=3, fail=lambda call: call == 1)
    # WHEN drained
    report = r.drainer.run()
    # THEN the error was counted and its messages left in flight (not released, not retried)
    failed = r.worker.invocations[0]
    assert failed.result == "failed" and len(failed.message_ids) == 2
    assert report.invoke_errors == 1 and report.released == 0
    assert {m.message_id for m in r.queue.in_flight()} == set(failed.message_ids)
    # AND the other group was applied, while the failed group's last item was never handed out
    assert r.worker.applied == {"g1": sent_order(2, 3)["g1"]}
    assert [m.receive_count for m in r.queue.visible()] == [0]
    assert report.stopped_because == "queue_empty"


def test_the_drain_stops_at_its_budget_holding_nothing() -> None:
    # GIVEN 8 groups of 4, workers taking 1 s per batch, a 5 s budget with a 0.5 s margin and a
    # prediction of 1 s per batch
    r = rig(groups=8, per_group=4, slots=1, batch_size=4, budget_s=5, prior_ms=1000,
            duration_s=lambda call: 1.0)
    # WHEN drained
    report = r.drainer.run()
    # THEN it stopped for its budget, before its deadline, having started only what it could finish
    assert report.stopped_because == "budget"
    assert r.clock.now() <= r.deadline and report.used_ms <= report.budget_ms
    assert report.unfinished == 0 and 0 < report.succeeded < 32
    # AND what it did not dispatch is visible again: nothing held, nothing in flight
    assert r.drainer.state.held == [] and r.queue.in_flight() == []
    assert report.received == report.dispatched + report.released
    assert len(r.queue.visible()) + report.succeeded == 32


def test_a_hung_worker_never_keeps_the_drain_past_its_deadline() -> None:
    # GIVEN a worker that takes 100 s while 0.1 s is predicted, and a 3 s budget
    r = rig(groups=1, per_group=2, slots=1, budget_s=3, duration_s=lambda call: 100.0)
    # WHEN drained
    report = r.drainer.run()
    # THEN it returned when its reserve began, reporting the messages still with the worker
    assert r.clock.now() == pytest.approx(r.deadline - RETURN_RESERVE_MS / 1000)
    assert report.dispatched == 2 and report.unfinished == 2 and report.succeeded == 0


def test_the_rate_cap_spaces_dispatches_and_never_waits_past_the_budget() -> None:
    # GIVEN 30 items in 10 groups and a cap of 10 messages/s (burst: one batch of 10)
    r = rig(groups=10, per_group=3, slots=2, max_rate=10, budget_s=60, duration_s=lambda call: 0.01)
    # WHEN drained
    report = r.drainer.run()
    # THEN the 20 messages past the burst took at least 2 s
    assert report.succeeded == 30
    assert r.clock.now() - r.drainer.state.started >= 2.0
    # AND with a 2 messages/s cap and a 3 s budget, it stops instead of waiting for tokens
    r = rig(groups=10, per_group=3, slots=2, max_rate=2, budget_s=3, duration_s=lambda call: 0.01)
    report = r.drainer.run()
    assert report.stopped_because == "budget" and report.received == report.dispatched + report.released
    assert r.clock.now() < r.deadline and r.queue.in_flight() == []


class ScriptedLimit:
    """A stand-in for an adaptive controller: its limit follows a script, one step per sample."""

    floor, ceiling, adaptive = 1, 9, True

    def __init__(self, script: list[int]) -> None:
        self.script = script
        self.observed: list[BatchSample] = []

    def current(self) -> int:
        return self.script[min(len(self.observed), len(self.script) - 1)]

    def on_batch(self, sample: BatchSample) -> None:
        self.observed.append(sample)

    def to_dict(self) -> dict[str, Any]:
        return {"limit": float(self.current()), "baseline_ms": None}


def test_the_limit_in_force_bounds_every_dispatch() -> None:
    # GIVEN a limit that moves 3, 1, 0, 2, 9 as invocations finish, on 4 slots
    limit = ScriptedLimit([3, 1, 0, 2, 9])
    checks: list[tuple[int, int]] = []
    r = rig(groups=12, per_group=2, slots=4, batch_size=1, limit=limit,
            on_submit=lambda running: checks.append((running, limit.current())),
            duration_s=lambda call: 0.3 + 0.1 * (call % 3))
    # WHEN drained
    report = r.drainer.run()
    # THEN no invocation started above the limit in force, clamped to [1, slots]
    assert checks and all(running <= max(1, min(4, current)) for running, current in checks)
    assert r.pool.peak == 4  # the limit's 9 was clamped to the slots, and reached
    # AND the limit saw every finished invocation, with what its workers measured
    assert len(limit.observed) == report.worker_batches
    assert all(s.items == 1 and s.item_ms[0] > 0 and s.retries == 0 for s in limit.observed)
    # AND each sample carries the in-flight count its batch was dispatched at, itself included
    assert {s.in_flight for s in limit.observed} <= {1, 2, 3, 4} and max(s.in_flight for s in limit.observed) == 4
    assert r.worker.applied == sent_order(12, 2)


def knee_rig(limit_of: Any, *, knee: int, slots: int, items: int = 600) -> tuple[Rig, list[tuple[int, int]]]:
    """A drain of ``items`` one-message groups on ``slots`` slots whose worker slows past a knee:
    a batch takes 0.1 s up to ``knee`` invocations at once, proportionally longer above (the
    dependency queues). ``limit_of(clock)`` makes the limit; returns the rig and, per dispatch,
    (invocations running, the limit's current value)."""
    checks: list[tuple[int, int]] = []
    r = rig(groups=items, per_group=1, slots=slots, batch_size=1, budget_s=120,
            on_submit=lambda running: checks.append((running, r.drainer.limit.current())))
    # running() counts the others still running; this invocation makes one more
    r.worker.duration_s = lambda call: 0.1 * max(1.0, (r.worker.running() + 1) / knee)
    r.drainer.limit = limit_of(r.clock.now)
    return r, checks


def test_the_adaptive_limit_bounds_the_drain_and_settles_near_the_dependencys_knee() -> None:
    # GIVEN a dependency that queues past 3 concurrent workers, 8 slots, a controller from 1 to 8
    r, checks = knee_rig(lambda clock: AdaptiveLimit(1, 8, clock=clock), knee=3, slots=8)
    # WHEN one drain runs
    report = r.drainer.run()
    assert report.succeeded == 600
    # THEN the workers in flight followed the controller (never above the limit it had set when
    # each was dispatched, never above the ceiling) and the controller moved: it climbed from 1
    seen = [current for _, current in checks]
    assert all(running <= max(1, current) for running, current in checks)
    assert r.pool.peak <= 8 and max(seen) > 1
    # AND in the second half of the drain it stayed between the knee and 1.5 x the knee (ADR
    # 0004), well below the ceiling
    late = seen[len(seen) // 2:]
    assert 3 <= sum(late) / len(late) <= 4.5 and max(late) < 8
    # AND the report carries the limit in force and its bounds
    assert (report.limit, report.limit_floor, report.limit_ceiling, report.adaptive) == (
        r.drainer.limit.current(), 1, 8, True)


def test_a_fixed_limit_never_moves_whatever_the_dependency_does() -> None:
    # GIVEN the same slow-past-3 dependency and drain.adaptive: false (FixedLimit at the cap)
    r, checks = knee_rig(lambda clock: FixedLimit(8), knee=3, slots=8, items=200)
    report = r.drainer.run()
    # THEN the drain ran at the cap throughout, and the report says so
    assert {current for _, current in checks} == {8} and r.pool.peak == 8
    assert (report.limit, report.limit_floor, report.limit_ceiling, report.adaptive) == (8, 8, 8, False)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(groups=st.integers(1, 6), per_group=st.integers(1, 6), slots=st.integers(1, 4),
       batch_size=st.integers(1, 10), budget_s=st.floats(2, 29),
       durations=st.lists(st.floats(0.01, 8), min_size=1, max_size=8),
       throttled=st.sets(st.integers(1, 30), max_size=10), failed=st.sets(st.integers(1, 30), max_size=3),
       max_rate=st.sampled_from([2.0, 20.0, 1000.0]))
def test_invariants_hold_for_any_mix(groups: int, per_group: int, slots: int, batch_size: int, budget_s: float,
                                     durations: list[float], throttled: set[int], failed: set[int],
                                     max_rate: float) -> None:
    # GIVEN any queue, slots, budget, rate cap, and workers that are slow, throttled or failing
    r = rig(groups=groups, per_group=per_group, slots=slots, batch_size=batch_size, budget_s=budget_s,
            max_rate=max_rate, prior_ms=500, duration_s=lambda call: durations[call % len(durations)],
            throttle=lambda call: call in throttled, fail=lambda call: call in failed)
    # WHEN one drain runs
    report = r.drainer.run()
    # THEN it returned by its deadline, never ran more than its slots, and holds nothing
    assert r.clock.now() <= r.deadline
    assert r.pool.peak <= slots and report.peak_parallel <= slots
    assert r.drainer.state.held == [] and r.pool.closed
    # AND every received message is accounted for: dispatched (once it ran) or released
    assert report.received == report.dispatched + report.released
    # AND no message was received twice: a throttle never costs a receive, and a failed batch
    # stays in flight for the visibility timeout, which (as the settings require) outlasts the drain
    assert set(r.queue.receive_counts().values()) <= {0, 1}
    # AND each group was applied in its send order
    for group, bodies in r.worker.applied.items():
        assert bodies == sent_order(groups, per_group)[group][:len(bodies)]


# -- each step alone --------------------------------------------------------------------------

def finished(r: Rig, batch_ids: list[str] | None = None, **kw: Any) -> FinishedInvocation:
    held = r.drainer.state.held
    batch = [m for m in held if batch_ids is None or m.message_id in batch_ids]
    return FinishedInvocation(batch, **kw)


def test_settle_counts_the_outcomes_the_worker_reported() -> None:
    # GIVEN a drain holding 4 received messages, and a worker answer with one result of each kind
    r = rig(groups=4, per_group=1)
    r.drainer.begin()
    r.drainer.state.held = r.queue.receive(10)
    ids = [m.message_id for m in r.drainer.state.held]
    outcomes = [Outcome.DONE, Outcome.DUPLICATE, Outcome.DEAD_LETTERED, Outcome.RETRY]
    response = WorkerResponse.from_payload({"results": [{"messageId": m, "outcome": o.value, "ms": 2}
                                                        for m, o in zip(ids, outcomes, strict=True)]})
    # WHEN settled
    r.drainer.settle(finished(r, response=response, duration_ms=40))
    # THEN each outcome was counted once, and the duration went into the prediction
    report = r.drainer.state.report
    assert (report.succeeded, report.duplicates, report.dead_lettered, report.retried) == (1, 1, 1, 1)
    assert r.drainer.budget.samples == 1


def test_settle_reads_a_plain_sqs_partial_batch_response() -> None:
    # GIVEN a worker answer with failures listed and no results (any SQS-trigger worker's shape)
    r = rig(groups=3, per_group=1)
    r.drainer.begin()
    r.drainer.state.held = r.queue.receive(10)
    ids = [m.message_id for m in r.drainer.state.held]
    response = WorkerResponse.from_payload({"batchItemFailures": [{"itemIdentifier": ids[1]}]})
    # WHEN settled / THEN the listed one counts as retried, the others as succeeded
    r.drainer.settle(finished(r, response=response))
    assert (r.drainer.state.report.succeeded, r.drainer.state.report.retried) == (2, 1)


def test_settle_holds_a_throttled_batch_in_front_and_arms_a_doubling_backoff() -> None:
    # GIVEN a drain holding m1..m3 that had dispatched m1 (counted) before its invoke was throttled
    r = rig(groups=3, per_group=1, slots=3)
    state = r.drainer.begin()
    received = r.queue.receive(10)
    state.held = received[1:]
    state.report.dispatched, state.report.worker_batches = 1, 1
    # WHEN the throttle is settled, and again after the batch was dispatched once more
    r.drainer.settle(FinishedInvocation(received[:1], throttled=True))
    first_until = state.backoff_until
    assert state.held == received and state.report.dispatched == 0
    state.held.remove(received[0])
    state.report.dispatched, state.report.worker_batches = 1, 1
    r.drainer.settle(FinishedInvocation(received[:1], throttled=True))
    # THEN the batch is held again at the front, no longer counted as dispatched, nothing released
    assert state.held == received
    assert (state.report.dispatched, state.report.worker_batches) == (0, 0)
    assert state.report.throttled == 2 and state.report.released == 0
    # AND the backoff doubled from the base (0.2 s, then 0.4 s), and the slots fell to what runs
    assert first_until == pytest.approx(r.clock.now() + 0.2)
    assert state.backoff_until == pytest.approx(r.clock.now() + 0.4)
    assert r.drainer.throttle_slots == 1 and r.drainer.limit_in_force() == 1
    # AND an invocation that ran resets the backoff and raises the slots again
    r.drainer.settle(FinishedInvocation([], response=WorkerResponse()))
    assert state.throttles_in_a_row == 0 and r.drainer.throttle_slots == 2


def test_settle_counts_a_failed_invoke_and_leaves_its_messages_alone() -> None:
    r = rig(groups=2, per_group=1)
    r.drainer.begin()
    batch = r.queue.receive(10)
    r.drainer.settle(FinishedInvocation(batch, error="RuntimeError: boom", duration_ms=900))
    assert r.drainer.state.report.invoke_errors == 1 and r.drainer.state.report.released == 0
    assert r.drainer.state.held == [] and len(r.queue.in_flight()) == 2
    assert r.drainer.budget.predict_ms() == 900


def test_collect_finished_settles_only_what_has_finished() -> None:
    # GIVEN two running invocations, of 1 s and 5 s
    r = rig(groups=2, per_group=1, slots=2, batch_size=1, duration_s=lambda call: 1.0 if call == 1 else 5.0)
    state = r.drainer.begin()
    state.held = r.queue.receive(10)
    r.drainer.dispatch(2)
    assert len(state.running) == 2
    # WHEN 2 s pass and the finished ones are collected
    r.clock.sleep(2)
    r.drainer.collect_finished()
    # THEN the first was settled, the second still runs
    assert state.report.succeeded == 1 and len(state.running) == 1


def test_back_off_waits_out_the_backoff_or_until_a_worker_finishes() -> None:
    # GIVEN a drain with nothing running, not backing off
    r = rig(groups=1, per_group=1, slots=2, duration_s=lambda call: 0.3)
    state = r.drainer.begin()
    start = r.clock.now()
    # WHEN asked to back off / THEN it does nothing
    assert r.drainer.back_off() is False and r.clock.now() == start
    # WHEN a 0.5 s backoff is armed / THEN it waits exactly that
    state.backoff_until = start + 0.5
    assert r.drainer.back_off() is True and r.clock.now() == pytest.approx(start + 0.5)
    assert r.drainer.back_off() is False
    # WHEN a 1 s backoff is armed while a 0.3 s worker runs / THEN it wakes when the worker is done
    state.held = r.queue.receive(10)
    r.drainer.dispatch(1)
    state.backoff_until = r.clock.now() + 1
    assert r.drainer.back_off() is True
    assert r.clock.now() == pytest.approx(start + 0.8)
    r.drainer.collect_finished()
    assert state.report.succeeded == 1


def test_a_backoff_that_outlasts_the_budget_ends_the_drain_at_once() -> None:
    # GIVEN a worker throttled on every invoke, a 4 s budget and a backoff that starts at 2 s
    r = rig(groups=2, per_group=1, slots=1, budget_s=4, throttle=lambda call: True)
    r.drainer.throttle_backoff_s = 2.0
    r.drainer.max_throttle_backoff_s = 10.0
    # WHEN drained
    report = r.drainer.run()
    # THEN it retried once after 2 s, and stopped at the second throttle instead of waiting 4 s
    # more: the held batch could not start in time anyway, so it is released now
    assert [i.started - r.worker.invocations[0].started for i in r.worker.invocations] == pytest.approx(
        [0, 2.005], abs=0.001)
    assert report.stopped_because == "budget" and report.released == 2
    assert r.clock.now() == pytest.approx(r.worker.invocations[-1].started + 0.005)


def test_free_slots_come_from_the_limit_clamped_to_the_slots() -> None:
    limit = ScriptedLimit([0])
    r = rig(groups=3, per_group=1, slots=3, batch_size=1, limit=limit, duration_s=lambda call: 9)
    r.drainer.begin()
    assert r.drainer.free_slots() == 1  # a limit of 0 still lets one worker run
    limit.script = [99]
    assert r.drainer.free_slots() == 3  # never above the slots
    r.drainer.state.held = r.queue.receive(10)
    r.drainer.dispatch(3)
    assert r.drainer.free_slots() == 0
    limit.script = [2]
    assert r.drainer.free_slots() == -1  # running above a lowered limit: nothing more starts


def test_refill_receives_what_the_free_slots_can_take_and_long_polls_only_when_idle() -> None:
    # GIVEN 30 messages in 30 groups, batches of 4, a drain that may long-poll 1 s
    r = rig(groups=30, per_group=1, batch_size=4, wait_s=1)
    state = r.drainer.begin()
    # WHEN it refills 2 free slots while idle / THEN it asked for one batch, long-polling, and
    # since that came back full (a deep backlog), for the second slot's batch at once
    assert r.drainer.refill(2) is True
    assert r.queue.receive_calls == [(4, 1), (4, 0)] and len(state.held) == 8
    # WHEN what it holds already fills the slots / THEN it does not receive
    r.drainer.refill(2)
    assert len(r.queue.receive_calls) == 2 and state.report.received == 8
    # WHEN it holds 6 of 8 and the queue has 2 / THEN it asks for the 2 more, without waiting
    state.held = state.held[:6]
    r.drainer.refill(2)
    assert r.queue.receive_calls[-1] == (2, 0) and len(state.held) == 8


def test_refill_stops_at_a_short_receive_and_at_the_budget() -> None:
    # GIVEN 5 messages, batches of 4 on 2 free slots
    r = rig(groups=5, per_group=1, batch_size=4)
    state = r.drainer.begin()
    # WHEN refilled / THEN the second receive came back short (1 of 4): no third one
    r.drainer.refill(2)
    assert r.queue.receive_calls == [(4, 0), (4, 0)] and len(state.held) == 5
    # GIVEN a deep backlog but no time for one more batch after the first receive
    r = rig(groups=30, per_group=1, batch_size=4, budget_s=0.55, prior_ms=0, margin_ms=500)
    r.drainer.begin()
    r.clock.sleep(0.06)  # 490 ms left: less than the 500 ms margin
    r.drainer.refill(2)
    # THEN it received once and dispatches what it has rather than receiving past the budget
    assert r.queue.receive_calls == [(4, 0)]


def test_refill_on_an_empty_queue_reports_nothing_to_dispatch() -> None:
    r = rig(wait_s=1)
    r.drainer.begin()
    assert r.drainer.refill(2) is False
    assert r.drainer.state.report.received == 0


def test_dispatch_spreads_what_is_held_over_the_free_slots() -> None:
    # GIVEN 8 held messages of 8 groups and 4 free slots
    r = rig(groups=8, per_group=1, slots=4, duration_s=lambda call: 1.0)
    state = r.drainer.begin()
    r.drainer.refill(4)
    # WHEN dispatched / THEN 4 workers got 2 each, and nothing is held
    assert r.drainer.dispatch(4) is True
    assert sorted(len(i.message_ids) for i in r.worker.invocations) == [2, 2, 2, 2]
    assert state.held == [] and state.report.dispatched == 8 and state.report.peak_parallel == 4


def test_dispatch_keeps_what_the_rate_cap_would_start_past_the_budget() -> None:
    # GIVEN 20 held messages, a cap of 1 message/s (burst: one batch of 10) and a 5 s budget
    r = rig(groups=20, per_group=1, slots=2, max_rate=1, budget_s=5)
    state = r.drainer.begin()
    state.held = r.queue.receive(10) + r.queue.receive(10)
    # WHEN dispatched
    assert r.drainer.dispatch(2) is False
    # THEN the first batch went, the second stays held (10 s of tokens would pass the budget)
    assert state.report.dispatched == 10 and len(state.held) == 10


def test_dispatch_starts_nothing_without_time_for_a_batch() -> None:
    r = rig(groups=2, per_group=1, budget_s=0.4)
    state = r.drainer.begin()
    state.held = r.queue.receive(10)
    assert r.drainer.dispatch(2) is True
    assert r.worker.invocations == [] and len(state.held) == 2


def test_finish_releases_what_is_held_waits_for_workers_and_reports() -> None:
    # GIVEN a drain holding 2 messages, with 2 invocations running: one ends in 1 s, one in 60 s
    r = rig(groups=4, per_group=1, slots=2, batch_size=1, budget_s=10,
            duration_s=lambda call: 1.0 if call == 1 else 60.0)
    state = r.drainer.begin()
    state.held = r.queue.receive(2)
    r.drainer.dispatch(2)
    state.held = r.queue.receive(10)
    assert len(state.held) == 2
    # WHEN it finishes
    r.drainer.finish()
    # THEN it released what it held at once, settled the 1 s worker, and left the other running
    report = state.report
    assert report.released == 2 and state.held == []
    assert report.succeeded == 1 and report.unfinished == 1
    # AND it waited no longer than its deadline minus the reserve to return in, and closed the pool
    assert r.clock.now() == pytest.approx(r.deadline - RETURN_RESERVE_MS / 1000)
    assert r.pool.closed and report.used_ms == int((r.clock.now() - state.started) * 1000)


def test_finish_releases_a_batch_throttled_while_it_waited() -> None:
    # GIVEN a running invoke whose 429 comes back only after the drain stopped dispatching
    r = rig(groups=1, per_group=3, slots=1, batch_size=3, throttle=lambda call: True)
    r.drainer.begin()
    r.drainer.refill(1)
    r.drainer.dispatch(1)
    # WHEN it finishes
    r.drainer.finish()
    # THEN the throttled batch counts as released, not as dispatched, and is visible again
    report = r.drainer.state.report
    assert (report.throttled, report.dispatched, report.worker_batches, report.released) == (1, 0, 0, 3)
    assert len(r.queue.visible()) == 3


# -- the in-memory queue behaves like SQS FIFO where the drain relies on it ----------------

def test_the_fifo_double_blocks_a_group_while_one_of_its_messages_is_in_flight() -> None:
    clock = FakeClock()
    queue = InMemoryFifoQueue(clock, visibility_s=30)
    for body, group in [("a1", "a"), ("b1", "b"), ("a2", "a")]:
        queue.send(body, group)
    first = queue.receive(1)
    assert [m.body for m in first] == ["a1"]
    # a's next message waits while a1 is in flight; b's is handed out
    assert [m.body for m in queue.receive(10)] == ["b1"]
    # after a1's visibility runs out it comes back first, received a second time
    clock.sleep(30)
    again = queue.receive(10)
    assert [(m.body, m.receive_count) for m in again] == [("a1", 2), ("b1", 2), ("a2", 1)]
    # a stale receipt handle is refused; the current one deletes
    assert queue.delete_batch([first[0].receipt_handle]) == [first[0].receipt_handle]
    assert queue.delete_batch([again[0].receipt_handle]) == []


def test_the_worker_double_answers_in_the_contracts_shape() -> None:
    clock = FakeClock()
    queue = InMemoryFifoQueue(clock)
    queue.send("x", "g")
    worker = InMemoryWorker(queue, clock)
    [message] = queue.receive(1)
    with clock.call():
        result = worker.invoke({"Records": [message.to_sqs_record(queue.arn)], "queueUrl": queue.url})
    assert isinstance(result, InvokeResult) and result.function_error is None
    assert WorkerResponse.from_payload(result.payload).outcomes([message.message_id]) == {Outcome.DONE: 1}


def test_the_after_429_bound_falls_to_what_runs_and_climbs_back_by_one_over_any_limit() -> None:
    # GIVEN a fixed limit of 4 (the default) with 2 invocations running
    r = rig(groups=2, per_group=1, slots=4, batch_size=1, duration_s=lambda call: 9)
    state = r.drainer.begin()
    assert isinstance(r.drainer.limit, FixedLimit) and r.drainer.limit_in_force() == 4
    state.held = r.queue.receive(10)
    r.drainer.dispatch(2)
    # WHEN an invoke is throttled / THEN the drain's own bound falls to what runs, below the limit
    r.drainer.settle(FinishedInvocation([], throttled=True))
    assert (r.drainer.throttle_slots, r.drainer.limit_in_force(), r.drainer.limit.current()) == (2, 2, 4)
    # AND each invocation that ran raises it by one, up to the slots
    for expected in (3, 4, 4):
        r.drainer.settle(FinishedInvocation([], response=WorkerResponse()))
        assert r.drainer.limit_in_force() == expected
    state.running.clear()
    r.drainer.settle(FinishedInvocation([], throttled=True))
    assert r.drainer.limit_in_force() == 1


# -- batches above one receive ------------------------------------------------------------

def run_rig(groups: int, per_group: int, body_bytes: int = 0, **kwargs: Any) -> Rig:
    """A rig whose groups were sent one after the other (each group's messages in a row), so a
    receive hands out a run of one group, in order."""
    r = rig(**kwargs)
    for g in range(groups):
        for n in range(per_group):
            r.queue.send(f"g{g}-{n:03d}" + "x" * body_bytes, f"g{g}")
    return r


def applied_in_order(r: Rig, groups: int, per_group: int, body_bytes: int = 0) -> bool:
    return r.worker.applied == {f"g{g}": [f"g{g}-{n:03d}" + "x" * body_bytes for n in range(per_group)]
                                for g in range(groups)}


def test_a_deep_backlog_fills_batches_above_ten_keeping_each_group_in_order() -> None:
    # GIVEN 6 groups of 10 sent one group after the other, batches of up to 30, 2 slots
    r = run_rig(6, 10, slots=2, batch_size=30, duration_s=lambda call: 1.0)
    # WHEN drained
    report = r.drainer.run()
    # THEN each invocation carried 30 messages (three receives' worth), whole groups in order
    assert [len(i.message_ids) for i in r.worker.invocations] == [30, 30]
    assert all(r.queue.receive_calls[k][0] <= 10 for k in range(len(r.queue.receive_calls)))
    assert applied_in_order(r, 6, 10) and report.succeeded == 60
    assert set(r.queue.receive_counts().values()) == {1}


class SizingInvoker:
    """The worker behind an invoke, noting each request payload's size as it crosses the wire."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.sizes: list[int] = []

    def invoke(self, payload: Any, *, asynchronous: bool = False) -> InvokeResult:
        self.sizes.append(len(json.dumps(payload).encode()))
        result: InvokeResult = self.worker.invoke(payload)
        return result


def test_a_batch_closes_before_lambdas_synchronous_payload_limit() -> None:
    # GIVEN 4 groups of 10 messages of 200 KB (8 MB in all), batches of up to 100, one slot
    r = run_rig(4, 10, body_bytes=200_000, slots=1, batch_size=100, duration_s=lambda call: 1.0)
    sizing = SizingInvoker(r.worker)
    r.drainer.invoker = sizing
    # WHEN drained
    report = r.drainer.run()
    # THEN no invoke payload reached 6 MB, batches were as full as that allows, all in order
    assert sizing.sizes and max(sizing.sizes) <= 6 * 1024 * 1024
    assert len(r.worker.invocations) == 2 and report.succeeded == 40
    assert applied_in_order(r, 4, 10, body_bytes=200_000)


def test_a_run_cut_at_the_payload_limit_waits_for_its_head() -> None:
    # GIVEN one group of 10 messages of ~1 KB, a payload bound of about 3 records, 3 slots
    r = run_rig(1, 10, body_bytes=1000, slots=3, batch_size=10, duration_s=lambda call: 1.0)
    [probe] = r.queue.receive(1)
    r.queue.release([probe.receipt_handle])
    r.drainer.max_payload_bytes = 3 * (len(json.dumps(probe.to_sqs_record(r.queue.arn)).encode()) + 1) + 10
    # WHEN drained
    r.drainer.run()
    # THEN every batch stayed within the bound and the group ran one batch at a time, in order
    assert all(len(i.message_ids) <= 3 for i in r.worker.invocations) and r.pool.peak == 1
    starts = [i.started for i in r.worker.invocations]
    assert all(later - earlier >= 1.0 for earlier, later in zip(starts, starts[1:], strict=False))
    assert applied_in_order(r, 1, 10, body_bytes=1000)
