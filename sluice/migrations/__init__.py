"""Versioned schema migrations (yoyo): ``NNNN_name.sql`` files beside this module.

Applied by ``sluice db migrate`` (directly, or through the deployed ``migrate`` function when
the database sits in a private network), never on import. Applying is idempotent: yoyo
records what ran and holds a lock, so concurrent or repeated runs apply each step once.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from sluice.db import DbCredentials, DbError, classify, ensure_database

MIGRATIONS_DIR = Path(__file__).resolve().parent


class MigrationError(DbError):
    """A migration step failed; the message names it and the database's reason."""


def migration_ids() -> list[str]:
    """Every migration this version ships, in order."""
    return sorted(p.name[:-4] for p in MIGRATIONS_DIR.glob("*.sql") if not p.name.endswith(".rollback.sql"))


def apply_migrations(database_url: str) -> list[str]:
    """Bring the database at ``database_url`` up to date; returns the ids applied now (empty if none).

    Creates the database first when it does not exist. Raises DbConfigError for a bad URL,
    TransientDbError when the server cannot be reached, MigrationError when a step fails.
    """
    creds = DbCredentials.from_url(database_url)
    if not creds.database:
        raise MigrationError("the database URL names no database (mysql://user:password@host:port/DATABASE)")
    ensure_database(creds)  # also proves the server is reachable, with short timeouts

    import pymysql
    from yoyo import read_migrations
    from yoyo.backends import get_backend_class
    from yoyo.connections import DatabaseURI
    from yoyo.migrations import MigrationList

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
            # Only the .sql files: yoyo would also take this package's own __init__.py for a migration.
            shipped = set(migration_ids())
            migrations = MigrationList([m for m in read_migrations(str(MIGRATIONS_DIR)) if m.id in shipped])
            with backend.lock():
                pending = backend.to_apply(migrations)
                applied = [m.id for m in pending]
                backend.apply_migrations(pending)
    except (pymysql.MySQLError, OSError) as exc:
        error = classify(exc)
        if type(error) is DbError:
            raise MigrationError(f"migration failed: {error}", error.code) from exc
        raise error from exc
    finally:
        if "backend" in locals():
            backend.connection.close()
    return applied
