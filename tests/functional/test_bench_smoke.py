"""Smoke run of the benchmark harness with tiny sizes: it runs end to end and reports every figure.

No timing is asserted here (a shared 2-core machine makes absolute times noise); only that the
harness measures what it claims: every question P1..P7 answered, the counts it derives from
real servers consistent with each other, and the bounds sluice promises (cap, budget, batch
calls) holding even at this size.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.figures import Figure, percentile
from bench.scenarios.drain_burst import DrainRun
from bench.scenarios.enqueue_rate import max_in_window, steady_rate
from bench.scenarios.slowdown import limit_moves
from bench.sizes import SMOKE
from bench.timeline import Sample
from sluice.settings import PROJECT_ROOT

pytestmark = [pytest.mark.functional, pytest.mark.bench]


def _figures(document: dict[str, Any], pid: str) -> list[dict[str, Any]]:
    return [f for f in document["figures"] if f["pid"] == pid]


def _one(document: dict[str, Any], name_start: str) -> dict[str, Any]:
    found = [f for f in document["figures"] if f["name"].startswith(name_start)]
    assert len(found) == 1, f"expected one figure named {name_start!r}, found {[f['name'] for f in found]}"
    return found[0]


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, f"bench --smoke failed:\n{done.stderr[-3000:]}"
    document: dict[str, Any] = json.loads((out / "latest.json").read_text())
    document["_stdout"] = done.stdout
    document["_plot"] = (out / "drain-timeline.png").read_bytes()[:8]
    return document


def test_every_question_is_answered_as_a_ratio_with_its_inputs(smoke_results: dict[str, Any]) -> None:
    # GIVEN a smoke run of the whole harness
    # WHEN its results are read back
    figures = smoke_results["figures"]
    # THEN every question P1..P9 has figures, each a ratio of two numbers with the inputs that made it
    assert {f["pid"] for f in figures} >= {f"P{i}" for i in range(1, 10)}
    for f in figures:
        assert f["inputs"], f"{f['pid']} {f['name']} carries no inputs"
        if f["unavailable"]:
            # AND a figure this run could not measure says why instead of a number
            assert f["value"] is None and f["meets_goal"] is None
            assert f"n/a: {f['unavailable']}" in smoke_results["_stdout"], f"{f['name']} is not printed"
            continue
        assert f["denominator"] != 0 and f["value"] == pytest.approx(f["numerator"] / f["denominator"]), f
        assert f"{f['value']:.3g}" in smoke_results["_stdout"], f"{f['name']} is not printed"
        # AND a goal is judged, and printed as met or as a MISS
        if f["goal"]:
            assert f["meets_goal"] in (True, False)
            assert f"{'goal met' if f['meets_goal'] else 'MISS'} (goal {f['goal']})" in smoke_results["_stdout"]
    # AND the drain timeline was plotted
    assert smoke_results["_plot"] == b"\x89PNG\r\n\x1a\n"
    # AND the markdown table for the docs is part of the results
    assert smoke_results["markdown"].count("\n| ") == len(figures)


def test_the_bounds_sluice_promises_hold(smoke_results: dict[str, Any]) -> None:
    # GIVEN the smoke run's figures
    # THEN the cap was never exceeded, no drain overran its budget, enqueue made ceil(n/10) calls
    peak = _one(smoke_results, "peak workers busy / cap")
    assert peak["holds"] is True and peak["denominator"] == SMOKE.cap
    assert peak["numerator"] >= 1, "no worker ever ran: the drain did nothing"
    overruns = _one(smoke_results, "consumer budget overruns")
    assert overruns["numerator"] == 0 and overruns["denominator"] >= 1
    calls = _one(smoke_results, "enqueue batch calls")
    assert calls["numerator"] == calls["denominator"] == math.ceil(SMOKE.enqueue_items / 10)
    busiest = _one(smoke_results, "busiest 1 s of calls")
    assert busiest["numerator"] <= SMOKE.enqueue_max_tps


def test_counts_agree_with_the_drain_reports_and_the_timeline(smoke_results: dict[str, Any]) -> None:
    # GIVEN the burst the smoke run drained
    reports = smoke_results["drain_reports"]
    # THEN the consumers received and the workers finished every item of it, exactly once
    assert sum(r["succeeded"] for r in reports) == SMOKE.burst
    assert sum(r["duplicates"] for r in reports) == 0
    # AND the all-in cost counts the consumer's GB-s beside the workers'
    cost = _one(smoke_results, "all-in USD per million items")
    assert cost["inputs"]["consumer_gb_s"] > 0 and cost["inputs"]["worker_gb_s"] > 0
    # AND the workers deleted what they applied in DeleteMessageBatch calls, never one by one:
    # at least one call per ten items, at most one per item
    p1 = _one(smoke_results, "drain requests per item")
    calls = dict(part.split("=") for part in p1["inputs"]["sluice_calls"].split(", "))
    assert "DeleteMessage" not in calls
    assert math.ceil(SMOKE.burst / 10) <= int(calls["DeleteMessageBatch"].replace(",", "")) <= SMOKE.burst
    # AND the timeline saw the backlog and the workers at work, never above the cap
    timeline = smoke_results["timeline"]
    assert max(s["visible"] + s["in_flight"] for s in timeline) > 0
    assert max(s["busy"] for s in timeline) <= SMOKE.cap
    # AND every drain of the slowdown scenario ran with its outside load inside the drain
    for name, run in smoke_results["slowdown"].items():
        assert run["started"] <= run["load"][0] < run["load"][1], name
        assert sum(1 for _ in run["reports"]) == len(run["report_ends"]) >= 1
    # AND lane B's items all took effect in both phases, and lane A's vendor was called (and refused some)
    assert len(smoke_results["lanes"]["alone"]["effect"]) == SMOKE.lane_b_items
    assert len(smoke_results["lanes"]["loaded"]["effect"]) == SMOKE.lane_b_items
    assert smoke_results["lanes"]["vendor_counters"]["a"]["requests"] > 0
    assert {f["name"] for f in _figures(smoke_results, "L1")} >= {
        "peak vendor calls/s / max_rate (vendor-a)", "peak vendor calls/s / max_rate (vendor-b)"}
    # AND the DB probe ran in all three conditions
    assert all(len(smoke_results["probe"][k]) > 0 for k in ("idle", "sluice", "direct"))
    assert all(f["inputs"]["direct_writers"] == 10 * SMOKE.cap for f in _figures(smoke_results, "P7"))


def test_figure_bounds_and_window_arithmetic() -> None:
    # GIVEN figures with bounds, and call times
    # THEN a bound is judged on the ratio, and a zero denominator never passes
    assert Figure("P3", "x", 4, "a", 4, "b", expect="<= 1").holds is True
    assert Figure("P3", "x", 5, "a", 4, "b", expect="<= 1").holds is False
    assert Figure("P4", "x", 0, "a", 3, "b", expect="== 0").holds is True
    assert Figure("P4", "x", 1, "a", 0, "b", expect="== 0").holds is False
    assert Figure("P2", "x", 1, "a", 2, "b").holds is None
    # AND a goal is judged like a bound (two-sided "within"), and an unmeasured figure is neither
    assert Figure("P9", "x", 1.1, "a", 1, "b", goal="within 0.15").meets_goal is True
    assert Figure("P9", "x", 0.8, "a", 1, "b", goal="within 0.15").meets_goal is False
    assert Figure("P8", "x", 0, "a", 1, "b", goal="<= 2", unavailable="no limit").meets_goal is None
    assert Figure("P8", "x", 0, "a", 1, "b", unavailable="no limit").value is None
    # AND a percentile of no samples (NaN) makes the figure unmeasured, saying which side had none
    nan = Figure("P8", "x", 3.0, "slowdown ms", float("nan"), "load alone ms", goal="<= 2")
    assert nan.value is None and nan.meets_goal is None and "load alone ms" in nan.unavailable
    # AND the limit's fall and climb-back are read from the report times around the slowdown
    limits = [(1.0, 4), (5.0, 4), (9.0, 2), (13.0, 1), (17.0, 3), (21.0, 4)]
    assert limit_moves(limits, ceiling=4, start=4.0, end=12.0) == (5.0, 9.0)
    assert limit_moves([(5.0, 4), (9.0, 4)], ceiling=4, start=4.0, end=8.0) == (None, None)
    assert limit_moves([(5.0, 2), (9.0, 3)], ceiling=4, start=4.0, end=8.0) == (1.0, None)
    assert DrainRun(items=1, cap=4, reports=[{"succeeded": 1}], report_ends=[2.0]).limits() is None
    assert DrainRun(items=1, cap=4, reports=[{"limit": 3}], report_ends=[2.0]).limits() == [(2.0, 3)]
    # AND the busiest second and the steady rate come out of the call times as defined
    assert max_in_window([0.0, 0.1, 0.5, 0.99, 1.0, 2.5]) == 4
    assert steady_rate([0.0] * 10 + [1.0 + i / 5 for i in range(11)]) == pytest.approx(5.0)
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0 and percentile([1.0, 2.0], 99) == 2.0


def test_timeline_plot_is_a_png(tmp_path: Path) -> None:
    from bench.plot import plot_timeline  # matplotlib: `make setup` installs the bench extra

    # GIVEN a short timeline and probe series
    samples = [Sample(t=100 + i / 10, visible=max(0, 50 - 5 * i), in_flight=min(i, 4), busy=min(i, 2), cap=2)
               for i in range(15)]
    probe = [(100 + i / 10, 1.0 + i % 3) for i in range(15)]
    # WHEN it is plotted
    path = plot_timeline(tmp_path / "t.png", samples, probe, probe[:5], 1.2, "smoke")
    # THEN a PNG file is written
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
