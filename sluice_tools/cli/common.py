"""What every command shares: --stage / --json options, exit codes, user-facing errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from sluice_tools.errors import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, CliError

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_UNAVAILABLE", "EXIT_USAGE", "CliError"]

console = Console()
err_console = Console(stderr=True)


StageOption = typer.Option("dev", "--stage", "-s", help="Stage: config/<stage>.yml ('local' = the local stack).")
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables.")


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    raise CliError(message, code)


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn known failures into a clear message and exit code instead of a traceback."""
    from sluice.settings import SettingsError

    try:
        yield
    except CliError as exc:
        print_error(str(exc))
        raise typer.Exit(exc.code) from None
    except SettingsError as exc:
        print_error(str(exc))
        raise typer.Exit(EXIT_USAGE) from None


def print_error(message: str) -> None:
    """``error: <message>`` on stderr, never re-wrapped at the terminal's width (scripts grep one
    line), and with the message's own brackets shown as text: it may quote user input, which rich
    would otherwise read as markup (and a stray ``[/x]`` would crash the printer)."""
    err_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)


def command(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: run a command body inside ``user_errors``."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with user_errors():
            return func(*args, **kwargs)

    return wrapper
