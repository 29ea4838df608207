"""`sluice status` and `sluice dlq` on a stage with workflow lanes, against moto's Step Functions
(which executes the machines) and moto's SQS.

The stage is config/local.yml with four lanes, written into a config folder of the test's own
(SLUICE_CONFIG_DIR): a worker lane ``books`` and three workflow lanes whose state machines this
module makes under the names their config gives them (``hold``: a Wait that runs for minutes,
``refuse``: a Fail state; ``absent``: never made, as before a deploy). The CLI finds every lane's
queues through a local.env pointing at the moto server (SLUICE_LOCAL_ENV_FILE), and each lane's
machine by the ARN it builds from the lane's state machine name and the local account, as
`sluice local up` names them.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from typer.testing import CliRunner

from sluice import aws
from sluice.aws import Queue
from sluice.settings import CONFIG_DIR_ENV, PROJECT_ROOT, Settings, load_settings
from sluice.sfn import StateMachine
from sluice_tools.cli import app
from sluice_tools.local.env import EXPORTED_ENV_KEYS, queue_env_keys
from sluice_tools.local.resources import create_flows
from sluice_tools.local.scheduler import ACCOUNT_ID
from sluice_tools.ops import dlq as dead_letters
from sluice_tools.ops.status import Bounded, collect_flow_status
from sluice_tools.stage import LOCAL_ENV_FILE_VAR, resolve_stage, state_machine_arn
from tests.conftest import FifoQueues, make_fifo_queues
from tests.functional import test_flows
from tests.functional.test_flows import FAIL, ROLE, WAIT, drain, names, send, stop_all
from tests.helpers import eventually

pytestmark = pytest.mark.functional

FLOW = {"definition": "worker/flows/invoice.asl.json", "topics": ["Notify"]}
# moto's Step Functions, executing the machines it is given: test_flows' fixture, used here too.
sfn = test_flows.sfn


@dataclass
class FlowStage:
    """The four-lane stage: its queues by lane, its machines by lane (none for ``absent``)."""

    queues: dict[str, FifoQueues]
    machines: dict[str, StateMachine]
    logs: Path  # where `sluice status` reads each consumer's log, as the local stack writes them
    consumers: dict[str, str]  # consumer function name by lane

    def queue(self, lane: str) -> Queue:
        return Queue(self.queues[lane].url)

    def dlq(self, lane: str) -> Queue:
        return Queue(self.queues[lane].dlq_url)


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = yaml.safe_load((PROJECT_ROOT / "config" / "local.yml").read_text())
    run = uuid.uuid4().hex[:8]
    raw["queue"]["name"] = f"flows-{run}"
    raw["lanes"] = {
        "books": {"tasks": ["notify.send"]},
        "hold": {"tasks": ["invoice.record"], "flow": {**FLOW, "name": f"hold-{run}"},
                 "drain": {"max_parallel": 3}, "worker": {"reserved_concurrency": 3}},
        "refuse": {"tasks": ["invoice.record"], "flow": {**FLOW, "name": f"refuse-{run}"}},
        "absent": {"tasks": ["invoice.record"], "flow": {**FLOW, "name": f"absent-{run}"}},
    }
    folder = tmp_path_factory.mktemp("flows-config")
    (folder / "local.yml").write_text(yaml.safe_dump(raw))
    return folder


@pytest.fixture(scope="module")
def stage(sfn: Any, moto_aws: str, config_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FlowStage:
    settings = load_settings("local", config_dir)
    lanes = {lane.name: lane for lane in settings.resolved_lanes()}
    queues = {name: make_fifo_queues(moto_aws) for name in lanes}
    machines = {}
    for name, definition in (("hold", WAIT), ("refuse", FAIL)):
        arn = sfn.create_state_machine(name=settings.state_machine_name(lanes[name]),
                                       definition=json.dumps(definition), roleArn=ROLE)["stateMachineArn"]
        machines[name] = StateMachine(arn, sfn)
    folder = tmp_path_factory.mktemp("flows-local")
    lines = [f"AWS_ENDPOINT_URL={moto_aws}"]
    for name, lane in lanes.items():
        queue_key, dlq_key = queue_env_keys(lane)
        lines += [f"{queue_key}={queues[name].url}", f"{dlq_key}={queues[name].dlq_url}"]
    (folder / "local.env").write_text("\n".join(lines) + "\n")
    (folder / "logs").mkdir()
    consumers = {name: settings.function_name(lane.function_key("consumer")) for name, lane in lanes.items()}
    return FlowStage(queues, machines, folder / "logs", consumers)


@pytest.fixture
def cli(stage: FlowStage, config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """Run `sluice <args> --stage local [--json]`; the environment is restored after."""
    # The CLI points this process's AWS environment at local.env's stack: put back as it was after.
    for key in EXPORTED_ENV_KEYS:
        if key in os.environ:
            monkeypatch.setenv(key, os.environ[key])
        else:
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv(LOCAL_ENV_FILE_VAR, str(stage.logs.parent / "local.env"))
    monkeypatch.setenv(CONFIG_DIR_ENV, str(config_dir))

    def run(*args: str, code: int = 0, as_json: bool = True, columns: int = 80) -> Any:
        # (rich reads COLUMNS: a table wider than 80 columns keeps each cell on one line to assert on)
        result = CliRunner().invoke(app, [*args, "--stage", "local", *(["--json"] if as_json else [])],
                                    env={"COLUMNS": str(columns)})
        assert result.exit_code == code, result.output
        return json.loads(result.stdout) if code == 0 and as_json else result.output

    yield run
    aws.reset_clients()


def by_lane(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["lane"]: row for row in status["lanes"]}


def test_a_workflow_lanes_arn_is_the_one_the_local_stack_makes(sfn: Any, moto_aws: str) -> None:
    # GIVEN a workflow lane whose machine the local stack's own code makes on moto, and a worker lane
    flow = {**FLOW, "name": f"m-{uuid.uuid4().hex}"}
    settings = Settings(stage="local", queue={"name": "q"}, database={"url": "mysql://u@h/db"},
                        tasks=[{"module": "worker.tasks.invoices"}],
                        lanes={"made": {"tasks": ["invoice.record"], "flow": flow}, "plain": {"tasks": ["x.y"]}})
    sns = boto3.client("sns", endpoint_url=moto_aws, region_name=settings.region)
    made = create_flows(sfn, sns, settings, lambda lane: f"arn:aws:lambda:{settings.region}:{ACCOUNT_ID}:function:s")
    # WHEN stage resolution builds each lane's ARN from its machine's name and the local account
    # THEN the workflow lane's is that machine's; the worker lane has none
    assert state_machine_arn(settings, settings.lane("made"), ACCOUNT_ID) == made["made"].machine_arn
    assert state_machine_arn(settings, settings.lane("plain"), ACCOUNT_ID) is None


def test_on_aws_a_workflow_lanes_arn_is_in_the_callers_account(moto_aws: str, config_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a deployed stage (its queues exist by name; moto stands in for AWS and its STS)
    raw = yaml.safe_load((config_dir / "local.yml").read_text())
    (config_dir / "deployed.yml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv(CONFIG_DIR_ENV, str(config_dir))
    settings = load_settings("deployed")
    sqs = boto3.client("sqs", endpoint_url=moto_aws, region_name=settings.region)
    for lane in settings.resolved_lanes():
        for name in (lane.queue.fifo_name, lane.queue.dlq_fifo_name):
            sqs.create_queue(QueueName=name, Attributes={"FifoQueue": "true"})
    # WHEN the CLI resolves it
    ctx = resolve_stage("deployed")
    # THEN each workflow lane's machine ARN is built in the caller's account, its target the step function
    hold = ctx.lane("hold")
    account = boto3.client("sts", endpoint_url=moto_aws, region_name=settings.region).get_caller_identity()["Account"]
    assert hold.machine_arn == (f"arn:aws:states:{settings.region}:{account}:stateMachine:"
                                f"{settings.state_machine_name(settings.lane('hold'))}")
    assert hold.target == "sluice-deployed-step-hold" and ctx.lane("books").target == "sluice-deployed-worker-books"
    assert ctx.lane("books").machine_arn is None


def test_status_counts_running_executions_against_the_cap(stage: FlowStage, sfn: Any,
                                                          cli: Callable[..., Any]) -> None:
    # GIVEN two items of the `hold` lane drained into executions that wait for minutes, one left queued
    queue, flow = stage.queue("hold"), stage.machines["hold"]
    for _ in range(3):
        send(queue, f"H-{uuid.uuid4().hex[:8]}")
    try:
        assert drain(queue, stage.dlq("hold"), flow, cap=2).started == 2
        # WHEN `sluice status --lane hold --json` looks
        status = cli("status", "--lane", "hold")
        [row] = status["lanes"]
        # THEN it counts the two running executions beside the lane's cap (drain.max_parallel: 3),
        # with the one item still in the queue and none failed
        executions = row["executions"]
        assert executions["running"] == {"count": 2, "more": False} and executions["cap"] == 3
        assert executions["failed"]["count"] == 0 and executions["failed"]["window_s"] == 3600
        assert executions["error"] is None and executions["state_machine"] == flow.arn
        assert row["queue"]["visible"] == 1 and row["dlq"]["visible"] == 0
        # AND the detail on screen says the same
        text = cli("status", "--lane", "hold", as_json=False)
        assert "executions running / cap" in text and "2 / 3" in text
    finally:
        stop_all(sfn, flow)
        queue.purge()  # the item left queued: the lane starts empty for the next test


def test_status_counts_failed_executions_and_reads_the_workflow_drains(
        stage: FlowStage, cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from sluice.observability import logger

    # GIVEN two items of the `refuse` lane, drained by its consumer, whose log the local stack keeps
    queue, flow = stage.queue("refuse"), stage.machines["refuse"]
    before = len(names(flow, "FAILED"))
    for _ in range(2):
        send(queue, f"R-{uuid.uuid4().hex[:8]}")
    with (stage.logs / f"{stage.consumers['refuse']}.log").open("a") as log:
        monkeypatch.setattr(logger.registered_handler, "stream", log)
        assert drain(queue, stage.dlq("refuse"), flow).started == 2
    eventually(lambda: len(names(flow, "FAILED")) == before + 2, 20, "both executions to fail")
    # WHEN `sluice status --json` looks at every lane
    lanes = by_lane(cli("status"))
    # THEN the workflow lane counts its failures of the last hour, by how they ended
    failed = lanes["refuse"]["executions"]["failed"]
    assert failed["count"] == before + 2 and failed["by_status"]["FAILED"]["count"] == before + 2
    assert failed["by_status"]["TIMED_OUT"]["count"] == failed["by_status"]["ABORTED"]["count"] == 0
    # AND its last drain is the workflow drain's report, field for field
    last = lanes["refuse"]["last_drains"][-1]
    assert (last["started"], last["deleted"], last["already_started"], last["cap"]) == (2, 2, 0, 10)
    assert {"peak_running", "released"} <= set(last) and "received" not in last
    # AND a worker lane's row has no executions part: it reads as it always did
    assert "executions" not in lanes["books"]
    assert set(lanes["books"]) == {"lane", "max_rate", "stage", "queue", "dlq", "oldest_age_s",
                                   "dlq_oldest_age_s", "workers", "last_drains", "notes"}
    # AND the lane's detail shows the workflow drains table
    text = cli("status", "--lane", "refuse", as_json=False)
    assert "last drains (workflow)" in text and "executions failed (last 1 h)" in text


def test_a_lane_whose_machine_is_missing_is_one_line_not_a_traceback(cli: Callable[..., Any]) -> None:
    # GIVEN the `absent` lane, whose state machine was never made (not deployed yet)
    # WHEN status reads every lane, as a table and as JSON
    text = cli("status", as_json=False)
    lanes = by_lane(cli("status"))
    # THEN the lane's executions say why they are unknown, in one line; the other lanes are read
    error = lanes["absent"]["executions"]["error"]
    assert error.startswith("state machine absent-") and "does not exist" in error and "\n" not in error
    assert lanes["absent"]["executions"]["running"] is None
    assert lanes["hold"]["executions"]["error"] is None
    assert "Traceback" not in text
    assert [line for line in text.splitlines() if "lane absent:" in line and "does not exist" in line]
    assert "busy / cap" in text and "failed 1h" in text and "0 / 3 runs" in text


def test_counts_stop_at_their_bound_and_failures_outside_the_window_are_not_counted(
        stage: FlowStage, sfn: Any) -> None:
    # GIVEN three running executions of `hold` and the failed ones of `refuse` (earlier tests')
    queue, flow = stage.queue("hold"), stage.machines["hold"]
    for _ in range(3):
        send(queue, f"B-{uuid.uuid4().hex[:8]}")
    refuse = stage.machines["refuse"]
    send(stage.queue("refuse"), f"B-{uuid.uuid4().hex[:8]}")
    drain(stage.queue("refuse"), stage.dlq("refuse"), refuse)
    try:
        assert drain(queue, stage.dlq("hold"), flow).started == 3
        eventually(lambda: names(refuse, "FAILED"), 20, "a failed execution")
        # WHEN they are counted with a bound of 2
        running = collect_flow_status(flow.arn, 3, max_run_s=900, bound=2)
        failed = collect_flow_status(refuse.arn, 4, max_run_s=900, bound=1)
        # THEN each count stops there and says so ("2+")
        assert running.running == Bounded(2, more=True) and str(running.running) == "2+"
        assert failed.failed["FAILED"] == Bounded(1, more=True)
        # AND WHEN the window of the last hour starts after they failed (two hours from now)
        later = collect_flow_status(refuse.arn, 4, max_run_s=900, now=datetime.now(UTC) + timedelta(hours=2))
        # THEN none of them is counted: they did not close within it
        assert later.failed_total == Bounded(0)
    finally:
        stop_all(sfn, flow)


@pytest.mark.parametrize("command", [["status"], ["dlq", "list"], ["dlq", "redrive", "--all"], ["drain"]])
def test_a_lane_the_config_does_not_hold_is_one_line_and_exit_2(cli: Callable[..., Any], command: list[str]) -> None:
    # WHEN a command names a lane the stage does not have
    output = cli(*command, "--lane", "nope", code=2, as_json=False)
    # THEN it says so in one line naming the lanes there are, no traceback
    assert "Traceback" not in output
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "nope" in lines[0] and "refuse" in lines[0], output


def test_dlq_list_shows_the_failed_state_and_a_redrive_starts_a_fresh_execution(
        stage: FlowStage, sfn: Any, cli: Callable[..., Any]) -> None:
    from sluice.flows import dead_letter_failures

    # GIVEN a `refuse` item whose execution failed, dead-lettered by the consumer's failure scan
    # (with the lane's other failures of the last minutes, which the scan finds too)
    queue, dlq, flow = stage.queue("refuse"), stage.dlq("refuse"), stage.machines["refuse"]
    envelope = send(queue, f"D-{uuid.uuid4().hex[:8]}")
    assert drain(queue, dlq, flow).started == 1
    eventually(lambda: envelope.dedup_id in names(flow, "FAILED"), 20, "the execution to fail")
    dead_letter_failures(flow, dlq)
    # WHEN `sluice dlq list --lane refuse` shows it
    listing = cli("dlq", "list", "--lane", "refuse")
    [letter] = [x for x in listing["messages"] if x["key"] == envelope.key]
    # THEN it names the state the execution failed in, its ARN and how it ended
    assert letter["failed_state"] == "Refuse" and letter["execution_status"] == "FAILED"
    assert letter["execution_arn"].endswith(f":{envelope.dedup_id}")
    assert letter["reason"] == "state Refuse: sluice.PermanentTaskError: the ledger refused it"
    # AND the table shows the state in a column of its own, the reason after it
    text = cli("dlq", "list", "--lane", "refuse", as_json=False, columns=200)
    assert "state" in text and "Refuse (FAILED)" in text and "the ledger refused it" in text
    assert "state Refuse:" not in text
    # AND WHEN it is redriven and the lane drains
    held = dead_letters.depth(dlq)
    redriven = cli("dlq", "redrive", "--lane", "refuse", "--key", envelope.key)
    assert redriven["count"] == 1 and dead_letters.depth(dlq) == held - 1
    [message] = queue.receive(max_messages=1, wait_s=0)
    queue.release([message.receipt_handle])
    # (the redriven message carries none of the failed execution's marks)
    assert not {"sluice_execution_arn", "sluice_failed_state", "sluice_error"} & set(message.message_attributes)
    assert drain(queue, dlq, flow).started == 1
    # THEN a fresh execution ran for it, named after the redrive's dedup id, not the first run's name
    fresh = message.attributes["MessageDeduplicationId"]
    assert fresh != envelope.dedup_id
    eventually(lambda: fresh in names(flow, "FAILED"), 20, "the redriven item's own execution")
