"""A workflow lane's drain (DESIGN.md section 13; ADR 0007): each message starts one execution
of the lane's state machine, exactly once, capped; a failed execution's item goes to the DLQ.

``start_executions`` (one consumer's drain): receive, and for each message in order

1. start an execution named after the message's deduplication id with the item as input
   (``sluice.flowitem``). A name is idempotent for the same input while that execution runs,
   and AWS refuses a closed execution's name for 90 days (ExecutionAlreadyExists): either way a
   redelivered message (the consumer died between the start and the delete) is only deleted.
   A redriven message has a fresh deduplication id, so it starts a fresh execution;
2. then delete the message.

The cap: before a start, this consumer must hold an allowance from a count of the RUNNING
executions (ListExecutions); a count showing ``running`` of ``cap`` gives it
ceil((cap - running) / consumers) starts before it counts again, so consumers counting at the
same moment share the room instead of each taking all of it. When the count shows no room it
counts again every ``poll_s`` until its budget ends. Starts are paced at this consumer's
share of ``drain.max_rate`` (sluice/ratelimit.py).

Group order: a group's messages arrive in order (FIFO) and start in that order; a start that
fails for now leaves that message and the rest of its group in this receive released. A
group's next item does NOT wait for the previous execution to close: its message is deleted
once its execution started, so executions of one group may overlap (ADR 0007 says why).

``dead_letter_failures`` (called by the consumer each drain): every execution of the machine
that FAILED, TIMED_OUT or was ABORTED and closed within the last ``lookback_s`` goes to the DLQ
with the failing state and cause from its history, and the attributes the worker's dead
letters carry (so ``sluice dlq list|redrive`` work). Its DLQ deduplication id is derived from
the execution's ARN: scans within SQS's 5-minute deduplication window send it once, so
``lookback_s`` stays below 300 s and the scan runs more often than that (every drain).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sluice.aws import AwsError, OutgoingMessage, Queue, ReceivedMessage
from sluice.envelope import Envelope, EnvelopeError
from sluice.flowitem import FlowItem, FlowItemError
from sluice.observability import count, logger
from sluice.ratelimit import TokenBucket
from sluice.sfn import FAILED_STATUSES, ExecutionExistsError, StateMachine

MAX_REASON_CHARS = 1000  # as the worker's dead letters (sluice.work)
DEAD_LETTER_GROUP = "sluice-dead-letters"
# Below SQS's 5-minute deduplication window, with a minute to spare for a slow scan.
DEFAULT_LOOKBACK_S = 240.0


@dataclass
class FlowReport:
    started: int = 0
    already_started: int = 0  # the name was used by a closed execution: it ran already
    deleted: int = 0
    released: int = 0
    dead_lettered: int = 0  # a body that is not an envelope: it can start nothing
    start_failed: int = 0
    running: int = 0  # the last count, plus what this consumer started since
    peak_running: int = 0
    cap: int = 0
    counts: int = 0  # ListExecutions counts made

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def execution_name(message: ReceivedMessage, envelope: Envelope) -> str:
    """The message's deduplication id (64 hex characters, within the 80 a name may have)."""
    return message.attributes.get("MessageDeduplicationId") or envelope.dedup_id


