"""The chaos suite: each scenario runs a local stack of its own and adds a row to the table
printed at the end of the session (scenario, items, applied once, duplicates, lost, in DLQ).

`make test` runs the bounded subset; `make chaos` sets SLUICE_CHAOS_FULL=1, which selects
every scenario at full size. Scenarios marked ``chaos_full_only`` are deselected (not
skipped) in the bounded run, so the summary never shows a skip that hides a subject.
"""

from __future__ import annotations

import os

import pytest

from sluice_tools.chaos.runner import ScenarioResult, format_table

FULL = os.environ.get("SLUICE_CHAOS_FULL") == "1"
RESULTS: list[ScenarioResult] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos_full_only: a chaos scenario run only by `make chaos`")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if FULL:
        return
    deselected = [i for i in items if i.get_closest_marker("chaos_full_only")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [i for i in items if not i.get_closest_marker("chaos_full_only")]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if RESULTS:
        terminalreporter.write_sep("=", "chaos scenarios")
        terminalreporter.write_line(format_table(RESULTS))


@pytest.fixture
def record_result() -> object:
    def record(result: ScenarioResult) -> ScenarioResult:
        RESULTS.append(result)
        return result

    return record
