"""P1 (measured), P2, P3, P4 and P7's "through sluice" leg: one burst, drained by the real
consumer and workers, with the queue, the workers and the database watched throughout.

Drains run back to back (one consumer at a time, as ``drain.consumers: 1`` with a tick that
finds the previous drain done); the bench starts each one itself so it gets every report.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.figures import Figure
from bench.probe import start_probe
from bench.scenarios import request_model as esm
from bench.scenarios.enqueue_rate import timed_enqueue
from bench.stack import BenchStack, ScratchDatabase
from bench.timeline import Sample, TimelineSampler
from bench.writers import invoice_item
from sluice_tools.ops.prices import price

# Actions the bench itself sends through the proxy (never the consumer or workers).
_BENCH_OWN = {"CreateQueue", "SendMessageBatch"}


@dataclass
class DrainRun:
    items: int
    cap: int
    reports: list[dict[str, Any]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    probe: list[tuple[float, float]] = field(default_factory=list)
    sqs_calls: Counter[str] = field(default_factory=Counter)
    worker: dict[str, Any] = field(default_factory=dict)
    consumer: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    processed: int = 0
    lane: str = ""  # the bench stack's lane or variant that drained it ("" the first)
    started_at: float = 0.0  # epoch s, when the first drain was started
    report_ends: list[float] = field(default_factory=list)  # epoch s each drain report came back

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0

    def limits(self) -> list[tuple[float, int]] | None:
        """(epoch s, limit) at the end of each drain, from the reports' ``limit``; None when the
        reports carry no limit (a drain without the adaptive controller)."""
        if not self.reports or any("limit" not in r for r in self.reports):
            return None
        return [(t, int(r["limit"])) for t, r in zip(self.report_ends, self.reports, strict=True)]


def drain_burst(stack: BenchStack, db: ScratchDatabase, items: int, probe_interval_s: float,
                deadline_s: float, lane: str = "", prefix: str = "s",
                on_start: Callable[[float], None] | None = None) -> DrainRun:
    """Enqueue ``items`` invoices keyed ``<prefix>-N`` on ``lane``'s queue, then drain them back to
    back, sampling the queue, the workers and the DB probe; ``on_start(epoch_s)`` runs as the
    first drain starts (an outside load's timer)."""
    assert stack.proxy is not None
    target = stack.lane(lane)
    timed_enqueue(stack, target.queue_url, [invoice_item(prefix, i) for i in range(items)], max_tps=300)
    cap = target.settings.drain.max_parallel
    run = DrainRun(items=items, cap=cap, lane=lane)
    stack.reset_stats()
    before = stack.proxy.snapshot()

    def read() -> tuple[int, int, int]:
        visible, in_flight = stack.depth(target.queue_url)
        return visible, in_flight, int(stack.worker_stats(lane)["busy"])

    sampler = TimelineSampler(read, cap=cap).start()
    probe = start_probe(db.url, probe_interval_s)
    started = time.monotonic()
    run.started_at = time.time()
    if on_start is not None:
        on_start(run.started_at)
    deadline = started + deadline_s
    try:
        while True:
            run.reports.append(stack.drain_once(lane))
            run.report_ends.append(time.time())
            run.processed = db.count("SELECT COUNT(*) FROM processed_messages "
                                     f"WHERE item_key LIKE '{prefix}-%'")
            if run.processed >= items:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the burst did not drain within {deadline_s} s "
                                   f"({run.processed}/{items} processed, {len(run.reports)} drains)")
    finally:
        run.seconds = time.monotonic() - started
        run.samples = sampler.stop()
        run.probe = probe.stop()
    after = stack.proxy.snapshot()
    run.sqs_calls = Counter({k: after[k] - before[k] for k in after if after[k] - before[k] > 0})
    run.worker, run.consumer = stack.worker_stats(lane), stack.consumer_stats(lane)
    return run


def mean_busy_with_backlog(run: DrainRun) -> float:
    """Mean workers busy over the samples that saw messages waiting in the queue."""
    backlog = [s for s in run.samples if s.visible > 0]
    return round(sum(s.busy for s in backlog) / max(1, len(backlog)), 2)


def idle_drain_cost(stack: BenchStack) -> tuple[int, int]:
    """(Lambda invocations, SQS calls) of one drain that finds the queue empty."""
    assert stack.proxy is not None
    stack.reset_stats()
    before = stack.proxy.snapshot()
    stack.drain_once()
    after = stack.proxy.snapshot()
    sqs_calls = sum(after[k] - before[k] for k in after if k not in _BENCH_OWN)
    stats = stack.consumer_stats()["invocations"] + stack.worker_stats()["invocations"]
    return int(stats), int(sqs_calls)


