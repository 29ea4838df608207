"""P7, the point of sluice: what a burst does to everyone else's queries on the database.

A probe (bench.probe: read one row, update it, commit) runs on a fixed schedule
* against the idle database;
* while the burst drains through sluice (at most ``cap`` workers write at once);
* while the same number of items is written directly by ``10 x cap`` concurrent writers
  (the burst's clients writing straight to the database, as they would without a queue).
Only probes taken while the writes ran count.
"""

from __future__ import annotations

from collections.abc import Sequence

from bench.figures import Figure, percentile
from bench.probe import start_probe
from bench.writers import WriteRun, write_direct

BURST_FACTOR = 10


def idle_probe(url: str, interval_s: float, probes: int) -> list[tuple[float, float]]:
    return start_probe(url, interval_s, limit=probes).wait(timeout_s=60 + probes * interval_s * 5)


def direct_burst(url: str, items: int, writers: int, interval_s: float
                 ) -> tuple[WriteRun, list[tuple[float, float]]]:
    probe = start_probe(url, interval_s)
    try:
        run = write_direct(url, "d", items, writers)
    finally:
        samples = probe.stop()
    return run, [s for s in samples if run.started <= s[0] <= run.finished]


def figures(idle: Sequence[tuple[float, float]], sluice: Sequence[tuple[float, float]],
            direct: Sequence[tuple[float, float]], items: int, cap: int, writers: int) -> list[Figure]:
    ms = {name: [latency for _, latency in series]
          for name, series in (("idle", idle), ("sluice", sluice), ("direct", direct))}
    inputs = {"items": items, "cap": cap, "direct_writers": writers,
              "probes_idle": len(ms["idle"]), "probes_sluice": len(ms["sluice"]),
              "probes_direct": len(ms["direct"])}
    out = []
    for q in (50, 99):
        idle_ms = round(percentile(ms["idle"], q), 2)
        sluice_ms = round(percentile(ms["sluice"], q), 2)
        direct_ms = round(percentile(ms["direct"], q), 2)
        out += [
            Figure("P7", f"probe p{q}: direct burst / through sluice", direct_ms, "direct ms",
                   sluice_ms, "sluice ms", inputs),
            Figure("P7", f"probe p{q}: through sluice / idle", sluice_ms, "sluice ms", idle_ms, "idle ms",
                   inputs),
            Figure("P7", f"probe p{q}: direct burst / idle", direct_ms, "direct ms", idle_ms, "idle ms",
                   inputs),
        ]
    return out
