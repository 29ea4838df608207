"""P1's yardstick: requests per item of a plain SQS -> Lambda event source mapping (ESM).

The model (stated, not measured: an ESM cannot run locally):

* batch size 10, the same as sluice's worker batch; every batch full (the ESM's best case);
* per batch: one ReceiveMessage that returns it, one Lambda invocation, one DeleteMessageBatch;
* idle: the ESM keeps ``ESM_IDLE_POLLERS`` pollers long-polling for ``ESM_LONG_POLL_S`` seconds
  each, around the clock, and those receives are billed to the queue's owner;
* prices (us-east-1, list): FIFO SQS requests ``SQS_FIFO_USD_PER_MILLION``, Lambda requests
  ``LAMBDA_USD_PER_MILLION``, Lambda compute ``LAMBDA_USD_PER_GB_S``.

sluice's own figures next to it are measured (bench.scenarios.stack_drain); the idle cost of
sluice is its measured requests per empty drain times the schedule's ticks per day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ESM_BATCH_SIZE = 10
ESM_IDLE_POLLERS = 5
ESM_LONG_POLL_S = 20
SECONDS_PER_DAY = 86_400
SQS_FIFO_USD_PER_MILLION = 0.50
LAMBDA_USD_PER_MILLION = 0.20
LAMBDA_USD_PER_GB_S = 0.0000166667


@dataclass(frozen=True)
class RequestCount:
    lambda_invocations: float
    sqs_calls: float

    @property
    def total(self) -> float:
        return self.lambda_invocations + self.sqs_calls

    def usd(self, lambda_gb_s: float = 0.0) -> float:
        return (self.sqs_calls * SQS_FIFO_USD_PER_MILLION / 1e6
                + self.lambda_invocations * LAMBDA_USD_PER_MILLION / 1e6
                + lambda_gb_s * LAMBDA_USD_PER_GB_S)


def esm_burst(items: int, batch_size: int = ESM_BATCH_SIZE) -> RequestCount:
    """Requests an ESM makes to deliver ``items`` messages (receive + invoke + batch delete per batch)."""
    batches = math.ceil(items / batch_size)
    return RequestCount(lambda_invocations=batches, sqs_calls=2 * batches)


def esm_idle_per_day() -> RequestCount:
    receives = ESM_IDLE_POLLERS * SECONDS_PER_DAY / ESM_LONG_POLL_S
    return RequestCount(lambda_invocations=0, sqs_calls=receives)


def schedule_ticks_per_day(schedule: str) -> float:
    """Ticks per day of an EventBridge ``rate(N unit)`` expression (cron: once a minute, the worst case)."""
    if schedule.startswith("rate("):
        amount_text, unit = schedule[5:-1].split()
        seconds = {"minute": 60, "minutes": 60, "hour": 3600, "hours": 3600,
                   "day": 86400, "days": 86400}[unit]
        return SECONDS_PER_DAY / (int(amount_text) * seconds)
    return SECONDS_PER_DAY / 60
