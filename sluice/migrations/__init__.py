"""Versioned schema migrations (yoyo): the framework's own, then every task module's.

The framework ships ``NNNN_name.sql`` files beside this module (the processed-message
ledger). Each task module may name a folder of its own in config (``tasks: - module: ...,
migrations: worker/tasks/x/migrations``), handed to the handlers as
``SLUICE_TASK_MIGRATIONS`` (``module=folder,...``). ``apply_migrations`` applies the
framework's first, then each task module's in config order, each folder in filename order.

Applied by ``sluice db migrate`` (directly, or through the deployed ``migrate`` function when
the database sits in a private network), never on import. Applying is idempotent: yoyo
records what ran (one ``_yoyo_migration`` table) and holds a lock, so concurrent or repeated
runs apply each step once, and a task module's new file applies to a live database.

Ids: the framework's migrations keep their file names as ids (``0001_ledger``); a task
module's are recorded as ``<module>:<file name>``, so two modules (and the framework) may
each have a ``0001_...`` without one hiding the other.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sluice.db import DbCredentials, DbError, classify, ensure_database

if TYPE_CHECKING:
    from sluice.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent
# Where relative task migration folders are found: the project root locally, the task root
# (/var/task) in Lambda; both hold sluice/ and worker/ side by side.
TASK_ROOT = MIGRATIONS_DIR.parent.parent
TASK_MIGRATIONS_ENV = "SLUICE_TASK_MIGRATIONS"


class MigrationError(DbError):
    """A migration step failed, or a migration folder is unusable; the message says which."""


@dataclass(frozen=True)
class MigrationSource:
    """One folder of migrations and the prefix its ids are recorded under ("" = the framework)."""

    namespace: str
    directory: Path

    def files(self) -> list[Path]:
        if not self.directory.is_dir():
            raise MigrationError(f"migrations folder {self.directory} of {self.namespace or 'sluice'} does not exist")
        return sorted(p for p in self.directory.glob("*.sql") if not p.name.endswith(".rollback.sql"))

    def ids(self) -> list[str]:
        return [self.recorded_id(p) for p in self.files()]

    def recorded_id(self, path: Path) -> str:
        stem = path.name[:-4]
        return f"{self.namespace}:{stem}" if self.namespace else stem


FRAMEWORK = MigrationSource("", MIGRATIONS_DIR)


def task_sources(env: Mapping[str, str] | None = None, root: Path = TASK_ROOT) -> list[MigrationSource]:
    """The task modules' migration folders, in config order, from ``SLUICE_TASK_MIGRATIONS``."""
    env = os.environ if env is None else env
    sources: list[MigrationSource] = []
    for entry in (e.strip() for e in env.get(TASK_MIGRATIONS_ENV, "").split(",")):
        if not entry:
            continue
        module, sep, folder = entry.partition("=")
        if not sep or not module.strip() or not folder.strip():
            raise MigrationError(f"{TASK_MIGRATIONS_ENV} entry {entry!r} is not module=folder")
        sources.append(MigrationSource(module.strip(), root / folder.strip()))
    return sources


def configured_sources(settings: Settings) -> list[MigrationSource]:
    """The task modules' migration folders as ``config/<stage>.yml`` names them (the tooling's view)."""
    return task_sources(settings.task_env())


def all_sources(tasks: Sequence[MigrationSource] | None = None) -> list[MigrationSource]:
    return [FRAMEWORK, *(task_sources() if tasks is None else tasks)]


def migration_ids(tasks: Sequence[MigrationSource] | None = None) -> list[str]:
    """Every migration this deployment knows, in the order they apply."""
    return [mid for source in all_sources(tasks) for mid in source.ids()]


def apply_migrations(database_url: str, tasks: Sequence[MigrationSource] | None = None) -> list[str]:
    """Bring the database at ``database_url`` up to date; returns the ids applied now (empty if none).

    ``tasks`` defaults to the task modules of this process's configuration. Creates the
    database first when it does not exist. Raises DbConfigError for a bad URL,
    TransientDbError when the server cannot be reached, MigrationError when a step fails.
    """
    creds = DbCredentials.from_url(database_url)
    if not creds.database:
        raise MigrationError("the database URL names no database (mysql://user:password@host:port/DATABASE)")
    sources = all_sources(tasks)
    planned = [(source, path) for source in sources for path in source.files()]  # bad folders fail first
    ensure_database(creds)  # also proves the server is reachable, with short timeouts

    import pymysql
    from yoyo.backends import get_backend_class
    from yoyo.connections import DatabaseURI
    from yoyo.exceptions import BadMigration
    from yoyo.migrations import Migration, MigrationList

    uri = DatabaseURI(scheme="mysql", username=creds.user, password=creds.password, hostname=creds.host,
                      port=creds.port, database=creds.database,
                      args={"connect_timeout": 5, "charset": "utf8mb4", "program_name": "sluice-migrate"})
    try:
        with warnings.catch_warnings():
            # yoyo 9 still passes pymysql's old 'db'/'passwd' keywords (on every connect it makes);
            # nothing for our users to act on.
            warnings.simplefilter("ignore", DeprecationWarning)
            backend = get_backend_class("mysql")(uri, "_yoyo_migration")
            backend.init_database()
            # Built here rather than by yoyo's read_migrations, which names a migration by its
            # file name alone (and would also take a package's __init__.py for one).
            migrations = MigrationList([Migration(source.recorded_id(path), str(path), str(source.directory))
                                        for source, path in planned])
            applied: list[str] = []
            current = ""
            with backend.lock():
                # One at a time, so a failure names its migration (MariaDB commits DDL at once, so
                # what ran before it stays applied and recorded; fix the file and migrate again).
                for migration in backend.to_apply(migrations):
                    current = migration.id
                    try:
                        backend.apply_one(migration)
                    except BadMigration as exc:  # e.g. a "-- depends:" naming no known migration
                        raise MigrationError(f"migration {current} is malformed: {exc}") from None
                    applied.append(migration.id)
                current = ""
    except (pymysql.MySQLError, OSError) as exc:
        error = classify(exc)
        if type(error) is DbError:
            where = f"migration {current}" if current else "migrating"
            raise MigrationError(f"{where} failed: {error}", error.code) from exc
        raise error from exc
    finally:
        if "backend" in locals():
            backend.connection.close()
    return applied
