"""The adaptive concurrency limit, on a simulated dependency and an injected clock: no waiting."""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.concurrency import (
    AdaptiveLimit,
    BatchSample,
    ConcurrencyLimit,
    ConcurrencyLimitError,
    FixedLimit,
    limit_for,
)
from sluice.settings import RuntimeConfig
from tests.helpers import SteppedClock

pytestmark = pytest.mark.unit

ITEMS = 10  # messages per simulated worker batch


@dataclass
class Dependency:
    """A database or vendor: per-item latency is flat up to ``knee`` invocations at once and grows
    in proportion past it (a saturated server: the extra ones queue), times ``slowdown``."""

    base_ms: float = 10.0
    knee: int = 1000
    slowdown: float = 1.0
    noise: float = 0.0  # coefficient of variation of a batch's latency (seeded: deterministic)
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def item_ms(self, concurrency: int) -> float:
        jitter = max(0.2, 1 + self.noise * self.rng.gauss(0, 1)) if self.noise else 1.0
        return self.base_ms * self.slowdown * max(1.0, concurrency / self.knee) * jitter


@dataclass
class SimulatedDrain:
    """The drain's dispatch step without AWS: keep ``limit.current()`` invocations in flight,
    report each one as it finishes, in finishing order, on the stepped clock."""

    limit: ConcurrencyLimit
    dependency: Dependency
    clock: SteppedClock
    _running: list[tuple[float, int, int, float]] = field(default_factory=list)
    _started: int = 0

    def run(self, batches: int) -> list[int]:
        """Finish ``batches`` invocations; the limit in force after each."""
        limits = []
        for _ in range(batches):
            while len(self._running) < self.limit.current():
                in_flight = len(self._running) + 1
                ms = self.dependency.item_ms(in_flight)
                heapq.heappush(self._running, (self.clock.now + ITEMS * ms / 1000, self._started, in_flight, ms))
                self._started += 1
            finished_at, _, in_flight, ms = heapq.heappop(self._running)
            self.clock.now = max(self.clock.now, finished_at)
            self.limit.on_batch(BatchSample(in_flight=in_flight, items=ITEMS, item_ms=[ms] * ITEMS))
            limits.append(self.limit.current())
        return limits

    def run_for(self, seconds: float) -> list[int]:
        end, limits = self.clock.now + seconds, []
        while self.clock.now < end:
            limits += self.run(1)
        return limits


def simulated(floor: int = 1, ceiling: int = 8, knee: int = 1000, noise: float = 0.0, seed: int = 0,
              **params: float) -> SimulatedDrain:
    clock = SteppedClock()
    dependency = Dependency(knee=knee, noise=noise, rng=random.Random(seed))
    return SimulatedDrain(AdaptiveLimit(floor, ceiling, clock=clock, **params), dependency, clock)


def at_the_ceiling(ceiling: int = 8) -> SimulatedDrain:
    """A drain that has run long enough, on a dependency that keeps up, to be at its ceiling."""
    drain = simulated(ceiling=ceiling)
    drain.run(100)
    assert drain.limit.current() == ceiling
    return drain


def assert_climbs_to_the_ceiling(limits: list[int], ceiling: int = 8) -> None:
    """Within a few rounds (about 7 from the floor), and it stays there."""
    assert batches_until(limits, lambda limit: limit == ceiling) <= 40, limits
    assert limits[-30:] == [ceiling] * 30


def batches_until(limits: list[int], condition: object) -> int:
    """How many batches it took until ``condition(limit)`` first held (len+1 if never)."""
    assert callable(condition)
    return next((i + 1 for i, limit in enumerate(limits) if condition(limit)), len(limits) + 1)


# -- the requirements on a simulated dependency --------------------------------------------


