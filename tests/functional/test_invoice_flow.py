"""The seed's invoice flow (worker/flows/invoice.asl.json) run locally end to end: moto's Step
Functions executes it, its Lambda tasks reach sluice's Lambda service through the gateway
(sluice_tools/local/sfn_gateway.py) and run the step handler (worker/step.py) on MariaDB, the
accounting step calls the stand-in vendor API, the notification goes to SNS on moto, and a
failing invoice ends in the DLQ with its failing state and cause."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from sluice.asl import load_definition, substitute
from sluice.aws import OutgoingMessage, Queue
from sluice.db import Database
from sluice.envelope import Envelope
from sluice.flows import dead_letter_failures, start_executions
from sluice.settings import PROJECT_ROOT
from sluice.sfn import StateMachine
from sluice_tools.local.lambda_service import FunctionDefinition, LambdaService
from sluice_tools.local.sfn_gateway import SfnGateway
from sluice_tools.local.vendor_api import VendorApi, VendorSettings
from sluice_tools.ops import dlq as dead_letters
from tests.conftest import REGION, FifoQueues
from tests.functional.test_flows import ROLE, names, sfn  # noqa: F401  (the sfn fixture)
from tests.helpers import eventually, vendor_token
from worker.tasks import accounting, invoices

pytestmark = pytest.mark.functional

ACCOUNT = "123456789012"
STEP = "sluice-test-step"


@pytest.fixture(scope="module")
def token(moto_aws: str) -> str:
    return vendor_token(moto_aws)


@pytest.fixture(scope="module")
def vendor(token: str) -> Iterator[VendorApi]:
    with VendorApi({"accounting": VendorSettings(token=token, rate_per_s=1000, burst=1000)}) as api:
        yield api


@pytest.fixture(scope="module")
def local_flow(moto_aws: str, database_url: str, vendor: VendorApi, sfn: Any,  # noqa: F811
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LambdaService, SfnGateway]]:
    """The step function in sluice's Lambda service, and moto calling back through the gateway."""
    step = FunctionDefinition(name=STEP, handler="worker.step.lambda_handler", timeout_s=20, cwd=str(PROJECT_ROOT),
                              python=sys.executable,
                              environment={"DATABASE_URL": database_url, "SLUICE_VENDOR_URL": vendor.url})
    with LambdaService([step], log_dir=tmp_path_factory.mktemp("flow-logs")) as service, \
            SfnGateway(moto_aws, service.url) as gateway, pytest.MonkeyPatch.context() as patch:
        # moto's interpreter reads MOTO_PORT when a task calls AWS: it now calls the gateway.
        patch.setenv("MOTO_PORT", str(gateway.bound_port))
        yield service, gateway


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(url=database_url)
    yield database
    database.close()


