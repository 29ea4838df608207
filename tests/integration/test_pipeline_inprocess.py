"""The whole pipeline in one process: enqueuer handler (AWS's HTTP API v2 sample event) -> moto SQS FIFO ->
consumer handler -> worker handler on threads -> MariaDB, with a concurrency cap of 4.

The Lambda service is an in-process object with boto3's ``invoke`` shape: each concurrent
invocation runs in a "container" of its own (a separate instance of the worker handler
module, so module-level state such as the DB connection is not shared across threads, as on
Lambda), and an invocation above the reserved concurrency is refused with the 429
TooManyRequestsException boto3 would raise.
"""

from __future__ import annotations

import importlib.util
import io
import json
import threading
import time
import uuid
from types import ModuleType
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sluice.db import Database
from tests.conftest import FifoQueues
from tests.fixtures.events import http_api_event, scheduled_event
from tests.helpers import depth, lambda_context
from worker.tasks import invoices

pytestmark = pytest.mark.integration

CAP = 4
WORKER_TIMEOUT_S = 10
CONSUMER_BUDGET_S = 20
POISON = {37, 111, 250, 333, 499}  # items for a customer that does not exist


class InProcessLambda:
    """boto3 Lambda client stand-in running worker.handler with reserved concurrency."""

    def __init__(self, reserved_concurrency: int) -> None:
        self.reserved = reserved_concurrency
        self.lock = threading.Lock()
        self.idle: list[ModuleType] = []
        self.containers = 0
        self.running = 0
        self.peak = 0
        self.invocations = 0
        self.throttled = 0

    def _container(self) -> ModuleType:
        spec = importlib.util.find_spec("worker.handler")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def invoke(self, FunctionName: str, InvocationType: str, Payload: bytes) -> dict[str, Any]:  # noqa: N803
        assert InvocationType == "RequestResponse"
        with self.lock:
            if self.running >= self.reserved:
                self.throttled += 1
                raise ClientError({"Error": {"Code": "TooManyRequestsException", "Message": "Rate Exceeded."},
                                   "ResponseMetadata": {"HTTPStatusCode": 429}}, "Invoke")
            self.running += 1
            self.invocations += 1
            self.peak = max(self.peak, self.running)
            container = self.idle.pop() if self.idle else None
            if container is None:
                self.containers += 1
        try:
            container = container or self._container()
            try:
                result = container.lambda_handler(json.loads(Payload),
                                                  lambda_context(FunctionName, WORKER_TIMEOUT_S))
                body = json.dumps(result).encode()
                reply: dict[str, Any] = {"StatusCode": 200, "Payload": io.BytesIO(body)}
            except Exception as exc:  # what Lambda reports for an unhandled error
                error = {"errorMessage": str(exc), "errorType": type(exc).__name__}
                reply = {"StatusCode": 200, "FunctionError": "Unhandled",
                         "Payload": io.BytesIO(json.dumps(error).encode())}
            return reply
        finally:
            with self.lock:
                self.running -= 1
                self.idle.append(container)


def test_500_invoices_flow_through_exactly_once_within_the_cap(
    fifo_queues: FifoQueues, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the handlers' environment (cap 4, reserved concurrency 4), and 500 invoices of which
    # 5 name a customer that does not exist
    env = {
        "SLUICE_QUEUE_URL": fifo_queues.url, "SLUICE_DLQ_URL": fifo_queues.dlq_url,
        "SLUICE_WORKER_FUNCTION": "sluice-test-worker", "DATABASE_URL": database_url,
        "SLUICE_QUEUE_MAX_RECEIVE_COUNT": "3", "SLUICE_DRAIN_MAX_PARALLEL": str(CAP),
        "SLUICE_DRAIN_CONSUMERS": "1", "SLUICE_DRAIN_MAX_RATE": "1000", "SLUICE_DRAIN_WAIT_S": "0",
        "SLUICE_DRAIN_SAFETY_MARGIN_MS": "2000", "SLUICE_WORKER_TIMEOUT_S": str(WORKER_TIMEOUT_S),
        "SLUICE_WORKER_BATCH_SIZE": "10", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    import consumer.handler as consumer
    import enqueuer.handler as enqueuer

    lam = InProcessLambda(reserved_concurrency=CAP)
    enqueuer.reset()
    consumer.reset(lambda_client=lam)
    prefix = f"PIPE-{uuid.uuid4().hex[:8]}-"
    customers = ["acme", "globex", "initech", "umbrella", "hooli"]
    items = [{"task": "invoice.record", "key": f"{prefix}{n:04d}",
              "payload": {"customer": "ghost" if n in POISON else customers[n % 5], "amount_cents": 100 + n,
                          "currency": "EUR"}}
             for n in range(500)]
    # Half the items are ordered per customer, half spread over the default shards.
    for n, item in enumerate(items):
        if n % 2:
            item["group"] = item["payload"]["customer"]

    try:
        # WHEN they are POSTed to the enqueuer as one request (AWS's HTTP API sample event)
        response = enqueuer.lambda_handler(http_api_event(json.dumps({"items": items})),
                                           lambda_context("sluice-test-enqueuer", 29))
        assert response["statusCode"] == 202, response["body"]
        assert json.loads(response["body"])["accepted"] == 500

        # AND the consumer is started like the schedule does (AWS's scheduled-event sample), until the
        # queue is empty
        reports = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            started = time.monotonic()
            report = consumer.lambda_handler(scheduled_event(),
                                             lambda_context("sluice-test-consumer", CONSUMER_BUDGET_S))
            took_s = time.monotonic() - started
            reports.append(report)
            # THEN each drain returned before its budget
            assert took_s < CONSUMER_BUDGET_S, report
            assert report["used_ms"] <= report["budget_ms"]
            if report["stopped_because"] == "queue_empty" and depth(fifo_queues.sqs,
                                                                           fifo_queues.url) == (0, 0):
                break
        else:
            pytest.fail(f"queue not drained in time: {reports}")
    finally:
        consumer.reset()
        enqueuer.reset()

    # THEN 495 invoices exist, each once; the 5 poison items are in the DLQ with their reason
    db = Database(url=database_url)
    try:
        keys = invoices.keys(db, prefix)
        assert len(keys) == 495 and len(set(keys)) == 495
        assert not {f"{prefix}{n:04d}" for n in POISON} & set(keys)
        assert invoices.duplicates(db, prefix) == 0  # no key with a second row or an apply_count > 1
    finally:
        db.close()
    dead = []
    while True:
        got = fifo_queues.sqs.receive_message(QueueUrl=fifo_queues.dlq_url, MaxNumberOfMessages=10,
                                              MessageAttributeNames=["All"], WaitTimeSeconds=0,
                                              VisibilityTimeout=60).get("Messages", [])
        if not got:
            break
        dead += got
    assert sorted(json.loads(m["Body"])["key"] for m in dead) == [f"{prefix}{n:04d}" for n in sorted(POISON)]
    assert all("unknown customer 'ghost'" in m["MessageAttributes"]["sluice_error"]["StringValue"]
               for m in dead)
    # AND the reports add up, the cap held, and nothing was throttled or left behind
    assert sum(r["succeeded"] for r in reports) == 495
    assert sum(r["dead_lettered"] for r in reports) == 5
    assert sum(r["duplicates"] for r in reports) == 0
    assert lam.peak <= CAP and max(r["peak_parallel"] for r in reports) <= CAP
    assert lam.throttled == 0
    assert depth(fifo_queues.sqs, fifo_queues.url) == (0, 0)
