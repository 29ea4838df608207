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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pymysql
from botocore.config import Config

from bench.counting_proxy import CountingProxy
from sluice.aws import Queue
from sluice.migrations import apply_migrations
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
        apply_migrations(self.url)  # creates the database first
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


class BenchStack(StartStopContext):
    """Start with ``with BenchStack(cap, drain_timeout_s, db_url) as stack:``."""

    def __init__(self, cap: int, drain_timeout_s: int, database_url: str, log_dir: Path) -> None:
        self.settings = bench_settings(cap, drain_timeout_s)
        self.cap = cap
        self.database_url = database_url
        self.log_dir = log_dir
        self.fauxqs = FauxqsServer(log_path=log_dir / "fauxqs.log")
        self.proxy: CountingProxy | None = None
        self.lambdas: LambdaService | None = None
        self.queue_url = ""
        self.dlq_url = ""
        self.queue_arn = ""
        self.sqs: Any = None
        self.lam: Any = None
        self._saved_env: dict[str, str | None] = {}

    @property
    def sqs_url(self) -> str:
        assert self.proxy is not None
        return self.proxy.url

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
        # The bench process's own clients (enqueue, depth sampling) reach the same servers.
        self._saved_env = use_local_stack(endpoints)
        self.sqs = boto3.client("sqs", endpoint_url=self.proxy.url, region_name=REGION)
        queues = create_queues(self.sqs, self.settings)
        self.queue_url, self.dlq_url, self.queue_arn = queues.url, queues.dlq_url, queues.arn
        env = self.settings.runtime_env(queue_url=queues.url, dlq_url=queues.dlq_url, queue_arn=queues.arn,
                                        worker_function=self.function_name("worker"))
        env.update(endpoints)
        env["DATABASE_URL"] = self.database_url
        env["POWERTOOLS_METRICS_NAMESPACE"] = "SluiceBench"
        # One log line per message would cost the workers more than their DB work.
        env["POWERTOOLS_LOG_LEVEL"] = "WARNING"
        table = function_table(self.settings)
        definitions = [
            FunctionDefinition.from_spec(table[key], name=self.function_name(key), environment=env,
                                         cwd=str(PROJECT_ROOT))
            for key in ("consumer", "worker")
        ]
        self.lambdas = LambdaService(definitions, port=lambda_port, log_dir=self.log_dir, region=REGION)
        self.lambdas.start()
        # RequestResponse drains last up to the consumer's budget: the read timeout outlasts it.
        self.lam = boto3.client("lambda", endpoint_url=lambda_url, region_name=REGION,
                                config=Config(read_timeout=self.settings.drain.timeout_s + 30,
                                              retries={"max_attempts": 1}))

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

    def worker_stats(self) -> dict[str, Any]:
        assert self.lambdas is not None
        return self.lambdas.stats()[self.function_name("worker")].as_dict()

    def consumer_stats(self) -> dict[str, Any]:
        assert self.lambdas is not None
        return self.lambdas.stats()[self.function_name("consumer")].as_dict()

    def reset_stats(self) -> None:
        assert self.lambdas is not None
        self.lambdas.reset_stats()

    def drain_once(self) -> dict[str, Any]:
        """One consumer run, as one EventBridge tick would start it; returns its drain report."""
        import json

        event = {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event",
                 "source": "aws.events", "account": "000000000000", "region": REGION,
                 "resources": [], "detail": {}}
        reply = self.lam.invoke(FunctionName=self.function_name("consumer"),
                                Payload=json.dumps(event).encode())
        body = json.loads(reply["Payload"].read() or b"null")
        if reply.get("FunctionError"):
            raise RuntimeError(f"the consumer failed: {body}")
        if not isinstance(body, dict):
            raise RuntimeError(f"the consumer returned no drain report: {body!r}")
        return body
