"""The worker Lambda handler: credentials from a Secrets Manager secret (moto), real SQS (moto),
real MariaDB, and awslambdaric's own LambdaContext."""

from __future__ import annotations

import json
import sys
import time
import uuid
from typing import Any

import boto3
import pytest

from sluice.aws import OutgoingMessage, Queue
from sluice.db import Database, DbCredentials
from sluice.envelope import Envelope
from tests.conftest import REGION, FifoQueues
from tests.fixtures.events import SQS, load_event, sqs_event, sqs_record
from tests.helpers import lambda_context
from worker.tasks import invoices

pytestmark = pytest.mark.integration


@pytest.fixture
def worker_env(monkeypatch: pytest.MonkeyPatch, fifo_queues: FifoQueues, moto_aws: str,
               database_url: str) -> str:
    """The worker's environment as serverless.yml sets it, with the DB credentials in an RDS-shaped secret."""
    creds = DbCredentials.from_url(database_url)
    secret_id = f"sluice/test/{uuid.uuid4().hex[:8]}"
    boto3.client("secretsmanager", endpoint_url=moto_aws, region_name=REGION).create_secret(
        Name=secret_id,
        SecretString=json.dumps({"engine": "mariadb", "username": creds.user, "password": "",
                                 "host": creds.host, "port": creds.port, "dbname": creds.database}),
    )
    env = {
        "SLUICE_QUEUE_URL": fifo_queues.url, "SLUICE_DLQ_URL": fifo_queues.dlq_url,
        "SLUICE_DB_SECRET_ID": secret_id, "SLUICE_QUEUE_MAX_RECEIVE_COUNT": "3",
        "SLUICE_WORKER_TIMEOUT_S": "10", "AWS_LAMBDA_FUNCTION_NAME": "sluice-test-worker",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    import worker.handler as handler

    # A fresh container: module-level dependencies are built on the first invocation.
    monkeypatch.setattr(handler, "_config", None)
    monkeypatch.setattr(handler, "_database", None)
    monkeypatch.setattr(handler, "_queues", {})
    return secret_id


def send_and_receive(queues: FifoQueues, key: str, customer: str = "acme") -> dict[str, Any]:
    payload = {"customer": customer, "amount_cents": 990, "currency": "USD"}
    envelope = Envelope.new("invoice.record", key, payload)
    queue = Queue(queues.url)
    queue.send(OutgoingMessage(id="0", body=envelope.to_body(), group_id=customer,
                               dedup_id=envelope.dedup_id))
    deadline = time.monotonic() + 10
    received: list[dict[str, Any]] = []
    while not received and time.monotonic() < deadline:
        received = queues.sqs.receive_message(QueueUrl=queues.url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                              MessageSystemAttributeNames=["All"],
                                              MessageAttributeNames=["All"]).get("Messages", [])
    assert len(received) == 1
    # AWS's SQS sample record carrying the real message and its receipt handle. Without "queueUrl":
    # the handler falls back to SLUICE_QUEUE_URL, as behind a plain SQS trigger.
    return sqs_event([sqs_record(received[0], queues.arn)])


def test_the_handler_applies_a_batch_and_reuses_its_connection(worker_env: str, fifo_queues: FifoQueues,
                                                               database_url: str,
                                                               capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import worker.handler as handler
    from sluice.observability import logger

    # The log handler was bound to the stdout of import time; point it at this test's capture.
    monkeypatch.setattr(logger.registered_handler, "stream", sys.stdout)

    # GIVEN two messages, delivered in two invocations of the same warm container
    keys = [f"H-{uuid.uuid4().hex[:8]}" for _ in range(2)]

    # WHEN the handler runs twice
    first = handler.lambda_handler(send_and_receive(fifo_queues, keys[0]), lambda_context("sluice-test-worker", 10))
    assert handler._database is not None
    first_session = handler._database.connection().thread_id()
    second = handler.lambda_handler(send_and_receive(fifo_queues, keys[1]), lambda_context("sluice-test-worker", 10))

    # THEN both are applied through the credentials of the secret, over one reused connection,
    # with log lines naming the message and metrics for the outcome
    assert [r["outcome"] for r in first["results"] + second["results"]] == ["done", "done"]
    assert first["batchItemFailures"] == [] == second["batchItemFailures"]
    assert handler._database.connection().thread_id() == first_session
    checker = Database(url=database_url)
    assert [invoices.applications(checker, k) for k in keys] == [1, 1]
    checker.close()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    applied = [line for line in lines if line.get("message") == "applied"]
    assert {line["key"] for line in applied} == set(keys)
    assert all(line["message_id"] and line["group"] == "acme" and line["task"] == "invoice.record"
               for line in applied)
    emitted = [line for line in lines if "_aws" in line]
    assert emitted and all("done" in line and "worker_ms" in line for line in emitted)


def test_the_records_the_consumer_builds_have_the_shape_of_aws_sqs_records(fifo_queues: FifoQueues) -> None:
    # GIVEN a message on the queue, received as the consumer receives it
    envelope = Envelope.new("invoice.record", f"H-{uuid.uuid4().hex[:8]}",
                            {"customer": "acme", "amount_cents": 1, "currency": "USD"})
    queue = Queue(fifo_queues.url, sqs=fifo_queues.sqs)
    queue.send(OutgoingMessage(id="0", body=envelope.to_body(), group_id="acme", dedup_id=envelope.dedup_id))
    deadline = time.monotonic() + 10
    received = []
    while not received and time.monotonic() < deadline:
        received = queue.receive(wait_s=0)
    assert len(received) == 1
    # WHEN the consumer turns it into the record it hands a worker
    record = received[0].to_sqs_record(fifo_queues.arn)
    # THEN it has exactly the keys of AWS's sample record, every attribute the sample has, and the
    # FIFO attributes a record from a FIFO queue carries, so the worker sees one shape behind either
    sample = load_event(SQS)["Records"][0]
    assert set(record) == set(sample)
    assert set(sample["attributes"]) <= set(record["attributes"])
    assert record["attributes"]["MessageGroupId"] == "acme"
    assert record["attributes"]["MessageDeduplicationId"] == envelope.dedup_id
    assert record["attributes"]["SequenceNumber"]
    assert (record["eventSource"], record["eventSourceARN"], record["awsRegion"]) == \
        ("aws:sqs", fifo_queues.arn, REGION)
