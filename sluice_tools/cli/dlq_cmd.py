"""`sluice dlq list | redrive | purge`: what is in the dead-letter queue, why, and putting it back."""

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


@dlq_app.command("list")
@command
def list_(
    limit: int = typer.Option(50, "--limit", min=1, max=1000, help="Messages to show at most."),
    stage: str = StageOption,
    as_json: bool = JsonOption,
) -> None:
    """Dead letters with reason, task, key, group, attempts and age (each hidden a moment, then released)."""
    ctx = resolve_stage(stage)
    with reaching(f"reading the DLQ of stage {stage!r}"):
        listing = dead_letters.list_dead_letters(ctx.dlq(), limit=limit)
    if as_json:
        emit_json({"stage": stage, "depth": listing.depth, "shown": len(listing.letters),
                   "not_shown": listing.not_shown, "messages": [x.to_dict() for x in listing.letters]})
        return
    if not listing.letters:
        console.print(f"DLQ of stage {stage} is empty" if not listing.depth else
                      f"DLQ holds about {listing.depth} message(s), all in flight now (try again shortly)")
        return
    table = Table(title=f"DLQ of stage {stage}: {len(listing.letters)} shown of about {listing.depth}")
    for name in ("reason", "task", "key", "group", "attempts", "age"):
        table.add_column(name, overflow="fold")
    for x in listing.letters:
        table.add_row(x.reason, x.task, x.key, x.group, "?" if x.attempts is None else str(x.attempts),
                      _age(x.age_s))
    console.print(table)
    if listing.not_shown:
        console.print(f"{listing.not_shown} more not shown: over --limit, or queued behind a shown "
                      "message of the same FIFO group")


@dlq_app.command("redrive")
@command
def redrive(
    everything: bool = typer.Option(False, "--all", help="Redrive every dead letter."),
    key: str = typer.Option(None, "--key", help="Only the item with this key."),
    since: str = typer.Option(None, "--since", help="Only dead-lettered since: 30m, 2h, 1d or an ISO time."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would move; change nothing."),
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
    ctx = resolve_stage(stage)
    with reaching(f"redriving the DLQ of stage {stage!r}"):
        report = dead_letters.redrive(ctx.dlq(), ctx.queue(), chosen, dry_run=dry_run)
    if as_json:
        emit_json({"stage": stage, **report.to_dict()})
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
    stage: str = StageOption,
    as_json: bool = JsonOption,
) -> None:
    """Delete every message in the DLQ (asks first unless --yes)."""
    ctx = resolve_stage(stage)
    with reaching(f"reading the DLQ of stage {stage!r}"):
        depth = dead_letters.depth(ctx.dlq())
    if not yes:
        if not sys.stdin.isatty():
            raise CliError("purge deletes dead letters for good: confirm with --yes", EXIT_USAGE)
        if not typer.confirm(f"Delete about {depth} dead letter(s) of stage {stage} for good?"):
            raise CliError("nothing purged", EXIT_FAILED)
    with reaching(f"purging the DLQ of stage {stage!r}"):
        count = dead_letters.purge(ctx.dlq())
    if as_json:
        emit_json({"stage": stage, "purged": count})
    else:
        console.print(f"purged about {count} message(s) from the DLQ of stage {stage}")


def register(app: typer.Typer) -> None:
    app.add_typer(dlq_app, name="dlq")
