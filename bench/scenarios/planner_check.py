"""The planner check: `sluice plan`'s model (sluice_tools/ops/plan.py), called with the bench's
settings and the per-item worker time measured in the same drain, predicts the drain time of the
bench burst; the figure is predicted / measured (goal: within 15%), so the planner can be trusted
at scales this machine cannot run.

The measured drain time is the bench's: from the first drain's start until the ledger holds every
item, drains back to back (no schedule gaps), so it is compared with the plan's ``drain_time_s``
(draining time, no gaps between ticks).
"""

from __future__ import annotations

from bench.figures import Figure
from bench.scenarios.drain_burst import DrainRun
from bench.stack import BenchStack
from sluice_tools.ops.plan import Plan, inputs_from_settings, make_plan


def predict(run: DrainRun, stack: BenchStack) -> Plan:
    # Per item: the workers' summed durations over the items, so each invocation's overhead is in it.
    worker_ms = run.worker["duration_ms"] / max(1, run.items)
    settings = stack.lane(run.lane).settings
    return make_plan(inputs_from_settings(settings, items_per_day=run.items, worker_ms=worker_ms))


def figure(run: DrainRun, stack: BenchStack, label: str) -> Figure:
    plan = predict(run, stack)
    batch_size = stack.lane(run.lane).settings.worker.batch_size
    mean_batch = run.items / max(1, run.worker["invocations"])
    predicted, measured = plan.drain_time_s, run.seconds
    ratio = predicted / measured if measured else 0.0
    note = ""
    if abs(ratio - 1) > 0.15:
        measured_rate = run.items / measured if measured else 0.0
        note = (f"the plan assumes a steady {plan.drain_rate:,.0f} items/s bound by {plan.drain_bound_by} "
                f"from the first second; the drain averaged {measured_rate:,.0f}/s: each drain ramps up "
                f"after its receive, ends on a thin tail with few groups left, and the next drain "
                f"starts after the report returns")
        if plan.drain_bound_by == "worker slots (cap)":
            note += (f"; the plan keeps every slot busy, while a FIFO queue hands out no group with a "
                     f"message in flight, so slots wait on short receives (a worker call carried "
                     f"{mean_batch:.1f} of {batch_size} items; see P3)")
    return Figure(
        "P9", f"planner: predicted / measured drain time ({label})", round(predicted, 2), "plan s",
        round(measured, 2), "measured s",
        {"items": run.items, "worker_ms_per_item": round(run.worker["duration_ms"] / max(1, run.items), 2),
         "bound_by": plan.drain_bound_by, "plan_items_per_s": round(plan.drain_rate, 1),
         "max_rate": stack.lane(run.lane).settings.drain.max_rate, "mean_worker_batch": round(mean_batch, 2)},
        goal="within 0.15", note=note,
    )
