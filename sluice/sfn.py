"""Every Step Functions call a workflow lane makes, in one place (as sluice/aws.py is for SQS
and Lambda): start an execution, count the running ones, find the closed failures and why
they failed. AWS errors come out as ``AwsError``; a name already used by a closed execution
(or by a running one with another input) as ``ExecutionExistsError``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from sluice.aws import AwsError, client

# What ListExecutions calls the ends that dead-letter an item, and the history event of each.
FAILED_STATUSES = ("FAILED", "TIMED_OUT", "ABORTED")
_EXECUTION_END = {"ExecutionFailed": "executionFailedEventDetails",
                  "ExecutionTimedOut": "executionTimedOutEventDetails",
                  "ExecutionAborted": "executionAbortedEventDetails"}


class ExecutionExistsError(AwsError):
    """StartExecution refused the name: an execution of that name ran already (AWS keeps a
    closed name for 90 days) or runs with another input."""


@dataclass(frozen=True)
class ExecutionSummary:
    arn: str
    name: str
    status: str
    started: datetime
    stopped: datetime | None


@dataclass(frozen=True)
class Failure:
    """Why an execution ended without success: the state it failed in, the error, the cause."""

    state: str
    error: str
    cause: str

    @property
    def reason(self) -> str:
        """The cause in words: a Lambda error's errorMessage (its Cause is Lambda's JSON error)."""
        try:
            parsed = json.loads(self.cause)
        except ValueError:
            return self.cause
        if isinstance(parsed, Mapping) and isinstance(parsed.get("errorMessage"), str):
            return str(parsed["errorMessage"])
        return self.cause


class StateMachine:
    def __init__(self, arn: str, sfn: Any | None = None) -> None:
        if not arn:
            raise AwsError("no state machine ARN configured (SLUICE_FLOW_ARN)")
        self.arn = arn
        self._sfn = sfn

    @property
    def sfn(self) -> Any:
        return self._sfn or client("stepfunctions")

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = getattr(self.sfn, operation)(**kwargs)
            return result
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ExecutionAlreadyExists":
                raise ExecutionExistsError(str(exc)) from exc
            raise AwsError(f"Step Functions {operation} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise AwsError(f"Step Functions {operation} failed: {exc}") from exc

    def start(self, name: str, execution_input: Mapping[str, Any]) -> str:
        """Start one execution; returns its ARN (the running one's, for the same name and input)."""
        reply = self._call("start_execution", stateMachineArn=self.arn, name=name,
                           input=json.dumps(execution_input, sort_keys=True, separators=(",", ":")))
        return str(reply["executionArn"])

    def executions(self, status: str) -> Iterator[ExecutionSummary]:
        """Executions with ``status``, newest start first (as ListExecutions orders them)."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"stateMachineArn": self.arn, "statusFilter": status, "maxResults": 1000}
            if token:
                kwargs["nextToken"] = token
            reply = self._call("list_executions", **kwargs)
            for e in reply.get("executions", []):
                yield ExecutionSummary(arn=e["executionArn"], name=e["name"], status=e["status"],
                                       started=e["startDate"], stopped=e.get("stopDate"))
            token = reply.get("nextToken")
            if not token:
                return

    def count_running(self, at_most: int) -> int:
        """Running executions, counted up to ``at_most`` (the cap: beyond it the number is moot)."""
        found = 0
        for _ in self.executions("RUNNING"):
            found += 1
            if found >= at_most:
                break
        return found

    def execution_input(self, execution_arn: str) -> str:
        return str(self._call("describe_execution", executionArn=execution_arn).get("input", ""))

    def failure(self, execution_arn: str) -> Failure:
        """Where and why it failed, from its history: the last task failure (a Lambda error, a
        task timeout) with the state it happened in, else the execution's own end event (a
        timeout of the whole execution, an abort, a Fail state) with the state it was in."""
        state = error = cause = ""
        task_failure: Failure | None = None
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"executionArn": execution_arn, "maxResults": 1000}
            if token:
                kwargs["nextToken"] = token
            reply = self._call("get_execution_history", **kwargs)
            for event in reply.get("events", []):
                kind = str(event.get("type", ""))
                if kind.endswith("StateEntered"):
                    state = str(event.get("stateEnteredEventDetails", {}).get("name", ""))
                elif kind in _EXECUTION_END:
                    details = event.get(_EXECUTION_END[kind], {})
                    error = str(details.get("error", "")) or kind
                    cause = str(details.get("cause", ""))
                elif kind.endswith(("Failed", "TimedOut")) and not kind.startswith("Execution"):
                    found: dict[str, Any] = next(
                        (v for k, v in event.items() if k.endswith("EventDetails") and isinstance(v, dict)), {})
                    task_failure = Failure(state, str(found.get("error", "")) or kind, str(found.get("cause", "")))
            token = reply.get("nextToken")
            if not token:
                break
        if task_failure is not None and (not error or error == task_failure.error or cause == task_failure.cause):
            return task_failure
        return Failure(state, error, cause)
