"""How long will one more worker batch take? (DESIGN.md section 4)

The drain starts a batch only when the time it has left exceeds this prediction plus a
safety margin. The prediction is a high percentile of the most recent measured worker
durations, so a database that slows down shrinks what a drain takes on instead of letting
it overrun. It never exceeds the worker timeout (a worker cannot run longer than that),
and before anything was measured it is the prior: by default the worker timeout itself,
the one bound that is certainly safe.
"""

from __future__ import annotations

import math
import threading
from collections import deque


class BatchBudget:
    def __init__(
        self,
        worker_timeout_ms: float,
        *,
        prior_ms: float | None = None,
        window: int = 50,
        percentile: float = 95.0,
    ) -> None:
        if worker_timeout_ms <= 0:
            raise ValueError(f"worker_timeout_ms must be positive, got {worker_timeout_ms}")
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.worker_timeout_ms = float(worker_timeout_ms)
        prior = self.worker_timeout_ms if prior_ms is None else float(prior_ms)
        self.prior_ms = min(self.worker_timeout_ms, prior)
        self.percentile = percentile
        self._samples: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def record(self, duration_ms: float) -> None:
        """Add one measured worker batch duration (what the consumer waited for the invoke)."""
        if duration_ms < 0 or math.isnan(duration_ms):
            return
        with self._lock:
            self._samples.append(float(duration_ms))

    @property
    def samples(self) -> int:
        with self._lock:
            return len(self._samples)

    def predict_ms(self) -> float:
        """Nearest-rank percentile of the recent window, capped at the worker timeout."""
        with self._lock:
            ordered = sorted(self._samples)
        if not ordered:
            return self.prior_ms
        rank = max(1, math.ceil(self.percentile / 100 * len(ordered)))
        return min(self.worker_timeout_ms, ordered[rank - 1])
