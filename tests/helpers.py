"""Helpers the test suites share: polling with a deadline, SQL on a test database, queue depths."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import pymysql
from awslambdaric.lambda_context import LambdaContext

from sluice.aws import Queue
from sluice.db import DbCredentials
from sluice_tools.local.processes import poll_until
from sluice_tools.ops.status import queue_counts

if TYPE_CHECKING:
    from sluice_tools.local.stack import LocalStack

T = TypeVar("T")

MACHINE_DB_ADMIN = {"host": "127.0.0.1", "user": "root"}


def lambda_context(function_name: str, timeout_s: float, region: str = "us-east-1") -> LambdaContext:
    """The runtime's own context object for an in-process call, with ``timeout_s`` left."""
    deadline_ms = int(time.time() * 1000 + timeout_s * 1000)
    return LambdaContext(f"req-{uuid.uuid4().hex[:8]}", None, None, deadline_ms,
                         f"arn:aws:lambda:{region}:123456789012:function:{function_name}")


def eventually(check: Callable[[], T], timeout_s: float, what: str, poll_s: float = 0.25) -> T:
    """``check``'s first truthy value; an AssertionError naming ``what`` once ``timeout_s`` has passed."""
    return poll_until(check, timeout_s, what, poll_s=poll_s, error=AssertionError)


def sql(database_url: str, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one statement on its own autocommit connection (so a test sees every commit at once)."""
    creds = DbCredentials.from_url(database_url)
    conn = pymysql.connect(host=creds.host, port=creds.port, user=creds.user, password=creds.password,
                           database=creds.database, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, args)
            return list(cur.fetchall())
    finally:
        conn.close()


def stack_sql(stack: LocalStack, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    """``sql`` on the database of a running local stack."""
    assert stack.database is not None
    return sql(stack.database.url, statement, *args)


def post(stack: LocalStack, body: Any) -> tuple[int, Any]:
    """POST ``body`` to the running stack's HTTP API (``/jobs``); the status and the decoded reply."""
    req = urllib.request.Request(f"{stack.env['SLUICE_API_URL']}/jobs", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def drop_machine_database(name: str) -> None:
    """Drop a test's scratch database on the machine's MariaDB (a no-op when it never got made)."""
    conn = pymysql.connect(**MACHINE_DB_ADMIN, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


def depth(sqs: Any, url: str) -> tuple[int, int]:
    """(visible, in flight) messages of the queue at ``url``, read through the client ``sqs``."""
    counts = queue_counts(Queue(url, sqs=sqs))
    return counts.visible, counts.in_flight


class SteppedClock:
    """Time that moves only when someone sleeps (or a test sets ``now``): rate arithmetic
    checked without waiting. Callable as a clock; ``sleep`` is its matching sleep."""

    def __init__(self) -> None:
        self.now = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def vendor_token(moto_endpoint: str) -> str:
    """The stand-in vendor's token in the secret config/local.yml's task settings name, made on
    moto if no suite of this session made it first (tasks cache the secret, so that one is kept)."""
    import json

    import boto3

    from worker.tasks import notify

    client = boto3.client("secretsmanager", endpoint_url=moto_endpoint, region_name="us-east-1")
    name = notify.task_settings(notify.__name__)["secret"]
    try:
        return str(json.loads(client.get_secret_value(SecretId=name)["SecretString"])["token"])
    except client.exceptions.ResourceNotFoundException:
        fresh = "vendor-token-" + uuid.uuid4().hex[:8]
        client.create_secret(Name=name, SecretString=json.dumps({"token": fresh}))
        return fresh
