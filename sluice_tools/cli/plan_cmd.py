"""`sluice plan`: capacity and cost of a daily volume (no AWS call; settings + price table).

A stage with lanes: one line per lane (its drain rate, what binds it, what breaks first, its
cost), each lane taking ``--items-per-day`` of its own, and the account's line (every lane's
reserved concurrency and consumers vs ``account_concurrency``); ``--lane`` gives one lane's
whole plan."""

from __future__ import annotations

import math

import typer
from rich.table import Table

from sluice.settings import load_settings
from sluice_tools.cli.common import EXIT_USAGE, CliError, JsonOption, StageOption, command, console, emit_json
from sluice_tools.ops.plan import AccountPlan, PlanError, account_plan, inputs_from_settings, make_plan
from sluice_tools.ops.prices import PRICES_READ_ON, PRICES_REGION


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:,.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:,.1f} min"
    return f"{seconds / 3600:,.2f} h"


@command
def plan(
    items_per_day: int = typer.Option(..., "--items-per-day", help="Work items enqueued per day."),
    worker_ms: float = typer.Option(..., "--worker-ms", help="Milliseconds a worker spends on one item."),
    batch_size: int = typer.Option(None, "--batch-size", help="Per worker call, default worker.batch_size."),
    fill: float = typer.Option(1.0, "--fill", help="Average fraction of the batch size a worker call "
                               "carries (0..1], default 1: full batches."),
    cap: int = typer.Option(None, "--cap", help="Workers at once, default drain.max_parallel."),
    items_per_request: int = typer.Option(None, "--items-per-request", help="Per enqueue call, default 100."),
    payload_kb: float = typer.Option(1.0, "--payload-kb", help="Size of one item's message in KB."),
    dead_letter_rate: float = typer.Option(0.0, "--dead-letter-rate", help="Fraction dead-lettered."),
    within_hours: float = typer.Option(24.0, "--within-hours", help="A day's items must drain within this."),
    invoke_overhead_ms: float = typer.Option(0.0, "--invoke-overhead-ms", help="Latency added per invoke."),
    db_max_connections: int = typer.Option(None, "--db-max-connections", help="DB max_connections."),
    account_concurrency: int = typer.Option(None, "--account-concurrency", help="Lambda concurrency quota."),
    fifo_tps: int = typer.Option(None, "--fifo-tps", help="FIFO transactions/s per API action, default 300."),
    lane: str = typer.Option(None, "--lane", "-l", help="One lane's whole plan (default: every lane, and "
                             "the account)."),
    stage: str = StageOption,
    as_json: bool = JsonOption,
) -> None:
    """Drain time, needed cap, Lambda GB-s, requests and dollars for a daily volume; what breaks first."""
    settings = load_settings(stage)
    numbers = {"--worker-ms": worker_ms, "--fill": fill, "--payload-kb": payload_kb,
               "--dead-letter-rate": dead_letter_rate, "--within-hours": within_hours,
               "--invoke-overhead-ms": invoke_overhead_ms}
    for flag, value in numbers.items():
        if not math.isfinite(value):
            raise CliError(f"{flag} must be a finite number, not {value}", EXIT_USAGE)
    try:
        lanes = settings.resolved_lanes()
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    picked = settings.lane(lane) if lane is not None else None  # a bad name: one line, exit 2
    overrides = {"batch_size": batch_size, "fill": fill, "cap": cap, "items_per_request": items_per_request,
                 "payload_kb": payload_kb, "dead_letter_rate": dead_letter_rate, "within_hours": within_hours,
                 "invoke_overhead_ms": invoke_overhead_ms, "db_max_connections": db_max_connections,
                 "fifo_tps": fifo_tps}
    try:
        if picked is None and not lanes[0].implicit:
            _print_lanes(stage, account_plan(settings, items_per_day, worker_ms, account_concurrency,
                                             **overrides), as_json)
            return
        result = make_plan(inputs_from_settings(settings, items_per_day, worker_ms, lane=picked,
                                                account_concurrency=account_concurrency, **overrides))
    except PlanError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if as_json:
        emit_json({"stage": stage, **({"lane": picked.name} if picked and not picked.implicit else {}),
                   **result.to_dict()})
        return
    i = result.inputs
    console.print(f"[bold]Plan for {i.items_per_day:,} items/day at {i.worker_ms:g} ms/item[/bold] "
                  f"(stage {stage}: cap {i.cap}, batch {i.batch_size} filled {i.fill:.0%}, "
                  f"worker {i.worker_memory_mb} MB)")
    drain = Table(title="Drain", show_header=False)
    drain.add_row("drain rate", f"{result.drain_rate:,.1f} items/s (bound by {result.drain_bound_by})")
    drain.add_row("draining time for a day's items", _duration(result.drain_time_s))
    drain.add_row(f"wall time (consumer runs {result.duty:.0%} of it)", _duration(result.wall_time_s))
    drain.add_row(f"cap needed to drain within {i.within_hours:g} h",
                  str(result.needed_cap) if result.needed_cap is not None else "none suffices (see limits)")
    console.print(drain)
    usage = Table(title="Per day")
    usage.add_column("what")
    usage.add_column("amount", justify="right")
    usage.add_column("USD", justify="right")
    usd = result.usd_per_day
    gb = ", ".join(f"{k} {v:,.0f}" for k, v in result.gb_seconds.items())
    sqs = ", ".join(f"{k} {v:,}" for k, v in result.sqs_requests.items())
    usage.add_row("Lambda requests", f"{result.lambda_requests:,}", f"{usd['lambda_requests']:.4f}")
    usage.add_row(f"Lambda GB-s ({gb})", f"{result.total_gb_seconds:,.1f}", f"{usd['lambda_duration']:.4f}")
    usage.add_row(f"SQS FIFO requests ({sqs})", f"{result.total_sqs_requests:,}", f"{usd['sqs']:.4f}")
    usage.add_row("HTTP API requests", f"{result.enqueue_requests:,}", f"{usd['http_api']:.4f}")
    usage.add_row("[bold]total[/bold]", "", f"[bold]{result.total_usd_per_day:.4f}[/bold]")
    console.print(usage)
    console.print(f"[bold]${result.usd_per_million_items:.4f} per million items[/bold] "
                  f"(list prices, {PRICES_REGION}, read {PRICES_READ_ON}, no free tier)")
    limits = Table(title="Limits, nearest first")
    for name in ("limit", "used", "of", "%", "note"):
        limits.add_column(name)
    for x in sorted(result.limits, key=lambda x: x.ratio, reverse=True):
        style = "red" if x.broken else ("yellow" if x.ratio > 0.7 else "")
        limits.add_row(x.name, f"{x.used:,.1f}", f"{x.limit:,.0f}", f"{x.ratio:.0%}", x.note, style=style)
    console.print(limits)
    first = result.breaks_first
    verdict = "BROKEN" if first.broken else "breaks first"
    console.print(f"{verdict}: [bold]{first.name}[/bold] at {first.ratio:.0%} of its limit")


def _print_lanes(stage: str, plan: AccountPlan, as_json: bool) -> None:
    """Every lane's plan in one line each, then the account's reservation."""
    if as_json:
        emit_json({"stage": stage, **plan.to_dict()})
        return
    table = Table(title=f"Plan per lane, stage {stage} (each lane its own items/day)")
    for name in ("lane", "cap", "drain items/s", "bound by", "wall time", "breaks first", "%", "$/M items"):
        table.add_column(name, no_wrap=name in ("lane", "cap"))
    for name, result in plan.lanes:
        first = result.breaks_first
        table.add_row(name, str(result.inputs.cap), f"{result.drain_rate:,.1f}", result.drain_bound_by,
                      _duration(result.wall_time_s), first.name, f"{first.ratio:.0%}",
                      f"{result.usd_per_million_items:.4f}", style="red" if first.broken else "")
    console.print(table)
    verdict = "BROKEN" if plan.broken else "ok"
    console.print(f"account: the lanes reserve {plan.reserved} concurrent executions (caps + consumers + "
                  f"migrate) of {plan.reservable} reservable (account_concurrency {plan.account_concurrency} "
                  f"less 100 unreserved): {verdict}", style="red" if plan.broken else "")


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
