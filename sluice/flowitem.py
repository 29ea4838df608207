"""The input of a workflow lane's execution: one work item, as the consumer starts it and the
step Lambda reads it (``{"item": {...}}``; a definition passes ``$.item`` to each step).

It must be the same for every receive of one message: Step Functions treats StartExecution
with a RUNNING execution's name as idempotent only when the input is identical too. So it
holds the envelope and the message's id, never a receive count or a time of this receive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sluice.envelope import Envelope, dedup_id


class FlowItemError(ValueError):
    """An execution input or step event does not hold a work item; the message says what is wrong."""


@dataclass(frozen=True)
class FlowItem:
    task: str
    key: str
    dedup_id: str  # the item's ledger key (task:key), also across a redrive
    payload: Any
    group: str
    message_id: str
    enqueued_at: str
    trace_id: str

    @classmethod
    def of(cls, envelope: Envelope, *, group: str, message_id: str) -> FlowItem:
        return cls(task=envelope.task, key=envelope.key, dedup_id=envelope.dedup_id, payload=envelope.payload,
                   group=group, message_id=message_id, enqueued_at=envelope.enqueued_at,
                   trace_id=envelope.trace_id)

    def execution_input(self) -> dict[str, Any]:
        return {"item": asdict(self)}

    def envelope(self) -> Envelope:
        """The message body it came from (a dead letter of a failed execution carries it)."""
        return Envelope(task=self.task, key=self.key, payload=self.payload, enqueued_at=self.enqueued_at,
                        trace_id=self.trace_id)

    @classmethod
    def from_input(cls, data: Any) -> FlowItem:
        """Read ``{"item": {...}}`` (an execution's input, or a step's event)."""
        item = data.get("item") if isinstance(data, Mapping) else None
        if not isinstance(item, Mapping):
            raise FlowItemError("no 'item' object (the execution input's $.item)")
        for name in ("task", "key", "enqueued_at", "trace_id"):
            if not isinstance(item.get(name), str) or not item[name]:
                raise FlowItemError(f"item field {name!r} is missing or not a non-empty string")
        if "payload" not in item:
            raise FlowItemError("item field 'payload' is missing")
        own = dedup_id(item["task"], item["key"])
        if item.get("dedup_id", own) != own:
            raise FlowItemError(f"item dedup_id {item['dedup_id']!r} is not the hash of its task and key")
        return cls(task=item["task"], key=item["key"], dedup_id=own, payload=item["payload"],
                   group=str(item.get("group") or ""), message_id=str(item.get("message_id") or ""),
                   enqueued_at=item["enqueued_at"], trace_id=item["trace_id"])
