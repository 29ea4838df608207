"""P3 with the rate cap out of the way, and P8's no-slowdown throughput.

The same burst is drained twice on queues of their own, with ``drain.max_rate`` far above what
the workers can do (so the slots, not the rate, bind): once adaptive (the stage's default), once
with ``drain.adaptive: false`` (the fixed cap). Mean workers busy while a backlog waits, over the
cap, says whether the drain keeps its slots full; adaptive items/s over fixed items/s says what
the adaptive limit costs when nothing is slow.
"""

from __future__ import annotations

from bench.figures import Figure
from bench.scenarios.drain_burst import DrainRun, mean_busy_with_backlog

UNBOUND_RATE = 100_000  # messages/s: far above what cap workers can do on any machine


def figures(adaptive: DrainRun, fixed: DrainRun) -> list[Figure]:
    backlog = [s for s in adaptive.samples if s.visible > 0]
    mean_busy = mean_busy_with_backlog(adaptive)
    limits = adaptive.limits()
    note = ""
    if mean_busy < 0.9 * adaptive.cap:
        note = ("a FIFO queue hands out no group with a message in flight: with queue.groups groups and "
                "cap workers each carrying several groups' messages, receives come back short and "
                "slots wait on them")
    return [
        Figure("P3", "mean workers busy while backlog / cap (rate cap out of the way)", mean_busy,
               "mean busy", adaptive.cap, "cap",
               {"items": adaptive.items, "max_rate": UNBOUND_RATE, "samples_with_backlog": len(backlog),
                "peak_busy": adaptive.worker["peak_busy"], "items_per_s": round(adaptive.items_per_s, 1),
                "fixed_mean_busy": mean_busy_with_backlog(fixed)},
               goal=">= 0.9", note=note),
        Figure("P8", "items/s, no slowdown: adaptive / fixed cap", round(adaptive.items_per_s, 1),
               "adaptive items/s", round(fixed.items_per_s, 1), "fixed items/s",
               {"items": adaptive.items, "cap": adaptive.cap, "max_rate": UNBOUND_RATE,
                "adaptive_limits": ",".join(str(v) for _, v in limits) if limits else "no limit in the reports"},
               goal=">= 0.95",
               note="" if limits else ("no limit in the drain reports: adaptive still runs as the fixed cap, so "
                                       "this is the spread between two drains of the same code")),
    ]