@dataclass
class _Drain:
    queue: Queue
    dlq: Queue
    machine: StateMachine
    cap: int
    consumers: int
    report: FlowReport
    remaining_ms: Callable[[], float]
    reserve_ms: float
    poll_s: float
    sleep: Callable[[float], None]
    allowance: int = 0
    to_delete: list[str] = field(default_factory=list)

    def flush(self) -> None:
        handles, self.to_delete = self.to_delete, []
        if not handles:
            return
        try:
            refused = self.queue.delete_batch(handles)
        except AwsError:
            logger.exception("could not delete started messages; a redelivery is recognised by its name")
            refused = handles
        self.report.deleted += len(handles) - len(refused)

    def release(self, messages: list[ReceivedMessage]) -> None:
        if not messages:
            return
        try:
            self.queue.release(m.receipt_handle for m in messages)
        except AwsError:
            logger.exception("could not release messages; they reappear after the visibility timeout")
        self.report.released += len(messages)

    def room(self) -> bool:
        """True once this consumer may start one more; False when the budget ends first."""
        while self.allowance <= 0:
            running = self.machine.count_running(self.cap)
            self.report.counts += 1
            self.report.running = running
            self.report.peak_running = max(self.report.peak_running, running)
            if running < self.cap:
                self.allowance = -(-(self.cap - running) // self.consumers)
                break
            # Full: what was started so far may go before we wait (nothing of it is undone).
            self.flush()
            if self.remaining_ms() - self.poll_s * 1000 < self.reserve_ms:
                return False
            self.sleep(self.poll_s)
        return True

    def dead_letter(self, message: ReceivedMessage, reason: str) -> None:
        attributes = {"sluice_error": reason[:MAX_REASON_CHARS], "sluice_error_type": "envelope",
                      "sluice_source_message_id": message.message_id,
                      "sluice_receive_count": str(message.receive_count), "sluice_failed_at": _iso(_now())}
        self.dlq.send(OutgoingMessage(id="0", body=message.body, group_id=message.group_id or DEAD_LETTER_GROUP,
                                      dedup_id=hashlib.sha256(f"dlq:{message.message_id}".encode()).hexdigest(),
                                      attributes=attributes))
        self.report.dead_lettered += 1
        self.to_delete.append(message.receipt_handle)


def start_executions(
    queue: Queue, dlq: Queue, machine: StateMachine, *, cap: int, consumers: int = 1, max_rate: float = 200,
    remaining_ms: Callable[[], float], reserve_ms: float = 5000, wait_s: int = 1, poll_s: float = 2.0,
    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
) -> FlowReport:
    """One consumer's drain of a workflow lane (see the module docstring)."""
    report = FlowReport(cap=cap)
    share = max_rate / consumers
    bucket = TokenBucket(share, max(1.0, share), clock=clock, sleep=sleep)
    drain = _Drain(queue, dlq, machine, cap, consumers, report, remaining_ms, reserve_ms, poll_s, sleep)
    while remaining_ms() > reserve_ms:
        messages = queue.receive(max_messages=10, wait_s=wait_s)
        if not messages:
            break
        held = list(messages)
        blocked: set[str] = set()  # groups whose earlier message did not start: the rest waits
        try:
            while held:
                message = held[0]
                if message.group_id in blocked:
                    drain.release([held.pop(0)])
                    continue
                if not _start_one(drain, bucket, message, blocked):
                    break  # out of time: what is held is released below
                held.pop(0)
        finally:
            drain.flush()
            drain.release(held)
        if held:
            break
    logger.info("workflow drain finished", extra={"report": report.to_dict()})
    count("flow_started", report.started)
    return report


def _start_one(drain: _Drain, bucket: TokenBucket, message: ReceivedMessage, blocked: set[str]) -> bool:
    """Start (or recognise) one message's execution; False when time ran out before it."""
    try:
        envelope = Envelope.from_body(message.body)
    except EnvelopeError as exc:
        try:
            drain.dead_letter(message, f"malformed message body: {exc}")
        except AwsError:
            logger.exception("could not send to the DLQ; message stays in the queue")
            blocked.add(message.group_id)
            drain.release([message])
        return True
    if not drain.room():
        return False
    bucket.acquire()
    item = FlowItem.of(envelope, group=message.group_id, message_id=message.message_id)
    try:
        drain.machine.start(execution_name(message, envelope), item.execution_input())
    except ExecutionExistsError:
        logger.info("its execution ran already: deleting only", extra={"key": envelope.key})
        drain.report.already_started += 1
    except AwsError:
        logger.exception("could not start the execution; the message and the rest of its group wait")
        drain.report.start_failed += 1
        blocked.add(message.group_id)
        drain.release([message])
        return True
    else:
        drain.report.started += 1
        drain.allowance -= 1
        drain.report.running += 1
        drain.report.peak_running = max(drain.report.peak_running, drain.report.running)
    drain.to_delete.append(message.receipt_handle)
    return True


# -- failed executions -> the DLQ ------------------------------------------------------------------

@dataclass
class FailureReport:
    scanned: int = 0
    dead_lettered: int = 0
    send_failed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def flow_dlq_dedup_id(execution_arn: str) -> str:
    return hashlib.sha256(f"flow-dlq:{execution_arn}".encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dead_letter_failures(machine: StateMachine, dlq: Queue, *, lookback_s: float = DEFAULT_LOOKBACK_S,
                         max_run_s: float = 86400, now: datetime | None = None) -> FailureReport:
    """Send every execution that ended badly within ``lookback_s`` to the DLQ (see the module
    docstring). ``max_run_s`` bounds how long an execution may have run (the definition's
    TimeoutSeconds): older starts cannot have closed within the window, so the scan stops there."""
    now = now or _now()
    closed_after = now - timedelta(seconds=lookback_s)
    started_after = closed_after - timedelta(seconds=max_run_s)
    report = FailureReport()
    for status in FAILED_STATUSES:
        for execution in machine.executions(status):
            if execution.started < started_after:
                break  # newest start first: the rest started too early to have closed in the window
            if execution.stopped is None or execution.stopped < closed_after:
                continue
            report.scanned += 1
            try:
                _send_failure(machine, dlq, execution.arn, execution.status, execution.stopped)
            except AwsError:
                logger.exception("could not dead-letter a failed execution; the next scan tries again",
                                 extra={"execution": execution.arn})
                report.send_failed += 1
                continue
            report.dead_lettered += 1
    count("flow_failed", report.dead_lettered)
    return report


def _send_failure(machine: StateMachine, dlq: Queue, arn: str, status: str, stopped: datetime) -> None:
    failure = machine.failure(arn)
    raw_input = machine.execution_input(arn)
    try:
        item: FlowItem | None = FlowItem.from_input(json.loads(raw_input))
    except (ValueError, FlowItemError):
        item = None  # started by hand with another input: kept as it was, for a person to read
    reason = f"state {failure.state or '?'}: {failure.error}: {failure.reason}" if failure.cause else \
        f"state {failure.state or '?'}: {failure.error}"
    attributes = {
        "sluice_error": reason[:MAX_REASON_CHARS],
        "sluice_error_type": failure.error or f"flow_{status.lower()}",
        "sluice_source_message_id": item.message_id if item else "",
        "sluice_failed_at": _iso(stopped),
        "sluice_failed_state": failure.state,
        "sluice_execution_arn": arn,
        "sluice_execution_status": status,
    }
    dlq.send(OutgoingMessage(
        id="0", body=item.envelope().to_body() if item else raw_input,
        group_id=(item.group if item else "") or DEAD_LETTER_GROUP, dedup_id=flow_dlq_dedup_id(arn),
        attributes={k: v for k, v in attributes.items() if v}))
