"""The task registry: a task names itself, declares its payload schema and its function.

    @task("invoice.record", InvoicePayload)
    def record_invoice(tx: Transaction, payload: InvoicePayload, item: WorkItem) -> None: ...

The enqueuer validates payloads against the schema (all-or-nothing, at enqueue time); the
worker validates again (a message may come from elsewhere) and calls the function inside
the transaction that also writes the ledger row.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

# Modules that register tasks when imported; handlers load them once per container.
# SLUICE_EXTRA_TASK_MODULES (comma-separated) adds more, e.g. a test-only slow task.
TASK_MODULES: tuple[str, ...] = ("worker.tasks",) + tuple(
    m.strip() for m in os.environ.get("SLUICE_EXTRA_TASK_MODULES", "").split(",") if m.strip()
)


class UnknownTaskError(LookupError):
    """No task of that name is registered."""


class PayloadError(ValueError):
    """A payload does not match its task's schema; the message lists every field at fault."""


class PermanentTaskError(Exception):
    """The payload is well-formed but breaks a business rule: retrying cannot help (-> DLQ)."""


@dataclass(frozen=True)
class Task:
    name: str
    schema: type[BaseModel]
    function: Callable[..., Any]

    def parse(self, payload: Any) -> BaseModel:
        try:
            return self.schema.model_validate(payload)
        except ValidationError as exc:
            raise PayloadError(describe_validation(exc)) from None


def describe_validation(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}" for e in exc.errors(include_url=False)
    )


_registry: dict[str, Task] = {}


def task(name: str, schema: type[BaseModel]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``function`` as the task ``name`` with payload ``schema``."""

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        existing = _registry.get(name)
        if existing is not None and existing.function is not function:
            raise ValueError(f"task {name!r} is registered twice")
        _registry[name] = Task(name, schema, function)
        return function

    return register


def load_tasks(modules: tuple[str, ...] = TASK_MODULES) -> dict[str, Task]:
    for module in modules:
        importlib.import_module(module)
    return dict(_registry)


def get_task(name: str) -> Task:
    if not _registry:
        load_tasks()
    try:
        return _registry[name]
    except KeyError:
        known = ", ".join(sorted(_registry)) or "none"
        raise UnknownTaskError(f"unknown task {name!r} (known: {known})") from None
