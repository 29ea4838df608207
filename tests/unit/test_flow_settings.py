"""A lane's `flow`: the definition file is checked (exists, ASL), its step tasks are known."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sluice.asl import DefinitionError, load_definition, step_tasks
from sluice.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.unit

INVOICE_FLOW = "worker/flows/invoice.asl.json"


def with_flow(flow: dict[str, Any]) -> Settings:
    return Settings(stage="t", queue={"name": "q"}, database={"url": "mysql://u@h/db"},
                    tasks=[{"module": "worker.tasks.invoices"}],
                    lanes={"flow": {"tasks": ["invoice.record"], "flow": flow}})


def test_a_config_without_flows_has_no_flow_lane() -> None:
    settings = Settings(stage="t", queue={"name": "q"}, database={"url": "mysql://u@h/db"},
                        tasks=[{"module": "worker.tasks.invoices"}])
    assert settings.resolved_lanes()[0].flow is None


def test_lane_flow_resolves_with_its_path() -> None:
    lane = with_flow({"definition": INVOICE_FLOW, "name": "invoices"}).lane("flow")
    assert lane.flow is not None and lane.flow.name == "invoices"
    assert lane.flow.path == PROJECT_ROOT / INVOICE_FLOW


def test_shipped_invoice_flow_is_safe_and_names_known_tasks() -> None:
    found = with_flow({"definition": INVOICE_FLOW, "topics": ["Notify"]}).problems(
        ["invoice.record", "accounting.post"])
    assert [p for p in found if ".flow" in p] == []


def test_a_placeholder_nothing_provides_is_named() -> None:
    # GIVEN the invoice flow, which publishes to ${NotifyTopicArn}, on a lane declaring no topic
    found = with_flow({"definition": INVOICE_FLOW}).problems(["invoice.record", "accounting.post"])
    # THEN config check names the placeholder and how to provide it
    assert any("${NotifyTopicArn}, which nothing provides" in p and "flow.topics" in p for p in found)


def test_flow_topics_name_their_placeholders_and_sns_topics() -> None:
    settings = with_flow({"definition": INVOICE_FLOW, "topics": ["Notify", "Billing"]})
    lane = settings.lane("flow")
    assert lane.flow is not None
    assert lane.flow.placeholders() == ("StepFunctionArn", "NotifyTopicArn", "BillingTopicArn")
    assert settings.topic_name(lane, "Notify") == "sluice-t-flow-notify"
    assert settings.state_machine_name(lane) == "sluice-t-flow"


@pytest.mark.parametrize("topics", [["notify"], ["Notify", "Notify"], ["No-tify"]])
def test_bad_topic_names_are_refused(topics: list[str]) -> None:
    with pytest.raises(ValueError, match="topic"):
        with_flow({"definition": INVOICE_FLOW, "topics": topics})


def test_a_flow_lane_runs_a_step_function_not_a_worker() -> None:
    from sluice_tools.functions import function_table

    settings = with_flow({"definition": INVOICE_FLOW, "topics": ["Notify"]})
    lane = settings.lane("flow")
    table = function_table(settings)
    assert lane.target_key == "step-flow" and "worker-flow" not in table
    assert table["step-flow"].handler == "worker/step.lambda_handler" and table["step-flow"].role == "step"
    # The failure scan looks back as far as the definition lets an execution run.
    env = settings.runtime_env(queue_url="", dlq_url="", worker_function="", lane=lane, flow_arn="arn:m")
    assert env["SLUICE_FLOW_ARN"] == "arn:m" and env["SLUICE_FLOW_MAX_RUN_S"] == "900"


def test_missing_definition_is_a_problem() -> None:
    found = with_flow({"definition": "worker/flows/nope.asl.json"}).problems()
    assert any("lanes.flow.flow:" in p and "does not exist" in p for p in found)


def test_unknown_step_task_is_named() -> None:
    found = with_flow({"definition": INVOICE_FLOW}).problems(["invoice.record"])
    assert any("runs task 'accounting.post'" in p for p in found)


@pytest.mark.parametrize("text, fault", [
    ("{not json", "not valid JSON"),
    ('{"StartAt": "A"}', "has no States"),
    ('{"StartAt": "B", "States": {"A": {"Type": "Succeed"}}}', "StartAt 'B' is not one of its States"),
    ("[1, 2]", "ASL mapping"),
])
def test_malformed_definitions_are_refused(tmp_path: Path, text: str, fault: str) -> None:
    path = tmp_path / "f.asl.json"
    path.write_text(text)
    with pytest.raises(DefinitionError, match=fault):
        load_definition(path)


def test_yaml_definitions_and_step_tasks(tmp_path: Path) -> None:
    path = tmp_path / "f.asl.yml"
    path.write_text("StartAt: Save\nStates:\n  Save:\n    Type: Task\n    Resource: arn:aws:states:::lambda:invoke\n"
                    "    Parameters: {FunctionName: step, Payload: {task: invoice.record, item.$: $.item}}\n"
                    "    End: true\n")
    assert step_tasks(load_definition(path)) == {"Save": "invoice.record"}


def test_bad_flow_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="definition"):
        with_flow({"definition": "../etc/passwd"})
    with pytest.raises(ValueError, match="extra"):
        with_flow({"definition": INVOICE_FLOW, "machine": "x"})


def test_json_definition_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "f.asl.json"
    path.write_text(json.dumps({"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}}))
    assert load_definition(path)["StartAt"] == "A"


def test_a_task_only_a_flow_step_runs_needs_no_lane() -> None:
    # GIVEN a flow lane carrying invoice.record whose flow runs accounting.post as a step
    settings = with_flow({"definition": INVOICE_FLOW, "topics": ["Notify"]})
    # THEN accounting.post is not "carried by no lane", but a task nothing runs still is
    found = settings.problems(["invoice.record", "accounting.post", "notify.send"])
    assert [p for p in found if "no lane carries" in p] == [
        "no lane carries task(s) notify.send: every item of them would be refused (add them to a lane's tasks)"]
