"""The worker's retry backoff and dead-letter ids: pure functions."""

from __future__ import annotations

import pytest

from sluice.backoff import VisibilityBackoff
from sluice.work import dlq_dedup_id

pytestmark = pytest.mark.unit


def test_backoff_doubles_per_receive_and_stays_bounded() -> None:
    # GIVEN the default backoff / WHEN asked for successive receive counts
    backoff = VisibilityBackoff(base_s=5, cap_s=300)
    delays = [backoff.seconds(n) for n in range(1, 10)]
    # THEN it doubles from the base and never exceeds the cap
    assert delays == [5, 10, 20, 40, 80, 160, 300, 300, 300]
    assert all(a <= b for a, b in zip(delays, delays[1:], strict=False))


@pytest.mark.parametrize("receive_count", [-3, 0, 1, 10**9])
def test_backoff_survives_odd_receive_counts(receive_count: int) -> None:
    # GIVEN nonsense or huge receive counts / WHEN asked / THEN a delay within SQS's range comes back
    delay = VisibilityBackoff(base_s=5, cap_s=10**9).seconds(receive_count)
    assert 0 <= delay <= 43200


def test_dead_letter_dedup_ids_are_fresh_and_stable() -> None:
    # GIVEN one source message / WHEN its dead-letter id is computed twice and for another message
    first = dlq_dedup_id("abc", "m-1")
    # THEN it is stable (a retried send is deduplicated), differs from the source's and from other messages'
    assert first == dlq_dedup_id("abc", "m-1")
    assert first != "abc" and first != dlq_dedup_id("abc", "m-2")
    assert len(first) == 64
