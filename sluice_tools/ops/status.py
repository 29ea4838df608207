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
from sluice_tools.ops.dlq import list_dead_letters
from sluice_tools.stage import LaneQueues, StageContext

DRAIN_LOG_MESSAGE = "drain finished"


@dataclass
class QueueCounts:
    visible: int
    in_flight: int
    delayed: int

    @property
    def total(self) -> int:
        return self.visible + self.in_flight + self.delayed


@dataclass(frozen=True)
class LoggedDrain:
    """A drain report as the consumer logged it, with the time of the log line."""

    at: str
    report: DrainReport

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, **self.report.to_dict()}

    @classmethod
    def from_log_record(cls, record: object) -> LoggedDrain | None:
        """The drain in one parsed log line, or None when the line holds none (or a broken one)."""
        if not isinstance(record, dict) or "drain" not in record:
            return None
        try:
            return cls(str(record.get("timestamp", "")), DrainReport.from_dict(record["drain"]))
        except ContractError:
            return None


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "queue": vars(self.queue),
            "dlq": vars(self.dlq),
            "oldest_age_s": self.oldest_age_s,
            "dlq_oldest_age_s": self.dlq_oldest_age_s,
            "workers": {"busy": self.workers_busy, "peak": self.workers_peak, "cap": self.cap},
            "last_drains": [d.to_dict() for d in self.drains],
            "notes": self.notes,
        }

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
        if drain is not None and record.get("message") == DRAIN_LOG_MESSAGE:
            found.append(drain)
    return list(found)


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
    worker = lane.worker
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
