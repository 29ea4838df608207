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


# -- the concurrency limit across cold starts: a tag on the consumer's queue ----------------

def queue_tags(fifo_queues: FifoQueues) -> dict[str, str]:
    tags: dict[str, str] = fifo_queues.sqs.list_queue_tags(QueueUrl=fifo_queues.url).get("Tags", {})
    return tags


def test_the_limit_state_round_trips_through_the_queues_tag(fifo_queues: FifoQueues) -> None:
    from sluice.limit_state import TAG_KEY, QueueTagStore

    # GIVEN a queue with a tag of its own, and nothing saved yet
    fifo_queues.sqs.tag_queue(QueueUrl=fifo_queues.url, Tags={"team": "billing"})
    store = QueueTagStore(aws.Queue(fifo_queues.url))
    assert store.load() is None
    # WHEN a state is saved / THEN it is one tag in key=number form, next to the queue's own
    assert store.save({"limit": 3.25, "baseline_ms": 12.5}) is True
    assert queue_tags(fifo_queues) == {"team": "billing", TAG_KEY: "limit=3.25 baseline_ms=12.5"}
    # AND another container reads it back as it was saved
    assert QueueTagStore(aws.Queue(fifo_queues.url)).load() == {"limit": 3.25, "baseline_ms": 12.5}
    # AND a state that moved too little to matter is not written again; one that moved is
    assert store.save({"limit": 3.9, "baseline_ms": 13.0}) is False
    assert store.save({"limit": 2.0, "baseline_ms": 13.0}) is True
    assert queue_tags(fifo_queues)[TAG_KEY] == "limit=2 baseline_ms=13"


def test_a_cold_consumer_resumes_the_saved_limit_and_saves_it_when_it_moves(
        consumer_env: Any, fifo_queues: FifoQueues, monkeypatch: pytest.MonkeyPatch) -> None:
    from sluice.limit_state import TAG_KEY

    consumer, calls = consumer_env
    # GIVEN a cap of 8, and a tag saying the last drains ran at 3 against a 50 ms baseline
    monkeypatch.setenv("SLUICE_DRAIN_MAX_PARALLEL", "8")
    fifo_queues.sqs.tag_queue(QueueUrl=fifo_queues.url, Tags={TAG_KEY: "limit=3 baseline_ms=50"})
    # WHEN a cold consumer drains an empty queue
    report = consumer.lambda_handler(scheduled_event(), lambda_context("sluice-test-consumer", 5))
    # THEN it started at the saved 3, not at the ceiling, read the tag once and wrote nothing back
    assert (report["limit"], report["limit_floor"], report["limit_ceiling"], report["adaptive"]) == (3, 1, 8, True)
    assert calls.count("ListQueueTags") == 1 and "TagQueue" not in calls
    # WHEN the next drain's worker invoke fails (no such function): all its items count as retried
    fifo_queues.sqs.send_message(QueueUrl=fifo_queues.url, MessageBody="{}", MessageGroupId="g",
                                 MessageDeduplicationId="d1")
    report = consumer.lambda_handler(scheduled_event(), lambda_context("sluice-test-consumer", 5))
    # THEN the limit fell, the tag says so, and the warm container did not read the tag again
    assert report["invoke_errors"] == 1 and report["limit"] < 3
    assert queue_tags(fifo_queues)[TAG_KEY].startswith(f"limit={report['limit']}")
    assert calls.count("ListQueueTags") == 1 and calls.count("TagQueue") == 1


def test_a_fixed_cap_neither_reads_nor_writes_the_tag(consumer_env: Any, fifo_queues: FifoQueues,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from sluice.limit_state import TAG_KEY

    consumer, calls = consumer_env
    monkeypatch.setenv("SLUICE_DRAIN_ADAPTIVE", "false")
    fifo_queues.sqs.tag_queue(QueueUrl=fifo_queues.url, Tags={TAG_KEY: "limit=1 baseline_ms=50"})
    report = consumer.lambda_handler(scheduled_event(), lambda_context("sluice-test-consumer", 5))
    assert (report["limit"], report["adaptive"]) == (4, False)
    assert "ListQueueTags" not in calls and "TagQueue" not in calls


def test_a_consumer_that_may_not_tag_drains_anyway_with_one_warning(
        consumer_env: Any, fifo_queues: FifoQueues, caplog: pytest.LogCaptureFixture) -> None:
    from botocore.exceptions import ClientError

    consumer, calls = consumer_env
    # GIVEN a role without the tagging grants: SQS refuses ListQueueTags and TagQueue
    def refuse(model: Any, **_: Any) -> None:
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not authorized"}}, model.name)

    sqs = aws.client("sqs")
    for operation in ("ListQueueTags", "TagQueue"):
        sqs.meta.events.register(f"before-call.sqs.{operation}", refuse)
    try:
        # WHEN a cold consumer drains, and its store is asked to save a state that moved
        report = consumer.lambda_handler(scheduled_event(), lambda_context("sluice-test-consumer", 5))
        saved = consumer.get_container().limit_store.save({"limit": 4.0, "baseline_ms": 20.0})
    finally:
        for operation in ("ListQueueTags", "TagQueue"):
            sqs.meta.events.unregister(f"before-call.sqs.{operation}", refuse)
    # THEN the drain ran from a fresh limit (the floor), the write was dropped, and the missing
    # grant was said once, not once per call
    assert (report["limit"], report["stopped_because"], saved) == (1, "queue_empty", False)
    assert "ListQueueTags" in calls and "TagQueue" in calls
    warnings = [r for r in caplog.records if "concurrency limit;" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
