"""How many workers a lane's drain runs at once, within its cap (DESIGN.md section 12).

``drain.max_parallel`` is a ceiling, not a target. ``AdaptiveLimit`` picks a limit in
``[floor, ceiling]`` from what each finished worker invocation reports (a ``BatchSample``):
per-item latency against the dependency's no-load latency, the batch's transient-error share,
and throttles. ``FixedLimit`` is the same interface pinned at the cap (``drain.adaptive:
false``). docs/adr/0004-adaptive-concurrency.md says why this algorithm and these defaults.

The drain's use of it::

    limit.current()         # before dispatching: how many invocations may be in flight
    limit.on_batch(sample)  # after each finished invocation, from the drain's loop thread

In short (the ADR has the reasons):

* **Decrease to the no-queue concurrency.** A batch whose per-item latency is above
  ``tolerance`` x baseline, when it is the ``confirm``-th such batch in a row (one or two slow
  batches are outliers), sets the limit to ``in_flight x baseline / latency``: the concurrency that
  would have seen no queueing (Vegas' queue estimate, subtracted). Past a knee, where latency
  grows with concurrency, that is the knee; under an outside slowdown it divides the limit by
  the slowdown each round, down to the floor. A throttle, or a batch with at least
  ``max_retry_share`` of its items retried, sets it to ``in_flight x backoff`` (AIMD's
  multiplicative decrease). Every decrease is relative to the concurrency the batch was
  dispatched at, so the batches of one overloaded round lower the limit once, not once each;
  and no single batch takes more than ``max_drop`` of it away.
* **Increase while latency is within tolerance**, when the drain actually used the limit
  (in flight at least half of it): by ``max(1, growth x limit)`` per round of ``limit`` batches.
* **The baseline** (no-load per-item latency) is the lowest mean latency of any concurrency
  level (neighbouring levels pooled up to ``min_samples`` samples) in the last ``windows``
  windows of ``window_s`` seconds that held samples. It falls as soon as the dependency is
  faster, and rises only once every remembered window saw it slower: a slowdown keeps the limit
  down while it lasts, up to about ``windows x window_s`` of draining; one that lasts longer (a
  bigger payload, a smaller instance) becomes the new normal, and the limit climbs back to what
  the slower dependency takes.

Pure logic: no AWS, no threads, no sleeping; the clock is injected. Not thread-safe: the drain
calls it from its loop, never from the invoking threads. One object per consumer container,
kept at module level and reused by every drain of a warm consumer (its memory is a few numbers
per window); ``to_dict`` / ``from_dict`` carry the limit and the baseline across a cold start.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sluice.runtime import RuntimeConfig


class ConcurrencyLimitError(ValueError):
    """A limit was configured with impossible bounds or parameters, or a saved state is unreadable."""


@dataclass(frozen=True)
class BatchSample:
    """What one finished worker invocation says about the dependency.

    ``in_flight``: invocations of this consumer in flight when this one was dispatched, itself
    included. ``items``: messages the invocation carried. ``item_ms``: each item's ``ms`` as
    the worker reported it in its results (items handed back unapplied report 0 and carry no
    latency). ``retries``: items whose outcome was ``retry`` (a transient error); an
    invocation that failed or timed out reports all of its items here. ``throttled``: Lambda
    answered 429, or the worker reported that the dependency throttled it.
    """

    in_flight: int
    items: int
    item_ms: Sequence[float] = ()
    retries: int = 0
    throttled: bool = False

    def latency_ms(self) -> float | None:
        """Mean per-item latency of the items that ran, None when none did."""
        ran = [ms for ms in self.item_ms if ms > 0 and math.isfinite(ms)]
        return sum(ran) / len(ran) if ran else None


class ConcurrencyLimit(Protocol):
    """What the drain holds: either an ``AdaptiveLimit`` or a ``FixedLimit``. ``floor`` and
    ``ceiling`` bound ``current()``; ``adaptive`` says whether it moves (the drain report
    carries all three)."""

    floor: int
    ceiling: int
    adaptive: bool

    def current(self) -> int: ...

    def on_batch(self, sample: BatchSample) -> None: ...

    def to_dict(self) -> dict[str, Any]: ...


class FixedLimit:
    """``drain.adaptive: false``: always the cap, whatever the workers report."""

    adaptive = False

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ConcurrencyLimitError(f"a fixed limit must be at least 1, got {cap}")
        self.cap = self.floor = self.ceiling = cap

    def current(self) -> int:
        return self.cap

    def on_batch(self, sample: BatchSample) -> None:
        """Ignored: a fixed cap does not move."""

    def to_dict(self) -> dict[str, Any]:
        return {"limit": float(self.cap), "baseline_ms": None}


@dataclass
class _Window:
    """Samples of one ``window_s`` stretch: per in-flight level, how many and their latency sum."""

    index: int
    levels: dict[int, list[float]] = field(default_factory=dict)  # level -> [count, sum_ms]

    def add(self, level: int, latency_ms: float) -> None:
        entry = self.levels.setdefault(level, [0.0, 0.0])
        entry[0] += 1
        entry[1] += latency_ms

    def lowest_mean_ms(self, min_samples: int) -> float | None:
        """The lowest mean latency of any group of neighbouring in-flight levels that together
        hold ``min_samples`` samples (levels grouped from the lowest up; a sparse rest is left out).

        Per level group, so that the knee's level (no queueing yet) anchors the baseline while
        the controller probes above it, and so that slow samples at a low level late in a window
        (the limit fell because the dependency slowed) cannot hide the fast ones before them.
        """
        best: float | None = None
        count = total = 0.0
        for level in sorted(self.levels):
            count += self.levels[level][0]
            total += self.levels[level][1]
            if count >= min_samples:
                mean = total / count
                best = mean if best is None else min(best, mean)
                count = total = 0.0
        return best


class AdaptiveLimit:
    """A limit between ``floor`` and ``ceiling`` that follows the dependency's latency.

    Parameters (defaults in docs/adr/0004-adaptive-concurrency.md, with the reasons):

    ``initial``: the starting limit; the floor by default, so a consumer that knows nothing
    learns the no-load latency at low concurrency and climbs from there. ``tolerance``: per-item
    latency up to this multiple of the baseline counts as no queueing. ``confirm``: slow batches
    in a row before the limit falls. ``growth``: the increase per round, as a share of the
    limit (at least one worker per round). ``backoff``: the multiplier after a throttle or a
    batch of transient errors. ``max_drop``: no single batch lowers the limit below this share
    of it. ``max_retry_share``: the share of a batch's items retried that counts as overload.
    ``window_s`` and ``windows``: the baseline remembers the last ``windows`` windows of
    ``window_s`` seconds that held samples. ``min_samples``: samples a concurrency level (or
    neighbouring levels pooled) needs in a window before its mean can be the baseline.
    """

    adaptive = True

    def __init__(
        self,
        floor: int,
        ceiling: int,
        *,
        initial: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        tolerance: float = 1.5,
        confirm: int = 3,
        growth: float = 0.25,
        backoff: float = 0.7,
        max_drop: float = 0.5,
        max_retry_share: float = 0.2,
        window_s: float = 30.0,
        windows: int = 10,
        min_samples: int = 20,
    ) -> None:
        if not 1 <= floor <= ceiling:
            raise ConcurrencyLimitError(f"need 1 <= floor <= ceiling, got floor {floor} and ceiling {ceiling}")
        checks = [
            (tolerance > 1, f"tolerance must exceed 1, got {tolerance}"),
            (confirm >= 1, f"confirm must be at least 1, got {confirm}"),
            (growth > 0, f"growth must be positive, got {growth}"),
            (0 < backoff < 1, f"backoff must be within (0, 1), got {backoff}"),
            (0 < max_drop < 1, f"max_drop must be within (0, 1), got {max_drop}"),
            (0 < max_retry_share <= 1, f"max_retry_share must be within (0, 1], got {max_retry_share}"),
            (window_s > 0, f"window_s must be positive, got {window_s}"),
            (windows >= 1, f"windows must be at least 1, got {windows}"),
            (min_samples >= 1, f"min_samples must be at least 1, got {min_samples}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConcurrencyLimitError(message)
        self.floor, self.ceiling = floor, ceiling
        self.tolerance, self.confirm, self.growth = tolerance, confirm, growth
        self.backoff, self.max_drop, self.max_retry_share = backoff, max_drop, max_retry_share
        self.window_s, self.windows, self.min_samples = window_s, windows, min_samples
        self._clock = clock
        self._limit = self._clamp(floor if initial is None else initial)
        self._windows: list[_Window] = []
        self._slow_in_a_row = 0

    # -- what the drain calls ------------------------------------------------------------

    def current(self) -> int:
        """How many invocations may be in flight now."""
        return int(self._limit)

    def on_batch(self, sample: BatchSample) -> None:
        """Account for one finished invocation."""
        in_flight = max(1, sample.in_flight)
        if sample.throttled:
            self._slow_in_a_row = 0
            self._lower(in_flight * self.backoff)
            return
        if sample.items > 0 and sample.retries / sample.items >= self.max_retry_share:
            # The items' latencies are of failures (timeouts, deadlocks): not a measure of load.
            self._slow_in_a_row = 0
            self._lower(in_flight * self.backoff)
            return
        latency = sample.latency_ms()
        if latency is None or not math.isfinite(latency):
            return
        self._remember(in_flight, latency)
        ratio = latency / (self.baseline_ms or latency)
        if not math.isfinite(ratio):
            return
        if ratio > self.tolerance:
            self._slow_in_a_row += 1
            if self._slow_in_a_row >= self.confirm:
                self._lower(in_flight / ratio)
            return
        self._slow_in_a_row = 0
        if 2 * in_flight >= self.current():
            # One round is about `limit` batches, so this adds max(1, growth x limit) per round.
            self._limit = self._clamp(self._limit + max(self.growth, 1 / self._limit))

    # -- what the report and the persisted state read ------------------------------------

    @property
    def baseline_ms(self) -> float | None:
        """The no-load per-item latency in force: the lowest mean of any level group with
        ``min_samples`` samples in any remembered window; until one has that many, the mean of
        every sample remembered (None before the first)."""
        means = [m for w in self._windows if (m := w.lowest_mean_ms(self.min_samples)) is not None]
        if means:
            return min(means)
        count = sum(c for w in self._windows for c, _ in w.levels.values())
        total = sum(t for w in self._windows for _, t in w.levels.values())
        return total / count if count else None

    def to_dict(self) -> dict[str, Any]:
        """The few numbers a cold consumer needs: the limit and the baseline."""
        baseline = self.baseline_ms
        # Six significant digits: short enough for a tag value, and never rounds a baseline to 0.
        return {"limit": round(self._limit, 3), "baseline_ms": None if baseline is None else float(f"{baseline:.6g}")}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any], floor: int, ceiling: int, **params: Any) -> AdaptiveLimit:
        """A controller that resumes from a saved state, within today's bounds.

        It starts at the saved limit (clamped), so a cold consumer whose last drains found the
        dependency slow starts low rather than at the ceiling; the saved baseline counts as one
        full remembered window. Raises ConcurrencyLimitError for a state it cannot read (the
        consumer should then start from a fresh controller).
        """
        try:
            limit = float(state["limit"])
            raw_baseline = state.get("baseline_ms")
            baseline = None if raw_baseline is None else float(raw_baseline)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConcurrencyLimitError(f"saved concurrency state {dict(state)!r} is unreadable: {exc}") from None
        if not math.isfinite(limit) or (baseline is not None and not (math.isfinite(baseline) and baseline > 0)):
            raise ConcurrencyLimitError(f"saved concurrency state {dict(state)!r} holds an impossible number")
        restored = cls(floor, ceiling, initial=limit, **params)
        if baseline is not None:
            seed = _Window(index=restored._window_index() - 1)
            seed.levels[1] = [float(restored.min_samples), baseline * restored.min_samples]
            restored._windows.append(seed)
        return restored

    # -- internals -----------------------------------------------------------------------

    def _clamp(self, value: float) -> float:
        return float(min(self.ceiling, max(self.floor, value)))

    def _lower(self, target: float) -> None:
        lowered = max(target, self._limit * self.max_drop)
        self._limit = self._clamp(min(self._limit, lowered))

    def _window_index(self) -> int:
        return math.floor(self._clock() / self.window_s)

    def _remember(self, in_flight: int, latency_ms: float) -> None:
        index = self._window_index()
        if not self._windows or self._windows[-1].index < index:
            self._windows.append(_Window(index=index))
            # Only windows that held samples count, so a queue idle for an hour forgets nothing.
            del self._windows[: -self.windows]
        self._windows[-1].add(in_flight, latency_ms)


def limit_for(config: RuntimeConfig, saved: Mapping[str, Any] | None = None, **params: Any) -> ConcurrencyLimit:
    """The limit one consumer runs under: its share of the lane's bounds, fixed or adaptive,
    resumed from ``saved`` when given. Raises ConcurrencyLimitError for a saved state it cannot
    read; the caller logs it and calls again without one."""
    floor, ceiling = config.min_slots_per_consumer, config.slots_per_consumer
    if not config.adaptive:
        return FixedLimit(ceiling)
    if saved is not None:
        return AdaptiveLimit.from_dict(saved, floor, ceiling, **params)
    return AdaptiveLimit(floor, ceiling, **params)
