"""Migrate Lambda: applies the schema migrations from inside the database's network.

Invoked by `sluice db migrate --stage S` after a deploy; uses the same credentials as the
worker (the RDS-shaped secret, or DATABASE_URL).
"""

from __future__ import annotations

from typing import Any

from sluice.db import Database
from sluice.migrations import apply_migrations, migration_ids
from sluice.observability import logger
from sluice.runtime import RuntimeConfig


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    config = RuntimeConfig.from_env()
    database = Database(url=config.database_url, secret_id=config.db_secret_id, db_name=config.db_name,
                        program="sluice-migrate")
    credentials = database.credentials()
    applied = apply_migrations(credentials.url())
    logger.info("migrations applied", extra={"applied": applied})
    return {"database": credentials.redacted(), "applied": applied, "known": migration_ids()}
