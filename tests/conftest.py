"""Session fixtures shared by every test layer: a moto server and a MariaDB database.

Both are real services on 127.0.0.1: moto's server on a free port (started here), and the
machine's MariaDB (DATABASE_ADMIN_URL, default root@127.0.0.1:3306) with a database this
session creates, migrates and drops.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pymysql
import pytest

REGION = "us-east-1"
# Lines a test wants shown at the end of the run (e.g. the fuzz counts), whatever -s says.
_SUMMARY: list[str] = []


@pytest.fixture
def summary_lines() -> list[str]:
    return _SUMMARY


def pytest_configure(config: pytest.Config) -> None:
    """In-process code under test serves the local stage's task modules, as its handlers would
    (the same SLUICE_TASK_* variables the stack gives its functions)."""
    from sluice.settings import load_settings

    for name, value in load_settings("local").task_env().items():
        os.environ.setdefault(name, value)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _SUMMARY:
        terminalreporter.write_sep("=", "summary")
        for line in _SUMMARY:
            terminalreporter.write_line(line)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def aws_env(request: pytest.FixtureRequest) -> Iterator[None]:
    """Dummy credentials and region for every test: nothing here may reach real AWS."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                            "AWS_SESSION_TOKEN", "AWS_PROFILE")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=REGION)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "SluiceTest")
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "sluice")
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def moto_aws(moto_endpoint: str) -> Iterator[str]:
    """Point every boto3 client of this process at the moto server."""
    from sluice import aws

    os.environ["AWS_ENDPOINT_URL"] = moto_endpoint
    aws.reset_clients()
    yield moto_endpoint
    os.environ.pop("AWS_ENDPOINT_URL", None)
    aws.reset_clients()


@dataclass(frozen=True)
class FifoQueues:
    url: str
    dlq_url: str
    arn: str
    sqs: Any


def make_fifo_queues(endpoint: str, *, visibility_s: int = 30, max_receive_count: int = 3) -> FifoQueues:
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name=REGION)
    name = f"t{uuid.uuid4().hex[:12]}"
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = sqs.create_queue(
        QueueName=f"{name}.fifo",
        Attributes={
            "FifoQueue": "true",
            "VisibilityTimeout": str(visibility_s),
            "RedrivePolicy": f'{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"{max_receive_count}"}}',
        },
    )["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return FifoQueues(url=url, dlq_url=dlq_url, arn=arn, sqs=sqs)


@pytest.fixture
def fifo_queues(moto_aws: str) -> FifoQueues:
    """A fresh FIFO queue with a FIFO DLQ (maxReceiveCount 3) on the moto server."""
    return make_fifo_queues(moto_aws)


def admin_url() -> str:
    return os.environ.get("DATABASE_ADMIN_URL", "mysql://root@127.0.0.1:3306/")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A database of this session's own on the machine's MariaDB, migrated, dropped at the end."""
    from sluice.db import connect_admin
    from sluice.migrations import apply_migrations

    name = f"sluice_test_{uuid.uuid4().hex[:10]}"
    base = admin_url().rstrip("/")
    admin: pymysql.connections.Connection = connect_admin(base + "/")
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    url = f"{base}/{name}"
    apply_migrations(url)
    yield url
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    admin.close()
