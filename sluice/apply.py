"""Applying one item exactly once: the worker's core, shared with a workflow's step Lambda.

``resolve`` finds the task and validates the payload; ``apply_item`` runs the ONE
transaction: the ledger row (``sluice.db.claim``) and the task's effect commit together, so a
second application of the same ledger key finds the row and does nothing (``DUPLICATE``).
What retrying cannot help comes out as ``ItemRefusedError`` with an error type (the DLQ's
``sluice_error_type``); a transient failure (``TransientDbError``, ``TransientTaskError``)
and anything unexpected propagate for the caller's retry policy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sluice.contract import DONE, DUPLICATE, Outcome
from sluice.db import Database, DbError, TransientDbError, claim
from sluice.observability import logger
from sluice.tasks import PayloadError, PermanentTaskError, Task, UnknownTaskError, WorkItem, get_task

if TYPE_CHECKING:  # payloads are the task modules' pydantic models; they load with the tasks
    from pydantic import BaseModel


class ItemRefusedError(Exception):
    """Retrying cannot help: a malformed message, an unknown task, a payload off its schema, a
    business rule, or a statement the database refused. ``error_type`` says which."""

    def __init__(self, error_type: str, reason: str) -> None:
        super().__init__(reason)
        self.error_type = error_type


def resolve(task_name: str, payload: Any) -> tuple[Task, BaseModel]:
    """The registered task and the payload validated against its schema."""
    try:
        task = get_task(task_name)
        return task, task.parse(payload)
    except UnknownTaskError as exc:
        raise ItemRefusedError("unknown_task", str(exc)) from None
    except PayloadError as exc:
        raise ItemRefusedError("payload", f"payload does not match {task_name}: {exc}") from None


def apply_item(db: Database, task: Task, payload: BaseModel, item: WorkItem) -> Outcome:
    """Ledger row for ``item.dedup_id`` + the task's effect, in one transaction."""
    try:
        with db.transaction() as tx:
            if not claim(tx, dedup_id=item.dedup_id, task=item.task, item_key=item.key,
                         message_id=item.message_id, group_id=item.group_id):
                logger.info("already applied (ledger row present): not applied again")
                return DUPLICATE
            task.function(tx, payload, item)
    except PermanentTaskError as exc:
        raise ItemRefusedError("business", str(exc) or type(exc).__name__) from None
    except TransientDbError:
        raise
    except DbError as exc:
        raise ItemRefusedError("database", f"the database refused the item: {exc}") from None
    logger.info("applied")
    return DONE
