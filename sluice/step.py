"""A workflow's step: one sluice task applied to one item, exactly once (DESIGN.md section 13).

A Task state calls the step Lambda (worker/step.py) with ``{"task": <task>, "item": $.item}``;
``task`` may differ from the item's own (an order's flow runs ``order.save``, then
``ledger.post``) and defaults to it. The step applies with the worker's ledger, errors and
idempotency keys (``sluice.apply``): its ledger key is the item's dedup id for the item's own
task (so an item applies once whether a worker or a flow ran it) and
``sha256(step:<item dedup id>:<task>)`` for any other task, so each step of each item applies
once; the task sees that key as ``WorkItem.dedup_id``, its idempotency key for a vendor.

Outcomes as the state machine sees them:

* applied, or applied before (ledger row present): the same output, ``{"task", "ledger_id"}``,
  so a retried or redriven execution goes on as if the step ran now;
* retrying cannot help (a business rule, unknown task, payload off its schema, a statement
  the database refused, a malformed event): the Lambda fails with error
  ``sluice.PermanentTaskError`` and the reason as the message (the ``Cause``): Catch it;
* not now (database down, deadlock, a vendor's 429/5xx, anything unexpected): error
  ``sluice.TransientTaskError``: Retry it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from sluice.apply import ItemRefusedError, apply_item, resolve
from sluice.db import Database
from sluice.flowitem import FlowItem, FlowItemError
from sluice.observability import count, logger
from sluice.tasks import WorkItem

PERMANENT_ERROR = "sluice.PermanentTaskError"
TRANSIENT_ERROR = "sluice.TransientTaskError"


class PermanentStepError(Exception):
    """The step failed for good: ASL sees its error name PERMANENT_ERROR."""


class TransientStepError(Exception):
    """The step failed for now: ASL sees its error name TRANSIENT_ERROR."""


# Lambda reports a failed invocation's errorType as the exception class's __name__, and that is
# the name Step Functions matches in Retry and Catch: namespaced like States.*, as ASL does.
PermanentStepError.__name__ = PermanentStepError.__qualname__ = PERMANENT_ERROR
TransientStepError.__name__ = TransientStepError.__qualname__ = TRANSIENT_ERROR


def step_ledger_id(item: FlowItem, task: str) -> str:
    if task == item.task:
        return item.dedup_id
    return hashlib.sha256(f"step:{item.dedup_id}:{task}".encode()).hexdigest()


def run_step(event: Mapping[str, Any], *, db: Database) -> dict[str, str]:
    """Apply the step ``event`` names; returns its output or raises a Step error (see module doc)."""
    try:
        item = FlowItem.from_input(event)
    except FlowItemError as exc:
        raise PermanentStepError(f"envelope: malformed step input: {exc}") from None
    step_task = event.get("task", item.task)
    if not isinstance(step_task, str) or not step_task:
        raise PermanentStepError("envelope: the step's 'task' must be a task name")
    ledger_id = step_ledger_id(item, step_task)
    logger.append_keys(task=step_task, key=item.key, group=item.group, message_id=item.message_id)
    try:
        task, payload = resolve(step_task, item.payload)
        work_item = WorkItem(task=step_task, key=item.key, dedup_id=ledger_id, message_id=item.message_id,
                             group_id=item.group, receive_count=1, enqueued_at=item.enqueued_at,
                             trace_id=item.trace_id)
        outcome = apply_item(db, task, payload, work_item)
    except ItemRefusedError as exc:
        logger.warning("step refused", extra={"error_type": exc.error_type, "reason": str(exc)})
        count("step_refused")
        raise PermanentStepError(f"{exc.error_type}: {exc}") from None
    except Exception as exc:  # transient: the database, a vendor, or a bug a deploy may fix
        logger.warning("step failed for now", extra={"reason": f"{type(exc).__name__}: {exc}"})
        count("step_retry")
        raise TransientStepError(f"{type(exc).__name__}: {exc}") from None
    finally:
        logger.remove_keys(["task", "key", "group", "message_id"])
    count(f"step_{outcome.metric}")
    return {"task": step_task, "ledger_id": ledger_id}
