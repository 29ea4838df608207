"""`sluice dlq list | redrive | purge`: what is in the dead-letter queue, why, and putting it back.

Lanes: each lane has its own DLQ. ``list`` shows every lane's (``--lane`` for one); ``redrive``
and ``purge`` act on one lane only, so a stage with several lanes needs ``--lane`` (one line,
exit 2, naming the lanes, when it is missing): moving or deleting every lane's dead letters
at once would surprise."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta

import typer
from rich.table import Table

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
from sluice_tools.ops import dlq as dead_letters
from sluice_tools.stage import reaching, resolve_stage

LaneOption = typer.Option(None, "--lane", "-l", help="The lane whose DLQ (default: the only lane).")
ListLaneOption = typer.Option(None, "--lane", "-l", help="One lane's DLQ (default: every lane's).")

dlq_app = typer.Typer(no_args_is_help=True, help="The dead-letter queue: list, redrive, purge.")

_RELATIVE = re.compile(r"^(\d+)\s*(s|m|h|d)$")


def parse_since(text: str) -> datetime:
    """``30m`` / ``2h`` / ``1d`` ago, or an ISO 8601 time (UTC when no offset is given)."""
    match = _RELATIVE.match(text.strip())
    if match:
        seconds = int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        try:
            return datetime.now(UTC) - timedelta(seconds=seconds)
        except OverflowError:
            # Past year 1: every dead letter is newer than that, so it selects them all.
            return datetime.min.replace(tzinfo=UTC)
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"--since {text!r} is neither a duration like 30m, 2h, 1d nor an ISO 8601 time",
                       EXIT_USAGE) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _state(letter: dead_letters.DeadLetter) -> str:
    """Where a failed execution stopped and how: "Refuse (FAILED)"; "" for a worker's dead letter."""
    if not letter.from_execution:
        return ""
    state = letter.failed_state or "?"
    return f"{state} ({letter.execution_status})" if letter.execution_status else state


@dlq_app.command("list")
@command
def list_(
    limit: int = typer.Option(50, "--limit", min=1, max=1000, help="Messages to show at most."),
    lane: str = ListLaneOption,
    stage: str = StageOption,
    as_json: bool = JsonOption,
) -> None:
    """Dead letters with reason, task, key, group, attempts and age (each hidden a moment, then released);
    a stage with lanes: every lane's, each marked with its lane (--lane: one lane's)."""
    ctx = resolve_stage(stage, lane)
    lanes = ctx.selected(lane)
    with reaching(f"reading the DLQ of stage {stage!r}"):
        # --limit holds for the whole listing: each lane is asked only for what is still missing.
        listings: list[tuple[str, dead_letters.Listing]] = []
        for picked in lanes:
            shown = sum(len(one.letters) for _, one in listings)
            listings.append((picked.name, dead_letters.list_dead_letters(picked.dlq(), limit=max(1, limit - shown))))
    rows = [(name, letter) for name, one in listings for letter in one.letters][:limit]
    total = sum(one.depth for _, one in listings)
    not_shown = max(0, total - len(rows))
    where = f"stage {stage}" + (f", lane {lane}" if lane is not None and ctx.has_lanes else "")
    if as_json:
        body = {"stage": stage, "depth": total, "shown": len(rows), "not_shown": not_shown,
                "messages": [({"lane": name} if ctx.has_lanes else {}) | x.to_dict() for name, x in rows]}
        if ctx.has_lanes:
            body["lanes"] = {name: one.depth for name, one in listings}
        emit_json(body)
        return
    if not rows:
        console.print(f"DLQ of {where} is empty" if not total else
                      f"DLQ holds about {total} message(s), all in flight now (try again shortly)")
        return
    table = Table(title=f"DLQ of {where}: {len(rows)} shown of about {total}")
    # A failed execution's dead letter names the state it failed in: shown in a column of its own
    # (only when there is one, so a worker lane's listing is as it was), its reason after it
    # without the "state S: " prefix. An execution has no receive count: a listing of failed
    # executions only has no attempts column, so it is as wide as a worker lane's.
    states = any(x.from_execution for _, x in rows)
    attempts = not all(x.from_execution for _, x in rows)
    columns = (("lane",) if ctx.has_lanes else ()) + (("state",) if states else ()) + (
        "reason", "task", "key", "group") + (("attempts",) if attempts else ()) + ("age",)
    for column in columns:
        table.add_column(column, overflow="fold")
    for name, x in rows:
        tried = "-" if x.from_execution else "?" if x.attempts is None else str(x.attempts)
        table.add_row(*((name,) if ctx.has_lanes else ()), *((_state(x),) if states else ()), x.cause, x.task,
                      x.key, x.group, *((tried,) if attempts else ()), _age(x.age_s))
    console.print(table)
    if not_shown:
        console.print(f"{not_shown} more not shown: over --limit, or queued behind a shown "
                      "message of the same FIFO group")


