"""The concurrency limit's state across cold starts, kept as one tag on the lane's own queue.

docs/adr/0004-adaptive-concurrency.md ("Where to keep it") says why a queue tag: the consumer
already reaches that queue, so it needs only ``sqs:ListQueueTags`` and ``sqs:TagQueue`` on it,
no new resource or client. Tag values cannot hold JSON (letters, digits, spaces and
``_ . : / = + - @``, up to 256 characters), so the state is written as ``key=number`` pairs:
``limit=3.25 baseline_ms=12.5``.

The store never fails a drain: a queue service that does not tag (or a role without the
grant) reads as "no saved state", with one warning per container, and a write that fails is
logged and dropped. It writes only when the state moved enough to matter to a cold start
(the whole-number limit changed, or the baseline moved by more than ``BASELINE_SHIFT``):
tagging calls are limited per account.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sluice.aws import AwsError, Queue
from sluice.concurrency import ConcurrencyLimitError
from sluice.observability import logger

TAG_KEY = "sluice:concurrency"
BASELINE_SHIFT = 0.10
_FIELDS = ("limit", "baseline_ms")


def encode(state: Mapping[str, Any]) -> str:
    """``{"limit": 3.25, "baseline_ms": 12.5}`` -> ``"limit=3.25 baseline_ms=12.5"`` (a None is left out)."""
    return " ".join(f"{name}={float(state[name]):.6g}" for name in _FIELDS if state.get(name) is not None)


def decode(value: str) -> dict[str, float]:
    """The state a tag value holds; raises ConcurrencyLimitError for one this version cannot read."""
    state: dict[str, float] = {}
    for pair in value.split():
        name, sep, number = pair.partition("=")
        try:
            parsed = float(number)
        except ValueError:
            parsed = math.nan
        if not sep or name not in _FIELDS or not math.isfinite(parsed):
            raise ConcurrencyLimitError(f"tag {TAG_KEY}={value!r} is not 'limit=<n> baseline_ms=<n>'")
        state[name] = parsed
    if "limit" not in state:
        raise ConcurrencyLimitError(f"tag {TAG_KEY}={value!r} holds no limit")
    return state


def moved(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Does ``new`` differ from ``old`` enough to be worth a write?"""
    if old is None:
        return True
    if math.floor(float(old["limit"])) != math.floor(float(new["limit"])):
        return True
    before, after = old.get("baseline_ms"), new.get("baseline_ms")
    if before is None or after is None:
        return (before is None) != (after is None)
    return abs(float(after) - float(before)) > BASELINE_SHIFT * float(before)


class QueueTagStore:
    """Reads and writes one consumer's saved limit state on its queue."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.saved: dict[str, Any] | None = None  # what the tag holds, as far as this container knows
        self._warned = False

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none (or it cannot be read: logged)."""
        try:
            value = self.queue.tags().get(TAG_KEY)
        except AwsError as exc:
            self._warn_once("cannot read the saved concurrency limit; starting without it", exc)
            return None
        if value is None:
            return None
        try:
            self.saved = decode(value)
        except ConcurrencyLimitError as exc:
            logger.warning("ignoring an unreadable saved concurrency limit", extra={"error": str(exc)})
            return None
        return dict(self.saved)

    def started_from(self, state: Mapping[str, Any]) -> None:
        """The state a cold container starts from counts as saved: a drain that leaves it as it
        was (say, on an empty queue) writes nothing."""
        if self.saved is None:
            self.saved = dict(state)

    def save(self, state: Mapping[str, Any]) -> bool:
        """Write ``state`` when it moved enough since the last read or write; True when written."""
        if not moved(self.saved, state):
            return False
        try:
            self.queue.tag({TAG_KEY: encode(state)})
        except AwsError as exc:
            self._warn_once("cannot save the concurrency limit; a cold start will not see it", exc)
            return False
        self.saved = dict(state)
        return True

    def _warn_once(self, message: str, exc: AwsError) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(message, extra={"queue": self.queue.url, "error": str(exc)})
