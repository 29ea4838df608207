"""P8: the database slows mid-drain; the fixed cap against the adaptive limit.

The same burst is drained twice, each on a queue and consumer of its own (``drain.adaptive``
false, then true), with the probe running. ``lead_s`` after the first drain starts, an outside
load (bench.load: other processes' heavy writes on a scratch table) makes the real MariaDB slow
for ``slow_s`` seconds, then stops. Figures:

* probe p99 during the slowdown / probe p99 idle, for each (goal for adaptive: <= 2): what the
  drain adds to everyone else's queries while the database is already struggling;
* the same p99s over the probe's p99 while the same load runs for ``slow_s`` with no drain at
  all: what the drain adds on top of the slowdown itself;
* seconds from the slowdown's start until a drain report's ``limit`` is below the ceiling, and
  from its end until it is back at the ceiling (the reports carry the limit at each drain's
  end, so the resolution is one drain: the slowdown's consumers get a short budget for that).
  Reports without a ``limit`` field (a drain that has no adaptive controller) make these
  "n/a: no limit in the drain reports".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.figures import Figure, percentile
from bench.load import OutsideLoad
from bench.probe import start_probe
from bench.scenarios.drain_burst import DrainRun, drain_burst
from bench.stack import BenchStack, ScratchDatabase

NO_LIMIT = "no limit in the drain reports"


@dataclass
class SlowdownRun:
    drain: DrainRun
    load: OutsideLoad

    def probe_during(self) -> list[float]:
        return [ms for t, ms in self.drain.probe if self.load.started <= t <= self.load.stopped]


def run(stack: BenchStack, db: ScratchDatabase, lane: str, prefix: str, items: int, probe_interval_s: float,
        deadline_s: float, lead_s: float, slow_s: float, processes: int) -> SlowdownRun:
    load = OutsideLoad(db.url, processes)
    timers: list[threading.Timer] = []

    def schedule(_started: float) -> None:
        timers.extend([threading.Timer(lead_s, load.start), threading.Timer(lead_s + slow_s, load.stop)])
        for t in timers:
            t.daemon = True
            t.start()

    try:
        drain = drain_burst(stack, db, items, probe_interval_s, deadline_s, lane=lane, prefix=prefix,
                            on_start=schedule)
    finally:
        for t in timers:
            t.cancel()
        if load.started and not load.stopped:  # the drain ended before the slowdown did
            load.stop()
    if not load.started:
        raise RuntimeError(f"the {lane} drain ended before the slowdown began ({lead_s} s in): "
                           "make the slowdown burst bigger")
    return SlowdownRun(drain, load)


def load_alone(db: ScratchDatabase, seconds: float, processes: int, probe_interval_s: float
               ) -> list[tuple[float, float]]:
    """The probe while the same outside load runs with no drain at all: what the slowdown alone
    does to everyone else's queries, the floor no drain concurrency can go below."""
    probe = start_probe(db.url, probe_interval_s)
    load = OutsideLoad(db.url, processes).start()
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.1)  # the load's length itself: nothing to wait for
    finally:
        load.stop()
        samples = probe.stop()
    return [(t, ms) for t, ms in samples if load.started <= t <= load.stopped]


def limit_moves(limits: Sequence[tuple[float, int]], ceiling: int, start: float, end: float
                ) -> tuple[float | None, float | None]:
    """(seconds from ``start`` until a report's limit is below ``ceiling``, seconds from ``end``
    until a later report's limit is back at it); None where that never happened (no climb back
    without a fall first)."""
    fell_at = next((t for t, limit in limits if t >= start and limit < ceiling), None)
    if fell_at is None:
        return None, None
    back = next((t - end for t, limit in limits if t >= max(end, fell_at) and limit >= ceiling), None)
    return fell_at - start, back


def figures(idle: Sequence[tuple[float, float]], alone: Sequence[tuple[float, float]], fixed: SlowdownRun,
            adaptive: SlowdownRun) -> list[Figure]:
    idle_p99 = round(percentile([ms for _, ms in idle], 99), 2)
    alone_p99 = round(percentile([ms for _, ms in alone], 99), 2)
    out = []
    for name, run_, goal in (("fixed cap", fixed, ""), ("adaptive", adaptive, "<= 2")):
        during = run_.probe_during()
        p99 = round(percentile(during, 99), 2)
        note = ""
        if name == "adaptive" and adaptive.drain.limits() is None:
            note = NO_LIMIT + ": adaptive still runs as the fixed cap"
        elif name == "adaptive" and idle_p99 and p99 / idle_p99 > 2:
            note = (f"the outside load alone, with no drain, puts the probe p99 at {alone_p99 / idle_p99:.3g}x idle "
                    "(next figures): a drain can only stay off the top of that")
        out.append(Figure(
            "P8", f"probe p99 during slowdown / the same load with no drain ({name})", p99, "slowdown ms",
            alone_p99, "load alone ms", {"probes_load_alone": len(alone), "load_processes": run_.load.processes}))
        out.append(Figure(
            "P8", f"probe p99 during slowdown / idle ({name})", p99,
            "slowdown ms", idle_p99, "idle ms",
            {"items": run_.drain.items, "cap": run_.drain.cap, "load_processes": run_.load.processes,
             "slowdown_s": round(run_.load.seconds, 1), "load_rounds": run_.load.rounds,
             "probes_during": len(during), "probe_p50_during_ms": round(percentile(during, 50), 2),
             "drain_s": round(run_.drain.seconds, 1)},
            goal=goal, note=note))
    limits = adaptive.drain.limits()
    inputs = {"ceiling": adaptive.drain.cap, "slowdown_s": round(adaptive.load.seconds, 1),
              "drains": len(adaptive.drain.reports),
              "limits": ",".join(str(v) for _, v in limits) if limits else "none"}
    if limits is None:
        fell = back = None
        why_fell = why_back = NO_LIMIT
    else:
        fell, back = limit_moves(limits, adaptive.drain.cap, adaptive.load.started, adaptive.load.stopped)
        why_fell = "" if fell is not None else "the limit did not fall below the ceiling during the run"
        why_back = ("" if back is not None else "the limit never fell" if fell is None
                    else "the limit was not back at the ceiling when the burst was done")
    slow_s = round(adaptive.load.seconds, 1)
    out += [
        Figure("P8", "s for the limit to fall after the slowdown starts / slowdown s",
               round(fell or 0.0, 1), "s to fall", slow_s, "slowdown s", inputs, unavailable=why_fell),
        Figure("P8", "s for the limit to climb back after it ends / slowdown s",
               round(back or 0.0, 1), "s to climb back", slow_s, "slowdown s", inputs, unavailable=why_back),
    ]
    return out
