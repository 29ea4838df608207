"""The bench's own stack, built from the local stack's parts: fauxqs behind a counting proxy,
the local Lambda service running the real consumer and worker handlers, and a scratch
database on the machine's MariaDB.

Why not `sluice local up`: the bench must start drains itself (one consumer invoke at a time,
back to back, so it can read every drain report), and it must see every SQS call the
consumer and workers make (the proxy), neither of which a long-running demo stack needs.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pymysql
from botocore.config import Config

from bench.counting_proxy import CountingProxy
from sluice.aws import Queue
from sluice.migrations import apply_migrations, configured_sources
from sluice.settings import PROJECT_ROOT, Settings, load_settings
from sluice_tools.functions import function_table
from sluice_tools.local.env import restore_environment, use_local_stack
from sluice_tools.local.fauxqs import FauxqsServer
from sluice_tools.local.lambda_service import LambdaService
from sluice_tools.local.processes import StartStopContext, free_port
from sluice_tools.local.resources import create_queues
from sluice_tools.local.runtime_api import FunctionDefinition
from sluice_tools.ops.status import queue_counts

REGION = "us-east-1"
ADMIN_URL_ENV = "DATABASE_ADMIN_URL"
DEFAULT_ADMIN_URL = "mysql://root@127.0.0.1:3306/"
# The local servers accept any credentials; these say so.
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                     "AWS_DEFAULT_REGION": REGION}


def bench_settings(cap: int, drain_timeout_s: int) -> Settings:
    """config/local.yml with the bench's cap and budget; still checked like any stage."""
    base = load_settings("local")
    # The worker keeps (its DB read timeout + 1 s) >= 3 s in reserve, so it needs a few seconds
    # more than that to do anything; the consumer's budget must exceed it plus the margin.
    worker_timeout_s = 8
    settings = base.model_copy(update={
        "queue": base.queue.model_copy(update={"name": f"bench-{uuid.uuid4().hex[:10]}"}),
        "drain": base.drain.model_copy(update={"max_parallel": cap, "timeout_s": drain_timeout_s,
                                               "safety_margin_ms": 1000}),
        "worker": base.worker.model_copy(update={"reserved_concurrency": cap, "timeout_s": worker_timeout_s}),
    })
    settings.check()
    return settings


def _admin_connection(admin_url: str) -> pymysql.connections.Connection:
    from sluice.db import connect_admin

    return connect_admin(admin_url)


