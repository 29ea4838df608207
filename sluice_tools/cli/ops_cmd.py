"""`sluice status | send | drain`: look at the queue, put work in, drain now.

Lanes: a stage with lanes is shown as a table over its lanes (``--lane`` for one lane's
detail), ``send`` routes every item as the API does, and ``drain`` invokes every lane's
consumer at once (``--lane`` for one). A config without lanes prints exactly what it always did."""

from __future__ import annotations

import json
import re
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from sluice.aws import FunctionInvoker, InvokeResult, ThrottledError
from sluice.contract import DrainReport
from sluice.enqueue import Enqueuer, EnqueueRequestError
from sluice.flows import FlowReport
from sluice.lanes import routes_from_env
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
from sluice_tools.ops.status import FlowStatus, LoggedDrain, Status, collect_lanes
from sluice_tools.stage import LaneQueues, StageContext, reaching, resolve_stage

# The CLI sends no HTTP body, so the API's body-size limit does not apply; item limits do.
_NO_BODY_LIMIT = 1 << 40

LaneOption = typer.Option(None, "--lane", "-l", help="One lane of the stage (default: every lane).")


# -- status -----------------------------------------------------------------------------------

def _age(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:,.0f} s"


def _limit_cell(r: DrainReport) -> str:
    """The concurrency limit a drain ended at: "3/8" (adaptive, 3 of a ceiling of 8), "8 fix"
    (drain.adaptive: false), "" for a report from before the limit was reported."""
    if not r.limit:
        return ""
    return f"{r.limit}/{r.limit_ceiling}" if r.adaptive else f"{r.limit} fix"


def _window(seconds: int) -> str:
    return f"{seconds // 3600} h" if seconds % 3600 == 0 else f"{seconds // 60} min"


def _failed_cell(flow: FlowStatus) -> str:
    total = flow.failed_total
    return "n/a" if total is None else str(total)


def _flow_rows(s: Status, flow: FlowStatus) -> Table:
    """A workflow lane's executions: running vs cap, failed lately, its step function's busy."""
    rows = Table(show_header=False, box=None)
    if flow.error:
        rows.add_row("executions", f"[red]{flow.error}[/red]")
    else:
        rows.add_row("executions running / cap", f"{flow.running} / {flow.cap}")
        by_status = ", ".join(f"{status} {x}" for status, x in flow.failed.items() if x.count)
        rows.add_row(f"executions failed (last {_window(flow.window_s)})",
                     _failed_cell(flow) + (f" ({by_status})" if by_status else ""),
                     style="red" if (flow.failed_total and flow.failed_total.count) else "")
    busy = "n/a" if s.workers_busy is None else str(s.workers_busy)
    peak = "" if s.workers_peak is None else f" (peak {s.workers_peak})"
    rows.add_row("steps busy / cap", f"{busy} / {s.workers_cap}{peak}")
    rows.add_row("state machine", flow.state_machine_arn.rsplit(":", 1)[-1])
    return rows


def _at(d: LoggedDrain) -> str:
    at = re.search(r"\d\d:\d\d:\d\d", d.at)
    return at.group(0) if at else ""


