"""The message envelope and the ids SQS FIFO needs (DESIGN.md section 2).

A work item ``{"task", "key"?, "group"?, "payload"}`` becomes a message whose body is a
versioned envelope and whose dedup and group ids are derived, never random, so the same
item enqueued twice is the same message to SQS and to the worker's ledger.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

ENVELOPE_VERSION = 1
MAX_KEY_LENGTH = 256
# SQS allows 128 characters in a MessageGroupId from [A-Za-z0-9] and punctuation.
MAX_GROUP_LENGTH = 128
# SQS refuses a body holding any character outside #x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD
# #x10000-#x10FFFF, and some SQS servers (fauxqs) refuse the astral planes too. JSON already
# escapes the controls; these are the rest. They can only occur inside JSON strings, where a
# \u escape (a surrogate pair above U+FFFF) means the same character to whoever parses the body.
_SQS_UNSAFE = re.compile("[\ud800-\udfff\ufffe\uffff\U00010000-\U0010ffff]")


def _json_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


class EnvelopeError(ValueError):
    """A message body is not a sluice envelope this version understands."""


def canonical_json(value: Any) -> str:
    """One spelling per value: sorted keys, no spaces, so hashes are stable."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def default_key(task: str, payload: Any) -> str:
    """An item's idempotency key when the client gives none: the hash of task + payload."""
    return hashlib.sha256(f"{task}:{canonical_json(payload)}".encode()).hexdigest()


def dedup_id(task: str, key: str) -> str:
    """MessageDeduplicationId and the ledger's key: hex SHA-256 of ``task:key`` (64 chars <= 128)."""
    return hashlib.sha256(f"{task}:{key}".encode()).hexdigest()


def shard_of(key: str, groups: int) -> int:
    """Stable across processes and Python versions (unlike hash())."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % groups


def group_id(task: str, key: str, group: str | None, groups: int) -> str:
    """MessageGroupId: the client's group, else ``task:<shard>`` so unordered work spreads."""
    if group:
        return group
    return f"{task}:{shard_of(key, groups)}"


@dataclass(frozen=True)
class Envelope:
    task: str
    key: str
    payload: Any
    enqueued_at: str
    trace_id: str
    v: int = ENVELOPE_VERSION

    @property
    def dedup_id(self) -> str:
        return dedup_id(self.task, self.key)

    def to_body(self) -> str:
        body = canonical_json(
            {"v": self.v, "task": self.task, "key": self.key, "payload": self.payload,
             "enqueued_at": self.enqueued_at, "trace_id": self.trace_id}
        )
        return _SQS_UNSAFE.sub(_json_escape, body)

    @classmethod
    def new(cls, task: str, key: str | None, payload: Any, trace_id: str | None = None) -> Envelope:
        return cls(
            task=task,
            key=key if key else default_key(task, payload),
            payload=payload,
            enqueued_at=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            trace_id=trace_id or uuid.uuid4().hex,
        )

    @classmethod
    def from_body(cls, body: str) -> Envelope:
        """Parse a message body; raises EnvelopeError (a permanent error) on anything malformed."""
        try:
            data = json.loads(body)
        except (TypeError, ValueError) as exc:
            raise EnvelopeError(f"body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise EnvelopeError("body is not a JSON object")
        if data.get("v") != ENVELOPE_VERSION:
            raise EnvelopeError(f"unsupported envelope version {data.get('v')!r} (expected {ENVELOPE_VERSION})")
        for name in ("task", "key", "enqueued_at", "trace_id"):
            if not isinstance(data.get(name), str) or not data[name]:
                raise EnvelopeError(f"envelope field {name!r} is missing or not a non-empty string")
        if "payload" not in data:
            raise EnvelopeError("envelope field 'payload' is missing")
        return cls(task=data["task"], key=data["key"], payload=data["payload"],
                   enqueued_at=data["enqueued_at"], trace_id=data["trace_id"])
