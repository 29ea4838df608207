"""`sluice status`: queue depths, oldest message age, DLQ, workers busy vs cap, last drains.

Age of the oldest message: SQS has no such queue attribute, and receiving a message from
the work queue to look at it would count as a delivery (pushing it toward the DLQ) and hold
its whole FIFO group. So on AWS the age comes from CloudWatch's
``ApproximateAgeOfOldestMessage`` metric (1-minute resolution, the latest point of the last
5 minutes); on the local stack, which has no CloudWatch, it is shown for the DLQ only,
computed from a short peek (a dead letter has no further redrive to disturb).

Workers busy and last drains: locally from the Lambda endpoint's stats and the consumer's
log file (the drain report the consumer logs as "drain finished"); on AWS from CloudWatch
(``ConcurrentExecutions`` of the worker) and CloudWatch Logs of the consumer. Each part that
cannot be read is left out with the reason, never guessed.

Lanes: each lane is read on its own (``collect_lane_status``: its queue, its DLQ, its worker's
busy count against its cap, its consumer's drains); ``collect_lanes`` reads every lane (or
the one asked for) for the table over lanes.

Workflow lanes (docs/adr/0007-workflow-lanes.md): the cap counts running executions, so a
workflow lane's status counts them from Step Functions (ListExecutions RUNNING, up to
``COUNT_BOUND``: a count that reaches it reads "1000+", as walking every page of a huge backlog
of runs would make status slow), and the executions that FAILED, TIMED_OUT or were ABORTED and
closed within ``FAILED_WINDOW_S`` (an hour; on the local stack, whose moto forgets everything
when it stops, at most since the stack started). Its busy count is its step function's, against
that function's reserved concurrency. Its consumer logs "workflow drain finished" with a
FlowReport (sluice/flows.py) instead of a DrainReport; both kinds are read as last drains. A Step
Functions error (the machine not deployed yet, no permission) is kept as one line for that lane.
"""

from __future__ import annotations

import json
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from sluice import aws
from sluice.contract import ContractError, DrainReport
from sluice.flows import FlowReport
from sluice.sfn import FAILED_STATUSES, StateMachine
from sluice_tools.ops.dlq import list_dead_letters
from sluice_tools.stage import LaneQueues, StageContext

DRAIN_LOG_MESSAGE = "drain finished"
# What a workflow lane's consumer logs instead, its FlowReport under "report" (sluice/flows.py).
FLOW_LOG_MESSAGE = "workflow drain finished"
# Executions counted at most per kind: past it the number reads "1000+".
COUNT_BOUND = 1000
# Failed executions of the last hour are counted; the walk over the newest starts ends after
# this many (a definition without TimeoutSeconds may close a run started a year ago).
EXAMINE_BOUND = 10 * COUNT_BOUND
FAILED_WINDOW_S = 3600


@dataclass
class QueueCounts:
    visible: int
    in_flight: int
    delayed: int

    @property
    def total(self) -> int:
        return self.visible + self.in_flight + self.delayed


def flow_report_from_dict(data: object) -> FlowReport:
    """A FlowReport as a workflow lane's consumer logged it (by this version or another: unknown
    keys are ignored, missing ones keep their defaults). Raises ContractError on a wrong kind."""
    if not isinstance(data, dict):
        raise ContractError(f"a workflow drain report is a JSON object, got {type(data).__name__}")
    values: dict[str, int] = {}
    for name in FlowReport().to_dict():
        if name not in data:
            continue
        value = data[name]
        # bool is an int to Python, not to the report: a true "started" is a broken line.
        if not isinstance(value, int) or isinstance(value, bool):
            raise ContractError(f"workflow drain report field {name!r} must be an integer, got {value!r}")
        values[name] = value
    return FlowReport(**values)


