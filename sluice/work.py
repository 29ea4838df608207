"""The worker's logic (DESIGN.md section 5), as plain Python the handler and the tests call.

Per message, in order: parse the envelope, find the task, validate the payload, then ONE
transaction = ledger row + task effect; commit; then delete the message. Deletes go in
DeleteMessageBatch calls of up to ten: a message's receipt handle joins the batch only after
its transaction committed (or its dead letter was sent), and the batch is flushed when it is
full, before a group's visibility is pushed out, before the rest is released for lack of time,
and before returning. A crash between commit and delete is harmless: the redelivered message
finds its ledger row (duplicate) and is deleted. Outcomes:

* done / duplicate: committed now / committed before (ledger row found) -> deleted.
* dead_lettered: retrying cannot help (bad body, unknown task, schema violation, business
  rule, refused by the database, or a transient failure on the last allowed receive) ->
  sent to the DLQ with the reason in message attributes, then deleted from the source.
* retry: transient failure (database down, deadlock, timeout) -> rolled back, visibility
  pushed out with backoff; the rest of that message's group waits the same time, so no
  later item of the group is committed before it. Messages left when time runs short are
  released at once. Retries are reported in ``batchItemFailures`` too, so the same code
  runs behind a plain SQS trigger with ReportBatchItemFailures.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools.utilities.data_classes import SQSEvent
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from sluice.apply import ItemRefusedError, apply_item, resolve
from sluice.aws import AwsError, OutgoingMessage, Queue
from sluice.backoff import SQS_MAX_VISIBILITY_S, VisibilityBackoff
from sluice.contract import DEAD_LETTERED, RETRY, Outcome, WorkerPayload, WorkerResponse, WorkerResult
from sluice.db import Database, DbUnavailableError, TransientDbError
from sluice.envelope import Envelope, EnvelopeError
from sluice.observability import MetricUnit, count, logger, metrics
from sluice.tasks import TransientTaskError, WorkItem

_MESSAGE_KEYS = ["message_id", "group", "task", "key"]
MAX_REASON_CHARS = 1000
MAX_MESSAGE_ATTRIBUTES = 10  # SQS's limit per message


@dataclass
class _BatchState:
    db_unavailable: DbUnavailableError | None = None


class _Deletions:
    """Receipt handles of messages whose outcome is final (committed, or in the DLQ), deleted
    ten per DeleteMessageBatch instead of one DeleteMessage each."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.handles: list[str] = []

    def add(self, receipt_handle: str) -> None:
        self.handles.append(receipt_handle)
        if len(self.handles) >= 10:
            self.flush()

    def flush(self) -> None:
        handles, self.handles = self.handles, []
        if not handles:
            return
        try:
            refused = self.queue.delete_batch(handles)
        except AwsError:
            logger.exception("could not delete a batch of messages; deleting them one by one")
            refused = handles
        for handle in refused:
            # Once more on its own; if that fails too the effect (or dead letter) is still safe:
            # a redelivery is recognised by the ledger / the DLQ dedup id.
            try:
                self.queue.delete(handle)
            except AwsError:
                logger.exception("could not delete a message; a redelivery will be recognised")
                count("delete_failed")


def dlq_dedup_id(source_dedup_id: str, message_id: str) -> str:
    """A fresh dedup id for the dead letter, stable for one source message (a retried send is not doubled)."""
    return hashlib.sha256(f"dlq:{source_dedup_id}:{message_id}".encode()).hexdigest()