@dataclass
class ScratchDatabase:
    """A uniquely named database of this run, migrated; dropped by ``drop()``."""

    admin_url: str = field(default_factory=lambda: os.environ.get(ADMIN_URL_ENV, DEFAULT_ADMIN_URL))
    name: str = field(default_factory=lambda: f"sluice_bench_{uuid.uuid4().hex[:10]}")

    @property
    def url(self) -> str:
        return self.admin_url.rstrip("/") + "/" + self.name

    def create(self) -> str:
        # creates the database first; the task modules' tables as config/local.yml names them
        apply_migrations(self.url, configured_sources(load_settings("local")))
        return self.url

    def drop(self) -> None:
        conn = _admin_connection(self.admin_url.rstrip("/") + "/")
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{self.name}`")
        finally:
            conn.close()

    def count(self, sql: str) -> int:
        conn = pymysql.connect(**_connect_args(self.url), autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                row = cur.fetchone()
                return int(row[0]) if row else 0
        finally:
            conn.close()


def _connect_args(url: str) -> dict[str, Any]:
    from sluice.db import DbCredentials

    c = DbCredentials.from_url(url)
    return {"host": c.host, "port": c.port, "user": c.user, "password": c.password, "database": c.database}


@dataclass
class BenchLane:
    """One drainable queue of the bench stack: its queue, its consumer and the worker it calls.

    A lane of the settings gets a consumer and a worker of its own (its lane env); a variant is
    one more consumer with other drain settings on a queue of its own, calling the first lane's
    worker: the same stack drained fixed and adaptive, or with the rate cap out of the way."""

    name: str
    settings: Settings  # drain/queue/worker as this lane's consumer sees them
    consumer: str  # function names
    worker: str
    queue_url: str = ""
    dlq_url: str = ""
    queue_arn: str = ""


class BenchStack(StartStopContext):
    """Start with ``with BenchStack(cap, drain_timeout_s, db_url, log_dir) as stack:``.

    ``settings`` replaces config/local.yml (a two-lane stage for the lane isolation scenario);
    ``variants`` maps a name to drain overrides (``{"fixed": {"adaptive": False}}``): each is a
    consumer of its own on a queue of its own, drained with ``drain_once("fixed")``.
    ``extra_env`` goes to every function (the stand-in vendor's URL)."""

    def __init__(self, cap: int, drain_timeout_s: int, database_url: str, log_dir: Path, *,
                 settings: Settings | None = None, variants: Mapping[str, Mapping[str, Any]] | None = None,
                 extra_env: Mapping[str, str] | None = None) -> None:
        self.settings = settings or bench_settings(cap, drain_timeout_s)
        self.cap = cap
        self.database_url = database_url
        self.log_dir = log_dir
        self.variants = dict(variants or {})
        self.extra_env = dict(extra_env or {})
        self.fauxqs = FauxqsServer(log_path=log_dir / "fauxqs.log")
        self.proxy: CountingProxy | None = None
        self.lambdas: LambdaService | None = None
        self.lanes: dict[str, BenchLane] = {}
        self.sqs: Any = None
        self.lam: Any = None
        self._saved_env: dict[str, str | None] = {}

    @property
    def sqs_url(self) -> str:
        assert self.proxy is not None
        return self.proxy.url

    @property
    def first(self) -> BenchLane:
        return next(iter(self.lanes.values()))

    @property
    def queue_url(self) -> str:
        return self.first.queue_url

    @property
    def dlq_url(self) -> str:
        return self.first.dlq_url

    def lane(self, name: str = "") -> BenchLane:
        return self.lanes[name] if name else self.first

    def function_name(self, key: str) -> str:
        return self.settings.function_name(key)

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        upstream = self.fauxqs.start()
        self.proxy = CountingProxy(upstream)
        self.proxy.start()
        lambda_port = free_port()
        lambda_url = f"http://127.0.0.1:{lambda_port}"
        endpoints = {**DUMMY_CREDENTIALS, "AWS_ENDPOINT_URL_SQS": self.proxy.url,
                     "AWS_ENDPOINT_URL_LAMBDA": lambda_url}
        # The bench process's own clients (enqueue, depth sampling) reach the same servers, and
        # its enqueuer knows the stage's tasks (it validates items against them).
        self._saved_env = use_local_stack(endpoints)
        tasks_env = self.settings.task_env()
        self._saved_env.update({k: os.environ.get(k) for k in tasks_env})
        os.environ.update(tasks_env)
        self.sqs = boto3.client("sqs", endpoint_url=self.proxy.url, region_name=REGION)
        common = {**endpoints, "DATABASE_URL": self.database_url, "POWERTOOLS_METRICS_NAMESPACE": "SluiceBench",
                  # One log line per message would cost the workers more than their DB work.
                  "POWERTOOLS_LOG_LEVEL": "WARNING", **self.extra_env}
        table = function_table(self.settings)
        definitions = []
        for lane in self.settings.resolved_lanes():
            consumer_key, worker_key = lane.function_key("consumer"), lane.function_key("worker")
            lane_settings = self.settings.model_copy(update={"queue": lane.queue, "drain": lane.drain,
                                                             "worker": lane.worker})
            bench_lane = self._add_lane(lane.name if not lane.implicit else "main", lane_settings,
                                        self.function_name(consumer_key), self.function_name(worker_key))
            env = {**self.settings.runtime_env(queue_url=bench_lane.queue_url, dlq_url=bench_lane.dlq_url,
                                               queue_arn=bench_lane.queue_arn, worker_function=bench_lane.worker,
                                               lane=lane), **common}
            definitions += [FunctionDefinition.from_spec(table[consumer_key], name=bench_lane.consumer,
                                                         environment=env, cwd=str(PROJECT_ROOT)),
                            FunctionDefinition.from_spec(table[worker_key], name=bench_lane.worker,
                                                         environment=env, cwd=str(PROJECT_ROOT))]
        base = self.first
        for name, drain in self.variants.items():
            settings = base.settings.model_copy(update={
                "queue": base.settings.queue.model_copy(update={"name": f"{base.settings.queue.name}-{name}"}),
                "drain": base.settings.drain.model_copy(update=dict(drain))})
            variant = self._add_lane(name, settings, f"{base.consumer}-{name}", base.worker)
            env = {**settings.runtime_env(queue_url=variant.queue_url, dlq_url=variant.dlq_url,
                                          queue_arn=variant.queue_arn, worker_function=base.worker), **common}
            definitions.append(FunctionDefinition.from_spec(function_table(settings)["consumer"],
                                                            name=variant.consumer, environment=env,
                                                            cwd=str(PROJECT_ROOT)))
        self.lambdas = LambdaService(definitions, port=lambda_port, log_dir=self.log_dir, region=REGION)
        self.lambdas.start()
        # RequestResponse drains last up to the consumer's budget: the read timeout outlasts it.
        longest = max(lane.settings.drain.timeout_s for lane in self.lanes.values())
        self.lam = boto3.client("lambda", endpoint_url=lambda_url, region_name=REGION,
                                config=Config(read_timeout=longest + 30, retries={"max_attempts": 1}))

    def _add_lane(self, name: str, settings: Settings, consumer: str, worker: str) -> BenchLane:
        queues = create_queues(self.sqs, settings)
        lane = BenchLane(name, settings, consumer, worker, queues.url, queues.dlq_url, queues.arn)
        self.lanes[name] = lane
        return lane

    def stop(self) -> None:
        if self.lambdas is not None:
            with contextlib.suppress(Exception):
                self.lambdas.stop()
        if self.proxy is not None:
            with contextlib.suppress(Exception):
                self.proxy.stop()
        with contextlib.suppress(Exception):
            self.fauxqs.stop()
        restore_environment(self._saved_env)
        self._saved_env = {}

    # -- what the scenarios read ---------------------------------------------------------
    def depth(self, url: str | None = None) -> tuple[int, int]:
        """(visible, in flight) of the queue, straight from fauxqs (not counted as sluice's calls)."""
        counts = queue_counts(Queue(url or self.queue_url, sqs=self._direct_sqs()))
        return counts.visible, counts.in_flight

    def _direct_sqs(self) -> Any:
        if not hasattr(self, "_direct"):
            self._direct = boto3.client("sqs", endpoint_url=self.fauxqs.url, region_name=REGION)
        return self._direct

    def worker_stats(self, lane: str = "") -> dict[str, Any]:
        assert self.lambdas is not None
        return self.lambdas.stats()[self.lane(lane).worker].as_dict()

    def consumer_stats(self, lane: str = "") -> dict[str, Any]:
        assert self.lambdas is not None
        return self.lambdas.stats()[self.lane(lane).consumer].as_dict()

    def reset_stats(self) -> None:
        assert self.lambdas is not None
        self.lambdas.reset_stats()

    def drain_once(self, lane: str = "") -> dict[str, Any]:
        """One consumer run of ``lane`` (default: the first), as one EventBridge tick would start
        it; returns its drain report."""
        import json

        event = {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event",
                 "source": "aws.events", "account": "000000000000", "region": REGION,
                 "resources": [], "detail": {}}
        reply = self.lam.invoke(FunctionName=self.lane(lane).consumer,
                                Payload=json.dumps(event).encode())
        body = json.loads(reply["Payload"].read() or b"null")
        if reply.get("FunctionError"):
            raise RuntimeError(f"the consumer failed: {body}")
        if not isinstance(body, dict):
            raise RuntimeError(f"the consumer returned no drain report: {body!r}")
        return body
