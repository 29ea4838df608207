"""The drain timeline PNG: queue depth, workers busy vs cap, DB probe latency, on one time axis."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.timeline import Sample


class PlotUnavailableError(RuntimeError):
    """matplotlib is not installed (it comes with the ``bench`` extra: ``make bench`` installs it)."""


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailableError(
            "matplotlib is missing: install the bench extra (pip install -e '.[bench]')") from None
    return plt


@dataclass(frozen=True)
class SlowdownSeries:
    """One P8 drain for the slowdown plot: all times epoch seconds."""

    label: str
    started: float  # the first drain's start (the x axis' 0)
    slowdown: tuple[float, float]  # the outside load's start and stop
    samples: Sequence[Sample]
    probe: Sequence[tuple[float, float]]
    limits: Sequence[tuple[float, int]] | None  # (report end, limit) or None: the reports carry none


def plot_slowdown(path: Path, series: Sequence[SlowdownSeries], idle_p99_ms: float, load_alone_p99_ms: float,
                  title: str) -> Path:
    """P8: probe latency, workers busy and the concurrency limit over time, fixed vs adaptive,
    with the slowdown shaded."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, len(series), figsize=(6 * len(series), 8), sharex="col", squeeze=False,
                             gridspec_kw={"height_ratios": [2, 1.3, 1.3]})
    for col, s in enumerate(series):
        ax_db, ax_busy, ax_limit = axes[0][col], axes[1][col], axes[2][col]
        for ax in (ax_db, ax_busy, ax_limit):
            ax.axvspan(s.slowdown[0] - s.started, s.slowdown[1] - s.started, color="tab:red", alpha=0.12,
                       label="outside load")
            ax.grid(alpha=0.3)
        ax_db.plot([t - s.started for t, _ in s.probe], [ms for _, ms in s.probe], ".", markersize=2,
                   color="tab:purple", alpha=0.6, label="DB probe")
        ax_db.axhline(idle_p99_ms, color="black", linestyle=":", label=f"idle p99 ({idle_p99_ms:.1f} ms)")
        ax_db.axhline(load_alone_p99_ms, color="tab:red", linestyle=":",
                      label=f"load alone, no drain: p99 ({load_alone_p99_ms:.1f} ms)")
        ax_db.set_yscale("log")
        ax_db.set_ylabel("probe latency (ms, log)")
        ax_db.set_title(f"{title}: {s.label}")
        ax_db.legend(loc="upper right", fontsize=8)
        cap = s.samples[0].cap if s.samples else 1
        ax_busy.step([x.t - s.started for x in s.samples], [x.busy for x in s.samples], where="post",
                     color="tab:green", label="workers busy")
        ax_busy.axhline(cap, color="tab:red", linestyle="--", label=f"cap ({cap})")
        ax_busy.set_ylim(0, cap + 1.5)
        ax_busy.set_ylabel("workers")
        ax_busy.legend(loc="upper right", fontsize=8)
        if s.limits:
            ax_limit.step([0.0] + [t - s.started for t, _ in s.limits], [s.limits[0][1]] + [v for _, v in s.limits],
                          where="pre", color="tab:blue", label="limit (drain reports)")
            ax_limit.legend(loc="upper right", fontsize=8)
        else:
            ax_limit.text(0.5, 0.5, "n/a: no limit in the drain reports", ha="center", va="center",
                          transform=ax_limit.transAxes)
        ax_limit.axhline(cap, color="tab:red", linestyle="--")
        ax_limit.set_ylim(0, cap + 1.5)
        ax_limit.set_ylabel("concurrency limit")
        ax_limit.set_xlabel("seconds since the first drain started")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_timeline(
    path: Path,
    samples: Sequence[Sample],
    sluice_probe: Sequence[tuple[float, float]],
    direct_probe: Sequence[tuple[float, float]],
    idle_p50_ms: float,
    title: str,
) -> Path:
    plt = _pyplot()
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
