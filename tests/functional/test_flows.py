"""A workflow lane's drain (sluice.flows) on moto's Step Functions, which executes the state
machines, and moto's SQS: one execution per message, named after its dedup id, then deleted;
the cap on running executions; group order; failed executions into the DLQ, once, readable
by `sluice dlq list`, and a redrive starting a fresh execution."""

from __future__ import annotations

import json
import urllib.request
import uuid
from typing import Any

import boto3
import pytest

from sluice.aws import OutgoingMessage, Queue
from sluice.envelope import Envelope, group_id
from sluice.flowitem import FlowItem
from sluice.flows import dead_letter_failures, start_executions
from sluice.sfn import StateMachine
from sluice_tools.ops import dlq as dead_letters
from tests.conftest import REGION, FifoQueues
from tests.helpers import SteppedClock, eventually

pytestmark = pytest.mark.functional

ROLE = "arn:aws:iam::123456789012:role/sluice-flow"
PASS = {"StartAt": "Go", "States": {"Go": {"Type": "Pass", "End": True}}}
WAIT = {"StartAt": "Hold", "States": {"Hold": {"Type": "Wait", "Seconds": 120, "End": True}}}
FAIL = {"StartAt": "Check", "States": {
    "Check": {"Type": "Pass", "Next": "Refuse"},
    "Refuse": {"Type": "Fail", "Error": "sluice.PermanentTaskError", "Cause": "the ledger refused it"}}}


@pytest.fixture(scope="module")
def sfn(moto_aws: str) -> Any:
    """moto's Step Functions, running what it is given (FACTS.md)."""
    request = urllib.request.Request(f"{moto_aws}/moto-api/config", method="POST",
                                     data=json.dumps({"stepfunctions": {"execute_state_machine": True}}).encode())
    urllib.request.urlopen(request).close()  # noqa: S310 (the local moto server)
    return boto3.client("stepfunctions", endpoint_url=moto_aws, region_name=REGION)


def machine(sfn: Any, definition: dict[str, Any]) -> StateMachine:
    arn = sfn.create_state_machine(name=f"m{uuid.uuid4().hex[:10]}", definition=json.dumps(definition),
                                   roleArn=ROLE)["stateMachineArn"]
    return StateMachine(arn, sfn)


@pytest.fixture
def queues(fifo_queues: FifoQueues) -> tuple[Queue, Queue]:
    return Queue(fifo_queues.url), Queue(fifo_queues.dlq_url)


def send(queue: Queue, key: str, group: str | None = None) -> Envelope:
    envelope = Envelope.new("invoice.record", key, {"customer": "acme", "amount_cents": 100, "currency": "EUR"})
    queue.send(OutgoingMessage(id="0", body=envelope.to_body(), dedup_id=envelope.dedup_id,
                               group_id=group_id(envelope.task, key, group, 4)))
    return envelope


def drain(queue: Queue, dlq: Queue, flow: StateMachine, cap: int = 10, **kw: Any) -> Any:
    clock = SteppedClock()  # the budget shrinks only as the drain sleeps: no real waiting
    return start_executions(queue, dlq, flow, cap=cap, remaining_ms=lambda: 20_000 - clock.now * 1000,
                            reserve_ms=1000, wait_s=0, clock=clock, sleep=clock.sleep, **kw)


def names(flow: StateMachine, status: str) -> list[str]:
    return [e.name for e in flow.executions(status)]


def stop_all(sfn: Any, flow: StateMachine) -> None:
    for e in flow.executions("RUNNING"):
        sfn.stop_execution(executionArn=e.arn)


def test_each_message_starts_one_execution_named_after_its_dedup_id(sfn: Any, queues: tuple[Queue, Queue]) -> None:
    # GIVEN three items in a workflow lane's queue
    queue, dlq = queues
    flow = machine(sfn, PASS)
    sent = [send(queue, f"F-{uuid.uuid4().hex[:8]}") for _ in range(3)]
    # WHEN the lane drains
    report = drain(queue, dlq, flow)
    # THEN each started one execution named after its dedup id, with the item as input, and was deleted
    assert (report.started, report.deleted, report.already_started) == (3, 3, 0)
    assert dead_letters.depth(queue) == 0
    eventually(lambda: len(names(flow, "SUCCEEDED")) == 3, 20, "three successes")
    assert sorted(names(flow, "SUCCEEDED")) == sorted(e.dedup_id for e in sent)
    run = next(e for e in flow.executions("SUCCEEDED") if e.name == sent[0].dedup_id)
    item = FlowItem.from_input(json.loads(flow.execution_input(run.arn)))
    assert (item.task, item.key, item.dedup_id) == ("invoice.record", sent[0].key, sent[0].dedup_id)


