"""`sluice status | send | drain`: look at the queue, put work in, drain now."""

from __future__ import annotations

import json
import re
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from sluice.aws import FunctionInvoker, ThrottledError
from sluice.contract import DrainReport
from sluice.enqueue import Enqueuer, EnqueueRequestError
from sluice.tasks import TaskModuleError, load_tasks
from sluice_tools.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    CliError,
    JsonOption,
    StageOption,
    command,
    console,
    emit_json,
)
from sluice_tools.ops.status import Status, collect_status
from sluice_tools.stage import StageContext, reaching, resolve_stage

# The CLI sends no HTTP body, so the API's body-size limit does not apply; item limits do.
_NO_BODY_LIMIT = 1 << 40


# -- status -----------------------------------------------------------------------------------

def _age(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:,.0f} s"


def _limit_cell(r: DrainReport) -> str:
    """The concurrency limit a drain ended at: "3/8" (adaptive, 3 of a ceiling of 8), "8 fix"
    (drain.adaptive: false), "" for a report from before the limit was reported."""
    if not r.limit:
        return ""
    return f"{r.limit}/{r.limit_ceiling}" if r.adaptive else f"{r.limit} fix"


def render_status(s: Status) -> Group:
    queues = Table(title=f"sluice {s.stage}")
    for name in ("queue", "visible", "in flight", "delayed", "oldest age"):
        queues.add_column(name, justify="right" if name != "queue" else "left")
    queues.add_row("work", f"{s.queue.visible:,}", f"{s.queue.in_flight:,}", f"{s.queue.delayed:,}",
                   _age(s.oldest_age_s))
    queues.add_row("DLQ", f"{s.dlq.visible:,}", f"{s.dlq.in_flight:,}", f"{s.dlq.delayed:,}",
                   _age(s.dlq_oldest_age_s), style="red" if s.dlq.total else "")
    workers = Table(show_header=False, box=None)
    busy = "n/a" if s.workers_busy is None else str(s.workers_busy)
    peak = "" if s.workers_peak is None else f" (peak {s.workers_peak})"
    workers.add_row("workers busy / cap", f"{busy} / {s.cap}{peak}")
    parts: list[Any] = [queues, workers]
    if s.drains:
        # Short headers: the table must fit an 80-column terminal without truncating numbers.
        drains = Table(title="last drains", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        for name in ("at", "recv", "done", "dup", "dead", "retry", "rel", "thr", "peak", "lim", "bud%", "stop"):
            drains.add_column(name, no_wrap=True)
        for d in s.drains:
            r = d.report
            at = re.search(r"\d\d:\d\d:\d\d", d.at)
            counts = (r.received, r.succeeded, r.duplicates, r.dead_lettered, r.retried, r.released,
                      r.throttled, r.peak_parallel, _limit_cell(r), r.budget_used_pct)
            stop = r.stopped_because.replace("queue_empty", "empty")
            drains.add_row(at.group(0) if at else "", *(str(c) for c in counts), stop)
        parts.append(drains)
    parts += [f"[dim]{note}[/dim]" for note in s.notes]
    return Group(*parts)


@command
def status(
    watch: bool = typer.Option(False, "--watch", "-w", help="Refresh until Ctrl-C."),
    interval: float = typer.Option(2.0, "--interval", min=0.2, help="Refresh period with --watch."),
    stage: str = StageOption,
    as_json: bool = JsonOption,
) -> None:
    """Depths (visible, in flight, delayed), oldest age, DLQ, workers busy vs cap, last drains."""
    ctx = resolve_stage(stage)
    with reaching(f"reading the queues of stage {stage!r}"):
        snapshot = collect_status(ctx)
        if as_json and not watch:
            emit_json(snapshot.to_dict())
            return
        if not watch:
            console.print(render_status(snapshot))
            return
        try:
            if as_json:
                # One JSON document per snapshot and nothing else (no table), each flushed as it is
                # taken, so a reader on a pipe sees it at once.
                while True:
                    emit_json(snapshot.to_dict())
                    sys.stdout.flush()
                    time.sleep(interval)  # the refresh period, not a wait for a condition
                    snapshot = collect_status(ctx)
            with Live(render_status(snapshot), console=console, refresh_per_second=4) as live:
                while True:
                    # A screen refresh period, not a wait for a condition.
                    time.sleep(interval)
                    snapshot = collect_status(ctx)
                    live.update(render_status(snapshot))
        except KeyboardInterrupt:
            return


# -- send -------------------------------------------------------------------------------------

def read_items(path: Path) -> list[Any]:
    """A JSON file ({"items": [...]} or a list) or NDJSON (one item per line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", EXIT_USAGE) from None
    except UnicodeDecodeError as exc:
        raise CliError(f"{path} is not UTF-8 text (byte {exc.start}); expected JSON or NDJSON", EXIT_USAGE) from None
    stripped = text.lstrip()
    if stripped.startswith("[") or stripped.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None  # maybe NDJSON whose first line is an object
        if isinstance(data, list):
            return data
        if isinstance(data, dict):
            if not isinstance(data.get("items"), list):
                raise CliError(f'{path}: a JSON object must be {{"items": [...]}}', EXIT_USAGE)
            return list(data["items"])
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except ValueError as exc:
            raise CliError(f"{path}:{number}: not JSON ({exc}); expected JSON or one item per line",
                           EXIT_USAGE) from None
    return items


def _enqueuer(ctx: StageContext) -> Enqueuer:
    s = ctx.settings
    # The stage's own task modules, as its enqueuer function loads them (this process has no
    # SLUICE_TASK_MODULES); a module that does not import is one line, exit 2.
    try:
        load_tasks(t.module for t in s.tasks)
    except TaskModuleError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return Enqueuer(ctx.queue(), groups=s.queue.groups, max_items=s.enqueuer.max_items,
                    max_body_bytes=_NO_BODY_LIMIT, max_tps=s.queue.max_tps)


def _validate_all(enqueuer: Enqueuer, chunks: list[list[Any]], size: int) -> None:
    """All-or-nothing over the whole file, as the API is over one request."""
    errors: list[dict[str, Any]] = []
    for n, chunk in enumerate(chunks):
        try:
            enqueuer.prepare({"items": chunk})
        except EnqueueRequestError as exc:
            if not exc.errors:
                raise CliError(exc.message, EXIT_USAGE) from None
            errors += [{**e, "index": e["index"] + n * size} for e in exc.errors]
    if errors:
        shown = "\n".join(f"  item {e['index']}: {e['reason']}" for e in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise CliError(f"{len(errors)} item(s) are invalid; nothing was enqueued:\n{shown}{more}", EXIT_USAGE)


@command
def send(
    task: str = typer.Option(None, "--task", help="Task name of one item."),
    key: str = typer.Option(None, "--key", help="Idempotency key (default: hash of the payload)."),
    group: str = typer.Option(None, "--group", help="Ordering group of the item."),
    payload: str = typer.Option(None, "--payload", help="The item's payload as JSON."),
    file: Path = typer.Option(None, "--file", "-f", help="JSON ({\"items\": [...]} or a list) or NDJSON."),
    stage: str = StageOption,
    as_json: bool = JsonOption,
) -> None:
    """Enqueue one item or a file of items, through the same validation as the API."""
    if file is not None and (task or key or group or payload):
        raise CliError("give either --file or --task/--key/--group/--payload, not both", EXIT_USAGE)
    if file is None:
        if not task or payload is None:
            raise CliError("one item needs --task and --payload (or use --file)", EXIT_USAGE)
        try:
            body = json.loads(payload)
        except ValueError as exc:
            raise CliError(f"--payload is not JSON: {exc}", EXIT_USAGE) from None
        item: dict[str, Any] = {"task": task, "payload": body}
        if key is not None:
            item["key"] = key
        if group is not None:
            item["group"] = group
        items = [item]
    else:
        items = read_items(file)
        if not items:
            raise CliError(f"{file} holds no items", EXIT_USAGE)
    ctx = resolve_stage(stage)
    enqueuer = _enqueuer(ctx)
    size = ctx.settings.enqueuer.max_items
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    _validate_all(enqueuer, chunks, size)
    with reaching(f"reaching the queue of stage {stage!r}"):
        # One cheap call first: a queue that cannot be reached at all (a stopped stack, no network)
        # is one line and exit 3, not every item reported as "not enqueued".
        ctx.queue().attributes(["QueueArn"])
    rows: list[dict[str, Any]] = []
    failed = 0
    progress = Progress(TextColumn("enqueue"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=console, disable=as_json or len(items) <= size, transient=False)
    with reaching(f"enqueueing to stage {stage!r}"), progress:
        bar = progress.add_task("enqueue", total=len(items))
        for chunk in chunks:
            result = enqueuer.enqueue({"items": chunk})
            rows += result.body["items"]
            failed += len(result.failed)
            progress.advance(bar, len(chunk))
    accepted = len(items) - failed
    if as_json:
        emit_json({"stage": stage, "accepted": accepted, "failed": failed, "items": rows})
    elif len(items) == 1 and not failed:
        row = rows[0]
        console.print(f"enqueued {row['key']} (group {row['group']}, message {row['message_id']})")
    else:
        console.print(f"enqueued {accepted:,} of {len(items):,} item(s)")
        for row in [r for r in rows if "error" in r][:20]:
            console.print(f"  [red]not enqueued[/red] {row['key']}: {row['error']} (safe to resend)")
    if failed:
        raise typer.Exit(EXIT_FAILED)


# -- drain ------------------------------------------------------------------------------------

def scheduled_event(ctx: StageContext) -> dict[str, Any]:
    """The EventBridge scheduled-event shape the consumer gets from its schedule."""
    return {
        "version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event", "source": "aws.events",
        "account": "000000000000", "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": ctx.settings.region, "resources": [], "detail": {},
    }


@command
def drain(stage: str = StageOption, as_json: bool = JsonOption) -> None:
    """Invoke the consumer now (as its schedule would) and print its drain report."""
    ctx = resolve_stage(stage)
    invoker = FunctionInvoker(ctx.function("consumer"), ctx.settings.drain.timeout_s)
    with reaching(f"invoking the consumer of stage {stage!r}"):
        try:
            result = invoker.invoke(scheduled_event(ctx))
        except ThrottledError:
            raise CliError("a drain is already running (the consumer's concurrency is used up); "
                           "try again when it returns", EXIT_FAILED) from None
    if result.function_error:
        detail = result.payload.get("errorMessage") if isinstance(result.payload, dict) else result.payload
        raise CliError(f"the consumer failed ({result.function_error}): {detail}", EXIT_FAILED)
    report = result.payload if isinstance(result.payload, dict) else {"reply": result.payload}
    if as_json:
        emit_json({"stage": stage, "report": report, "ms": round(result.duration_ms)})
        return
    table = Table(title=f"drain report ({result.duration_ms:,.0f} ms)", show_header=False)
    for name, value in report.items():
        table.add_row(name, str(value))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("send")(send)
    app.command("drain")(drain)
