"""Rate limits, thread-safe.

``TokenBucket``: at most ``rate`` units per second, bursts up to ``burst``; the drain spends
one token per message it dispatches (its share of ``drain.max_rate``). ``CallWindow``: at most
``limit`` calls in any window, evenly spaced; the enqueuer holds one place per SendMessageBatch
call (``queue.max_tps``). Clock and sleep are
injectable so tests check the arithmetic without waiting.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class RateLimitError(ValueError):
    """A bucket was configured with a rate or burst that cannot limit anything."""


class TokenBucket:
    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise RateLimitError(f"rate must be positive, got {rate}")
        if burst < 1:
            raise RateLimitError(f"burst must be at least 1, got {burst}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._updated = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def reserve(self, amount: float = 1) -> float:
        """Take ``amount`` tokens now (the balance may go negative) and return the seconds the
        caller must wait before using them. Reserving under the lock and sleeping outside it
        lets many threads queue up fairly without holding the lock while asleep; an amount
        above the burst is allowed and simply waits longer."""
        if amount <= 0:
            return 0.0
        with self._lock:
            self._refill()
            self._tokens -= amount
            deficit = -self._tokens
        return deficit / self.rate if deficit > 0 else 0.0

    def acquire(self, amount: float = 1) -> float:
        """Block until ``amount`` tokens are ours; returns the seconds spent waiting."""
        wait = self.reserve(amount)
        if wait > 0:
            self._sleep(wait)
        return wait

    def try_acquire(self, amount: float = 1) -> bool:
        """Take ``amount`` tokens only if they are available right now."""
        with self._lock:
            self._refill()
            if self._tokens >= amount:
                self._tokens -= amount
                return True
            return False

    @property
    def available(self) -> float:
        with self._lock:
            self._refill()
            return self._tokens


class CallWindow:
    """At most ``limit`` calls in ANY window of ``window_s`` seconds, spaced ``window_s / limit``
    apart (no burst). The enqueuer's promise to SQS: never more than ``queue.max_tps`` calls in
    any one-second window.

    A token bucket cannot keep that promise at its start (a full bucket plus a second's refill
    makes two seconds' worth in the first second), and pacing alone leaves it to timing luck
    (a call granted at its slot may reach the server late, while the next arrives on time).
    So a call holds its place in the window from the moment it is granted until ``window_s``
    after it FINISHED: wherever between those two the server counts it, no window of
    ``window_s`` sees more than ``limit`` calls. Use it as ``with window.call(): ...``.
    """

    def __init__(
        self,
        limit: float,
        window_s: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if limit < 1:
            raise RateLimitError(f"limit must be at least 1 call per window, got {limit}")
        if window_s <= 0:
            raise RateLimitError(f"window must be positive, got {window_s}")
        self.limit = int(limit)
        self.window_s = float(window_s)
        self.interval_s = self.window_s / self.limit
        self._clock = clock
        self._sleep = sleep
        self._finished: deque[float] = deque()  # finish times still inside a window, oldest first
        self._in_flight = 0
        self._next_start = float("-inf")
        self._changed = threading.Condition()

    def _wait_s(self, now: float) -> float | None:
        """Seconds until a call may start (0: now), or None until a running call finishes."""
        while self._finished and self._finished[0] + self.window_s <= now:
            self._finished.popleft()
        pace = max(0.0, self._next_start - now)
        if self._in_flight + len(self._finished) < self.limit:
            return pace
        if not self._finished:
            return None  # every place is held by a call still running
        return max(pace, self._finished[0] + self.window_s - now)

    def _start(self) -> float:
        """Block until a call may start; returns the seconds spent waiting."""
        waited = 0.0
        while True:
            with self._changed:
                now = self._clock()
                wait_s = self._wait_s(now)
                if wait_s == 0:
                    self._in_flight += 1
                    self._next_start = now + self.interval_s
                    return waited
                if wait_s is None:
                    self._changed.wait()
                    continue
            # Sleep outside the lock so other callers can finish their calls meanwhile.
            self._sleep(wait_s)
            waited += wait_s

    def _finish(self) -> None:
        with self._changed:
            self._in_flight -= 1
            self._finished.append(self._clock())
            self._changed.notify_all()

    @contextmanager
    def call(self) -> Iterator[float]:
        """Hold a place in the window for one call; yields the seconds spent waiting for it."""
        waited = self._start()
        try:
            yield waited
        finally:
            self._finish()