def test_a_redelivered_message_finds_its_execution_and_is_only_deleted(sfn: Any,
                                                                      queues: tuple[Queue, Queue]) -> None:
    queue, dlq = queues
    flow = machine(sfn, WAIT)
    closed = machine(sfn, PASS)
    # GIVEN a message whose execution was started before the consumer died (it is still running) ...
    envelope = send(queue, f"F-{uuid.uuid4().hex[:8]}")
    [message] = queue.receive(max_messages=1, wait_s=0)
    flow.start(envelope.dedup_id, FlowItem.of(envelope, group=message.group_id,
                                              message_id=message.message_id).execution_input())
    queue.release([message.receipt_handle])
    # WHEN it is drained again
    report = drain(queue, dlq, flow)
    # THEN no second execution started and the message is gone
    assert report.deleted == 1 and dead_letters.depth(queue) == 0
    assert names(flow, "RUNNING") == [envelope.dedup_id]
    stop_all(sfn, flow)
    # AND GIVEN a message whose execution has closed (a name is refused for 90 days after) ...
    again = send(queue, f"F-{uuid.uuid4().hex[:8]}")
    closed.start(again.dedup_id, {"item": {}})
    eventually(lambda: names(closed, "SUCCEEDED"), 20, "the first run to close")
    # WHEN it is drained / THEN it counts as already started and is deleted, nothing started again
    report = drain(queue, dlq, closed)
    assert (report.started, report.already_started, report.deleted) == (0, 1, 1)
    assert len(list(closed.executions("SUCCEEDED"))) == 1 and dead_letters.depth(queue) == 0


@pytest.mark.parametrize("consumers", [1, 2])
def test_never_more_running_than_the_cap(sfn: Any, queues: tuple[Queue, Queue], consumers: int) -> None:
    # GIVEN executions that run for minutes, a cap of 3 and six items
    queue, dlq = queues
    flow = machine(sfn, WAIT)
    for _ in range(6):
        send(queue, f"F-{uuid.uuid4().hex[:8]}")
    try:
        # WHEN the lane drains (as one consumer of `consumers`)
        report = drain(queue, dlq, flow, cap=3, consumers=consumers, poll_s=1.0)
        # THEN it started up to the cap, counted again before going past its share, and waited
        # until its budget ended with the rest released (still in the queue, none lost)
        assert report.started == 3 and report.peak_running == 3
        assert len(names(flow, "RUNNING")) == 3
        assert report.counts >= (2 if consumers == 2 else 1) + 1
        assert report.released == 3 and dead_letters.depth(queue) == 3
    finally:
        stop_all(sfn, flow)


