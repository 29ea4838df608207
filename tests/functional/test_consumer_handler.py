"""The consumer handler's dependencies: the queue ARN comes from its environment, not from SQS."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sluice import aws
from tests.conftest import FifoQueues
from tests.fixtures.events import scheduled_event
from tests.helpers import lambda_context

pytestmark = pytest.mark.functional


@pytest.fixture
def consumer_env(monkeypatch: pytest.MonkeyPatch, fifo_queues: FifoQueues) -> Iterator[Any]:
    """The consumer's environment as serverless.yml sets it (a short worker timeout, so a 5 s
    budget has room for a receive), and the SQS calls it makes."""
    for name, value in {"SLUICE_QUEUE_URL": fifo_queues.url, "SLUICE_DLQ_URL": fifo_queues.dlq_url,
                        "SLUICE_WORKER_FUNCTION": "sluice-test-worker", "SLUICE_DRAIN_WAIT_S": "0",
                        "SLUICE_DRAIN_SAFETY_MARGIN_MS": "1000",
                        "SLUICE_WORKER_TIMEOUT_S": "2"}.items():
        monkeypatch.setenv(name, value)
    import consumer.handler as consumer

    calls: list[str] = []

    def record(model: Any, **_: Any) -> None:
        calls.append(model.name)

    sqs = aws.client("sqs")
    sqs.meta.events.register("before-call.sqs.*", record)
    consumer.reset()
    try:
        yield consumer, calls
    finally:
        sqs.meta.events.unregister("before-call.sqs.*", record)
        consumer.reset()


def test_the_queue_arn_comes_from_the_environment(consumer_env: Any, fifo_queues: FifoQueues,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    consumer, calls = consumer_env
    # GIVEN SLUICE_QUEUE_ARN set, as serverless.yml does (the role has no sqs:GetQueueAttributes)
    monkeypatch.setenv("SLUICE_QUEUE_ARN", fifo_queues.arn)
    # WHEN a scheduled drain runs on an empty queue
    report = consumer.lambda_handler(scheduled_event(), lambda_context("sluice-test-consumer", 5))
    # THEN it received from the queue without asking SQS for the queue's attributes
    assert report["received"] == 0
    assert "ReceiveMessage" in calls and "GetQueueAttributes" not in calls
    assert consumer.get_container().queue_arn == fifo_queues.arn


def test_without_the_variable_the_arn_is_asked_of_sqs_once(consumer_env: Any, fifo_queues: FifoQueues,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    consumer, calls = consumer_env
    # GIVEN no SLUICE_QUEUE_ARN (a deployment of its own)
    monkeypatch.delenv("SLUICE_QUEUE_ARN", raising=False)
    # WHEN two drains run in the same container
    for _ in range(2):
        consumer.lambda_handler(scheduled_event(), lambda_context("sluice-test-consumer", 5))
    # THEN the ARN was looked up once and kept for the container
    assert calls.count("GetQueueAttributes") == 1
    assert consumer.get_container().queue_arn == fifo_queues.arn
