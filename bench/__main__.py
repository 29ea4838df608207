"""``python -m bench [--smoke] [--out DIR]``: run every scenario, print the ratios, write the results."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.figures import Figure, as_markdown, as_text, percentile, write_results
from bench.sizes import FULL, SMOKE, Sizes
from sluice.settings import PROJECT_ROOT

DEFAULT_OUT = PROJECT_ROOT / "bench" / "results"
# Function and fauxqs logs: local state, beside the local stack's own (git-ignored).
LOG_DIR = PROJECT_ROOT / ".sluice" / "bench-logs"


def run(sizes: Sizes, out: Path, plot: bool = True) -> tuple[list[Figure], Path]:
    from bench.load import create_load_table
    from bench.plot import SlowdownSeries, plot_slowdown, plot_timeline
    from bench.probe import create_probe_table
    from bench.scenarios import (
        cold_import,
        components,
        cost,
        db_protection,
        drain_burst,
        enqueue_rate,
        lanes,
        planner_check,
        slowdown,
        unbound,
    )
    from bench.stack import BenchStack, ScratchDatabase

    started = time.monotonic()
    figures: list[Figure] = []
    step = _stepper(started)
    step("P6 cold imports")
    figures += cold_import.run(sizes.import_repeats)
    db = ScratchDatabase()
    step(f"scratch database {db.name}")
    db.create()
    try:
        create_probe_table(db.url)
        create_load_table(db.url)
        step("P7 idle probe")
        idle = db_protection.idle_probe(db.url, sizes.probe_interval_s, sizes.idle_probes)
        unbound_rate = unbound.UNBOUND_RATE
        slow = {"timeout_s": sizes.slow_drain_timeout_s}
        variants = {"unbound": {"max_rate": unbound_rate, "adaptive": True},
                    "unbound-fixed": {"max_rate": unbound_rate, "adaptive": False},
                    "slow-fixed": {**slow, "adaptive": False}, "slow-adaptive": {**slow, "adaptive": True}}
        with BenchStack(sizes.cap, sizes.drain_timeout_s, db.url, LOG_DIR, variants=variants) as stack:
            step("P5 enqueue")
            figures += enqueue_rate.run(stack, sizes.enqueue_items, sizes.enqueue_max_tps)
            step(f"P1-P4 drain a burst of {sizes.burst}")
            drain = drain_burst.drain_burst(stack, db, sizes.burst, sizes.probe_interval_s, sizes.deadline_s)
            idle_cost = drain_burst.idle_drain_cost(stack)
            figures += drain_burst.figures(drain, stack, idle_cost)
            figures.append(cost.figure(drain, stack))
            figures.append(planner_check.figure(drain, stack, "rate-bound"))
            step("P2 components alone")
            figures.append(components.figure(stack, db.url, sizes.burst, drain.seconds,
                                             sizes.component_rounds * 10))
            step(f"P3/P8 the rate cap out of the way: {sizes.unbound_burst} items, fixed then adaptive")
            fixed_run = drain_burst.drain_burst(stack, db, sizes.unbound_burst, sizes.probe_interval_s,
                                                sizes.deadline_s, lane="unbound-fixed", prefix="uf")
            adaptive_run = drain_burst.drain_burst(stack, db, sizes.unbound_burst, sizes.probe_interval_s,
                                                   sizes.deadline_s, lane="unbound", prefix="ua")
            figures += unbound.figures(adaptive_run, fixed_run)
            figures.append(planner_check.figure(adaptive_run, stack, "rate cap out of the way"))
            step(f"P8 the outside load alone: {sizes.load_processes} processes for {sizes.slow_s} s, no drain")
            load_alone = slowdown.load_alone(db, sizes.slow_s, sizes.load_processes, sizes.probe_interval_s)
            slow_runs = {}
            for name, prefix in (("slow-fixed", "pf"), ("slow-adaptive", "pa")):
                step(f"P8 slowdown: {sizes.slow_burst} items on {name}, {sizes.load_processes} load processes "
                     f"for {sizes.slow_s} s from {sizes.slow_lead_s} s in")
                slow_runs[name] = slowdown.run(stack, db, name, prefix, sizes.slow_burst, sizes.probe_interval_s,
                                               sizes.deadline_s, sizes.slow_lead_s, sizes.slow_s,
                                               sizes.load_processes)
            figures += slowdown.figures(idle, load_alone, slow_runs["slow-fixed"], slow_runs["slow-adaptive"])
        writers = db_protection.BURST_FACTOR * sizes.cap
        step(f"P7 the same burst from {writers} direct writers")
        direct_run, direct = db_protection.direct_burst(db.url, sizes.burst, writers, sizes.probe_interval_s)
        figures += db_protection.figures(idle, drain.probe, direct, sizes.burst, sizes.cap, writers)
        step(f"L1 lane isolation: lane A {sizes.lane_a_items} items behind a slow vendor "
             f"({sizes.lane_a_poison} poison), lane B {sizes.lane_b_items} items alone then beside it")
        lane_run = lanes.run(db, LOG_DIR, sizes.drain_timeout_s, sizes.lane_a_items, sizes.lane_a_poison,
                             sizes.lane_b_items, sizes.lane_b_interval_s, sizes.deadline_s)
        figures += lanes.figures(lane_run)
    finally:
        db.drop()
    figures.sort(key=_figure_order)
    plot_path = out / "drain-timeline.png"
    slowdown_path = out / "slowdown-timeline.png"
    if plot:
        step("plot")
        plot_timeline(plot_path, drain.samples, drain.probe, direct, percentile([ms for _, ms in idle], 50),
                      f"sluice drain of {sizes.burst} items, cap {sizes.cap}")
        plot_slowdown(slowdown_path, [
            SlowdownSeries(label, r.drain.started_at, (r.load.started, r.load.stopped), r.drain.samples,
                           r.drain.probe, r.drain.limits())
            for label, r in (("fixed cap", slow_runs["slow-fixed"]), ("adaptive", slow_runs["slow-adaptive"]))],
            percentile([ms for _, ms in idle], 99), percentile([ms for _, ms in load_alone], 99),
            f"P8: {sizes.slow_burst} items, MariaDB slowed")
    facts = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "sizes": sizes.__dict__,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "seconds": round(time.monotonic() - started, 1),
        "plot": str(plot_path.relative_to(PROJECT_ROOT)) if plot and plot_path.is_relative_to(PROJECT_ROOT)
        else str(plot_path) if plot else "",
        "drain_reports": drain.reports,
        "slowdown": {name: {"reports": r.drain.reports, "report_ends": r.drain.report_ends,
                            "started": r.drain.started_at, "load": [r.load.started, r.load.stopped],
                            "seconds": r.drain.seconds} for name, r in slow_runs.items()},
        "timeline": [s.__dict__ for s in drain.samples],
        "probe": {"idle": idle, "sluice": drain.probe, "direct": direct, "load_alone": load_alone},
        "direct_run": direct_run.__dict__,
        "lanes": {"alone": lane_run.alone.__dict__, "loaded": lane_run.loaded.__dict__,
                  "vendor_counters": lane_run.vendor_counters},
    }
    path = write_results(out, figures, facts)
    return figures, path


def _figure_order(figure: Figure) -> tuple[str, int]:
    """P1..P9 in number order (P10 after P9), then the other series (L1: lanes)."""
    letters = figure.pid.rstrip("0123456789")
    return (letters if letters != "P" else "", int(figure.pid[len(letters):] or 0))


def _stepper(started: float) -> Callable[[str], None]:
    def step(what: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {what}", file=sys.stderr, flush=True)
    return step


def _bench_errors() -> tuple[type[BaseException], ...]:
    from bench.plot import PlotUnavailableError
    from bench.scenarios.cold_import import ImportBenchError
    from sluice.db import DbError
    from sluice.settings import SettingsError
    from sluice_tools.local.processes import LocalServiceError

    return (DbError, LocalServiceError, SettingsError, PlotUnavailableError, ImportBenchError, RuntimeError,
            OSError)


BENCH_ERRORS = _bench_errors()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes: proves the harness, measures nothing")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where latest.json and the PNG go")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    args = parser.parse_args(argv)
    try:
        figures, path = run(SMOKE if args.smoke else FULL, args.out, plot=not args.no_plot)
    except BENCH_ERRORS as exc:
        # What a user can act on (no database, no Node, a drain that never finished), not a traceback.
        from sluice.db import DbError

        hint = ("the bench needs a MariaDB it may create databases on: DATABASE_ADMIN_URL "
                "(default mysql://root@127.0.0.1:3306/)" if isinstance(exc, DbError) else f"logs: {LOG_DIR}")
        print(f"bench: {type(exc).__name__}: {exc}\n{hint}", file=sys.stderr)
        return 2
    print(as_text(figures))
    print()
    print(as_markdown(figures))
    print(f"\nresults: {path}", file=sys.stderr)
    broken = [f for f in figures if f.holds is False]
    if broken:
        print(f"{len(broken)} figure(s) break their bound: " + "; ".join(f"{f.pid} {f.name}" for f in broken),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
