"""Step Lambda: a workflow's Task state -> sluice.step (one task applied to one item, once)."""

from __future__ import annotations

from typing import Any

from sluice.db import Database
from sluice.observability import logger, metrics
from sluice.runtime import RuntimeConfig
from sluice.step import run_step
from sluice.tasks import load_tasks

# Built once per container and reused by every invocation it serves (one DB connection each).
_database: Database | None = None


def _db() -> Database:
    global _database
    if _database is None:
        config = RuntimeConfig.from_env()
        load_tasks()
        read_timeout = max(2.0, min(10.0, config.worker_timeout_s / 4))
        _database = Database(url=config.database_url, secret_id=config.db_secret_id, db_name=config.db_name,
                             connect_timeout=min(3.0, read_timeout), read_timeout=read_timeout)
    return _database


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, str]:
    return run_step(event, db=_db())