@dataclass(frozen=True)
class LoggedDrain:
    """A drain report as the consumer logged it, with the time of the log line: a worker
    lane's DrainReport or a workflow lane's FlowReport."""

    at: str
    report: DrainReport | FlowReport

    @property
    def is_flow(self) -> bool:
        return isinstance(self.report, FlowReport)

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, **self.report.to_dict()}

    @classmethod
    def from_log_record(cls, record: object) -> LoggedDrain | None:
        """The drain in one parsed log line, or None when the line holds none (or a broken one)."""
        if not isinstance(record, dict):
            return None
        at = str(record.get("timestamp", ""))
        try:
            if "drain" in record:
                return cls(at, DrainReport.from_dict(record["drain"]))
            if record.get("message") == FLOW_LOG_MESSAGE and "report" in record:
                return cls(at, flow_report_from_dict(record["report"]))
        except ContractError:
            return None
        return None


@dataclass(frozen=True)
class Bounded:
    """A count that stops at a bound: ``more`` says there may be more than ``count``."""

    count: int
    more: bool = False

    def __str__(self) -> str:
        return f"{self.count:,}+" if self.more else f"{self.count:,}"

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "more": self.more}


@dataclass
class FlowStatus:
    """A workflow lane's executions: running against the cap, failed lately; or why unknown."""

    state_machine_arn: str
    cap: int
    window_s: int = FAILED_WINDOW_S
    running: Bounded | None = None
    failed: dict[str, Bounded] = field(default_factory=dict)  # by ListExecutions status
    error: str = ""  # one line: Step Functions could not be read

    @property
    def failed_total(self) -> Bounded | None:
        if not self.failed:
            return None
        return Bounded(sum(x.count for x in self.failed.values()), any(x.more for x in self.failed.values()))

    def to_dict(self) -> dict[str, Any]:
        total = self.failed_total
        return {
            "state_machine": self.state_machine_arn,
            "running": self.running.to_dict() if self.running else None,
            "cap": self.cap,
            "failed": None if total is None else {
                **total.to_dict(), "window_s": self.window_s,
                "by_status": {status: x.to_dict() for status, x in self.failed.items()}},
            "error": self.error or None,
        }


@dataclass
class Status:
    stage: str
    queue: QueueCounts
    dlq: QueueCounts
    cap: int
    lane: str = "default"
    max_rate: float | None = None  # the lane's drain.max_rate, messages/s
    oldest_age_s: float | None = None
    dlq_oldest_age_s: float | None = None
    workers_busy: int | None = None
    workers_peak: int | None = None
    drains: list[LoggedDrain] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # A workflow lane's executions (None: a worker lane). Its workers are its step function's
    # processes, whose cap is that function's reserved concurrency, not the lane's cap.
    flow: FlowStatus | None = None
    workers_cap: int | None = None  # None: the lane's cap

    def to_dict(self) -> dict[str, Any]:
        found = {
            "stage": self.stage,
            "queue": vars(self.queue),
            "dlq": vars(self.dlq),
            "oldest_age_s": self.oldest_age_s,
            "dlq_oldest_age_s": self.dlq_oldest_age_s,
            "workers": {"busy": self.workers_busy, "peak": self.workers_peak,
                        "cap": self.cap if self.workers_cap is None else self.workers_cap},
            "last_drains": [d.to_dict() for d in self.drains],
            "notes": self.notes,
        }
        if self.flow is not None:
            found["executions"] = self.flow.to_dict()
        return found

    def to_lane_dict(self) -> dict[str, Any]:
        """One row of the table over lanes: the lane's name and rate, then what to_dict says."""
        return {"lane": self.lane, "max_rate": self.max_rate, **self.to_dict()}


