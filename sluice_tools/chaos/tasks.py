"""A test-only task for the chaos suite, registered only when a deployment asks for it
(``SLUICE_EXTRA_TASK_MODULES=sluice_tools.chaos.tasks``; never in config files).

``chaos.apply`` appends one row per application to ``chaos_effects`` - a table with NO unique
key, so an item applied twice shows as two rows instead of being hidden by a constraint. Its
payload can make it pause at a known point, so a test can kill the worker process there:

* ``pause: "before_commit"`` - inside the transaction, after the effect row is written;
* ``pause: "after_commit"`` - after the commit, before the message is deleted;
* ``slow_receives: N`` with ``sleep_ms`` - sleep on the first N receives (a worker timeout).

On reaching a pause it writes ``<SLUICE_CHAOS_DIR>/<key>.<pause>`` holding its pid, then sleeps.
An item pauses at a point once: on its first receive, and only while that marker does not exist
(a flow's step always sees receive count 1, and its retry must not pause again).
``poison: true`` fails permanently (the item must end in the DLQ with this reason).

The chaos workflow (sluice_tools/chaos/flow.asl.json) runs ``chaos.apply`` and then
``chaos.confirm`` as steps. ``chaos.confirm`` takes the same payload and appends one row per
application to ``chaos_confirms`` (no unique key either); ``pause_step: "confirm"`` moves the
pause into that step. In a step, ``after_commit`` is after the step's commit, before the step
Lambda returns its output.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sluice import PermanentTaskError, Transaction, WorkItem, step, task, work

EFFECTS_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS chaos_effects (
    id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    item_key   VARCHAR(256)    NOT NULL,
    group_id   VARCHAR(128)    NOT NULL,
    seq        INT             NOT NULL,
    pid        INT             NOT NULL,
    applied_at DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    KEY chaos_effects_key (item_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4
"""
CONFIRMS_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS chaos_confirms (
    id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    item_key   VARCHAR(256)    NOT NULL,
    pid        INT             NOT NULL,
    applied_at DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    KEY chaos_confirms_key (item_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4
"""
PAUSE_S = 60.0  # long enough for any test to kill the process; a pause is never meant to end


class ChaosPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: int = Field(ge=0)
    poison: bool = False
    pause: Literal["none", "before_commit", "after_commit"] = "none"
    sleep_ms: int = Field(0, ge=0, le=120_000)
    slow_receives: int = Field(0, ge=0)
    pause_step: Literal["apply", "confirm"] = "apply"  # which step of the chaos flow pauses


_pause_after_commit: set[str] = set()  # keys of committed items whose delete should wait


def _marker(key: str, point: str) -> Path | None:
    directory = os.environ.get("SLUICE_CHAOS_DIR", "")
    return Path(directory) / f"{key}.{point}" if directory else None


def _pauses(payload: ChaosPayload, item: WorkItem, point: str, in_step: str) -> bool:
    """True the first time ``item`` reaches ``point`` in ``in_step`` (see the module docstring)."""
    if payload.pause != point or payload.pause_step != in_step or item.receive_count != 1:
        return False
    marker = _marker(item.key, point)
    return marker is None or not marker.exists()


def _reach(key: str, point: str) -> None:
    """Say where this process is (for the test to kill it), then wait to be killed."""
    marker = _marker(key, point)
    if marker is not None:
        marker.with_suffix(".tmp").write_text(str(os.getpid()))
        marker.with_suffix(".tmp").rename(marker)
    time.sleep(PAUSE_S)


@task("chaos.apply", ChaosPayload)
def apply_chaos(tx: Transaction, payload: ChaosPayload, item: WorkItem) -> None:
    if payload.poison:
        raise PermanentTaskError(f"poison item {item.key}: refused on purpose by the chaos suite")
    tx.execute("INSERT INTO chaos_effects (item_key, group_id, seq, pid) VALUES (%s, %s, %s, %s)",
               (item.key, item.group_id, payload.seq, os.getpid()))
    if payload.sleep_ms and item.receive_count <= payload.slow_receives:
        time.sleep(payload.sleep_ms / 1000)
    _pause_where_asked(payload, item, "apply")


@task("chaos.confirm", ChaosPayload)
def confirm_chaos(tx: Transaction, payload: ChaosPayload, item: WorkItem) -> None:
    tx.execute("INSERT INTO chaos_confirms (item_key, pid) VALUES (%s, %s)", (item.key, os.getpid()))
    _pause_where_asked(payload, item, "confirm")


def _pause_where_asked(payload: ChaosPayload, item: WorkItem, in_step: str) -> None:
    if _pauses(payload, item, "before_commit", in_step):
        _reach(item.key, "before_commit")
    if _pauses(payload, item, "after_commit", in_step):
        _pause_after_commit.add(item.key)


def _pause_if_asked() -> None:
    if _pause_after_commit:
        key = _pause_after_commit.pop()
        _pause_after_commit.clear()
        _reach(key, "after_commit")


# The hook sits exactly between commit and delete. The worker deletes either one message at a
# time (``_delete``) or in batches of handles of committed messages (``_Deletions.flush``); both
# are looked up at call time, so wrapping them here is enough.
if hasattr(work, "_Deletions"):
    _original_flush = work._Deletions.flush

    def _flush_after_pause(self: Any) -> None:
        if self.handles:
            _pause_if_asked()
        _original_flush(self)

    work._Deletions.flush = _flush_after_pause  # type: ignore[method-assign]
else:
    _original_delete = work._delete  # type: ignore[attr-defined]

    def _delete_after_pause(queue: Any, record: Any) -> None:
        _pause_if_asked()
        _original_delete(queue, record)

    work._delete = _delete_after_pause  # type: ignore[attr-defined]


# A flow's step has no delete: its after_commit is once the step's transaction committed, before
# the step Lambda answers (sluice.step looks apply_item up at call time).
_original_apply_item = step.apply_item


def _apply_then_pause(*args: Any, **kwargs: Any) -> Any:
    outcome = _original_apply_item(*args, **kwargs)
    _pause_if_asked()
    return outcome


step.apply_item = _apply_then_pause
