"""Powertools Logger and Metrics, made once per process and shared by every module.

Every log line about a message carries message_id, group, task and key (append them with
``logger.append_keys`` around the work on one message). Metric names are the vocabulary
of the drain report: received, dispatched, done, duplicate, dead_lettered, retried,
released, drain_budget_used_pct, worker_ms.
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "sluice")

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Sluice"), service=SERVICE)

__all__ = ["logger", "metrics", "MetricUnit", "count"]


def count(name: str, value: float = 1) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