def queue_counts(queue: aws.Queue) -> QueueCounts:
    a = queue.attributes(["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                          "ApproximateNumberOfMessagesDelayed"])
    return QueueCounts(visible=int(a.get("ApproximateNumberOfMessages", 0)),
                       in_flight=int(a.get("ApproximateNumberOfMessagesNotVisible", 0)),
                       delayed=int(a.get("ApproximateNumberOfMessagesDelayed", 0)))


def lambda_stats(url: str, timeout_s: float = 2) -> dict[str, Any]:
    """The local Lambda endpoint's per-function counters."""
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:  # noqa: S310 - loopback URL from local.env
        stats: dict[str, Any] = json.loads(reply.read())
    return stats


def read_drain_reports(log_file: Path, limit: int = 5, tail_bytes: int = 512 * 1024) -> list[LoggedDrain]:
    """The last ``limit`` drain reports a consumer logged (Powertools JSON lines)."""
    try:
        with log_file.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - tail_bytes))
            lines = f.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    found: deque[LoggedDrain] = deque(maxlen=limit)
    for line in lines:
        if DRAIN_LOG_MESSAGE not in line:
            continue
        try:
            record = json.loads(line[line.index("{"):])
        except ValueError:
            continue
        drain = LoggedDrain.from_log_record(record)
        if drain is not None and record.get("message") in (DRAIN_LOG_MESSAGE, FLOW_LOG_MESSAGE):
            found.append(drain)
    return list(found)


def count_closed(machine: StateMachine, status: str, *, closed_after: datetime, started_after: datetime,
                 bound: int = COUNT_BOUND, examine: int = EXAMINE_BOUND) -> Bounded:
    """Executions with ``status`` that closed after ``closed_after``. ListExecutions gives the
    newest starts first, so the walk ends at the first start before ``started_after`` (it cannot
    have run long enough to close in the window), at ``bound`` found, or ``examine`` looked at
    (either of those two: "at least")."""
    found = 0
    for examined, execution in enumerate(machine.executions(status), start=1):
        if execution.started < started_after:
            return Bounded(found)
        if execution.stopped is not None and execution.stopped >= closed_after:
            found += 1
            if found >= bound:
                return Bounded(found, more=True)
        if examined >= examine:
            return Bounded(found, more=True)
    return Bounded(found)


def _sfn_error(exc: aws.AwsError, arn: str) -> str:
    """One line for a Step Functions failure: a machine not made yet is said as such."""
    cause = exc.__cause__
    code = cause.response.get("Error", {}).get("Code", "") if isinstance(cause, ClientError) else ""
    if code == "StateMachineDoesNotExist":
        return f"state machine {arn.rsplit(':', 1)[-1]} does not exist (not deployed yet?)"
    return " ".join(str(exc).split())


def collect_flow_status(machine_arn: str, cap: int, *, max_run_s: float, now: datetime | None = None,
                        window_s: int = FAILED_WINDOW_S, bound: int = COUNT_BOUND) -> FlowStatus:
    """A workflow lane's executions; a Step Functions failure is kept in ``error``, never raised."""
    now = now or datetime.now(UTC)
    flow = FlowStatus(state_machine_arn=machine_arn, cap=cap, window_s=window_s)
    closed_after = now - timedelta(seconds=window_s)
    started_after = closed_after - timedelta(seconds=max_run_s)
    try:
        machine = StateMachine(machine_arn)
        running = machine.count_running(bound)
        flow.running = Bounded(running, more=running >= bound)
        flow.failed = {status: count_closed(machine, status, closed_after=closed_after,
                                            started_after=started_after, bound=bound)
                       for status in FAILED_STATUSES}
    except aws.AwsError as exc:
        flow.running, flow.failed = None, {}
        flow.error = _sfn_error(exc, machine_arn)
    return flow


def _cloudwatch_latest(namespace: str, metric: str, dimension: tuple[str, str], stat: str) -> float | None:
    now = datetime.now(UTC)
    reply = aws.client("cloudwatch").get_metric_statistics(
        Namespace=namespace, MetricName=metric, Dimensions=[{"Name": dimension[0], "Value": dimension[1]}],
        StartTime=now - timedelta(minutes=5), EndTime=now, Period=60, Statistics=[stat])
    points = sorted(reply.get("Datapoints", []), key=lambda p: p["Timestamp"])
    return float(points[-1][stat]) if points else None


