"""Every step of the shipped flows retries what a failing or killed step Lambda yields.

A step applies once however often it runs (the ledger, sluice/step.py), so a Task state calling
the step Lambda retries: Lambda's own transient errors (the list AWS recommends retrying),
throttling, and an unhandled runtime failure - a process killed mid step, out of memory or timed
out - which Step Functions reports as Lambda.Unknown, or by the errorType of Lambda's payload
(Runtime.ExitError, Sandbox.Timedout; what the local Lambda service reports too). A permanent
task error is never retried: the flow catches it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from sluice.asl import load_definition, step_tasks
from sluice.settings import PROJECT_ROOT, STEP_FUNCTION_PLACEHOLDER

pytestmark = pytest.mark.unit

FLOWS = ["worker/flows/invoice.asl.json", "sluice_tools/chaos/flow.asl.json"]
LAMBDA_FAILURES = {"Lambda.ServiceException", "Lambda.AWSLambdaException", "Lambda.SdkClientException",
                   "Lambda.TooManyRequestsException", "Lambda.Unknown", "Runtime.ExitError"}


def step_states(path: str) -> dict[str, Mapping[str, Any]]:
    definition = load_definition(PROJECT_ROOT / path)
    return {name: definition["States"][name] for name in step_tasks(definition)}


@pytest.mark.parametrize("path", FLOWS)
def test_each_step_retries_lambda_failures_and_transient_errors(path: str) -> None:
    # GIVEN a shipped flow's Task states that call the step Lambda
    states = step_states(path)
    assert states, f"{path} has no step"
    for name, state in states.items():
        assert state["Resource"] == "${" + STEP_FUNCTION_PLACEHOLDER + "}"
        # WHEN its retriers are read
        retried = {error for retrier in state.get("Retry", []) for error in retrier["ErrorEquals"]}
        # THEN they cover every Lambda failure and sluice's transient error, never the permanent one
        assert retried >= LAMBDA_FAILURES, f"{path} {name} does not retry {sorted(LAMBDA_FAILURES - retried)}"
        assert "sluice.TransientTaskError" in retried
        assert not {"sluice.PermanentTaskError", "States.ALL"} & retried, f"{path} {name} retries too much"
        assert all(retrier["MaxAttempts"] >= 1 for retrier in state["Retry"])
