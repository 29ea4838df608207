"""The task API: what an application's task module uses (re-exported from ``sluice``).

    from sluice import task, Transaction, WorkItem, PermanentTaskError, TransientTaskError

    @task("reminder.send", Reminder)
    def send_reminder(tx: Transaction, payload: Reminder, item: WorkItem) -> None:
        tx.execute("INSERT INTO reminders (item_key, ...) VALUES (%s, ...)", (item.key, ...))

A task names itself, declares its payload schema (a pydantic model) and its function. The
enqueuer validates payloads against the schema (all-or-nothing, at enqueue time); the worker
validates again (a message may come from elsewhere) and calls the function inside the
transaction that also writes the ledger row, so the effect and "applied" commit together.

Which modules hold tasks is configuration (``tasks:`` in ``config/<stage>.yml``), handed to
the handlers as ``SLUICE_TASK_MODULES``; ``SLUICE_EXTRA_TASK_MODULES`` adds more for one
deployment (a test-only task, the chaos suite's). Errors a task raises are part of the API:

* ``PermanentTaskError``: retrying cannot help (a business rule, a vendor's 4xx) -> the item
  goes to the DLQ with the error's text as its reason.
* ``TransientTaskError``: not now (a vendor's 429 or 5xx, a timeout) -> retried later; with
  ``retry_after_s`` (a vendor's Retry-After) the message stays hidden that long, else the
  worker's backoff decides. After ``queue.max_receive_count`` receives it is dead-lettered.
* anything else: treated as transient until ``queue.max_receive_count``, then dead-lettered
  with the exception's type and text.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the schemas are the task modules' own: they import pydantic when they load
    from pydantic import BaseModel, ValidationError

TASK_MODULES_ENV = "SLUICE_TASK_MODULES"
EXTRA_TASK_MODULES_ENV = "SLUICE_EXTRA_TASK_MODULES"
TASK_SETTINGS_ENV = "SLUICE_TASK_SETTINGS"


class UnknownTaskError(LookupError):
    """No task of that name is registered."""


class PayloadError(ValueError):
    """A payload does not match its task's schema; the message lists every field at fault."""


class TaskModuleError(ImportError):
    """A configured task module cannot be imported; the message names it and why."""


class TaskError(Exception):
    """Base of the errors a task raises on purpose."""


class PermanentTaskError(TaskError):
    """Retrying cannot help (a business rule, a vendor refusing the request): -> DLQ with this text."""


class TransientTaskError(TaskError):
    """Not now: retry later. ``retry_after_s`` (e.g. a vendor's Retry-After) sets how long the
    message stays hidden; None leaves it to the worker's backoff."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        if retry_after_s is not None and retry_after_s < 0:
            retry_after_s = 0
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class WorkItem:
    """What a task function may know about the message it applies.

    ``dedup_id`` is stable for the item (hex SHA-256 of task:key): pass it to a vendor as the
    idempotency key, so a redelivered message calling again has one effect there."""

    task: str
    key: str
    dedup_id: str
    message_id: str
    group_id: str
    receive_count: int
    enqueued_at: str
    trace_id: str


@dataclass(frozen=True)
class Task:
    name: str
    schema: type[BaseModel]
    function: Callable[..., Any]
    module: str

    def parse(self, payload: Any) -> BaseModel:
        from pydantic import ValidationError

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
            raise ValueError(f"task {name!r} is registered twice ({existing.module} and {function.__module__})")
        _registry[name] = Task(name, schema, function, function.__module__)
        return function

    return register


def _split(value: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in value.split(",") if m.strip())


def configured_modules(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The task modules this process serves: the configured ones, then any extra ones."""
    env = os.environ if env is None else env
    configured = _split(env.get(TASK_MODULES_ENV, ""))
    return configured + tuple(m for m in _split(env.get(EXTRA_TASK_MODULES_ENV, "")) if m not in configured)


def load_tasks(modules: Iterable[str] | None = None) -> dict[str, Task]:
    """Import every task module (registering its tasks); returns the registry."""
    for module in configured_modules() if modules is None else modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            if isinstance(exc, TaskModuleError):
                raise
            raise TaskModuleError(f"task module {module!r} cannot be imported: {exc}") from exc
    return dict(_registry)


def get_task(name: str) -> Task:
    if not _registry:
        load_tasks()
    try:
        return _registry[name]
    except KeyError:
        known = ", ".join(sorted(_registry)) or "none"
        raise UnknownTaskError(f"unknown task {name!r} (known: {known})") from None


def task_settings(module: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``settings:`` a stage's config gives task module ``module`` (``{}`` when none).

    Handed to every handler as one JSON variable, so a task reads its own options (a vendor's
    URL, the name of its secret) from the same config file as everything else."""
    env = os.environ if env is None else env
    raw = env.get(TASK_SETTINGS_ENV, "")
    if not raw:
        return {}
    try:
        every = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise TaskModuleError(f"{TASK_SETTINGS_ENV} is not JSON: {exc}") from None
    found = every.get(module, {}) if isinstance(every, dict) else {}
    return dict(found) if isinstance(found, dict) else {}
