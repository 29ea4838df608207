"""The token bucket, on an injected clock: no real waiting."""

from __future__ import annotations

import threading

import pytest

from sluice.ratelimit import RateLimitError, TokenBucket

pytestmark = pytest.mark.unit


class FakeClock:
    """Time that moves only when the bucket sleeps (or the test advances it)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def test_burst_is_free_then_calls_are_spaced_at_the_rate() -> None:
    # GIVEN 10/s with a burst of 5
    clock = FakeClock()
    bucket = TokenBucket(10, 5, clock=clock, sleep=clock.sleep)
    # WHEN 25 tokens are acquired one by one
    waits = [bucket.acquire() for _ in range(25)]
    # THEN the first 5 cost nothing and the other 20 took 2 s in all (10/s)
    assert waits[:5] == [0.0] * 5
    assert all(w > 0 for w in waits[5:])
    assert clock.now == pytest.approx(2.0)


def test_rate_holds_over_any_window() -> None:
    # GIVEN 300 calls/s with a burst of 300 (the enqueuer's setting)
    clock = FakeClock()
    bucket = TokenBucket(300, 300, clock=clock, sleep=clock.sleep)
    # WHEN 1,500 calls are made
    times = []
    for _ in range(1500):
        bucket.acquire()
        times.append(clock())
    # THEN no one-second window holds more than burst + rate calls, and the whole took >= 4 s
    assert clock.now == pytest.approx(4.0)
    for i, t in enumerate(times):
        in_window = sum(1 for u in times[i:] if u < t + 1.0)
        assert in_window <= 600


def test_large_amounts_wait_proportionally() -> None:
    # GIVEN 20 messages/s and a burst of 10
    clock = FakeClock()
    bucket = TokenBucket(20, 10, clock=clock, sleep=clock.sleep)
    # WHEN two batches of 10 are reserved / THEN the second waits 0.5 s
    assert bucket.acquire(10) == 0.0
    assert bucket.acquire(10) == pytest.approx(0.5)


def test_tokens_refill_with_time_but_not_above_burst() -> None:
    # GIVEN an empty bucket
    clock = FakeClock()
    bucket = TokenBucket(5, 2, clock=clock, sleep=clock.sleep)
    assert bucket.try_acquire(2)
    assert not bucket.try_acquire(1)
    # WHEN an hour passes / THEN only the burst is available
    clock.now += 3600
    assert bucket.available == pytest.approx(2)


def test_threads_share_the_rate() -> None:
    # GIVEN 8 threads taking 50 tokens each from a 100/s bucket with a burst of 1, on a clock
    # that stands still, so each wait is exactly the slot the bucket handed that call
    waits: list[float] = []
    lock = threading.Lock()

    def record(seconds: float) -> None:
        with lock:
            waits.append(round(seconds, 6))

    bucket = TokenBucket(100, 1, clock=lambda: 0.0, sleep=record)
    threads = [threading.Thread(target=lambda: [bucket.acquire() for _ in range(50)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # THEN the 400 calls got 400 distinct slots 10 ms apart: no two threads share a slot
    assert sorted(waits) == [round(i / 100, 6) for i in range(1, 400)]


def test_nonsense_settings_are_refused() -> None:
    # GIVEN a zero rate or burst / THEN a clear error
    with pytest.raises(RateLimitError, match="rate"):
        TokenBucket(0, 1)
    with pytest.raises(RateLimitError, match="burst"):
        TokenBucket(1, 0)
