"""Worker Lambda: an SQS-event-shaped batch (plus "queueUrl") -> sluice.work."""

from __future__ import annotations

from typing import Any

from sluice.aws import Queue
from sluice.contract import WorkerPayload
from sluice.db import Database
from sluice.observability import logger, metrics
from sluice.runtime import RuntimeConfig
from sluice.tasks import load_tasks
from sluice.work import work

# Built once per container and reused by every invocation it serves (one DB connection each).
_config: RuntimeConfig | None = None
_database: Database | None = None
_queues: dict[str, Queue] = {}


def _db_read_timeout_s(config: RuntimeConfig) -> float:
    # Short relative to the function's timeout: one stuck statement must leave time to hand
    # the rest of the batch back.
    return max(2.0, min(10.0, config.worker_timeout_s / 4))


def _dependencies() -> tuple[RuntimeConfig, Database]:
    global _config, _database
    if _config is None or _database is None:
        config = RuntimeConfig.from_env()
        load_tasks()
        read_timeout = _db_read_timeout_s(config)
        _database = Database(url=config.database_url, secret_id=config.db_secret_id, db_name=config.db_name,
                             connect_timeout=min(3.0, read_timeout), read_timeout=read_timeout)
        _config = config
    return _config, _database


def _queue(url: str) -> Queue:
    if url not in _queues:
        _queues[url] = Queue(url)
    return _queues[url]


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> WorkerPayload:
    config, database = _dependencies()
    return work(
        event,
        db=database,
        queue=_queue(event.get("queueUrl") or config.queue_url),
        dlq=_queue(config.dlq_url),
        max_receive_count=config.max_receive_count,
        remaining_ms=context.get_remaining_time_in_millis,
        reserve_ms=(_db_read_timeout_s(config) + 1) * 1000,
    )