def test_a_group_starts_in_its_order(sfn: Any, queues: tuple[Queue, Queue]) -> None:
    # GIVEN three items of one group
    queue, dlq = queues
    flow = machine(sfn, WAIT)
    keys = [f"G-{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    for key in keys:
        send(queue, key, group="customer-7")
    try:
        # WHEN the lane drains / THEN they started in the group's order (ListExecutions: newest first)
        assert drain(queue, dlq, flow).started == 3
        started = {e.name: e.started for e in flow.executions("RUNNING")}
        order = sorted(started, key=lambda n: started[n])
        assert order == [Envelope.new("invoice.record", k, {}).dedup_id for k in keys]
    finally:
        stop_all(sfn, flow)


def test_a_body_that_is_not_an_envelope_is_dead_lettered(sfn: Any, queues: tuple[Queue, Queue]) -> None:
    queue, dlq = queues
    queue.send(OutgoingMessage(id="0", body="not json", dedup_id=uuid.uuid4().hex, group_id="g"))
    report = drain(queue, dlq, machine(sfn, PASS))
    assert (report.dead_lettered, report.started) == (1, 0) and dead_letters.depth(queue) == 0
    [letter] = dead_letters.list_dead_letters(dlq).letters
    assert letter.error_type == "envelope" and "malformed message body" in letter.reason


def test_failed_executions_go_to_the_dlq_once_and_a_redrive_starts_afresh(
        sfn: Any, queues: tuple[Queue, Queue]) -> None:
    # GIVEN two items whose executions fail at a late state, and one aborted by an operator
    queue, dlq = queues
    flow = machine(sfn, FAIL)
    failing = [send(queue, f"X-{uuid.uuid4().hex[:8]}") for _ in range(2)]
    assert drain(queue, dlq, flow).started == 2
    eventually(lambda: len(names(flow, "FAILED")) == 2, 20, "both executions to fail")
    # WHEN the consumer scans for failures on two drains in a row
    first = dead_letter_failures(flow, dlq)
    second = dead_letter_failures(flow, dlq)
    # THEN each failed execution is in the DLQ once, with its item, failing state and cause
    assert first.dead_lettered == 2 and second.dead_lettered == 2  # sent twice, deduplicated by SQS
    listing = dead_letters.list_dead_letters(dlq)
    assert sorted(x.key for x in listing.letters) == sorted(e.key for e in failing) and listing.depth == 2
    letter = listing.letters[0]
    assert letter.task == "invoice.record" and letter.error_type == "sluice.PermanentTaskError"
    assert letter.reason == "state Refuse: sluice.PermanentTaskError: the ledger refused it"
    # AND WHEN one is redriven and the lane drains again
    report = dead_letters.redrive(dlq, queue, dead_letters.select(key=letter.key))
    assert len(report.redriven) == 1
    assert drain(queue, dlq, flow).started == 1
    # THEN a fresh execution ran for it, under a new name (the redrive's dedup id)
    eventually(lambda: len(names(flow, "FAILED")) == 3, 20, "the redriven execution to run")
    assert len(set(names(flow, "FAILED"))) == 3


def test_an_aborted_execution_is_dead_lettered_with_its_state(sfn: Any, queues: tuple[Queue, Queue]) -> None:
    queue, dlq = queues
    flow = machine(sfn, WAIT)
    envelope = send(queue, f"A-{uuid.uuid4().hex[:8]}")
    drain(queue, dlq, flow)
    [running] = list(flow.executions("RUNNING"))
    sfn.stop_execution(executionArn=running.arn, error="ops.Cancelled", cause="stopped by an operator")
    eventually(lambda: names(flow, "ABORTED"), 20, "the abort")
    assert dead_letter_failures(flow, dlq).dead_lettered == 1
    [letter] = dead_letters.list_dead_letters(dlq).letters
    # (moto's history drops StopExecution's error and cause; AWS keeps them and they join the reason)
    assert letter.key == envelope.key and letter.reason.startswith("state Hold: ")
    assert letter.error_type in ("ops.Cancelled", "ExecutionAborted")


def test_the_consumer_of_a_workflow_lane_starts_executions_and_dead_letters_failures(
        sfn: Any, fifo_queues: FifoQueues, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fixtures.events import scheduled_event
    from tests.helpers import lambda_context

    # GIVEN a workflow lane's consumer (SLUICE_FLOW_ARN set, as the deploy and the local stack do)
    # whose machine fails every item, and two items in its queue
    flow = machine(sfn, FAIL)
    queue, dlq = Queue(fifo_queues.url), Queue(fifo_queues.dlq_url)
    for name, value in {"SLUICE_QUEUE_URL": fifo_queues.url, "SLUICE_DLQ_URL": fifo_queues.dlq_url,
                        "SLUICE_QUEUE_ARN": fifo_queues.arn, "SLUICE_FLOW_ARN": flow.arn,
                        "SLUICE_FLOW_MAX_RUN_S": "60", "SLUICE_DRAIN_WAIT_S": "0",
                        "SLUICE_DRAIN_SAFETY_MARGIN_MS": "1000", "SLUICE_WORKER_TIMEOUT_S": "2"}.items():
        monkeypatch.setenv(name, value)
    import consumer.handler as consumer

    consumer.reset()
    sent = [send(queue, f"C-{uuid.uuid4().hex[:8]}") for _ in range(2)]
    try:
        # WHEN it drains
        report = consumer.lambda_handler(scheduled_event(), lambda_context("sluice-test-consumer", 5))
        # THEN each message started one execution and was deleted; no worker was invoked
        assert (report["flow"]["started"], report["flow"]["deleted"]) == (2, 2)
        assert "received" not in report and dead_letters.depth(queue) == 0
        eventually(lambda: len(names(flow, "FAILED")) == 2, 20, "both executions to fail")
        # AND WHEN the next drain runs / THEN the failures are in the DLQ with their state and cause
        report = consumer.lambda_handler(scheduled_event(), lambda_context("sluice-test-consumer", 5))
        assert report["failures"]["dead_lettered"] == 2
        letters = dead_letters.list_dead_letters(dlq).letters
        assert sorted(letter.key for letter in letters) == sorted(e.key for e in sent)
        assert all(letter.reason.startswith("state Refuse: sluice.PermanentTaskError") for letter in letters)
    finally:
        consumer.reset()