def _worker_drains(drains: list[tuple[LoggedDrain, DrainReport]]) -> Table:
    # Short headers: the table must fit an 80-column terminal without truncating numbers.
    table = Table(title="last drains", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for name in ("at", "recv", "done", "dup", "dead", "retry", "rel", "thr", "peak", "lim", "bud%", "stop"):
        table.add_column(name, no_wrap=True)
    for d, r in drains:
        counts = (r.received, r.succeeded, r.duplicates, r.dead_lettered, r.retried, r.released,
                  r.throttled, r.peak_parallel, _limit_cell(r), r.budget_used_pct)
        stop = r.stopped_because.replace("queue_empty", "empty")
        table.add_row(_at(d), *(str(c) for c in counts), stop)
    return table


def _flow_drains(drains: list[tuple[LoggedDrain, FlowReport]]) -> Table:
    """A workflow lane's drains: executions started, found already run, messages deleted and
    released, bodies dead-lettered, starts that failed, the peak of running against the cap."""
    table = Table(title="last drains (workflow)", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for name in ("at", "started", "again", "deleted", "rel", "dead", "err", "peak", "cap", "counts"):
        table.add_column(name, no_wrap=True)
    for d, r in drains:
        counts = (r.started, r.already_started, r.deleted, r.released, r.dead_lettered, r.start_failed,
                  r.peak_running, r.cap, r.counts)
        table.add_row(_at(d), *(str(c) for c in counts))
    return table


def render_status(s: Status) -> Group:
    queues = Table(title=f"sluice {s.stage}")
    for name in ("queue", "visible", "in flight", "delayed", "oldest age"):
        queues.add_column(name, justify="right" if name != "queue" else "left")
    queues.add_row("work", f"{s.queue.visible:,}", f"{s.queue.in_flight:,}", f"{s.queue.delayed:,}",
                   _age(s.oldest_age_s))
    queues.add_row("DLQ", f"{s.dlq.visible:,}", f"{s.dlq.in_flight:,}", f"{s.dlq.delayed:,}",
                   _age(s.dlq_oldest_age_s), style="red" if s.dlq.total else "")
    parts: list[Any] = [queues]
    if s.flow is not None:
        parts.append(_flow_rows(s, s.flow))
    else:
        workers = Table(show_header=False, box=None)
        busy = "n/a" if s.workers_busy is None else str(s.workers_busy)
        peak = "" if s.workers_peak is None else f" (peak {s.workers_peak})"
        workers.add_row("workers busy / cap", f"{busy} / {s.cap}{peak}")
        parts.append(workers)
    # A lane turned into a workflow lane keeps its consumer's name, so its log may hold both kinds.
    worker_drains = [(d, d.report) for d in s.drains if isinstance(d.report, DrainReport)]
    flow_drains = [(d, d.report) for d in s.drains if isinstance(d.report, FlowReport)]
    if worker_drains:
        parts.append(_worker_drains(worker_drains))
    if flow_drains:
        parts.append(_flow_drains(flow_drains))
    parts += [f"[dim]{note}[/dim]" for note in s.notes]
    return Group(*parts)


def render_lanes(stage: str, lanes: list[Status]) -> Group:
    """The table over lanes: each lane's depth, in flight, DLQ, oldest age, workers vs cap, rate.
    With workflow lanes, whose cap counts running executions, that column is "busy / cap"
    (a workflow lane's cell ends in "runs") and one more says how many executions failed lately;
    the table is drawn compact then, to fit 80 columns. A stage of worker lanes only prints as it
    always did."""
    flows = [s.flow for s in lanes if s.flow is not None]
    if not flows:
        table = Table(title=f"sluice {stage}: {len(lanes)} lane(s)")
        columns = ["lane", "depth", "in flight", "DLQ", "oldest age", "workers / cap", "rate/s"]
    else:
        table = Table(title=f"sluice {stage}: {len(lanes)} lane(s)", box=box.SIMPLE_HEAD, pad_edge=False,
                      collapse_padding=True)
        columns = ["lane", "depth", "in flight", "DLQ", "oldest age", "busy / cap",
                   f"failed {_window(flows[0].window_s).replace(' ', '')}", "rate/s"]
    for name in columns:
        table.add_column(name, justify="left" if name == "lane" else "right", no_wrap=True)
    errors: list[str] = []
    for s in lanes:
        busy = "n/a" if s.workers_busy is None else str(s.workers_busy)
        oldest = s.oldest_age_s if s.oldest_age_s is not None else s.dlq_oldest_age_s
        cells = [s.lane, f"{s.queue.visible + s.queue.delayed:,}", f"{s.queue.in_flight:,}",
                 f"{s.dlq.total:,}", _age(oldest), f"{busy} / {s.cap}"]
        if flows:
            if s.flow is None:
                cells.append("")
            elif s.flow.error:
                cells[-1:] = ["error", "error"]
                errors.append(f"lane {s.lane}: {s.flow.error}")
            else:
                cells[-1:] = [f"{s.flow.running} / {s.flow.cap} runs", _failed_cell(s.flow)]
        cells.append("n/a" if s.max_rate is None else f"{s.max_rate:g}")
        table.add_row(*cells, style="red" if s.dlq.total else "")
    notes = sorted({note for s in lanes for note in s.notes})
    if flows:
        notes.insert(0, "busy / cap: workers in flight, or a workflow lane's running executions (runs)")
    return Group(table, *[f"[red]{error}[/red]" for error in errors], *[f"[dim]{note}[/dim]" for note in notes])


@command
def status(
    watch: bool = typer.Option(False, "--watch", "-w", help="Refresh until Ctrl-C."),
    interval: float = typer.Option(2.0, "--interval", min=0.2, help="Refresh period with --watch."),
    lane: str = LaneOption,
    stage: str = StageOption,
    as_json: bool = JsonOption,
) -> None:
    """Depths (visible, in flight, delayed), oldest age, DLQ, workers busy vs cap, last drains;
    a stage with lanes: a table over its lanes (--lane: one lane's detail)."""
    ctx = resolve_stage(stage, lane)

    def snapshot() -> list[Status]:
        return collect_lanes(ctx, lane)

    def as_dict(lanes: list[Status]) -> dict[str, Any]:
        if not ctx.has_lanes:
            return lanes[0].to_dict()  # a config without lanes: exactly what status always printed
        return {"stage": ctx.stage, "lanes": [x.to_lane_dict() for x in lanes]}

    def render(lanes: list[Status]) -> Group:
        return render_status(lanes[0]) if len(lanes) == 1 else render_lanes(ctx.stage, lanes)

    with reaching(f"reading the queues of stage {stage!r}"):
        taken = snapshot()
        if as_json and not watch:
            emit_json(as_dict(taken))
            return
        if not watch:
            console.print(render(taken))
            return
        try:
            if as_json:
                # One JSON document per snapshot and nothing else (no table), each flushed as it is
                # taken, so a reader on a pipe sees it at once.
                while True:
                    emit_json(as_dict(taken))
                    sys.stdout.flush()
                    time.sleep(interval)  # the refresh period, not a wait for a condition
                    taken = snapshot()
            with Live(render(taken), console=console, refresh_per_second=4) as live:
                while True:
                    # A screen refresh period, not a wait for a condition.
                    time.sleep(interval)
                    taken = snapshot()
                    live.update(render(taken))
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
    if ctx.has_lanes:
        # Every lane's route, as the stage's enqueuer function gets them: items route as over the API.
        return Enqueuer(None, max_items=s.enqueuer.max_items, max_body_bytes=_NO_BODY_LIMIT,
                        lanes=routes_from_env(ctx.routes()))
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
        ctx.lanes[0].queue().attributes(["QueueArn"])
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
        lane_note = f"lane {row['lane']}, " if ctx.has_lanes else ""
        console.print(f"enqueued {row['key']} ({lane_note}group {row['group']}, message {row['message_id']})")
    else:
        console.print(f"enqueued {accepted:,} of {len(items):,} item(s)")
        if ctx.has_lanes:
            per_lane: dict[str, int] = {}
            for row in rows:
                if "error" not in row:
                    per_lane[row["lane"]] = per_lane.get(row["lane"], 0) + 1
            console.print("  " + ", ".join(f"{name} {n:,}" for name, n in per_lane.items()))
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


def _drain_lane(ctx: StageContext, lane: LaneQueues) -> InvokeResult:
    """Invoke one lane's consumer now; a busy or failed consumer is a CliError naming the lane."""
    which = f"the consumer of lane {lane.name}" if ctx.has_lanes else "the consumer"
    invoker = FunctionInvoker(lane.consumer, lane.lane.drain.timeout_s)
    with reaching(f"invoking {which} of stage {ctx.stage!r}"):
        try:
            result = invoker.invoke(scheduled_event(ctx))
        except ThrottledError:
            raise CliError(f"a drain is already running ({which}'s concurrency is used up); "
                           "try again when it returns", EXIT_FAILED) from None
    if result.function_error:
        detail = result.payload.get("errorMessage") if isinstance(result.payload, dict) else result.payload
        raise CliError(f"{which} failed ({result.function_error}): {detail}", EXIT_FAILED)
    return result


def _report(result: InvokeResult) -> dict[str, Any]:
    return result.payload if isinstance(result.payload, dict) else {"reply": result.payload}


def _part(report: dict[str, Any], name: str) -> dict[str, Any]:
    part = report.get(name)
    return part if isinstance(part, dict) else {}


@command
def drain(lane: str = LaneOption, stage: str = StageOption, as_json: bool = JsonOption) -> None:
    """Invoke the consumer now (as its schedule would) and print its drain report; a stage with
    lanes: every lane's consumer at once (--lane: one)."""
    ctx = resolve_stage(stage, lane)
    if not ctx.has_lanes:
        result = _drain_lane(ctx, ctx.lane())
        report = _report(result)
        if as_json:
            emit_json({"stage": stage, "report": report, "ms": round(result.duration_ms)})
            return
        table = Table(title=f"drain report ({result.duration_ms:,.0f} ms)", show_header=False)
        for name, value in report.items():
            table.add_row(name, str(value))
        console.print(table)
        return
    lanes = ctx.selected(lane)
    # The lanes' consumers are independent (as their schedules are): all drain at once.
    with ThreadPoolExecutor(max_workers=len(lanes)) as pool:
        futures = [pool.submit(_drain_lane, ctx, x) for x in lanes]
    results = [f.result() for f in futures]  # the first lane's CliError, if any, ends the command
    if as_json:
        emit_json({"stage": stage, "lanes": [{"lane": x.name, "report": _report(r), "ms": round(r.duration_ms)}
                                             for x, r in zip(lanes, results, strict=True)]})
        return
    done = list(zip(lanes, results, strict=True))
    workers = [(x, r) for x, r in done if not x.is_flow]
    if workers:
        fields = ("received", "succeeded", "dead_lettered", "retried", "throttled", "stopped_because")
        table = Table(title=f"drain reports, stage {stage}")
        for name in ("lane", *fields, "ms"):
            table.add_column(name, no_wrap=True)
        for x, r in workers:
            report = _report(r)
            table.add_row(x.name, *(str(report.get(f, "")) for f in fields), f"{r.duration_ms:,.0f}")
        console.print(table)
    flows = [(x, r) for x, r in done if x.is_flow]
    if flows:
        # A workflow lane's consumer reports its starts ("flow") and its failure scan ("failures"):
        # executions started, found already run, messages deleted and released, bodies
        # dead-lettered, starts that failed, failed executions sent to the DLQ (short headers, as
        # status's drains table, to fit 80 columns).
        fields = ("started", "already_started", "deleted", "released", "dead_lettered", "start_failed")
        table = Table(title=f"workflow drain reports, stage {stage}", box=box.SIMPLE_HEAD, pad_edge=False,
                      collapse_padding=True)
        for name in ("lane", "started", "again", "deleted", "rel", "dead", "err", "to DLQ", "ms"):
            table.add_column(name, no_wrap=True)
        for x, r in flows:
            report = _report(r)
            flow = _part(report, "flow")
            failures = _part(report, "failures")
            scanned = "error" if "error" in failures else str(failures.get("dead_lettered", ""))
            table.add_row(x.name, *(str(flow.get(f, "")) for f in fields), scanned, f"{r.duration_ms:,.0f}")
        console.print(table)


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("send")(send)
    app.command("drain")(drain)
