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
    found = with_flow({"definition": INVOICE_FLOW}).problems(["invoice.record", "accounting.post"])
    assert [p for p in found if ".flow" in p] == []


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
