"""The token bucket, on an injected clock: no real waiting."""

from __future__ import annotations

import threading

import pytest

from sluice.ratelimit import CallWindow, RateLimitError, TokenBucket
from tests.helpers import SteppedClock

pytestmark = pytest.mark.unit


def test_burst_is_free_then_calls_are_spaced_at_the_rate() -> None:
    # GIVEN 10/s with a burst of 5
    clock = SteppedClock()
    bucket = TokenBucket(10, 5, clock=clock, sleep=clock.sleep)
    # WHEN 25 tokens are acquired one by one
    waits = [bucket.acquire() for _ in range(25)]
    # THEN the first 5 cost nothing and the other 20 took 2 s in all (10/s)
    assert waits[:5] == [0.0] * 5
    assert all(w > 0 for w in waits[5:])
    assert clock.now == pytest.approx(2.0)


def test_rate_holds_over_any_window() -> None:
    # GIVEN 300 calls/s with a burst of 300 (the enqueuer's setting)
    clock = SteppedClock()
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
    clock = SteppedClock()
    bucket = TokenBucket(20, 10, clock=clock, sleep=clock.sleep)
    # WHEN two batches of 10 are reserved / THEN the second waits 0.5 s
    assert bucket.acquire(10) == 0.0
    assert bucket.acquire(10) == pytest.approx(0.5)


def test_tokens_refill_with_time_but_not_above_burst() -> None:
    # GIVEN an empty bucket
    clock = SteppedClock()
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


def most_in_any_window(times: list[float], window_s: float = 1.0) -> int:
    ordered = sorted(times)
    return max(sum(1 for u in ordered[i:] if u < t + window_s) for i, t in enumerate(ordered))


def test_call_window_never_exceeds_its_limit_in_any_window_and_spaces_calls() -> None:
    # GIVEN at most 50 calls in any second, on a clock that moves only by sleeping
    clock = SteppedClock()
    window = CallWindow(50, 1.0, clock=clock, sleep=clock.sleep)
    # WHEN 400 instant calls are made one after another
    starts = []
    for _ in range(400):
        with window.call():
            starts.append(clock())
    # THEN no one-second window (the first included) holds more than 50, calls are 20 ms apart,
    # and the whole took 399 intervals: the limit is also the steady rate
    assert most_in_any_window(starts) == 50
    assert starts[:3] == pytest.approx([0.0, 0.02, 0.04])
    assert clock.now == pytest.approx(399 / 50)


def test_call_window_counts_a_call_until_a_window_after_it_finished() -> None:
    # GIVEN 2 calls per second, and calls that take 0.7 s each (the server may count a call
    # anywhere between its start and its end)
    clock = SteppedClock()
    window = CallWindow(2, 1.0, clock=clock, sleep=clock.sleep)
    spans = []
    # WHEN 6 such calls are made
    for _ in range(6):
        with window.call():
            start = clock()
            clock.sleep(0.7)
            spans.append((start, clock()))
    # THEN a call starts only once the call two before it ended a full second ago, so even
    # counting each call at its end, no window holds more than 2
    for earlier, later in zip(spans, spans[2:], strict=False):
        assert later[0] >= earlier[1] + 1.0
    assert most_in_any_window([end for _, end in spans]) == 2


def test_call_window_threads_share_the_limit() -> None:
    # GIVEN 8 threads making 25 calls each through a 40-per-second window on one stepped clock
    clock = SteppedClock()
    window = CallWindow(40, 1.0, clock=clock, sleep=clock.sleep)
    starts: list[float] = []
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(25):
            with window.call(), lock:
                starts.append(clock())

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    # THEN all 200 calls ran and no one-second window saw more than 40
    assert len(starts) == 200
    assert most_in_any_window(starts) <= 40


def test_call_window_refuses_nonsense() -> None:
    # GIVEN a limit below one call or an empty window / THEN a clear error
    with pytest.raises(RateLimitError, match="limit"):
        CallWindow(0)
    with pytest.raises(RateLimitError, match="window"):
        CallWindow(5, 0)