def sluice_requests(run: DrainRun) -> tuple[int, int]:
    """(Lambda invocations, SQS calls) the consumers and workers made draining ``run``."""
    invocations = run.consumer["invocations"] + run.worker["invocations"]
    return int(invocations), sum(v for k, v in run.sqs_calls.items() if k not in _BENCH_OWN)


def figures(run: DrainRun, stack: BenchStack, idle: tuple[int, int]) -> list[Figure]:
    n, cap = run.items, run.cap
    invocations, sqs_calls = sluice_requests(run)
    model = esm.esm_burst(n)
    per_item = (invocations + sqs_calls) / n
    calls_text = ", ".join(f"{k}={v}" for k, v in sorted(run.sqs_calls.items()) if k not in _BENCH_OWN)
    out = [
        Figure("P1", "drain requests per item: sluice / ESM model", round(per_item, 3), "sluice req/item",
               round(model.total / n, 3), "ESM req/item",
               {"items": n, "sluice_invocations": invocations, "sluice_sqs": sqs_calls,
                "sluice_calls": calls_text,
                "esm_invocations": model.lambda_invocations, "esm_sqs": model.sqs_calls, "batch": 10,
                "mean_worker_batch": round(n / max(1, run.worker["invocations"]), 2)},
               goal="<= 0.8"),
    ]
    ticks = esm.schedule_ticks_per_day(stack.settings.drain.schedule) * stack.settings.drain.consumers
    idle_invocations, idle_sqs = idle[0] * ticks, idle[1] * ticks
    esm_idle = esm.esm_idle_per_day()
    # The idle consumer's compute: one long poll of wait_s at its memory size, per tick.
    idle_gb_s = ticks * stack.settings.drain.wait_s * stack.settings.drain.memory_mb / 1024
    sluice_usd = (idle_sqs * price("sqs_fifo_request") + idle_invocations * price("lambda_request")
                  + idle_gb_s * price("lambda_gb_second"))
    esm_usd = esm_idle.sqs_calls * price("sqs_fifo_request")
    out += [
        Figure("P1", "idle requests/day: sluice / ESM model", round(idle_invocations + idle_sqs),
               "sluice req/day", round(esm_idle.total), "ESM req/day",
               {"schedule": stack.settings.drain.schedule,
                "per_empty_drain": f"{idle[0]} invoke + {idle[1]} SQS",
                "esm_pollers": esm.ESM_IDLE_POLLERS, "esm_long_poll_s": esm.ESM_LONG_POLL_S}),
        Figure("P1", "idle USD/day: sluice / ESM model", round(sluice_usd, 5), "sluice $/day",
               round(esm_usd, 5), "ESM $/day", {"sluice_idle_gb_s": round(idle_gb_s, 1)}),
    ]
    backlog = [s for s in run.samples if s.visible > 0]
    out += [
        Figure("P3", "peak workers busy / cap", run.worker["peak_busy"], "peak busy", cap, "cap",
               {"items": n, "worker_throttles": run.worker["throttles"]}, expect="<= 1"),
        Figure("P3", "mean workers busy while backlog / cap (rate-bound)", mean_busy_with_backlog(run),
               "mean busy", cap, "cap",
               {"samples_with_backlog": len(backlog), "sample_every_s": 0.1,
                "max_rate": stack.lane(run.lane).settings.drain.max_rate}),
    ]
    budget = sum(r["budget_ms"] for r in run.reports)
    used = sum(r["used_ms"] for r in run.reports)
    overruns = sum(1 for r in run.reports if r["used_ms"] > r["budget_ms"]) + run.consumer["timeouts"]
    # Utilization means something only for drains that had work to the end: those the
    # budget cut. A burst that fits in one drain has none, so then every drain counts.
    cut = [r for r in run.reports if r["stopped_because"] == "budget"]
    judged = cut or run.reports
    out += [
        Figure("P4", "consumer budget overruns / drains", overruns, "overruns", len(run.reports), "drains",
               {"consumer_timeouts": run.consumer["timeouts"],
                "drain_timeout_s": stack.settings.drain.timeout_s},
               expect="== 0"),
        Figure("P4", "budget used / budget" + (" (drains cut by budget)" if cut else " (all drains)"),
               sum(r["used_ms"] for r in judged), "used ms", sum(r["budget_ms"] for r in judged), "budget ms",
               {"drains": len(judged), "all_drains_used_pct": round(100 * used / max(1, budget), 1),
                "safety_margin_ms": stack.settings.drain.safety_margin_ms}),
    ]
    return out
