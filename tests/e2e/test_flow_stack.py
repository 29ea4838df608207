"""A workflow lane on the local stack, end to end: the stack makes the lane's topic and state
machine from worker/flows/invoice.asl.json, moto executes it, its Task states reach the lane's
``step-<lane>`` function in the stack's Lambda service through the Step Functions gateway, and
the lane's scheduled consumer starts one execution per item and dead-letters the failures.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from sluice.aws import Queue
from sluice.settings import PROJECT_ROOT, load_settings
from sluice.sfn import StateMachine
from sluice_tools.local.stack import LocalStack
from sluice_tools.ops import dlq as dead_letters
from tests.helpers import drop_machine_database, eventually, post
from tests.helpers import stack_sql as query

pytestmark = pytest.mark.e2e

LANE = "invoices-flow"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    raw = yaml.safe_load((PROJECT_ROOT / "config" / "local.yml").read_text())
    raw["queue"]["name"] = f"flow-{uuid.uuid4().hex[:8]}"
    raw["drain"].update(timeout_s=6, safety_margin_ms=1000)
    raw["worker"]["timeout_s"] = 4
    raw["lanes"] = {LANE: {"tasks": ["invoice.record"], "drain": {"max_parallel": 3},
                           "worker": {"reserved_concurrency": 3},
                           "flow": {"definition": "worker/flows/invoice.asl.json", "topics": ["Notify"]}}}
    folder: Path = tmp_path_factory.mktemp("flow-config")
    (folder / "local.yml").write_text(yaml.safe_dump(raw))
    settings = load_settings("local", folder)
    assert settings.problems(["invoice.record", "accounting.post"]) == []
    name = f"sluice_flow_{uuid.uuid4().hex[:10]}"
    stack = LocalStack(settings, database_url=f"mysql://root@127.0.0.1:3306/{name}", tick_s=1.0,
                       local_dir=tmp_path_factory.mktemp("flow-stack"))
    stack.start()
    yield stack
    stack.stop()
    drop_machine_database(name)


def client(stack: LocalStack, service: str, endpoint: str) -> Any:
    return boto3.client(service, endpoint_url=stack.env[endpoint], region_name=stack.region,
                        aws_access_key_id="x", aws_secret_access_key="x")


def machine(stack: LocalStack) -> StateMachine:
    return StateMachine(stack.flows[LANE].machine_arn, client(stack, "stepfunctions", "AWS_ENDPOINT_URL"))


def queue(stack: LocalStack, url: str) -> Queue:
    return Queue(url, sqs=client(stack, "sqs", "AWS_ENDPOINT_URL_SQS"))


def by_status(flow: StateMachine) -> dict[str, list[str]]:
    return {status: [e.name for e in flow.executions(status)] for status in ("RUNNING", "SUCCEEDED", "FAILED")}


def test_the_stack_makes_the_lanes_machine_and_its_step_function(stack: LocalStack) -> None:
    # THEN the lane has a state machine named as the deploy names it, a topic, and a step function
    assert stack.settings.lane(LANE).target_key == f"step-{LANE}"
    arn = stack.flows[LANE].machine_arn
    assert arn.endswith(f":stateMachine:{stack.settings.state_machine_name(stack.settings.lane(LANE))}")
    assert set(stack.flows[LANE].topics) == {"Notify"}
    assert stack.lambdas is not None
    assert stack.function_name(f"step-{LANE}") in stack.lambdas.stats()
    assert stack.function_name(f"worker-{LANE}") not in stack.lambdas.stats()


def test_posted_invoices_run_the_flow_once_each_and_a_failure_reaches_the_dlq(stack: LocalStack) -> None:
    run = uuid.uuid4().hex[:6]
    # GIVEN a small invoice, a large one (it also goes to accounting) and one for an unknown customer
    items = [
        {"task": "invoice.record", "key": f"F-{run}-small", "payload": {"customer": "acme", "amount_cents": 4_000,
                                                                      "currency": "EUR"}},
        {"task": "invoice.record", "key": f"F-{run}-large", "payload": {"customer": "globex",
                                                                      "amount_cents": 250_000, "currency": "EUR"}},
        {"task": "invoice.record", "key": f"F-{run}-bad", "payload": {"customer": "nobody", "amount_cents": 9_000,
                                                                    "currency": "EUR"}},
    ]
    assert stack.vendors is not None
    accounting = stack.vendors.vendor("accounting")
    assert accounting is not None
    before = accounting.counters().effects_applied
    # WHEN they are POSTed and the lane's schedule drains it
    status, body = post(stack, {"items": items})
    assert status == 202, body
    assert {row["lane"] for row in body["items"]} == {LANE}
    flow = machine(stack)
    done = eventually(lambda: (s := by_status(flow)) and len(s["SUCCEEDED"]) + len(s["FAILED"]) >= 3 and s,
                      90, "three executions to close")
    # THEN two succeeded and one failed, each execution named after its item's dedup id
    assert (len(done["SUCCEEDED"]), len(done["FAILED"])) == (2, 1), done
    # AND each saved invoice is saved once; only the large one reached accounting, once
    saved = query(stack, "SELECT item_key, apply_count FROM invoices WHERE item_key LIKE %s ORDER BY item_key",
                  f"F-{run}-%")
    assert saved == [(f"F-{run}-large", 1), (f"F-{run}-small", 1)]
    assert query(stack, "SELECT COUNT(*) FROM accounting_posts WHERE item_key LIKE %s", f"F-{run}-%")[0][0] == 1
    assert accounting.counters().effects_applied == before + 1
    # AND the failed one is in the lane's DLQ with its failing state and cause (a later drain sends it)
    dlq = queue(stack, stack.lane_queues[LANE].dlq_url)
    letters = eventually(lambda: [x for x in dead_letters.list_dead_letters(dlq).letters if run in x.key],
                         30, "the failed execution's item in the DLQ")
    assert [x.key for x in letters] == [f"F-{run}-bad"]
    assert letters[0].reason.startswith("state SaveInvoice: sluice.PermanentTaskError"), letters[0].reason
    assert letters[0].message_attributes.get("sluice_execution_arn")
    # AND the queue is empty: every message was deleted once its execution started
    assert dead_letters.depth(queue(stack, stack.lane_queues[LANE].url)) == 0
    assert stack.sfn_gateway is not None and stack.sfn_gateway.forwarded["lambda"] >= 3
    reports = [r for r in stack.status()["schedules"][LANE].get("recent_reports", []) if "flow" in r]
    assert reports and max(r["flow"]["peak_running"] for r in reports) <= 3
    assert json.dumps(reports)  # the reports are plain data (sluice status reads them)