@dlq_app.command("redrive")
@command
def redrive(
    everything: bool = typer.Option(False, "--all", help="Redrive every dead letter."),
    key: str = typer.Option(None, "--key", help="Only the item with this key."),
    since: str = typer.Option(None, "--since", help="Only dead-lettered since: 30m, 2h, 1d or an ISO time."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would move; change nothing."),
    lane: str = LaneOption,
    stage: str = StageOption,
    as_json: bool = JsonOption,
) -> None:
    """Send dead letters back to the work queue: same group, fresh dedup id, DLQ delete only after."""
    if everything and (key is not None or since is not None):
        raise CliError("--all cannot be combined with --key or --since", EXIT_USAGE)
    if not (everything or key is not None or since is not None):
        raise CliError("say what to redrive: --all, --key K or --since T", EXIT_USAGE)
    chosen = dead_letters.select(everything=everything, key=key,
                                 since=parse_since(since) if since is not None else None)
    ctx = resolve_stage(stage, lane, one_lane=True)
    picked = ctx.lane(lane)
    with reaching(f"redriving the DLQ of stage {stage!r}"):
        # A dead letter goes back to its own lane's work queue: the lane it was routed to.
        report = dead_letters.redrive(picked.dlq(), picked.queue(), chosen, dry_run=dry_run)
    if as_json:
        emit_json({"stage": stage, **({"lane": picked.name} if ctx.has_lanes else {}), **report.to_dict()})
    else:
        verb = "would redrive" if dry_run else "redrove"
        console.print(f"{verb} {len(report.redriven)} message(s); {report.skipped} left in the DLQ")
        for x in report.redriven:
            console.print(f"  {x.task} {x.key} (group {x.group}): {x.reason}")
        for x, error in report.failed:
            console.print(f"  [red]failed[/red] {x.task} {x.key}: {error}")
        if report.not_seen and dry_run:
            # A dry run deletes nothing, so a FIFO group's later messages stay behind its first.
            console.print(f"{report.not_seen} more dead letter(s) not examined: queued behind another of "
                          "their FIFO group, which a dry run leaves in place; a real redrive reaches them "
                          "as it moves those ahead")
        elif report.not_seen:
            console.print(f"{report.not_seen} more dead letter(s) not examined: queued behind a message of "
                          "their FIFO group that stays in the DLQ (redrive those ahead first, or --all)")
    if report.failed:
        raise typer.Exit(EXIT_FAILED)
    if key is not None and not report.redriven:
        where = (f"; {report.not_seen} dead letter(s) are hidden behind others of their FIFO group"
                 if report.not_seen else "")
        raise CliError(f"no dead letter with key {key!r} was reachable{where}", EXIT_FAILED)


@dlq_app.command("purge")
@command
def purge(
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
    lane: str = LaneOption,
    stage: str = StageOption,
    as_json: bool = JsonOption,
) -> None:
    """Delete every message in the DLQ (asks first unless --yes); a stage with lanes: one lane's (--lane)."""
    ctx = resolve_stage(stage, lane, one_lane=True)
    picked = ctx.lane(lane)
    where = f"stage {stage}" + (f", lane {picked.name}" if ctx.has_lanes else "")
    with reaching(f"reading the DLQ of stage {stage!r}"):
        depth = dead_letters.depth(picked.dlq())
    if not yes:
        if not sys.stdin.isatty():
            raise CliError("purge deletes dead letters for good: confirm with --yes", EXIT_USAGE)
        if not typer.confirm(f"Delete about {depth} dead letter(s) of {where} for good?"):
            raise CliError("nothing purged", EXIT_FAILED)
    with reaching(f"purging the DLQ of stage {stage!r}"):
        count = dead_letters.purge(picked.dlq())
    if as_json:
        emit_json({"stage": stage, **({"lane": picked.name} if ctx.has_lanes else {}), "purged": count})
    else:
        console.print(f"purged about {count} message(s) from the DLQ of {where}")


def register(app: typer.Typer) -> None:
    app.add_typer(dlq_app, name="dlq")
