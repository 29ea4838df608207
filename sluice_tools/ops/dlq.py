"""Dead-letter queue operations: list, redrive (FIFO-safe) and purge.

SQS has no peek: a message is read by receiving it, which hides it for the visibility
timeout and, on a FIFO queue, hides the rest of its group behind it. So ``list`` receives
with a short visibility and releases every message at once when done; what sits behind a
listed message in the same group cannot be seen in that pass and is counted as "not shown".

``redrive`` re-sends one message at a time to the source queue with the SAME group id
(order within a group holds) and a FRESH deduplication id (the original one may still be in
SQS's 5-minute dedup window, which would silently drop the re-send), and deletes it from the
DLQ only after the re-send succeeded. The fresh id is derived from the DLQ message id, so a
redrive interrupted between send and delete and run again within the window is deduplicated
by SQS instead of enqueued twice. The worker's ledger is keyed by task+key, not by the SQS
dedup id, and a dead-lettered item never got a ledger row: a redriven item applies once if
it never applied, and is only deleted if it somehow did.

Workflow lanes: a failed execution's dead letter (sluice/flows.py) also says the state it failed
in, its execution and how it ended (FAILED, TIMED_OUT, ABORTED); ``DeadLetter`` carries them.
A workflow lane names each execution after the message's dedup id, so the fresh one of a
redrive starts a fresh execution: the item's steps that had applied are duplicates in the
ledger, and the failed step and what follows it run again.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sluice.aws import AwsError, OutgoingMessage, Queue, ReceivedMessage
from sluice.envelope import Envelope, EnvelopeError

# Message attributes the worker writes when it dead-letters a message (sluice.work._dead_letter).
REASON_ATTRIBUTES = ("sluice_error",)
ERROR_TYPE_ATTRIBUTES = ("sluice_error_type",)
ATTEMPTS_ATTRIBUTES = ("sluice_receive_count",)
DEAD_LETTERED_AT_ATTRIBUTES = ("sluice_failed_at",)
# And those a workflow lane's failed execution adds (sluice.flows._send_failure).
FAILED_STATE_ATTRIBUTES = ("sluice_failed_state",)
EXECUTION_ARN_ATTRIBUTES = ("sluice_execution_arn",)
EXECUTION_STATUS_ATTRIBUTES = ("sluice_execution_status",)
# Attributes that describe the dead-lettering; a redriven message starts without them.
_DLQ_ONLY_ATTRIBUTES = frozenset(
    REASON_ATTRIBUTES + ERROR_TYPE_ATTRIBUTES + ATTEMPTS_ATTRIBUTES + DEAD_LETTERED_AT_ATTRIBUTES
    + FAILED_STATE_ATTRIBUTES + EXECUTION_ARN_ATTRIBUTES + EXECUTION_STATUS_ATTRIBUTES
) | {"sluice_source_message_id", "sluice_redriven_at"}
MOVED_BY_SQS = "moved by SQS after too many receives (maxReceiveCount): the worker never finished it"
# Seconds a listed message stays hidden at most if `list` dies before releasing it.
LIST_VISIBILITY_S = 20
REDRIVE_VISIBILITY_S = 60


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    group: str
    task: str
    key: str
    reason: str
    error_type: str
    attempts: int | None
    enqueued_at: str
    dead_lettered_at: str
    age_s: float | None
    body: str = field(repr=False)
    receipt_handle: str = field(repr=False)
    message_attributes: dict[str, Any] = field(repr=False, default_factory=dict)
    # A failed execution's (a workflow lane's dead letter); "" for a worker's.
    failed_state: str = ""
    execution_arn: str = ""
    execution_status: str = ""

    @property
    def from_execution(self) -> bool:
        return bool(self.execution_arn)

    @property
    def cause(self) -> str:
        """The reason without its "state S: " prefix, for a listing that shows the state apart."""
        prefix = f"state {self.failed_state or '?'}: "
        return self.reason.removeprefix(prefix) if self.from_execution else self.reason

    def to_dict(self) -> dict[str, Any]:
        found = {"message_id": self.message_id, "group": self.group, "task": self.task, "key": self.key,
                 "reason": self.reason, "error_type": self.error_type, "attempts": self.attempts,
                 "enqueued_at": self.enqueued_at,
                 "dead_lettered_at": self.dead_lettered_at, "age_s": self.age_s}
        if self.from_execution:  # a worker's dead letter keeps exactly the keys it always had
            found.update(failed_state=self.failed_state, execution_arn=self.execution_arn,
                         execution_status=self.execution_status)
        return found


def _attribute(message: ReceivedMessage, names: tuple[str, ...]) -> str:
    for name in names:
        value = message.message_attributes.get(name)
        if value and value.get("StringValue") is not None:
            return str(value["StringValue"])
    return ""


def _parse_time(text: str) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            return datetime.fromtimestamp(float(text) / (1000 if float(text) > 1e11 else 1), UTC)
        except ValueError:
            return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def describe(message: ReceivedMessage, now: datetime | None = None) -> DeadLetter:
    now = now or datetime.now(UTC)
    try:
        envelope: Envelope | None = Envelope.from_body(message.body)
    except EnvelopeError:
        envelope = None
    reason = _attribute(message, REASON_ATTRIBUTES) or MOVED_BY_SQS
    attempts_text = _attribute(message, ATTEMPTS_ATTRIBUTES)
    attempts = int(attempts_text) if attempts_text.isdigit() else None
    dead_at = _parse_time(_attribute(message, DEAD_LETTERED_AT_ATTRIBUTES))
    if dead_at is None and message.sent_timestamp_ms:
        dead_at = datetime.fromtimestamp(message.sent_timestamp_ms / 1000, UTC)
    enqueued = _parse_time(envelope.enqueued_at) if envelope else None
    oldest = enqueued or dead_at
    return DeadLetter(
        message_id=message.message_id,
        group=message.group_id,
        task=envelope.task if envelope else "?",
        key=envelope.key if envelope else "?",
        reason=reason if envelope else f"{reason} (body is not a sluice envelope)",
        error_type=_attribute(message, ERROR_TYPE_ATTRIBUTES) or ("max_receives" if reason == MOVED_BY_SQS
                                                                  else ""),
        attempts=attempts,
        enqueued_at=envelope.enqueued_at if envelope else "",
        dead_lettered_at=dead_at.isoformat(timespec="seconds") if dead_at else "",
        age_s=round((now - oldest).total_seconds(), 1) if oldest else None,
        body=message.body,
        receipt_handle=message.receipt_handle,
        message_attributes=dict(message.message_attributes),
        failed_state=_attribute(message, FAILED_STATE_ATTRIBUTES),
        execution_arn=_attribute(message, EXECUTION_ARN_ATTRIBUTES),
        execution_status=_attribute(message, EXECUTION_STATUS_ATTRIBUTES),
    )


def depth(queue: Queue) -> int:
    attributes = queue.attributes(["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
    return int(attributes.get("ApproximateNumberOfMessages", 0)) + int(
        attributes.get("ApproximateNumberOfMessagesNotVisible", 0))


@dataclass
class Listing:
    letters: list[DeadLetter]
    depth: int

    @property
    def not_shown(self) -> int:
        return max(0, self.depth - len(self.letters))


def list_dead_letters(dlq: Queue, limit: int = 100, empty_receives: int = 2) -> Listing:
    """Receive up to ``limit`` messages with a short visibility, describe them, release them all."""
    total = depth(dlq)
    held: list[ReceivedMessage] = []
    seen: set[str] = set()
    empties = 0
    try:
        while len(held) < limit and empties < empty_receives:
            batch = dlq.receive(max_messages=min(10, limit - len(held)), wait_s=0,
                                visibility_s=LIST_VISIBILITY_S)
            fresh = [m for m in batch if m.message_id not in seen]
            if not fresh:
                empties += 1
                continue
            empties = 0
            for m in fresh:
                seen.add(m.message_id)
                held.append(m)
    finally:
        if held:
            dlq.release(m.receipt_handle for m in held)
    return Listing(letters=[describe(m) for m in held], depth=total)


def redrive_dedup_id(letter: DeadLetter) -> str:
    """Fresh for SQS (differs from the original task:key hash), stable for one DLQ message."""
    return hashlib.sha256(f"redrive:{letter.message_id}:{letter.task}:{letter.key}".encode()).hexdigest()


@dataclass
class RedriveReport:
    dry_run: bool
    redriven: list[DeadLetter] = field(default_factory=list)
    skipped: int = 0
    failed: list[tuple[DeadLetter, str]] = field(default_factory=list)
    # Dead letters never received: queued behind a held (not moved) message of their FIFO group.
    not_seen: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "redriven" if not self.dry_run else "would_redrive": [x.to_dict() for x in self.redriven],
            "count": len(self.redriven),
            "skipped": self.skipped,
            "not_seen": self.not_seen,
            "failed": [{**x.to_dict(), "error": e} for x, e in self.failed],
        }


Selector = Callable[[DeadLetter], bool]


def select(*, everything: bool = False, key: str | None = None, since: datetime | None = None) -> Selector:
    def chosen(letter: DeadLetter) -> bool:
        if everything:
            return True
        if key is not None and letter.key != key:
            return False
        if since is not None:
            at = _parse_time(letter.dead_lettered_at)
            if at is None or at < since:
                return False
        return key is not None or since is not None

    return chosen


def redrive(dlq: Queue, source: Queue, chosen: Selector, *, dry_run: bool = False,
            limit: int | None = None, empty_receives: int = 2) -> RedriveReport:
    """Move the chosen dead letters back to ``source``; see the module docstring for the guarantees."""
    report = RedriveReport(dry_run=dry_run)
    held: list[ReceivedMessage] = []  # received, not moved: released at the end
    seen: set[str] = set()
    empties = 0
    undeleted = 0  # re-sent, but the DLQ delete failed: still in flight there
    try:
        while empties < empty_receives and (limit is None or len(report.redriven) < limit):
            batch = [m for m in dlq.receive(max_messages=10, wait_s=0, visibility_s=REDRIVE_VISIBILITY_S)
                     if m.message_id not in seen]
            if not batch:
                empties += 1
                continue
            empties = 0
            for message in batch:
                seen.add(message.message_id)
                letter = describe(message)
                if dry_run or not chosen(letter) or (limit is not None and len(report.redriven) >= limit):
                    if chosen(letter) and dry_run:
                        report.redriven.append(letter)
                    else:
                        report.skipped += 1
                    held.append(message)
                    continue
                try:
                    _move(letter, source)
                except AwsError as exc:
                    report.failed.append((letter, str(exc)))
                    held.append(message)
                    continue
                # Only now is it safe to drop the dead letter: the item is back in the source queue.
                try:
                    dlq.delete(message.receipt_handle)
                except AwsError as exc:
                    note = "re-sent but not deleted from the DLQ (a redrive within 5 min is deduplicated)"
                    report.failed.append((letter, f"{note}: {exc}"))
                    undeleted += 1
                    continue
                report.redriven.append(letter)
        # Counted while the held ones are still in flight: what the DLQ holds beyond them was never
        # received, so the selection could not be checked against it.
        report.not_seen = max(0, depth(dlq) - len(held) - undeleted)
    finally:
        if held:
            dlq.release(m.receipt_handle for m in held)
    return report


def _move(letter: DeadLetter, source: Queue) -> None:
    attributes = {
        name: value["StringValue"]
        for name, value in letter.message_attributes.items()
        if name not in _DLQ_ONLY_ATTRIBUTES and value.get("DataType", "String").startswith("String")
        and value.get("StringValue") is not None
    }
    attributes["sluice_redriven_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    source.send(OutgoingMessage(id="0", body=letter.body, group_id=letter.group,
                                dedup_id=redrive_dedup_id(letter), attributes=attributes))


def purge(dlq: Queue) -> int:
    """Delete every message in the DLQ; returns how many there were."""
    count = depth(dlq)
    dlq.purge()
    return count


def wait_until_empty(queue: Queue, timeout_s: float) -> bool:
    """Poll until the queue holds nothing (visible or in flight), or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if depth(queue) == 0:
            return True
        time.sleep(0.2)
    return depth(queue) == 0
