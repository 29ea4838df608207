"""Exponential backoff, computed in one place for every caller.

``exponential_backoff_s(attempt, base_s=b, cap_s=c)`` is ``b * 2**(attempt - 1)``, at most
``c``: attempt 1 waits the base, each further attempt twice as long. Callers and their numbers:

* the drain, after a worker invoke was throttled (429): attempt = throttles in a row;
* the worker, after a transient failure: attempt = the message's receive count, in whole
  seconds and never above SQS's visibility maximum (``VisibilityBackoff``);
* the enqueuer, re-sending entries SQS refused inside a batch: attempt = retry number, no cap
  (its attempt limit bounds it), jittered so that senders that failed together do not retry
  together.

Each caller keeps its own base and cap; only the arithmetic lives here.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

SQS_MAX_VISIBILITY_S = 43200
# 2**64 times any sensible base is past any sensible cap; bounding the exponent keeps a huge
# attempt count from overflowing a float (2.0 ** 1100 raises OverflowError).
_MAX_EXPONENT = 64


def exponential_backoff_s(attempt: int, *, base_s: float, cap_s: float = math.inf) -> float:
    """Seconds to wait before ``attempt`` (1-based; anything below 1 counts as 1):
    ``base_s * 2**(attempt - 1)``, never above ``cap_s``, never negative."""
    if base_s < 0 or cap_s < 0:
        raise ValueError(f"backoff base and cap must not be negative (got {base_s}, {cap_s})")
    exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
    return min(cap_s, base_s * 2.0**exponent)


def jittered(seconds: float, rand: Callable[[], float] = random.random) -> float:
    """``seconds`` scaled by a random factor in [0.5, 1.5): the same mean, spread out."""
    return seconds * (0.5 + rand())


@dataclass(frozen=True)
class VisibilityBackoff:
    """The worker's visibility delay after a transient failure, in whole seconds: attempt = the
    message's receive count, so each redelivery waits twice as long, at most ``cap_s`` and at
    most what SQS accepts."""

    base_s: int = 5
    cap_s: int = 300

    def seconds(self, receive_count: int) -> int:
        cap_s = min(self.cap_s, SQS_MAX_VISIBILITY_S)
        return int(exponential_backoff_s(receive_count, base_s=self.base_s, cap_s=cap_s))