@pytest.mark.parametrize("knee", [2, 4, 8])
def test_converges_near_the_knee(knee: int) -> None:
    # GIVEN a dependency flat up to `knee` invocations at once, and a ceiling far above it
    drain = simulated(ceiling=32, knee=knee)
    # WHEN the drain has run a while
    drain.run(200)
    settled = drain.run(400)
    # THEN the limit hovers between the knee and what the tolerance (1.5) allows past it,
    # never running below the knee's full throughput for long, nor near the ceiling
    mean = sum(settled) / len(settled)
    assert knee <= mean <= 1.5 * knee + 1, (knee, mean, sorted(set(settled)))
    assert max(settled) <= 2 * knee + 1
    assert drain.limit.to_dict()["baseline_ms"] == pytest.approx(10.0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_noisy_latency_costs_little_throughput(seed: int) -> None:
    # GIVEN a dependency that keeps up with the ceiling, but whose batch latency varies by 30%
    drain = simulated(ceiling=8, noise=0.3, seed=seed)
    # WHEN it drains for ten minutes
    drain.run(200)
    settled = drain.run_for(600)
    # THEN noise alone seldom reads as a slowdown: the limit averages within 5% of the ceiling
    assert sum(settled) / len(settled) >= 0.95 * 8


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_converges_near_the_knee_through_noise(seed: int) -> None:
    # GIVEN a knee at 4 invocations and batch latencies that vary by 30%
    drain = simulated(ceiling=32, knee=4, noise=0.3, seed=seed)
    drain.run(200)
    settled = drain.run_for(600)
    # THEN the limit still hovers around the knee
    assert 3.5 <= sum(settled) / len(settled) <= 1.5 * 4 + 1


def test_climbs_from_the_floor_to_the_ceiling_while_the_dependency_keeps_up() -> None:
    # GIVEN a fresh controller (it starts at the floor) and a dependency with no knee below the cap
    drain = simulated(ceiling=8)
    assert drain.limit.current() == 1
    # WHEN it drains / THEN it reaches the ceiling within a few rounds and stays there
    assert_climbs_to_the_ceiling(drain.run(100))


def test_falls_within_a_few_batches_of_a_slowdown_and_stays_down_while_it_lasts() -> None:
    # GIVEN a drain at its ceiling
    drain = at_the_ceiling()
    # WHEN the dependency becomes three times slower (a report query, a backup)
    drain.dependency.slowdown = 3.0
    during = drain.run_for(60)
    # THEN once the 8 batches already in flight have finished at the old speed, the limit halves
    # within a few slow batches, reaches the floor soon after, and stays down for the whole
    # minute the slowdown lasts
    assert batches_until(during, lambda limit: limit <= 4) <= 8 + 3
    assert batches_until(during, lambda limit: limit == 1) <= 8 + 12
    assert max(during[8 + 12:]) <= 2


def test_climbs_back_to_the_ceiling_when_the_slowdown_ends() -> None:
    # GIVEN a drain held at the floor by a slowdown
    drain = at_the_ceiling()
    drain.dependency.slowdown = 3.0
    drain.run_for(60)
    assert drain.limit.current() <= 2
    # WHEN the dependency recovers / THEN the limit is back at the ceiling within a few rounds
    drain.dependency.slowdown = 1.0
    assert_climbs_to_the_ceiling(drain.run(100))


def test_a_permanently_slower_dependency_becomes_the_new_baseline() -> None:
    # GIVEN a drain at its ceiling, whose dependency then becomes twice as slow for good
    # (a bigger payload): the limit falls to the floor first, as for any slowdown
    drain = at_the_ceiling()
    drain.dependency.slowdown = 2.0
    drain.run(30)
    assert drain.limit.current() == 1
    # WHEN it keeps draining for longer than the baseline remembers (10 windows of 30 s)
    drain.run_for(10 * 30 + 60)
    # THEN the slower latency is the new no-load baseline and the limit is back at the ceiling
    assert drain.limit.to_dict()["baseline_ms"] == pytest.approx(20.0)
    assert drain.run(30) == [8] * 30


def test_a_faster_dependency_lowers_the_baseline_at_once() -> None:
    # GIVEN a controller that learnt a 10 ms baseline
    drain = at_the_ceiling()
    # WHEN the dependency becomes twice as fast / THEN the baseline follows within one window
    drain.dependency.slowdown = 0.5
    drain.run_for(31)
    assert drain.limit.to_dict()["baseline_ms"] == pytest.approx(5.0)


def test_an_idle_queue_forgets_nothing_between_drains() -> None:
    # GIVEN a warm consumer's controller after one drain, then an hour with nothing to drain
    drain = at_the_ceiling()
    drain.clock.now += 3600
    # WHEN the next drain finds the dependency three times slower
    drain.dependency.slowdown = 3.0
    limits = drain.run(20)
    # THEN it is still measured against the old baseline, so the limit falls
    assert limits[-1] == 1


def test_one_slow_batch_is_an_outlier_not_a_slowdown() -> None:
    # GIVEN a drain at its ceiling
    drain = at_the_ceiling()
    limit = drain.limit
    # WHEN two batches in a row are ten times slower, then the next one is normal
    for _ in range(2):
        limit.on_batch(BatchSample(in_flight=8, items=ITEMS, item_ms=[100.0] * ITEMS))
    limit.on_batch(BatchSample(in_flight=8, items=ITEMS, item_ms=[10.0] * ITEMS))
    # THEN the limit did not move
    assert limit.current() == 8


def test_a_throttled_round_lowers_the_limit_once_not_once_per_batch() -> None:
    # GIVEN a controller at 8, every one of whose 8 invocations in flight comes back 429
    drain = at_the_ceiling()
    limit = drain.limit
    for _ in range(8):
        limit.on_batch(BatchSample(in_flight=8, items=ITEMS, throttled=True))
    # THEN the limit is the round's concurrency times the backoff (0.7), not 8 x 0.7^8
    assert limit.current() == 5
    # WHEN the next round, at that concurrency, is throttled again / THEN it falls again
    for _ in range(5):
        limit.on_batch(BatchSample(in_flight=5, items=ITEMS, throttled=True))
    assert limit.current() == 3


def test_a_batch_of_transient_errors_lowers_the_limit_and_a_stray_retry_does_not() -> None:
    # GIVEN a controller at its ceiling
    drain = at_the_ceiling()
    limit = drain.limit
    # WHEN one item in ten is retried (a deadlock) / THEN nothing changes
    limit.on_batch(BatchSample(in_flight=8, items=ITEMS, item_ms=[10.0] * ITEMS, retries=1))
    assert limit.current() == 8
    # WHEN half a batch is retried (the database is failing) / THEN the limit backs off
    limit.on_batch(BatchSample(in_flight=8, items=ITEMS, item_ms=[10.0] * ITEMS, retries=5))
    assert limit.current() == 5


def test_a_drain_that_does_not_use_its_limit_does_not_raise_it() -> None:
    # GIVEN a controller at 4 whose drain only ever has one invocation in flight (a shallow queue)
    limit = AdaptiveLimit(1, 8, initial=4, clock=SteppedClock())
    # WHEN many fast batches finish / THEN the limit stays: nothing showed that 5 would be fine
    for _ in range(50):
        limit.on_batch(BatchSample(in_flight=1, items=ITEMS, item_ms=[10.0] * ITEMS))
    assert limit.current() == 4


def test_items_handed_back_unapplied_carry_no_latency() -> None:
    # GIVEN a baseline of 10 ms, then a batch the worker handed back (each item ms 0, retried)
    limit = AdaptiveLimit(1, 8, initial=8, clock=SteppedClock())
    for _ in range(30):
        limit.on_batch(BatchSample(in_flight=8, items=ITEMS, item_ms=[10.0] * ITEMS))
    limit.on_batch(BatchSample(in_flight=8, items=2, item_ms=[0.0, 0.0], retries=2))
    # THEN the baseline is untouched (the hand-back lowers the limit as transient errors do)
    assert limit.baseline_ms == pytest.approx(10.0)
    assert limit.current() == 5


# -- bounds, for any sequence ----------------------------------------------------------------

samples = st.builds(
    BatchSample,
    in_flight=st.integers(min_value=-2, max_value=2000),
    items=st.integers(min_value=0, max_value=30),
    item_ms=st.lists(
        st.one_of(st.floats(min_value=0, max_value=1e7), st.just(math.inf), st.just(math.nan)), max_size=30
    ),
    retries=st.integers(min_value=0, max_value=30),
    throttled=st.booleans(),
)


@given(
    floor=st.integers(min_value=1, max_value=20),
    extra=st.integers(min_value=0, max_value=50),
    initial=st.one_of(st.none(), st.floats(min_value=-100, max_value=1000)),
    tolerance=st.floats(min_value=1.01, max_value=4),
    confirm=st.integers(min_value=1, max_value=5),
    growth=st.floats(min_value=0.01, max_value=2),
    backoff=st.floats(min_value=0.05, max_value=0.95),
    max_drop=st.floats(min_value=0.05, max_value=0.95),
    window_s=st.floats(min_value=0.1, max_value=600),
    windows=st.integers(min_value=1, max_value=20),
    min_samples=st.integers(min_value=1, max_value=50),
    steps=st.lists(st.tuples(samples, st.floats(min_value=0, max_value=120)), max_size=200),
)
def test_the_limit_never_leaves_its_bounds(
    floor: int, extra: int, initial: float | None, tolerance: float, confirm: int, growth: float,
    backoff: float, max_drop: float, window_s: float, windows: int, min_samples: int,
    steps: list[tuple[BatchSample, float]],
) -> None:
    # GIVEN any bounds and parameters, and any sequence of reports at any pace
    clock = SteppedClock()
    ceiling = floor + extra
    limit = AdaptiveLimit(floor, ceiling, initial=initial, clock=clock, tolerance=tolerance, confirm=confirm,
                          growth=growth, backoff=backoff, max_drop=max_drop, window_s=window_s,
                          windows=windows, min_samples=min_samples)
    assert floor <= limit.current() <= ceiling
    for sample, gap_s in steps:
        clock.now += gap_s
        limit.on_batch(sample)
        # THEN after every one of them the limit is within [floor, ceiling], and so is a
        # controller resumed from its saved state
        assert floor <= limit.current() <= ceiling
    assert floor <= AdaptiveLimit.from_dict(limit.to_dict(), floor, ceiling, clock=clock).current() <= ceiling


@given(
    knee=st.integers(min_value=1, max_value=40),
    ceiling=st.integers(min_value=1, max_value=64),
    phases=st.lists(st.tuples(st.floats(min_value=0.1, max_value=20), st.integers(min_value=1, max_value=60)),
                    min_size=1, max_size=6),
)
def test_the_limit_stays_within_bounds_on_a_dependency_that_changes(
    knee: int, ceiling: int, phases: list[tuple[float, int]]
) -> None:
    # GIVEN a dependency whose speed changes in phases (random slowdowns and speedups)
    floor = max(1, ceiling // 4)
    drain = simulated(floor=floor, ceiling=ceiling, knee=knee)
    for slowdown, batches in phases:
        drain.dependency.slowdown = slowdown
        # THEN the concurrency the drain runs never exceeds the ceiling nor goes under the floor
        assert all(floor <= limit <= ceiling for limit in drain.run(batches))


@given(cap=st.integers(min_value=1, max_value=1000), reports=st.lists(samples, max_size=50))
def test_a_fixed_limit_never_moves(cap: int, reports: list[BatchSample]) -> None:
    # GIVEN adaptive: false / WHEN any reports arrive / THEN the limit is the cap throughout
    limit = FixedLimit(cap)
    for sample in reports:
        limit.on_batch(sample)
        assert limit.current() == cap


# -- state across drains and cold starts ---------------------------------------------------


def test_saved_state_round_trips() -> None:
    # GIVEN a controller that found a slow dependency (limit down, baseline learnt)
    drain = at_the_ceiling()
    drain.dependency.slowdown = 3.0
    drain.run(30)
    state = drain.limit.to_dict()
    # WHEN a cold consumer restores it / THEN it has the same limit and baseline
    restored = AdaptiveLimit.from_dict(state, 1, 8, clock=drain.clock)
    assert restored.to_dict() == state
    assert set(state) == {"limit", "baseline_ms"}


def test_a_cold_start_after_slow_drains_starts_below_the_ceiling_and_stays_careful() -> None:
    # GIVEN the saved state of drains that found the dependency three times slower
    drain = at_the_ceiling()
    drain.dependency.slowdown = 3.0
    drain.run(30)
    saved = drain.limit.to_dict()
    # WHEN a cold consumer resumes from it while the dependency is still slow
    clock = SteppedClock()
    cold = SimulatedDrain(AdaptiveLimit.from_dict(saved, 1, 8, clock=clock), Dependency(slowdown=3.0), clock)
    # THEN it starts below the ceiling, and the saved baseline keeps it there
    assert cold.limit.current() < 8
    assert max(cold.run(50)) <= 2


def test_a_cold_start_after_healthy_drains_starts_at_the_ceiling() -> None:
    # GIVEN the state of drains that ran at the ceiling / WHEN restored / THEN it starts there
    assert AdaptiveLimit.from_dict({"limit": 8.0, "baseline_ms": 10.0}, 1, 8).current() == 8


def test_a_restored_state_fits_todays_bounds() -> None:
    # GIVEN a state saved under a cap of 16 / WHEN the cap is now 4 (and the floor 2)
    # THEN the restored limit is clamped into the new bounds
    assert AdaptiveLimit.from_dict({"limit": 12, "baseline_ms": 10}, 2, 4).current() == 4
    assert AdaptiveLimit.from_dict({"limit": 1, "baseline_ms": None}, 2, 4).current() == 2


@pytest.mark.parametrize(
    "state",
    [{}, {"limit": "many"}, {"limit": None}, {"limit": math.nan}, {"limit": 3, "baseline_ms": -1},
     {"limit": 3, "baseline_ms": "slow"}, {"limit": 3, "baseline_ms": math.inf}],
)
def test_an_unreadable_state_is_refused_with_a_reason(state: dict[str, object]) -> None:
    with pytest.raises(ConcurrencyLimitError, match="saved concurrency state"):
        AdaptiveLimit.from_dict(state, 1, 8)


# -- construction --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bounds", "params", "reason"),
    [
        ((0, 4), {}, "1 <= floor <= ceiling"),
        ((5, 4), {}, "1 <= floor <= ceiling"),
        ((1, 4), {"tolerance": 1.0}, "tolerance must exceed 1"),
        ((1, 4), {"backoff": 1.0}, "backoff"),
        ((1, 4), {"max_drop": 0}, "max_drop"),
        ((1, 4), {"max_retry_share": 0}, "max_retry_share"),
        ((1, 4), {"window_s": 0}, "window_s"),
        ((1, 4), {"windows": 0}, "windows"),
    ],
)
def test_impossible_parameters_are_refused(bounds: tuple[int, int], params: dict[str, float], reason: str) -> None:
    with pytest.raises(ConcurrencyLimitError, match=reason):
        AdaptiveLimit(*bounds, **params)  # type: ignore[arg-type]
    with pytest.raises(ConcurrencyLimitError, match="at least 1"):
        FixedLimit(0)


def runtime(**env: str) -> RuntimeConfig:
    return RuntimeConfig.from_env({"SLUICE_DRAIN_MAX_PARALLEL": "8", **env})


def test_a_consumer_gets_its_share_of_the_bounds() -> None:
    # GIVEN a lane capped at 8 with a floor of 4, drained by two consumers
    config = runtime(SLUICE_DRAIN_CONSUMERS="2", SLUICE_DRAIN_MIN_PARALLEL="4")
    limit = limit_for(config)
    # THEN each consumer's limit moves within [2, 4], starting at its floor
    assert isinstance(limit, AdaptiveLimit)
    assert (limit.floor, limit.ceiling, limit.current()) == (2, 4, 2)
    # AND a saved state resumes within those bounds
    assert limit_for(config, {"limit": 3.0, "baseline_ms": 10.0}).current() == 3


def test_adaptive_false_pins_the_cap() -> None:
    limit = limit_for(runtime(SLUICE_DRAIN_ADAPTIVE="false"), {"limit": 1.0, "baseline_ms": 10.0})
    assert isinstance(limit, FixedLimit)
    assert limit.current() == 8
