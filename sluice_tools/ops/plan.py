"""`sluice plan`: capacity and cost of a daily volume, from settings and published prices.

The model, in the words a reviewer can check by hand (tests/functional/test_plan.py does):

* A worker invocation carries ``per_invocation = batch_size * fill`` messages on average
  (``fill`` 1 = full batches, the default; a consumer often hands a worker fewer, e.g. when
  few groups are ready). A worker slot handles one invocation at a time; an invocation lasts
  ``per_invocation * worker_ms + invoke_overhead_ms``. The drain rate is the smallest of: the
  slots (``cap`` of them), ``drain.max_rate``, and what FIFO's per-action TPS lets the
  consumer receive (10 items per call) and the workers delete (``per_invocation`` items per
  call, see below).
* A consumer drains at most ``timeout - safety margin`` per schedule tick, so a standing
  backlog is drained a ``duty`` fraction of the wall time.
* SQS requests: ceil(items/10) SendMessageBatch per enqueue request, one ReceiveMessage per
  10 items plus one empty receive per tick (an upper bound: only ticks that find the queue
  dry end on an empty receive), ceil(per_invocation / 10) DeleteMessageBatch per worker
  invocation (the worker collects the receipt handles of finished messages and deletes them
  ten per call, flushing at the end of the invocation; with ``batch_size <= 10`` that is one
  call per invocation; the extra flush before a retried message is pushed back is not
  counted), one SendMessage per dead-lettered item. Each 64 KB chunk of a send
  or receive is billed as one request; a DeleteMessageBatch carries receipt handles, not
  bodies, so it is one request. Against FIFO's per-action TPS a batch call is one
  transaction.
* Lambda requests: enqueuer calls + consumer ticks + ceil(items / per_invocation) worker
  invocations; GB-s: workers
  ``items * worker_ms``, consumers while they drain plus ``wait_s`` per idle tick, enqueuer
  ``enqueuer_ms`` per request.
* Lanes: each lane is planned on its own settings (its cap, rate, consumers, schedule, worker),
  since lanes never borrow each other's capacity; ``account_plan`` adds up what every lane
  reserves (each lane's worker reserved concurrency and consumers, plus the migrate function)
  against the account's ``account_concurrency`` less the 100 AWS keeps unreserved.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from sluice.settings import MAX_BATCH_SIZE, UNRESERVED_MINIMUM, Lane, Settings
from sluice_tools.ops.prices import PRICES_READ_ON, PRICES_REGION, price

SECONDS_PER_DAY = 86_400
# https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/quotas-fifo.html
FIFO_IN_FLIGHT_LIMIT = 120_000
# Plain FIFO queues: 300 transactions/s per API action (batches carry up to 10 messages).
FIFO_TPS_PER_ACTION = 300
# Lambda's default concurrent executions per account and region.
ACCOUNT_CONCURRENCY = 1_000
# MariaDB's default max_connections.
DB_MAX_CONNECTIONS = 151
SQS_CHUNK_KB = 64
# DeleteMessageBatch takes at most this many receipt handles per call.
DELETE_BATCH_MAX = 10


class PlanError(ValueError):
    """A plan input is out of range; the message names it."""


@dataclass(frozen=True)
class PlanInputs:
    items_per_day: int
    worker_ms: float  # time a worker spends on one item
    batch_size: int = 10
    fill: float = 1.0  # average fraction of batch_size a worker invocation carries
    cap: int = 4
    consumers: int = 1
    schedule_interval_s: float = 60
    consumer_timeout_s: float = 60
    safety_margin_ms: float = 5000
    wait_s: float = 1
    max_rate: float = 200
    worker_memory_mb: int = 256
    consumer_memory_mb: int = 256
    enqueuer_memory_mb: int = 256
    items_per_request: int = 100
    enqueuer_ms: float = 200
    invoke_overhead_ms: float = 0
    payload_kb: float = 1
    dead_letter_rate: float = 0
    within_hours: float = 24
    fifo_tps: int = FIFO_TPS_PER_ACTION
    enqueue_max_tps: int = 300
    reserved_concurrency: int = 4
    account_concurrency: int = ACCOUNT_CONCURRENCY
    db_max_connections: int = DB_MAX_CONNECTIONS

    def validate(self) -> None:
        checks: list[tuple[bool, str]] = [
            (self.items_per_day >= 1, "--items-per-day must be at least 1"),
            (self.worker_ms > 0, "--worker-ms must be above 0"),
            (1 <= self.batch_size <= MAX_BATCH_SIZE, f"--batch-size must be within 1..{MAX_BATCH_SIZE}"),
            (0 < self.fill <= 1 and self.batch_size * self.fill >= 1,
             "--fill must be within 0..1 and leave at least one message per worker call (batch x fill >= 1)"),
            (self.cap >= 1, "--cap must be at least 1"),
            (self.consumers >= 1, "consumers must be at least 1"),
            (self.items_per_request >= 1, "--items-per-request must be at least 1"),
            (0 <= self.dead_letter_rate <= 1, "--dead-letter-rate must be within 0..1"),
            (self.within_hours > 0, "--within-hours must be above 0"),
            (0 < self.payload_kb <= 256, "--payload-kb must be within 0..256 (the SQS message limit)"),
            (self.invoke_overhead_ms >= 0, "--invoke-overhead-ms must be at least 0"),
            # Limits divide: zero would be a division by zero or an "inf%" verdict.
            (self.fifo_tps >= 1, "--fifo-tps must be at least 1"),
            (self.account_concurrency >= 1, "--account-concurrency must be at least 1"),
            (self.db_max_connections >= 1, "--db-max-connections must be at least 1"),
            (self.consumer_timeout_s * 1000 > self.safety_margin_ms,
             "the consumer timeout must exceed its safety margin"),
        ]
        bad = [message for ok, message in checks if not ok]
        if bad:
            raise PlanError("; ".join(bad))


@dataclass(frozen=True)
class Limit:
    name: str
    used: float
    limit: float
    note: str
    # False: a setting checked against a quota (it does not grow with the volume).
    grows_with_volume: bool = True

    @property
    def ratio(self) -> float:
        return self.used / self.limit if self.limit else math.inf

    @property
    def broken(self) -> bool:
        return self.ratio > 1


@dataclass(frozen=True)
class Plan:
    inputs: PlanInputs
    duty: float
    drain_rate: float  # items/s while a consumer drains
    drain_bound_by: str
    drain_time_s: float  # draining time for one day's items
    wall_time_s: float  # the same with the gaps between consumer runs
    needed_cap: int | None  # None: no cap drains the day within the window (another limit binds)
    worker_invocations: int
    consumer_ticks: int
    enqueue_requests: int
    lambda_requests: int
    gb_seconds: dict[str, float]
    sqs_requests: dict[str, int]
    usd_per_day: dict[str, float]
    limits: list[Limit] = field(default_factory=list)

    @property
    def total_gb_seconds(self) -> float:
        return sum(self.gb_seconds.values())

    @property
    def total_sqs_requests(self) -> int:
        return sum(self.sqs_requests.values())

    @property
    def total_usd_per_day(self) -> float:
        return sum(self.usd_per_day.values())

    @property
    def usd_per_million_items(self) -> float:
        return self.total_usd_per_day / self.inputs.items_per_day * 1_000_000

    @property
    def breaks_first(self) -> Limit:
        """A setting already past its quota, else the volume-driven limit nearest to its end."""
        broken = [x for x in self.limits if x.broken]
        candidates = broken or [x for x in self.limits if x.grows_with_volume]
        return max(candidates, key=lambda limit: limit.ratio)

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": asdict(self.inputs),
            "drain": {
                "rate_items_per_s": self.drain_rate,
                "bound_by": self.drain_bound_by,
                "duty": self.duty,
                "drain_time_s": self.drain_time_s,
                "wall_time_s": self.wall_time_s,
                "needed_cap": self.needed_cap,
            },
            "requests_per_day": {
                "lambda": self.lambda_requests,
                "worker_invocations": self.worker_invocations,
                "consumer_ticks": self.consumer_ticks,
                "enqueue_requests": self.enqueue_requests,
                "sqs": self.sqs_requests,
                "sqs_total": self.total_sqs_requests,
            },
            "gb_seconds_per_day": {**self.gb_seconds, "total": self.total_gb_seconds},
            "usd_per_day": {**self.usd_per_day, "total": self.total_usd_per_day},
            "usd_per_million_items": self.usd_per_million_items,
            "prices": {"region": PRICES_REGION, "read_on": PRICES_READ_ON},
            "limits": [
                {"name": x.name, "used": x.used, "limit": x.limit, "ratio": x.ratio, "broken": x.broken,
                 "note": x.note}
                for x in sorted(self.limits, key=lambda x: x.ratio, reverse=True)
            ],
            "breaks_first": self.breaks_first.name,
        }


def schedule_interval_s(expression: str) -> float:
    """Seconds between ticks of ``rate(N unit)``; a cron expression is taken as one minute."""
    match = re.match(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$", expression)
    if not match:
        return 60.0
    unit = {"minute": 60, "hour": 3600, "day": 86400}[match.group(2).rstrip("s")]
    return float(int(match.group(1)) * unit)


def inputs_from_settings(
    settings: Settings, items_per_day: int, worker_ms: float, lane: Lane | None = None, **overrides: Any
) -> PlanInputs:
    """Plan inputs taken from a stage's settings (or one of its lanes'), with explicit overrides
    (None = keep)."""
    d, w = (lane.drain, lane.worker) if lane is not None else (settings.drain, settings.worker)
    q = lane.queue if lane is not None else settings.queue
    base: dict[str, Any] = {
        "items_per_day": items_per_day,
        "worker_ms": worker_ms,
        "batch_size": w.batch_size,
        "cap": d.max_parallel,
        "consumers": d.consumers,
        "schedule_interval_s": schedule_interval_s(d.schedule),
        "consumer_timeout_s": d.timeout_s,
        "safety_margin_ms": d.safety_margin_ms,
        "wait_s": d.wait_s,
        "max_rate": d.max_rate,
        "worker_memory_mb": w.memory_mb,
        "consumer_memory_mb": d.memory_mb,
        "enqueuer_memory_mb": settings.enqueuer.memory_mb,
        "items_per_request": min(100, settings.enqueuer.max_items),
        "enqueue_max_tps": q.max_tps,
        "reserved_concurrency": w.reserved_concurrency,
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    return PlanInputs(**base)


@dataclass(frozen=True)
class AccountPlan:
    """Every lane's plan and what the lanes reserve together out of the account's concurrency."""

    lanes: list[tuple[str, Plan]]
    reserved: int  # every lane's worker reserved concurrency + consumers, plus migrate's 1
    account_concurrency: int

    @property
    def reservable(self) -> int:
        return self.account_concurrency - UNRESERVED_MINIMUM

    @property
    def broken(self) -> bool:
        return self.reserved > self.reservable

    def to_dict(self) -> dict[str, Any]:
        return {
            "lanes": [{"lane": name, **plan.to_dict()} for name, plan in self.lanes],
            "account": {"reserved": self.reserved, "reservable": self.reservable,
                        "account_concurrency": self.account_concurrency, "broken": self.broken,
                        "ratio": self.reserved / self.reservable if self.reservable > 0 else math.inf},
        }


def account_plan(settings: Settings, items_per_day: int, worker_ms: float,
                 account_concurrency: int | None = None, **overrides: Any) -> AccountPlan:
    """Each lane's plan for ``items_per_day`` of its own, and the account's reservation."""
    lanes = settings.resolved_lanes()
    account = account_concurrency if account_concurrency is not None else settings.account_concurrency
    plans = [(lane.name, make_plan(inputs_from_settings(settings, items_per_day, worker_ms, lane=lane,
                                                        account_concurrency=account, **overrides)))
             for lane in lanes]
    reserved = sum(lane.worker.reserved_concurrency + lane.drain.consumers for lane in lanes) + 1
    return AccountPlan(plans, reserved, account)


def make_plan(i: PlanInputs) -> Plan:
    i.validate()
    n = i.items_per_day
    per_invocation = i.batch_size * i.fill  # messages one worker invocation carries, on average
    deletes_per_invocation = math.ceil(per_invocation / DELETE_BATCH_MAX)  # 1 while batch_size <= 10
    deletes_per_item = deletes_per_invocation / per_invocation
    invocation_ms = per_invocation * i.worker_ms + i.invoke_overhead_ms
    slot_rate = per_invocation * 1000 / invocation_ms  # items/s one worker slot handles
    rates = {
        "worker slots (cap)": i.cap * slot_rate,
        "drain.max_rate": i.max_rate,
        "FIFO receive TPS": i.fifo_tps * 10.0,
        "FIFO delete TPS": i.fifo_tps / deletes_per_item,
    }
    bound_by = min(rates, key=lambda k: rates[k])
    drain_rate = rates[bound_by]
    budget_s = i.consumer_timeout_s - i.safety_margin_ms / 1000
    duty = min(1.0, budget_s / i.schedule_interval_s)
    drain_time_s = n / drain_rate
    wall_time_s = n / (drain_rate * duty)

    # The smallest cap that drains a day's items within the window, if the other limits allow it.
    within_s = i.within_hours * 3600
    other_rate = min(v for k, v in rates.items() if k != "worker slots (cap)")
    needed_cap: int | None = math.ceil(n / (within_s * duty * slot_rate))
    if other_rate * duty * within_s < n:
        needed_cap = None

    # Rounded first so that a fill like 0.3 (3.0000000000000004 per call) does not add a call.
    worker_invocations = math.ceil(round(n / per_invocation, 6))
    consumer_ticks = math.ceil(SECONDS_PER_DAY / i.schedule_interval_s) * i.consumers
    full, rest = divmod(n, i.items_per_request)
    enqueue_requests = full + (1 if rest else 0)
    send_batches = full * math.ceil(i.items_per_request / 10) + math.ceil(rest / 10)
    chunks = max(1, math.ceil(min(10, i.items_per_request) * i.payload_kb / SQS_CHUNK_KB))
    dead_lettered = math.ceil(n * i.dead_letter_rate)
    sqs = {
        "send_message_batch": send_batches * chunks,
        "receive_message": math.ceil(n / 10) * chunks + consumer_ticks,
        "delete_message_batch": worker_invocations * deletes_per_invocation,
        "dlq_send_message": dead_lettered * max(1, math.ceil(i.payload_kb / SQS_CHUNK_KB)),
    }

    active_ticks = math.ceil(drain_time_s / budget_s) * i.consumers
    idle_ticks = max(0, consumer_ticks - active_ticks)
    gb = {
        "worker": n * i.worker_ms / 1000 * i.worker_memory_mb / 1024,
        "consumer": (i.consumers * drain_time_s + idle_ticks * i.wait_s) * i.consumer_memory_mb / 1024,
        "enqueuer": enqueue_requests * i.enqueuer_ms / 1000 * i.enqueuer_memory_mb / 1024,
    }
    lambda_requests = enqueue_requests + consumer_ticks + worker_invocations
    usd = {
        "lambda_requests": lambda_requests * price("lambda_request"),
        "lambda_duration": sum(gb.values()) * price("lambda_gb_second"),
        "sqs": sum(sqs.values()) * price("sqs_fifo_request"),
        "http_api": enqueue_requests * price("http_api_request"),
        "schedule": consumer_ticks * price("eventbridge_schedule"),
    }

    in_flight = i.cap * i.batch_size + i.consumers * 10
    limits = [
        Limit("drain within window", wall_time_s, within_s,
              f"seconds to drain a day's items vs --within-hours {i.within_hours:g}; binding: {bound_by}"),
        Limit("FIFO receive TPS", drain_rate / 10, i.fifo_tps,
              f"ReceiveMessage calls/s while draining ({i.fifo_tps}/s per action)"),
        Limit("FIFO delete TPS", drain_rate * deletes_per_item, i.fifo_tps,
              f"DeleteMessageBatch calls/s while draining, {per_invocation:g} items per call "
              f"({i.fifo_tps}/s per action)"),
        Limit("FIFO send TPS", i.enqueue_max_tps, i.fifo_tps,
              "queue.max_tps SendMessageBatch calls/s the enqueuer allows itself", grows_with_volume=False),
        Limit("FIFO in-flight messages", in_flight, FIFO_IN_FLIGHT_LIMIT,
              "cap x batch size received and not yet deleted, plus a receive per consumer"),
        Limit("worker reserved concurrency", i.cap, i.reserved_concurrency,
              "cap vs worker.reserved_concurrency (above it, invokes are throttled)",
              grows_with_volume=False),
        Limit("account concurrency", i.cap + i.consumers, i.account_concurrency,
              "workers + consumers vs the account's concurrent executions (enqueuer not counted)"),
        Limit("DB connections", i.cap, i.db_max_connections,
              "one connection per worker slot vs the database's max_connections"),
    ]
    return Plan(
        inputs=i, duty=duty, drain_rate=drain_rate, drain_bound_by=bound_by, drain_time_s=drain_time_s,
        wall_time_s=wall_time_s, needed_cap=needed_cap, worker_invocations=worker_invocations,
        consumer_ticks=consumer_ticks, enqueue_requests=enqueue_requests, lambda_requests=lambda_requests,
        gb_seconds=gb, sqs_requests=sqs, usd_per_day=usd, limits=limits,
    )
