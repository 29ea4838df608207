"""`sluice status` reads the drain reports the consumer logs, through the contract's DrainReport (a
workflow lane's: sluice.flows' FlowReport), and draws workflow lanes beside worker lanes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from sluice.contract import DrainReport
from sluice.drain import Drainer
from sluice.flows import FlowReport
from sluice_tools.cli.ops_cmd import render_lanes, render_status
from sluice_tools.ops.status import FLOW_LOG_MESSAGE, Bounded, FlowStatus, QueueCounts, Status, read_drain_reports

pytestmark = pytest.mark.unit


def test_status_reads_back_the_reports_the_drain_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sluice.observability import logger

    # GIVEN a consumer log (the drain's own "drain finished" lines, as the local stack writes
    # them) holding two drains, other log lines, and a drain line whose report is broken
    reports = [DrainReport(received=7, dispatched=7, succeeded=5, duplicates=1, dead_lettered=1,
                           stopped_because="queue_empty", budget_used_pct=12.5,
                           limit=3, limit_floor=1, limit_ceiling=8, adaptive=True),
               DrainReport(received=3, released=3, throttled=4, stopped_because="budget",
                           limit=6, limit_floor=6, limit_ceiling=6, adaptive=False)]
    log = tmp_path / "consumer.log"
    with log.open("w") as stream:
        monkeypatch.setattr(logger.registered_handler, "stream", stream)
        logger.info("drain finished", extra={"drain": {"received": "many"}})
        Drainer._publish(reports[0])
        logger.info("something else happened")
        Drainer._publish(reports[1])
        stream.write("not json at all: drain finished\n")
    # WHEN status reads the log
    drains = read_drain_reports(log, limit=5)
    # THEN it found both good reports, as the drain wrote them, each with the time of its line
    assert [d.report for d in drains] == reports
    assert all(d.at for d in drains)
    # AND its JSON shows each as the report's own dict plus "at"
    status = Status(stage="local", queue=QueueCounts(0, 0, 0), dlq=QueueCounts(0, 0, 0), cap=4, drains=drains)
    last = json.loads(json.dumps(status.to_dict()))["last_drains"]
    assert [{k: v for k, v in d.items() if k != "at"} for d in last] == [r.to_dict() for r in reports]
    # AND the table shows their counts
    console = Console(width=100, record=True)
    console.print(render_status(status))
    text = console.export_text()
    assert "last drains" in text and "12.5" in text and "empty" in text and "budget" in text
    # AND the limit each drain ended at: 3 of an adaptive ceiling of 8, a fixed 6
    assert "lim" in text and "3/8" in text and "6 fix" in text


def test_status_reads_back_a_workflow_lanes_drains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sluice.observability import logger

    # GIVEN a workflow lane's consumer log: two drains as sluice.flows logs them, a broken one, and
    # another line that happens to carry a "report"
    reports = [FlowReport(started=3, deleted=3, running=3, peak_running=3, cap=20, counts=1),
               FlowReport(already_started=1, deleted=1, released=2, start_failed=1, peak_running=20, cap=20)]
    log = tmp_path / "consumer.log"
    with log.open("w") as stream:
        monkeypatch.setattr(logger.registered_handler, "stream", stream)
        logger.info(FLOW_LOG_MESSAGE, extra={"report": reports[0].to_dict()})
        logger.info(FLOW_LOG_MESSAGE, extra={"report": {"started": "many"}})
        logger.info("something else finished", extra={"report": {"started": 1}})
        logger.info(FLOW_LOG_MESSAGE, extra={"report": reports[1].to_dict()})
    # WHEN status reads the log
    drains = read_drain_reports(log, limit=5)
    # THEN it found both good reports, each a FlowReport as logged
    assert [d.report for d in drains] == reports and all(d.is_flow for d in drains)
    # AND its JSON shows each as the report's own dict plus "at"
    status = Status(stage="local", queue=QueueCounts(4, 0, 0), dlq=QueueCounts(1, 0, 0), cap=20, lane="flow",
                    drains=drains, workers_cap=4, workers_busy=2,
                    flow=FlowStatus("arn:aws:states:us-east-1:123456789012:stateMachine:invoices", cap=20,
                                    running=Bounded(1000, more=True),
                                    failed={"FAILED": Bounded(2), "TIMED_OUT": Bounded(1), "ABORTED": Bounded(0)}))
    body = json.loads(json.dumps(status.to_dict()))
    assert [{k: v for k, v in d.items() if k != "at"} for d in body["last_drains"]] == [r.to_dict() for r in reports]
    # AND the executions: running at least 1000 of a cap of 20, 3 failed in the hour, the step's cap
    assert body["executions"]["running"] == {"count": 1000, "more": True} and body["executions"]["cap"] == 20
    assert body["executions"]["failed"]["count"] == 3 and body["executions"]["failed"]["window_s"] == 3600
    assert body["workers"] == {"busy": 2, "peak": None, "cap": 4}
    # AND the detail shows them, and the workflow drains in a table of their own
    console = Console(width=100, record=True)
    console.print(render_status(status))
    text = console.export_text()
    assert "1,000+ / 20" in text and "3 (FAILED 2, TIMED_OUT 1)" in text and "steps busy / cap" in text
    assert "last drains (workflow)" in text and "recv" not in text and "invoices" in text


def lane_row(name: str, flow: FlowStatus | None = None) -> Status:
    return Status(stage="local", queue=QueueCounts(5, 1, 0), dlq=QueueCounts(0, 0, 0), cap=4, lane=name,
                  max_rate=25, workers_busy=1, flow=flow)


def test_the_table_over_worker_lanes_is_as_it_was() -> None:
    # GIVEN a stage of worker lanes only / WHEN its table is drawn
    console = Console(width=100, record=True)
    console.print(render_lanes("local", [lane_row("ledger"), lane_row("vendor-a")]))
    text = console.export_text()
    # THEN it has exactly its columns, no workflow ones
    header = next(line for line in text.splitlines() if "lane" in line and "depth" in line)
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == [
        "lane", "depth", "in flight", "DLQ", "oldest age", "workers / cap", "rate/s"]
    assert "1 / 4" in text and "runs" not in text and "failed" not in text


def test_the_table_over_lanes_shows_runs_failures_and_a_step_functions_error_in_one_line() -> None:
    # GIVEN a worker lane, a workflow lane and a workflow lane whose machine is not deployed
    flows = [lane_row("ledger"),
             lane_row("flow", FlowStatus("arn:m", cap=20, running=Bounded(3), failed={"FAILED": Bounded(2)})),
             lane_row("later", FlowStatus("arn:n", cap=20, error="state machine n does not exist (not deployed yet?)"))]
    # WHEN the table is drawn on an 80-column terminal
    console = Console(width=80, record=True)
    console.print(render_lanes("local", flows))
    text = console.export_text()
    # THEN the workflow lane shows its running executions against the cap and its failures, the
    # worker lane its workers, and the error is one line naming the lane; nothing is cut short
    assert "busy / cap" in text and "failed 1h" in text and "…" not in text
    assert "3 / 20 runs" in text and "1 / 4" in text
    assert "lane later: state machine n does not exist (not deployed yet?)" in text.splitlines()