def invoice_machine(sfn: Any, moto_aws: str) -> tuple[StateMachine, Queue]:  # noqa: F811
    """The invoice flow, deployed as the stack would (placeholders substituted), and a queue
    subscribed to its notification topic."""
    sns = boto3.client("sns", endpoint_url=moto_aws, region_name=REGION)
    sqs = boto3.client("sqs", endpoint_url=moto_aws, region_name=REGION)
    topic = sns.create_topic(Name=f"invoices-{uuid.uuid4().hex[:8]}")["TopicArn"]
    inbox = sqs.create_queue(QueueName=f"inbox-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=inbox_arn)
    definition = substitute(load_definition(PROJECT_ROOT / "worker/flows/invoice.asl.json"), {
        "StepFunctionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{STEP}", "NotifyTopicArn": topic})
    arn = sfn.create_state_machine(name=f"invoices-{uuid.uuid4().hex[:8]}", definition=json.dumps(definition),
                                   roleArn=ROLE)["stateMachineArn"]
    return StateMachine(arn, sfn), Queue(inbox, sqs=sqs)


def send(queue: Queue, key: str, customer: str, amount_cents: int) -> Envelope:
    envelope = Envelope.new("invoice.record", key,
                            {"customer": customer, "amount_cents": amount_cents, "currency": "EUR"})
    queue.send(OutgoingMessage(id="0", body=envelope.to_body(), dedup_id=envelope.dedup_id, group_id=key))
    return envelope


def test_a_state_machine_lambda_task_runs_the_step_in_a_function_process(
        local_flow: tuple[LambdaService, SfnGateway], sfn: Any, db: Database) -> None:  # noqa: F811
    service, gateway = local_flow
    # GIVEN a one-state machine whose Task is the step Lambda
    definition = {"StartAt": "Save", "States": {"Save": {
        "Type": "Task", "Resource": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{STEP}",
        "Parameters": {"task": "invoice.record", "item.$": "$.item"}, "End": True}}}
    arn = sfn.create_state_machine(name=f"one-{uuid.uuid4().hex[:8]}", definition=json.dumps(definition),
                                   roleArn=ROLE)["stateMachineArn"]
    key = f"GW-{uuid.uuid4().hex[:8]}"
    envelope = Envelope.new("invoice.record", key, {"customer": "acme", "amount_cents": 700, "currency": "EUR"})
    from sluice.flowitem import FlowItem

    item = FlowItem.of(envelope, group=key, message_id="m-1")
    before = gateway.forwarded["lambda"]
    # WHEN an execution runs
    execution = sfn.start_execution(stateMachineArn=arn, name=envelope.dedup_id,
                                    input=json.dumps(item.execution_input()))["executionArn"]
    result = eventually(lambda: (d := sfn.describe_execution(executionArn=execution))["status"] != "RUNNING" and d,
                        30, "the execution to close")
    # THEN it succeeded with the step's output, through the gateway, in a function process of the service
    assert result["status"] == "SUCCEEDED", result
    assert json.loads(result["output"]) == {"task": "invoice.record", "ledger_id": envelope.dedup_id}
    assert gateway.forwarded["lambda"] > before
    stats = service.stats()[STEP]
    assert stats.invocations >= 1 and stats.pids
    assert invoices.applications(db, key) == 1


def test_the_invoice_flow_end_to_end(local_flow: tuple[LambdaService, SfnGateway], sfn: Any,  # noqa: F811
                                     moto_aws: str, fifo_queues: FifoQueues, db: Database, vendor: VendorApi) -> None:
    flow, inbox = invoice_machine(sfn, moto_aws)
    queue, dlq = Queue(fifo_queues.url), Queue(fifo_queues.dlq_url)
    run = uuid.uuid4().hex[:6]
    # GIVEN a small invoice, a large one and one for a customer that does not exist
    small = send(queue, f"INV-{run}-small", "acme", 4_000)
    large = send(queue, f"INV-{run}-large", "globex", 250_000)
    failing = send(queue, f"INV-{run}-bad", "nobody", 9_000)
    before = vendor.vendor("accounting").counters().effects_applied  # type: ignore[union-attr]
    # WHEN the workflow lane drains and the executions run
    report = start_executions(queue, dlq, flow, cap=4, remaining_ms=lambda: 30_000, reserve_ms=1000, wait_s=0)
    assert report.started == 3
    eventually(lambda: len(names(flow, "SUCCEEDED")) == 2 and len(names(flow, "FAILED")) == 1, 60,
               "two executions to succeed and one to fail")
    failures = dead_letter_failures(flow, dlq)
    # THEN each invoice that could be saved was saved once, only the large one reached accounting
    # (one vendor effect), both were notified, and the failing one is in the DLQ with state and cause
    assert invoices.applications(db, small.key) == invoices.applications(db, large.key) == 1
    assert invoices.applications(db, failing.key) == 0
    assert accounting.posted(db, key_prefix=f"INV-{run}-") == 1
    assert accounting.posted(db, key_prefix=large.key) == 1
    assert vendor.vendor("accounting").counters().effects_applied == before + 1  # type: ignore[union-attr]
    notes = eventually(lambda: len(m := inbox.receive(max_messages=10, wait_s=1)) >= 2 and m, 20, "notifications")
    assert sorted(json.loads(m.body)["Message"] for m in notes) == sorted(
        f"invoice {e.key} recorded" for e in (small, large))
    assert failures.dead_lettered == 1
    [letter] = dead_letters.list_dead_letters(dlq).letters
    assert (letter.task, letter.key, letter.error_type) == ("invoice.record", failing.key, "sluice.PermanentTaskError")
    assert letter.reason == "state SaveInvoice: sluice.PermanentTaskError: business: unknown customer 'nobody'"


def test_a_transient_step_failure_is_retried_by_the_flow(local_flow: tuple[LambdaService, SfnGateway],
                                                        sfn: Any, moto_aws: str, db: Database,  # noqa: F811
                                                        vendor: VendorApi, token: str) -> None:
    flow, _ = invoice_machine(sfn, moto_aws)
    # GIVEN the accounting API down (503) when a large invoice reaches it
    vendor.put("accounting", VendorSettings(token=token, rate_per_s=1000, burst=1000, down=True))
    envelope = Envelope.new("invoice.record", f"INV-{uuid.uuid4().hex[:6]}-retry",
                            {"customer": "initech", "amount_cents": 500_000, "currency": "EUR"})
    from sluice.flowitem import FlowItem

    arn = flow.start(envelope.dedup_id, FlowItem.of(envelope, group="g", message_id="m").execution_input())
    try:
        # WHEN the step fails with the transient error (the definition's Retry matches its name) ...
        def transient_failure_seen() -> bool:
            events = sfn.get_execution_history(executionArn=arn)["events"]
            return any(e.get("lambdaFunctionFailedEventDetails", {}).get("error") == "sluice.TransientTaskError"
                       for e in events)

        eventually(transient_failure_seen, 30, "a transient failure of the accounting step")
    finally:
        # ... and the API comes back
        vendor.put("accounting", VendorSettings(token=token, rate_per_s=1000, burst=1000))
    # THEN a retry posts it, once, and the execution succeeds
    status = eventually(lambda: (s := sfn.describe_execution(executionArn=arn)["status"]) != "RUNNING" and s, 30,
                        "the execution to close")
    assert status == "SUCCEEDED"
    assert accounting.posted(db, key_prefix=envelope.key) == 1 and accounting.duplicates(db, envelope.key) == 0