def work(
    event: Mapping[str, Any],
    *,
    db: Database,
    queue: Queue,
    dlq: Queue,
    max_receive_count: int,
    remaining_ms: Callable[[], float],
    reserve_ms: float = 2000,
    backoff: VisibilityBackoff | None = None,
) -> WorkerPayload:
    """Apply one SQS-event-shaped batch; returns batchItemFailures and a result per message."""
    started = time.monotonic()
    backoff = backoff or VisibilityBackoff()
    records = list(SQSEvent(dict(event)).records)
    results: list[WorkerResult] = []
    batch = _BatchState()
    halted: dict[str, int] = {}  # group -> visibility seconds its remaining messages get
    deletions = _Deletions(queue)

    try:
        _work_records(records, results, batch, halted, deletions, db=db, queue=queue, dlq=dlq,
                      max_receive_count=max_receive_count, remaining_ms=remaining_ms,
                      reserve_ms=reserve_ms, backoff=backoff)
    finally:
        deletions.flush()

    elapsed_ms = (time.monotonic() - started) * 1000
    metrics.add_metric(name="worker_ms", unit=MetricUnit.Milliseconds, value=elapsed_ms)
    return WorkerResponse.of(results).to_payload()


def _work_records(records: list[SQSRecord], results: list[WorkerResult], batch: _BatchState,
                  halted: dict[str, int], deletions: _Deletions, *, db: Database, queue: Queue, dlq: Queue,
                  max_receive_count: int, remaining_ms: Callable[[], float], reserve_ms: float,
                  backoff: VisibilityBackoff) -> None:
    for index, record in enumerate(records):
        if remaining_ms() < reserve_ms:
            deletions.flush()  # finished messages first, while there is still time for it
            results += _release(queue, records[index:])
            break
        t0 = time.monotonic()
        group = record.attributes.message_group_id or ""
        logger.append_keys(message_id=record.message_id, group=group)
        try:
            if group in halted:
                # An earlier item of this group is waiting: applying this one now would break order.
                receive_count = int(record.attributes.approximate_receive_count or 1)
                if receive_count >= max_receive_count:
                    # Each hold-back cost it a receive; SQS would move it on the next one with no
                    # reason attached, so it goes now, with one.
                    outcome, _ = _dead_letter(
                        record, dlq, queue, deletions, "retries_exhausted",
                        f"held back {receive_count} times behind an earlier item of group {group!r} "
                        "that kept failing", receive_count, record.attributes.message_deduplication_id or "",
                        backoff)
                else:
                    _push_out(queue, record, halted[group], deletions)
                    outcome = RETRY
            else:
                outcome, delay = _handle(record, batch, deletions, db=db, queue=queue, dlq=dlq,
                                         max_receive_count=max_receive_count, backoff=backoff)
                if outcome == RETRY:
                    halted[group] = delay
        finally:
            logger.remove_keys(_MESSAGE_KEYS)
        count(outcome.metric)
        results.append(WorkerResult(record.message_id, outcome, round((time.monotonic() - t0) * 1000, 1)))


def _handle(record: SQSRecord, batch: _BatchState, deletions: _Deletions, *, db: Database, queue: Queue,
            dlq: Queue, max_receive_count: int, backoff: VisibilityBackoff) -> tuple[Outcome, int]:
    """One message end to end. Returns (outcome, visibility delay when the outcome is retry)."""
    receive_count = int(record.attributes.approximate_receive_count or 1)
    source_dedup = record.attributes.message_deduplication_id or ""
    try:
        outcome = _apply(record, batch, db, receive_count)
    except ItemRefusedError as exc:
        reason = str(exc)
        logger.warning("permanent failure: dead-lettering",
                       extra={"error_type": exc.error_type, "reason": reason})
        return _dead_letter(record, dlq, queue, deletions, exc.error_type, reason, receive_count,
                            source_dedup, backoff)
    except Exception as exc:  # transient: the database, or a bug a deploy may fix
        reason = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, TransientDbError | TransientTaskError):
            logger.exception("unexpected error applying message; treated as transient")
        if receive_count >= max_receive_count:
            # SQS would move it to the DLQ on the next receive, without a reason; do it ourselves, with one.
            return _dead_letter(record, dlq, queue, deletions, "retries_exhausted",
                                f"still failing after {receive_count} receives: {reason}",
                                receive_count, source_dedup, backoff)
        delay = backoff.seconds(receive_count)
        if isinstance(exc, TransientTaskError) and exc.retry_after_s is not None:
            # The task knows better (a vendor's Retry-After): hidden that long, within SQS's range.
            delay = min(SQS_MAX_VISIBILITY_S, math.ceil(exc.retry_after_s))
        logger.warning("transient failure: retrying later", extra={"reason": reason, "retry_in_s": delay,
                                                                    "receive_count": receive_count})
        _push_out(queue, record, delay, deletions)
        return RETRY, delay
    deletions.add(record.receipt_handle)  # committed: now it may go
    return outcome, 0