def _aws_drain_reports(consumer: str, limit: int) -> list[LoggedDrain]:
    now = datetime.now(UTC)
    reply = aws.client("logs").filter_log_events(
        logGroupName=f"/aws/lambda/{consumer}", filterPattern=f'"{DRAIN_LOG_MESSAGE}"',
        startTime=int((now - timedelta(hours=1)).timestamp() * 1000), limit=100)
    reports = []
    for event in reply.get("events", []):
        try:
            record = json.loads(event["message"][event["message"].index("{"):])
        except (ValueError, KeyError):
            continue
        drain = LoggedDrain.from_log_record(record)
        if drain is not None:
            reports.append(drain)
    return reports[-limit:]


def collect_status(ctx: StageContext, drains: int = 5) -> Status:
    """One snapshot of the only lane (a config without lanes). Raises AwsError only when the
    queues themselves cannot be read."""
    return collect_lane_status(ctx, ctx.lane(), drains)


def collect_lanes(ctx: StageContext, lane: str | None = None, drains: int = 5) -> list[Status]:
    """One snapshot per lane, in routing order (only ``lane`` when given)."""
    return [collect_lane_status(ctx, x, drains) for x in ctx.selected(lane)]


def collect_lane_status(ctx: StageContext, lane: LaneQueues, drains: int = 5) -> Status:
    """One lane's snapshot. Raises AwsError only when its queues themselves cannot be read."""
    from sluice_tools.stage import local_env_path

    status = Status(stage=ctx.stage, queue=queue_counts(lane.queue()), dlq=queue_counts(lane.dlq()),
                    cap=lane.cap, lane=lane.name, max_rate=lane.lane.drain.max_rate)
    worker = lane.target  # the step function, for a workflow lane
    if lane.machine_arn is not None:
        status.flow = collect_flow_status(lane.machine_arn, lane.cap,
                                          max_run_s=ctx.settings.flow_max_run_s(lane.lane))
        status.workers_cap = lane.lane.worker.reserved_concurrency
    if ctx.is_local:
        status.notes.append("oldest message age: no CloudWatch locally; shown for the DLQ only (peeked)")
        if status.dlq.total:
            ages = [x.age_s for x in list_dead_letters(lane.dlq(), limit=10).letters if x.age_s is not None]
            status.dlq_oldest_age_s = max(ages) if ages else None
        if ctx.lambda_stats_url:
            try:
                stats = lambda_stats(ctx.lambda_stats_url).get(worker, {})
                status.workers_busy = stats.get("busy")
                status.workers_peak = stats.get("peak_busy", stats.get("peak"))
            except (OSError, ValueError) as exc:
                status.notes.append(f"workers: the local Lambda stats endpoint did not answer ({exc})")
        log = local_env_path().parent / "logs" / f"{lane.consumer}.log"
        status.drains = read_drain_reports(log, drains)
        if not status.drains:
            status.notes.append("last drains: the consumer has logged no drain report yet")
        return status
    try:
        age = "ApproximateAgeOfOldestMessage"
        q = lane.lane.queue
        status.oldest_age_s = _cloudwatch_latest("AWS/SQS", age, ("QueueName", q.fifo_name), "Maximum")
        dlq_name = ("QueueName", q.dlq_fifo_name)
        status.dlq_oldest_age_s = _cloudwatch_latest("AWS/SQS", age, dlq_name, "Maximum")
        busy = _cloudwatch_latest("AWS/Lambda", "ConcurrentExecutions", ("FunctionName", worker), "Maximum")
        status.workers_busy = int(busy) if busy is not None else 0
    except (ClientError, BotoCoreError) as exc:
        status.notes.append(f"CloudWatch metrics unavailable: {exc}")
    try:
        status.drains = _aws_drain_reports(lane.consumer, drains)
    except (ClientError, BotoCoreError) as exc:
        status.notes.append(f"last drains: CloudWatch Logs unavailable: {exc}")
    return status
