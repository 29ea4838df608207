"""A thread-safe token bucket: at most ``rate`` units per second, bursts up to ``burst``.

The enqueuer spends one token per SendMessageBatch call (``queue.max_tps``); the drain spends
one per message it dispatches (its share of ``drain.max_rate``). Clock and sleep are
injectable so tests check the arithmetic without waiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


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
