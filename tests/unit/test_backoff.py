"""The one backoff helper: exponential, capped, never negative, safe for any attempt count."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.backoff import SQS_MAX_VISIBILITY_S, VisibilityBackoff, exponential_backoff_s, jittered

pytestmark = pytest.mark.unit

attempts = st.integers(min_value=-10, max_value=10**12)
bases = st.floats(min_value=0, max_value=1e6, allow_nan=False)
caps = st.floats(min_value=0, max_value=1e9, allow_nan=False) | st.just(math.inf)


def test_attempt_one_waits_the_base_and_each_next_attempt_twice_as_long() -> None:
    # GIVEN the drain's throttle numbers (base 0.2 s, cap 5 s) / WHEN asked for attempts 1..7
    delays = [exponential_backoff_s(n, base_s=0.2, cap_s=5.0) for n in range(1, 8)]
    # THEN it doubles from the base until the cap holds it
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])


@given(attempts, attempts, bases, caps)
def test_monotone_capped_and_never_negative(a: int, b: int, base_s: float, cap_s: float) -> None:
    # GIVEN any two attempt counts, base and cap / WHEN both delays are computed
    first, second = sorted((a, b))
    early = exponential_backoff_s(first, base_s=base_s, cap_s=cap_s)
    late = exponential_backoff_s(second, base_s=base_s, cap_s=cap_s)
    # THEN the later attempt never waits less, neither waits past the cap or below zero
    assert 0 <= early <= late <= cap_s
    assert math.isfinite(late) or cap_s == math.inf


@given(st.integers(min_value=64, max_value=10**18), st.floats(min_value=1e-6, max_value=1e6))
def test_huge_attempt_counts_reach_the_cap_without_overflowing(attempt: int, base_s: float) -> None:
    # GIVEN an attempt count far past any exponent a float can hold / WHEN computed / THEN the cap
    assert exponential_backoff_s(attempt, base_s=base_s, cap_s=3600) == 3600


def test_attempts_below_one_count_as_the_first() -> None:
    assert exponential_backoff_s(0, base_s=5) == exponential_backoff_s(-7, base_s=5) == 5


def test_a_negative_base_or_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        exponential_backoff_s(1, base_s=-1)
    with pytest.raises(ValueError, match="must not be negative"):
        exponential_backoff_s(1, base_s=1, cap_s=-1)


@given(st.floats(min_value=0, max_value=1e6), st.floats(min_value=0, max_value=0.999999))
def test_jitter_keeps_the_delay_within_half_and_one_and_a_half_times(seconds: float, draw: float) -> None:
    # GIVEN any delay and any draw of the random source / WHEN jittered / THEN within [0.5, 1.5] of it
    delay = jittered(seconds, rand=lambda: draw)
    assert 0.5 * seconds <= delay <= 1.5 * seconds


@given(st.integers(min_value=-5, max_value=10**15), st.integers(min_value=0, max_value=10**6),
       st.integers(min_value=0, max_value=10**9))
def test_visibility_is_whole_seconds_within_what_sqs_accepts(receive_count: int, base_s: int, cap_s: int) -> None:
    # GIVEN any receive count and worker backoff settings / WHEN the visibility delay is computed
    delay = VisibilityBackoff(base_s=base_s, cap_s=cap_s).seconds(receive_count)
    # THEN SQS can take it: an int in 0..43200, never above the configured cap
    assert isinstance(delay, int)
    assert 0 <= delay <= min(cap_s, SQS_MAX_VISIBILITY_S)
