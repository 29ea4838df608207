"""A benchmark figure is a ratio together with the inputs that made it.

Printing a bare number invites comparing it with a number from another machine; printing
``numerator / denominator = ratio`` with the sizes beside it says what was compared.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Figure:
    """One line of the report: ``numerator / denominator = value``, judged against ``expect``."""

    pid: str  # P1..P7, the numbering
    name: str
    numerator: float
    numerator_label: str
    denominator: float
    denominator_label: str
    inputs: dict[str, Any] = field(default_factory=dict)
    # A bound the figure must keep ("<= 1", "== 0", ">= 0.5"), or "" when it is only reported.
    # A broken bound fails `make bench`.
    expect: str = ""
    # A goal the issue set (same form): a figure that misses it is printed as a MISS with its
    # note, and does not fail the run (it is a finding, not a broken promise).
    goal: str = ""
    # Why the figure is what it is, when the numbers alone do not say (a miss's reason).
    note: str = ""
    # Set when the figure could not be measured in this run: printed as "n/a: <why>", judged
    # against nothing (neither a pass nor a miss).
    unavailable: str = ""

    def __post_init__(self) -> None:
        # A percentile of no samples is NaN (a probe that got no sample in a short window on a busy
        # machine): say so instead of printing a NaN ratio that compares with nothing.
        if not self.unavailable and (math.isnan(self.numerator) or math.isnan(self.denominator)):
            missing = self.numerator_label if math.isnan(self.numerator) else self.denominator_label
            object.__setattr__(self, "unavailable", f"no samples for {missing!r} in this run")

    @property
    def value(self) -> float | None:
        if self.unavailable or self.denominator == 0:
            return None
        return self.numerator / self.denominator

    @property
    def holds(self) -> bool | None:
        """Whether ``expect`` holds; None when there is nothing to judge."""
        if self.unavailable:
            return None
        return _judge(self.expect, self.value)

    @property
    def meets_goal(self) -> bool | None:
        """Whether ``goal`` is met; None when there is no goal or nothing was measured."""
        if self.unavailable:
            return None
        return _judge(self.goal, self.value)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["value"] = self.value
        data["holds"] = self.holds
        data["meets_goal"] = self.meets_goal
        return data


def _judge(condition: str, subject: float | None) -> bool | None:
    if not condition:
        return None
    operator, _, bound_text = condition.partition(" ")
    bound = float(bound_text)
    if subject is None:
        return False
    if operator == "within":  # a ratio within +-bound of 1 ("within 0.15": 0.85..1.15)
        return abs(subject - 1) <= bound + 1e-9
    checks = {"<=": subject <= bound + 1e-9, ">=": subject >= bound - 1e-9, "==": subject == bound}
    return checks[operator]


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples) if samples else math.nan


def _number(x: float) -> str:
    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    if float(x).is_integer():
        return f"{int(x):,}"
    return f"{x:,.3g}" if abs(x) < 100 else f"{x:,.0f}"


def _ratio(figure: Figure) -> str:
    if figure.unavailable:
        return f"n/a: {figure.unavailable}"
    value = figure.value
    return "n/a" if value is None else f"{value:.3g}"


def _inputs(figure: Figure) -> str:
    return ", ".join(f"{k}={_number(v) if isinstance(v, int | float) else v}"
                     for k, v in figure.inputs.items())


def _verdict(figure: Figure) -> str:
    parts = []
    if figure.holds is not None:
        parts.append(f"{'ok' if figure.holds else 'FAILS'} ({figure.expect})")
    if figure.meets_goal is not None:
        parts.append(f"{'goal met' if figure.meets_goal else 'MISS'} (goal {figure.goal})")
    elif figure.goal:
        parts.append(f"goal {figure.goal}")
    return "; ".join(parts)


def as_text(figures: Sequence[Figure]) -> str:
    """The console table: one figure per line, ratio first, then its inputs."""
    lines = []
    for f in figures:
        lines.append(
            f"{f.pid:<3} {f.name:<44} {_ratio(f):>8} = {f.numerator_label} {_number(f.numerator)}"
            f" / {f.denominator_label} {_number(f.denominator)}  {_verdict(f)}"
        )
        if f.inputs:
            lines.append(f"    inputs: {_inputs(f)}")
        if f.note:
            lines.append(f"    note: {f.note}")
    return "\n".join(lines)


def as_markdown(figures: Sequence[Figure]) -> str:
    rows = [
        "| | figure | ratio | numerator | denominator | bound / goal | inputs |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        inputs = _inputs(f) + (f"; note: {f.note}" if f.note else "")
        rows.append(
            f"| {f.pid} | {f.name} | **{_ratio(f)}** | {f.numerator_label}: {_number(f.numerator)} "
            f"| {f.denominator_label}: {_number(f.denominator)} | {_verdict(f)} | {inputs} |"
        )
    return "\n".join(rows)


def write_results(directory: Path, figures: Sequence[Figure], extra: dict[str, Any]) -> Path:
    """``latest.json``: the figures, their markdown table, the timeline and the run's facts."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "latest.json"
    document = {"figures": [f.to_json() for f in figures], "markdown": as_markdown(figures), **extra}
    path.write_text(json.dumps(document, indent=1, default=str))
    return path
