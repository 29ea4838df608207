"""`sluice db migrate`: apply the schema migrations.

Locally (stage ``local``, or whenever DATABASE_URL is set) the CLI migrates that database
itself. For a deployed stage the database sits in a private network, so the CLI invokes
the stage's ``migrate`` function, which runs the same migrations from inside it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from sluice.settings import PROJECT_ROOT, Settings, load_settings
from sluice_tools.cli.common import (
    EXIT_FAILED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    JsonOption,
    StageOption,
    command,
    console,
    emit_json,
    fail,
)

db_app = typer.Typer(no_args_is_help=True, help="The database: schema migrations.")

LOCAL_ENV_FILE = Path(".sluice") / "local.env"
MIGRATE_TIMEOUT_S = 300


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (as the local stack writes them); blank lines and # comments skipped."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        values[name.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    return values


def local_database_url() -> str:
    """DATABASE_URL as the running local stack published it, or '' when it is not running."""
    from sluice_tools.stage import LOCAL_ENV_FILE_VAR

    override = os.environ.get(LOCAL_ENV_FILE_VAR)
    # The same local.env the other commands read when it is named; else the usual places.
    candidates = [Path(override)] if override else [base / LOCAL_ENV_FILE for base in (Path.cwd(), PROJECT_ROOT)]
    for path in candidates:
        if path.is_file():
            return read_env_file(path).get("DATABASE_URL", "")
    return ""


def _migrate_url(url: str, settings: Settings) -> dict[str, Any]:
    from sluice.db import DbConfigError, DbCredentials, DbError, TransientDbError
    from sluice.migrations import apply_migrations, configured_sources

    try:
        target = DbCredentials.from_url(url).redacted()
        applied = apply_migrations(url, configured_sources(settings))
    except DbConfigError as exc:
        fail(f"DATABASE_URL is not usable: {exc}", EXIT_USAGE)
    except TransientDbError as exc:
        fail(f"cannot reach the database at {target}: {exc}", EXIT_UNAVAILABLE)
    except DbError as exc:
        fail(f"migrating {target} failed: {exc}", EXIT_FAILED)
    return {"database": target, "applied": applied}


def _migrate_deployed(stage: str) -> dict[str, Any]:
    from sluice.aws import AwsError, FunctionInvoker

    settings = load_settings(stage)
    name = settings.function_name("migrate")
    try:
        result = FunctionInvoker(name, timeout_s=MIGRATE_TIMEOUT_S).invoke({})
    except AwsError as exc:
        fail(f"cannot invoke {name}: {exc}", EXIT_UNAVAILABLE)
    if result.function_error:
        message = result.payload.get("errorMessage") if isinstance(result.payload, dict) else result.payload
        fail(f"{name} failed: {message}", EXIT_FAILED)
    if not isinstance(result.payload, dict):
        fail(f"{name} returned an unexpected result: {result.payload!r}", EXIT_FAILED)
    return {"function": name, **result.payload}


@db_app.command("migrate")
@command
def migrate(stage: str = StageOption, as_json: bool = JsonOption) -> None:
    """Apply pending schema migrations to the stage's database (idempotent)."""
    settings = load_settings(stage)
    url = os.environ.get("DATABASE_URL", "")
    if not url and stage == "local":
        url = local_database_url() or load_settings("local").database.url
        if not url:
            # Nothing to reach, as for every other command against a stopped local stack.
            fail("no local database: the local stack is not running; start it with `sluice local up` "
                 "or set DATABASE_URL", EXIT_UNAVAILABLE)
    outcome = _migrate_url(url, settings) if url else _migrate_deployed(stage)
    if as_json:
        emit_json(outcome)
        return
    applied: list[str] = list(outcome.get("applied") or [])
    where = outcome.get("database") or outcome.get("function")
    if applied:
        console.print(f"[green]applied {len(applied)} migration(s) to {where}:[/green] {', '.join(applied)}")
    else:
        console.print(f"[green]{where} is up to date[/green]")


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
