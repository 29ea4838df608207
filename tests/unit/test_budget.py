"""The prediction of one more worker batch's duration."""

from __future__ import annotations

import pytest

from sluice.budget import BatchBudget

pytestmark = pytest.mark.unit


def test_prior_is_the_worker_timeout_before_any_measurement() -> None:
    # GIVEN a fresh budget / THEN it assumes the worst: the worker timeout
    assert BatchBudget(30_000).predict_ms() == 30_000


def test_stated_prior_is_used_but_never_above_the_timeout() -> None:
    # GIVEN priors below and above the timeout / THEN the prediction is the prior, capped
    assert BatchBudget(30_000, prior_ms=2_000).predict_ms() == 2_000
    assert BatchBudget(30_000, prior_ms=90_000).predict_ms() == 30_000


def test_prediction_is_the_95th_percentile_of_recent_measurements() -> None:
    # GIVEN 100 measurements 1..100 ms
    budget = BatchBudget(30_000, window=100)
    for ms in range(1, 101):
        budget.record(ms)
    # WHEN predicted / THEN the nearest-rank p95 is 95 ms
    assert budget.predict_ms() == 95


def test_only_the_window_counts_so_a_slowdown_raises_the_prediction() -> None:
    # GIVEN fast batches followed by a window's worth of slow ones
    budget = BatchBudget(30_000, window=10)
    for _ in range(50):
        budget.record(100)
    assert budget.predict_ms() == 100
    for _ in range(10):
        budget.record(4_000)
    # THEN the prediction follows the slow batches
    assert budget.predict_ms() == 4_000


def test_prediction_is_capped_at_the_worker_timeout() -> None:
    # GIVEN a measurement above the timeout (the invoke's network time on top of the worker's)
    budget = BatchBudget(1_000)
    budget.record(1_500)
    # THEN the prediction stays at the timeout
    assert budget.predict_ms() == 1_000


def test_bad_measurements_are_ignored_and_bad_settings_refused() -> None:
    # GIVEN negative and NaN durations / THEN they are not recorded
    budget = BatchBudget(1_000)
    budget.record(-5)
    budget.record(float("nan"))
    assert budget.samples == 0
    # AND nonsense settings are refused with a reason
    with pytest.raises(ValueError, match="worker_timeout_ms"):
        BatchBudget(0)
    with pytest.raises(ValueError, match="percentile"):
        BatchBudget(1_000, percentile=0)
