"""The worker -> consumer contract: outcome names, the worker's response, the drain report."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.contract import ContractError, DrainReport, Outcome, WorkerResponse, WorkerResult

pytestmark = pytest.mark.unit


def test_the_response_has_the_shape_design_section_5_promises() -> None:
    # GIVEN a batch where one message was applied and one will be retried
    response = WorkerResponse.of([WorkerResult("m1", Outcome.DONE, 12.5), WorkerResult("m2", Outcome.RETRY, 3.0)])
    # WHEN sent over the wire / THEN it is an SQS partial-batch response plus one result per message
    assert json.loads(json.dumps(response.to_payload())) == {
        "batchItemFailures": [{"itemIdentifier": "m2"}],
        "results": [{"messageId": "m1", "outcome": "done", "ms": 12.5},
                    {"messageId": "m2", "outcome": "retry", "ms": 3.0}],
    }


@given(st.lists(st.tuples(st.text(min_size=1, max_size=8), st.sampled_from(list(Outcome)),
                          st.floats(0, 1e6, allow_nan=False)), max_size=12))
def test_a_response_reads_back_as_it_was_written(rows: list[tuple[str, Outcome, float]]) -> None:
    response = WorkerResponse.of(WorkerResult(*row) for row in rows)
    assert WorkerResponse.from_payload(json.loads(json.dumps(response.to_payload()))) == response


def test_every_retry_and_only_retries_are_listed_as_failures() -> None:
    results = [WorkerResult(f"m{n}", outcome) for n, outcome in enumerate(Outcome)]
    assert WorkerResponse.of(results).failures == ("m3",)


def test_a_plain_sqs_partial_batch_response_reads_as_listed_retry_rest_done() -> None:
    # GIVEN the answer of any SQS-trigger worker: failures listed, no results
    response = WorkerResponse.from_payload({"batchItemFailures": [{"itemIdentifier": "m2"}]})
    # WHEN the consumer counts its batch / THEN the listed message is a retry, the others done
    assert response.outcomes(["m1", "m2", "m3"]) == {Outcome.DONE: 2, Outcome.RETRY: 1}


def test_results_win_over_the_failure_list_and_rows_it_does_not_know_are_ignored() -> None:
    payload = {"batchItemFailures": [{"itemIdentifier": "m1"}, "junk", {"no": "id"}],
               "results": [{"messageId": "m1", "outcome": "dead_lettered", "ms": 1},
                           {"messageId": "m2", "outcome": "exploded"}, 7, {"outcome": "done"}]}
    response = WorkerResponse.from_payload(payload)
    assert response.outcomes(["m1", "m2"]) == {Outcome.DEAD_LETTERED: 1, Outcome.DONE: 1}


@pytest.mark.parametrize("payload", [{}, {"results": 5, "batchItemFailures": "x"}, {"results": None}])
def test_odd_but_object_shaped_payloads_read_as_all_done(payload: dict[str, Any]) -> None:
    assert WorkerResponse.from_payload(payload).outcomes(["m1"]) == {Outcome.DONE: 1}


@pytest.mark.parametrize("payload", [None, "Task timed out after 30.00 seconds", ["results"], 3])
def test_a_payload_that_is_no_response_is_refused(payload: object) -> None:
    with pytest.raises(ContractError, match="JSON object"):
        WorkerResponse.from_payload(payload)


def test_outcomes_count_under_the_metric_names_of_the_drain_report() -> None:
    assert [o.metric for o in Outcome] == ["done", "duplicate", "dead_lettered", "retried"]


@given(st.builds(DrainReport, **{f.name: (st.text(max_size=20) if isinstance(f.default, str)
                                          else st.booleans() if isinstance(f.default, bool)
                                          else st.floats(0, 1e9) if isinstance(f.default, float)
                                          else st.integers(-10**6, 10**9))
                                 for f in fields(DrainReport)}))
def test_a_drain_report_reads_back_as_it_was_written(report: DrainReport) -> None:
    assert DrainReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report


def test_a_report_of_another_version_reads_with_defaults_and_ignores_what_it_does_not_know() -> None:
    report = DrainReport.from_dict({"received": 4, "succeeded": 4.0, "limit": 3, "stopped_because": "budget"})
    assert (report.received, report.succeeded, report.stopped_because, report.released) == (4, 4, "budget", 0)


@pytest.mark.parametrize("data", [{"received": "4"}, {"received": 1.5}, {"received": True},
                                  {"adaptive": 1}, {"adaptive": "true"}, {"stopped_because": 3},
                                  {"budget_used_pct": float("nan")}, ["received"]])
def test_a_report_with_a_value_of_the_wrong_kind_is_refused(data: Any) -> None:
    with pytest.raises(ContractError):
        DrainReport.from_dict(data)


def test_outcome_counts_land_in_their_report_fields() -> None:
    report = DrainReport()
    report.add_outcomes({Outcome.DONE: 3, Outcome.DUPLICATE: 2, Outcome.DEAD_LETTERED: 1})
    report.add_outcomes({Outcome.RETRY: 4, Outcome.DONE: 1})
    assert (report.succeeded, report.duplicates, report.dead_lettered, report.retried) == (4, 2, 1, 4)
    assert [report.count(o) for o in Outcome] == [4, 2, 1, 4]
