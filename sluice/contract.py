"""The worker -> consumer contract (DESIGN.md sections 4, 5 and 10), typed, in one module.

* ``Outcome``: what became of one message in a worker: done | duplicate | dead_lettered | retry.
* ``WorkerResult`` / ``WorkerResponse``: the worker's answer to one invoke, to its JSON
  payload and back. The payload is an SQS partial-batch response (``batchItemFailures``, the
  shape of Powertools' ``PartialItemFailureResponse``, so the same worker runs behind a plain
  SQS trigger) plus ``results``, one row per message. Reading is tolerant the way SQS is: a
  payload with failures and no results (any other SQS-trigger worker) reads as "listed ->
  retry, the rest -> done", and a row this version does not understand is ignored rather than
  failing the whole batch.
* ``DrainReport``: what one drain did, to a dict (the consumer's return value and its
  "drain finished" log line) and back (``sluice status`` reads the logged ones).

The dataclasses are the in-memory values; the TypedDicts are the wire shapes.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, NotRequired, TypedDict


class ContractError(ValueError):
    """A payload or a logged report does not have the contract's shape."""


class Outcome(enum.StrEnum):
    DONE = "done"  # applied now (ledger row written), message deleted
    DUPLICATE = "duplicate"  # applied before (ledger row found), message deleted
    DEAD_LETTERED = "dead_lettered"  # sent to the DLQ with a reason, deleted from the source
    RETRY = "retry"  # transient failure: left in the queue with its visibility pushed out

    @property
    def metric(self) -> str:
        """The metric a worker and a drain count this outcome under."""
        return "retried" if self is Outcome.RETRY else self.value


# The same names without the class, for call sites that read better that way.
DONE, DUPLICATE, DEAD_LETTERED, RETRY = Outcome.DONE, Outcome.DUPLICATE, Outcome.DEAD_LETTERED, Outcome.RETRY


# -- wire shapes ---------------------------------------------------------------------------

class ItemFailurePayload(TypedDict):
    itemIdentifier: str


class ResultPayload(TypedDict):
    messageId: str
    outcome: str
    ms: float


class WorkerPayload(TypedDict):
    batchItemFailures: list[ItemFailurePayload]
    results: NotRequired[list[ResultPayload]]


# -- in-memory values ----------------------------------------------------------------------

@dataclass(frozen=True)
class WorkerResult:
    """One message's outcome in a worker, and the milliseconds the worker spent on it."""

    message_id: str
    outcome: Outcome
    ms: float = 0.0

    def to_payload(self) -> ResultPayload:
        return {"messageId": self.message_id, "outcome": self.outcome.value, "ms": self.ms}

    @classmethod
    def from_payload(cls, row: object) -> WorkerResult | None:
        """The row as a result, or None when it is not one this version understands."""
        if not isinstance(row, Mapping) or not isinstance(row.get("messageId"), str):
            return None
        try:
            outcome = Outcome(str(row.get("outcome")))
        except ValueError:
            return None
        ms = row.get("ms")
        return cls(row["messageId"], outcome, float(ms) if isinstance(ms, int | float) else 0.0)


@dataclass(frozen=True)
class WorkerResponse:
    """The worker's answer for one batch: a result per message it reached, and the ids SQS
    should see as failed (every retry: a plain SQS trigger redelivers exactly those)."""

    results: tuple[WorkerResult, ...] = ()
    failures: tuple[str, ...] = ()

    @classmethod
    def of(cls, results: Iterable[WorkerResult]) -> WorkerResponse:
        results = tuple(results)
        return cls(results, tuple(r.message_id for r in results if r.outcome is Outcome.RETRY))

    def to_payload(self) -> WorkerPayload:
        return {"batchItemFailures": [{"itemIdentifier": m} for m in self.failures],
                "results": [r.to_payload() for r in self.results]}

    @classmethod
    def from_payload(cls, payload: object) -> WorkerResponse:
        """Read an invoke's payload; raises ContractError when it is no response at all (a
        function error's body, a timeout's, a string)."""
        if not isinstance(payload, Mapping):
            raise ContractError(f"a worker response is a JSON object, got {type(payload).__name__}")
        rows = payload.get("results")
        listed = payload.get("batchItemFailures")
        results = (WorkerResult.from_payload(row) for row in (rows if isinstance(rows, list) else []))
        failures = (f.get("itemIdentifier") for f in (listed if isinstance(listed, list) else [])
                    if isinstance(f, Mapping))
        return cls(tuple(r for r in results if r is not None), tuple(str(f) for f in failures if f is not None))

    def outcomes(self, message_ids: Iterable[str]) -> Counter[Outcome]:
        """How many of ``message_ids`` (one batch) ended in each outcome. A message without a
        result row reads the way SQS reads a partial-batch response: listed as a failure ->
        retry, otherwise done."""
        by_id = {r.message_id: r.outcome for r in self.results}
        failed = set(self.failures)
        return Counter(by_id.get(m, Outcome.RETRY if m in failed else Outcome.DONE) for m in message_ids)


@dataclass
class DrainReport:
    """What one drain did (DESIGN.md section 4). ``received``, ``dispatched``, ``released`` and
    the outcome counts count messages; ``worker_batches``, ``throttled`` and
    ``invoke_errors`` count invocations."""

    received: int = 0
    dispatched: int = 0
    succeeded: int = 0
    duplicates: int = 0
    retried: int = 0
    dead_lettered: int = 0
    released: int = 0
    throttled: int = 0
    invoke_errors: int = 0
    budget_ms: int = 0
    used_ms: int = 0
    budget_used_pct: float = 0.0
    peak_parallel: int = 0
    worker_batches: int = 0
    predicted_batch_ms: int = 0
    stopped_because: str = ""
    unfinished: int = 0  # messages whose worker was still running when the drain had to return
    # The concurrency limit in force when the drain ended (what the next drain starts from), the
    # bounds it moves in and whether it moves at all (drain.adaptive; DESIGN.md section 12).
    limit: int = 0
    limit_floor: int = 0
    limit_ceiling: int = 0
    adaptive: bool = False

    def count(self, outcome: Outcome) -> int:
        """Messages this drain saw end in ``outcome``."""
        match outcome:
            case Outcome.DONE:
                return self.succeeded
            case Outcome.DUPLICATE:
                return self.duplicates
            case Outcome.DEAD_LETTERED:
                return self.dead_lettered
            case Outcome.RETRY:
                return self.retried

    def add_outcomes(self, counts: Mapping[Outcome, int]) -> None:
        self.succeeded += counts.get(Outcome.DONE, 0)
        self.duplicates += counts.get(Outcome.DUPLICATE, 0)
        self.dead_lettered += counts.get(Outcome.DEAD_LETTERED, 0)
        self.retried += counts.get(Outcome.RETRY, 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> DrainReport:
        """A report as ``to_dict`` wrote it, by this version or another: unknown keys are
        ignored, missing ones keep their defaults. Raises ContractError on a value of the wrong
        kind."""
        if not isinstance(data, Mapping):
            raise ContractError(f"a drain report is a JSON object, got {type(data).__name__}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value, default = data[f.name], f.default  # every field has a default of its own type
            if isinstance(default, str | bool) and type(value) is type(default):
                values[f.name] = value
            elif isinstance(default, float) and _is_number(value):
                values[f.name] = float(value)
            elif (isinstance(default, int) and not isinstance(default, bool) and _is_number(value)
                  and float(value).is_integer()):
                values[f.name] = int(value)
            else:
                raise ContractError(f"drain report field {f.name!r} must be a {type(default).__name__}, "
                                    f"got {value!r}")
        return cls(**values)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
