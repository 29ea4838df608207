"""`sluice config check`: reject unsafe settings before they are deployed."""

from __future__ import annotations

import typer
from rich.markup import escape

from sluice.settings import load_settings
from sluice.tasks import TaskModuleError, load_tasks
from sluice_tools.cli.common import EXIT_FAILED, JsonOption, StageOption, command, console, emit_json, err_console

config_app = typer.Typer(no_args_is_help=True, help="Settings in config/<stage>.yml.")


@config_app.command("check")
@command
def check(stage: str = StageOption, as_json: bool = JsonOption) -> None:
    """Validate config/<stage>.yml: types, ranges and unsafe combinations."""
    settings = load_settings(stage)
    try:
        # The task names the stage's modules register: lanes must carry each, and name no other.
        known: set[str] | None = set(load_tasks(t.module for t in settings.tasks)) if settings.tasks else None
    except TaskModuleError as exc:
        known = None
        problems = [str(exc)]
    else:
        problems = []
    problems += settings.problems(known)
    if as_json:
        emit_json({"stage": stage, "ok": not problems, "problems": problems})
    elif problems:
        err_console.print(f"[red]config/{stage}.yml is unsafe:[/red]")
        for p in problems:
            # One line per problem at any terminal width (scripts grep them), its brackets as text.
            err_console.print(f"  - {escape(p)}", soft_wrap=True)
    else:
        console.print(f"[green]config/{stage}.yml is consistent[/green]")
    if problems:
        raise typer.Exit(EXIT_FAILED)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
