"""What the chaos harness counts: it judges the scenarios, so a miscount fails a good run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sluice.envelope import dedup_id
from sluice.flowitem import FlowItem
from sluice.sfn import ExecutionSummary
from sluice_tools.chaos.runner import ChaosRun

ARN = "arn:aws:states:us-east-1:123456789012:execution:chaos:one"


class ClosingMachine:
    """One execution that closes between the RUNNING and the SUCCEEDED listings, as a real one
    does while the harness lists status after status."""

    def __init__(self) -> None:
        self.item = FlowItem(task="chaos.apply", key="k1", dedup_id=dedup_id("chaos.apply", "k1"), payload={},
                             group="g0", message_id="m1", enqueued_at="2026-12-04T00:00:00Z", trace_id="t1")

    def executions(self, status: str) -> Iterator[ExecutionSummary]:
        if status in ("RUNNING", "SUCCEEDED"):
            yield ExecutionSummary(arn=ARN, name="one", status=status, started=datetime.now(UTC), stopped=None)

    def execution_input(self, arn: str) -> str:
        assert arn == ARN
        return json.dumps(self.item.execution_input())


def test_an_execution_closing_between_listings_counts_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a workflow chaos run whose one execution is listed as RUNNING, then as SUCCEEDED
    run = ChaosRun("counts", tmp_path, flow=True)
    monkeypatch.setattr(run, "machine", ClosingMachine)
    # WHEN the harness groups the executions by item key
    found = run.executions_by_key()
    # THEN the item has one execution, with its later status: not "started twice"
    assert found == {"k1": [(ARN, "SUCCEEDED")]}


def test_the_workers_reserved_concurrency_is_the_cap_unless_a_scenario_sets_it(tmp_path: Path) -> None:
    # GIVEN a default run and the throttling scenario's run (cap above reserved on purpose)
    default, throttled = (ChaosRun("default", tmp_path, max_parallel=2),
                          ChaosRun("throttled", tmp_path, max_parallel=4, reserved_concurrency=2))
    for run in (default, throttled):
        run._db_name = "sluice_chaos_counts"  # set by start(); settings validate it
    # WHEN their settings are built  THEN the default holds the cap by reserved concurrency
    assert default.settings.worker.reserved_concurrency == 2
    assert throttled.settings.worker.reserved_concurrency == 2
