"""`sluice status` reads the drain reports the consumer logs, through the contract's DrainReport."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from sluice.contract import DrainReport
from sluice.drain import Drainer
from sluice_tools.cli.ops_cmd import render_status
from sluice_tools.ops.status import QueueCounts, Status, read_drain_reports

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