def _apply(record: SQSRecord, batch: _BatchState, db: Database, receive_count: int) -> Outcome:
    """Validate, then the one transaction. Raises ItemRefusedError, TransientDbError or anything unexpected."""
    try:
        envelope = Envelope.from_body(record.body)
    except EnvelopeError as exc:
        raise ItemRefusedError("envelope", f"malformed message body: {exc}") from None
    logger.append_keys(task=envelope.task, key=envelope.key)
    task, payload = resolve(envelope.task, envelope.payload)
    item = WorkItem(task=envelope.task, key=envelope.key, dedup_id=envelope.dedup_id,
                    message_id=record.message_id, group_id=record.attributes.message_group_id or "",
                    receive_count=receive_count, enqueued_at=envelope.enqueued_at, trace_id=envelope.trace_id)
    if batch.db_unavailable is not None:
        # Once a connect failed, the next attempts in this same invocation would only burn the
        # budget on connect timeouts; they retry later with the same backoff instead.
        raise batch.db_unavailable
    try:
        return apply_item(db, task, payload, item)
    except DbUnavailableError as exc:
        batch.db_unavailable = exc
        raise


def _dead_letter(record: SQSRecord, dlq: Queue, queue: Queue, deletions: _Deletions, error_type: str,
                 reason: str, receive_count: int, source_dedup: str,
                 backoff: VisibilityBackoff) -> tuple[Outcome, int]:
    group = record.attributes.message_group_id or "sluice-dead-letters"
    attributes = {
        "sluice_error": reason[:MAX_REASON_CHARS],
        "sluice_error_type": error_type,
        "sluice_source_message_id": record.message_id,
        "sluice_receive_count": str(receive_count),
        "sluice_failed_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    # Keep the original attributes too, as far as SQS's per-message limit allows.
    for name, attribute in record.message_attributes.items():
        if len(attributes) >= MAX_MESSAGE_ATTRIBUTES:
            break
        if attribute is not None and attribute.string_value is not None and name not in attributes:
            attributes[name] = attribute.string_value
    try:
        dedup = dlq_dedup_id(source_dedup, record.message_id)
        dlq.send(OutgoingMessage(id="0", body=record.body, group_id=group, dedup_id=dedup,
                                 attributes=attributes))
    except AwsError:
        # Not in the DLQ yet, so it must not leave the source: retry it like a transient failure.
        logger.exception("could not send to the DLQ; message stays in the queue")
        delay = backoff.seconds(receive_count)
        _push_out(queue, record, delay, deletions)
        return RETRY, delay
    deletions.add(record.receipt_handle)  # in the DLQ: now it may leave the source
    return DEAD_LETTERED, 0


def _push_out(queue: Queue, record: SQSRecord, seconds: int, deletions: _Deletions) -> None:
    # Finished messages are deleted before a group is held back, so what is left in flight
    # while it waits is only what still has to run.
    deletions.flush()
    try:
        queue.change_visibility(record.receipt_handle, seconds)
    except AwsError:
        # Harmless: it reappears after the queue's own visibility timeout instead.
        logger.exception("could not change the message's visibility")


def _release(queue: Queue, records: list[SQSRecord]) -> list[WorkerResult]:
    """Out of time: hand the rest back at once (visibility 0) instead of running past the timeout."""
    logger.warning("time is short: releasing the rest of the batch", extra={"released": len(records)})
    try:
        queue.release(r.receipt_handle for r in records)
    except AwsError:
        logger.exception("could not release messages; they reappear after the visibility timeout")
    for _ in records:
        count(RETRY.metric)
    return [WorkerResult(r.message_id, RETRY) for r in records]
