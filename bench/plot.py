"""The drain timeline PNG: queue depth, workers busy vs cap, DB probe latency, on one time axis."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.timeline import Sample


class PlotUnavailableError(RuntimeError):
    """matplotlib is not installed (it comes with the ``bench`` extra: ``make bench`` installs it)."""


def plot_timeline(
    path: Path,
    samples: Sequence[Sample],
    sluice_probe: Sequence[tuple[float, float]],
    direct_probe: Sequence[tuple[float, float]],
    idle_p50_ms: float,
    title: str,
) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailableError(
            "matplotlib is missing: install the bench extra (pip install -e '.[bench]')") from None
    if not samples:
        raise ValueError("no timeline samples to plot")
    t0 = samples[0].t
    fig, (ax_depth, ax_busy, ax_db) = plt.subplots(3, 1, figsize=(10, 8), sharex=False,
                                                   gridspec_kw={"height_ratios": [2, 1.3, 2]})
    xs = [s.t - t0 for s in samples]
    ax_depth.plot(xs, [s.visible for s in samples], label="visible (waiting)", color="tab:blue")
    ax_depth.plot(xs, [s.in_flight for s in samples], label="in flight", color="tab:orange")
    ax_depth.set_ylabel("messages")
    ax_depth.set_title(title)
    ax_depth.legend(loc="upper right")
    ax_depth.grid(alpha=0.3)

    ax_busy.step(xs, [s.busy for s in samples], where="post", label="workers busy", color="tab:green")
    ax_busy.axhline(samples[0].cap, color="tab:red", linestyle="--", label=f"cap ({samples[0].cap})")
    ax_busy.set_ylim(0, samples[0].cap + 1.5)
    ax_busy.set_ylabel("workers")
    ax_busy.set_xlabel("seconds since the first drain started (the burst was already enqueued)")
    ax_busy.legend(loc="upper right")
    ax_busy.grid(alpha=0.3)

    # Each probe series on its own clock from its own start, so the two bursts line up.
    for series, label, color in ((sluice_probe, "burst through sluice", "tab:green"),
                                 (direct_probe, "same burst, direct writers", "tab:red")):
        if series:
            start = series[0][0]
            ax_db.plot([t - start for t, _ in series], [ms for _, ms in series], ".", markersize=2,
                       label=label, color=color, alpha=0.6)
    ax_db.axhline(idle_p50_ms, color="black", linestyle=":", label=f"idle p50 ({idle_p50_ms:.1f} ms)")
    ax_db.set_yscale("log")
    ax_db.set_ylabel("DB probe latency (ms, log)")
    ax_db.set_xlabel("seconds since each burst started")
    ax_db.legend(loc="upper right")
    ax_db.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
