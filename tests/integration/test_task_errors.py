"""The errors a task raises are API (DESIGN.md section 10): permanent -> DLQ with the reason;
transient with a delay -> hidden that long; anything else -> transient until the last allowed
receive, then dead-lettered with the exception's type and text. Real moto SQS and MariaDB."""

from __future__ import annotations

import time
import uuid
from typing import Literal

import pytest
from pydantic import BaseModel

from sluice import PermanentTaskError, Transaction, TransientTaskError, WorkItem, task
from sluice.backoff import VisibilityBackoff as Backoff
from sluice.db import Database
from tests.conftest import FifoQueues
from tests.integration.test_work import dead_letters, outcomes, receive_event, run, send

pytestmark = pytest.mark.integration

HIDDEN_LONG = Backoff(base_s=120, cap_s=600)


class Raise(BaseModel):
    error: Literal["permanent", "transient", "transient_now", "bug"]


@task("test.raise", Raise)
def raise_on_purpose(tx: Transaction, payload: Raise, item: WorkItem) -> None:
    tx.execute("SELECT 1")
    if payload.error == "permanent":
        raise PermanentTaskError("vendor refused: recipient blocked")
    if payload.error == "transient":
        raise TransientTaskError("vendor busy", retry_after_s=1)
    if payload.error == "transient_now":
        raise TransientTaskError("vendor busy", retry_after_s=0)
    raise KeyError("no such template")


def visible_again(queues: FifoQueues, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if queues.sqs.receive_message(QueueUrl=queues.url, MaxNumberOfMessages=1).get("Messages"):
            return True
    return False


def test_a_permanent_error_dead_letters_with_the_tasks_reason(fifo_queues: FifoQueues, db: Database) -> None:
    # GIVEN an item whose task raises PermanentTaskError
    send(fifo_queues, f"E-{uuid.uuid4().hex[:8]}", {"error": "permanent"}, task="test.raise")
    # WHEN a worker applies it
    result = run(receive_event(fifo_queues, 1), fifo_queues, db)
    # THEN it is in the DLQ at once, with the task's words as the reason
    assert outcomes(result) == ["dead_lettered"]
    attributes = dead_letters(fifo_queues, 1)[0]["MessageAttributes"]
    assert attributes["sluice_error"]["StringValue"] == "vendor refused: recipient blocked"
    assert attributes["sluice_error_type"]["StringValue"] == "business"


def test_a_transient_error_with_a_delay_hides_the_message_that_long(fifo_queues: FifoQueues,
                                                                    db: Database) -> None:
    # GIVEN an item whose task says "not now, retry after 0 s" (the worker's own backoff: 120 s)
    send(fifo_queues, f"E-{uuid.uuid4().hex[:8]}", {"error": "transient_now"}, task="test.raise")
    # WHEN a worker applies it
    result = run(receive_event(fifo_queues, 1), fifo_queues, db, backoff=HIDDEN_LONG)
    # THEN it is retried, and the task's delay (not the backoff's 120 s) set its visibility
    assert outcomes(result) == ["retry"]
    assert result["batchItemFailures"] == [{"itemIdentifier": result["results"][0]["messageId"]}]
    assert visible_again(fifo_queues, within_s=5)


def test_a_transient_delay_keeps_it_hidden_until_then(fifo_queues: FifoQueues, db: Database) -> None:
    # GIVEN an item whose task says "retry after 1 s"
    send(fifo_queues, f"E-{uuid.uuid4().hex[:8]}", {"error": "transient"}, task="test.raise")
    run(receive_event(fifo_queues, 1), fifo_queues, db, backoff=HIDDEN_LONG)
    # THEN it is hidden now and visible again once the delay is over (long before 120 s)
    assert not fifo_queues.sqs.receive_message(QueueUrl=fifo_queues.url, MaxNumberOfMessages=1).get("Messages")
    assert visible_again(fifo_queues, within_s=10)


def test_any_other_exception_retries_then_dead_letters_with_its_type_and_text(fifo_queues: FifoQueues,
                                                                            db: Database) -> None:
    # GIVEN an item whose task fails with an exception sluice does not know (a bug)
    send(fifo_queues, f"E-{uuid.uuid4().hex[:8]}", {"error": "bug"}, task="test.raise")
    # WHEN it is received up to the last allowed time (3), handed back after each failure
    seen: list[str] = []
    for _ in range(3):
        result = run(receive_event(fifo_queues, 1), fifo_queues, db, backoff=Backoff(base_s=0, cap_s=0))
        seen += outcomes(result)
    # THEN transient until the last receive, then in the DLQ with the exception's type and text
    assert seen == ["retry", "retry", "dead_lettered"]
    attributes = dead_letters(fifo_queues, 1)[0]["MessageAttributes"]
    assert attributes["sluice_error_type"]["StringValue"] == "retries_exhausted"
    assert "KeyError: 'no such template'" in attributes["sluice_error"]["StringValue"]
