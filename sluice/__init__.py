"""sluice: bursts of work in, a steady capped flow into a small MariaDB or a vendor's API out.

The task API (DESIGN.md section 10) is what an application imports::

    from sluice import task, Transaction, WorkItem, PermanentTaskError, TransientTaskError

The names load on first use (PEP 562), so a handler that imports one submodule (the
consumer imports ``sluice.drain``) does not pay for the database driver or pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "PermanentTaskError": "sluice.tasks",
    "TaskError": "sluice.tasks",
    "Transaction": "sluice.db",
    "TransientTaskError": "sluice.tasks",
    "WorkItem": "sluice.tasks",
    "task": "sluice.tasks",
    "task_settings": "sluice.tasks",
}

__all__ = [
    "PermanentTaskError",
    "TaskError",
    "Transaction",
    "TransientTaskError",
    "WorkItem",
    "task",
    "task_settings",
]

if TYPE_CHECKING:
    from sluice.db import Transaction
    from sluice.tasks import PermanentTaskError, TaskError, TransientTaskError, WorkItem, task, task_settings


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sluice' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
