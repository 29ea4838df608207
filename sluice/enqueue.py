"""Bulk enqueue (DESIGN.md sections 2-3): validate a whole request, then send it in tens.

Validation is all-or-nothing: every item is checked and every fault is reported, by index,
before a single message is sent. Status codes:

* 413 - the body is larger than ``enqueuer.max_body_bytes`` or holds more than
  ``enqueuer.max_items`` items (too large, whatever its content);
* 400 - the body is not JSON, not ``{"items": [...]}``, the list is empty, or any item is
  invalid (unknown task, bad key/group, payload not matching the task's schema, message
  over 256 KiB, same task+key twice). 400 rather than 422: clients of this API treat
  "fix your request" as one class, and the body says exactly what to fix.

A duplicate task+key within one request is REJECTED, not collapsed: both items would map
to the same MessageDeduplicationId, so SQS would silently keep only the first; if their
payloads differ the client has a bug we should not hide, and if they are equal the client
can drop one. (Across requests, the same key is the idempotency promise and is accepted.)

Sending: batches of up to 10 entries (and at most 256 KiB together, the SQS batch limit;
with ordinary payloads that is exactly ceil(n/10) calls), sent from a small thread pool,
at most ``queue.max_tps`` calls per second. Entries SQS refuses inside a successful batch
call are retried alone with backoff; what still fails is reported per item (207), and is
safe to resubmit because dedup ids are derived from task+key.

Order: batches holding items of one client-named group are sent one after another, in
request order (see ``chain_batches``). One limit remains: an entry SQS refuses inside a
batch is retried after the entries behind it in that batch were accepted, so a retried
item of an ordered group can land behind later items of its group. SQS refuses single
entries only on internal errors, and the 207 names every item concerned.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sluice.aws import AwsError, OutgoingMessage, Queue, SentMessage
from sluice.backoff import exponential_backoff_s, jittered
from sluice.envelope import MAX_GROUP_LENGTH, MAX_KEY_LENGTH, Envelope, group_id
from sluice.lanes import LaneRoute, route, routes_from_env, single_lane, why_unroutable
from sluice.ratelimit import CallWindow
from sluice.runtime import DEFAULT_GROUPS, DEFAULT_LANE, RuntimeConfig
from sluice.tasks import PayloadError, UnknownTaskError, get_task, load_tasks

MAX_MESSAGE_BYTES = 256 * 1024
MAX_BATCH_BYTES = 256 * 1024
MAX_BATCH_ENTRIES = 10
ITEM_FIELDS = frozenset({"task", "key", "group", "payload"})
# SQS MessageGroupId: alphanumerics and punctuation !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~
_GROUP_CHARS = re.compile(r"^[A-Za-z0-9!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]+$")


class EnqueueRequestError(Exception):
    """The request cannot be enqueued as a whole; ``body`` says why, item by item."""

    def __init__(self, status: int, message: str, errors: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = [dict(e) for e in errors]

    @property
    def body(self) -> dict[str, Any]:
        return {"error": self.message, "errors": self.errors}


@dataclass(frozen=True)
class PreparedItem:
    """One validated item, ready to send."""

    index: int
    envelope: Envelope
    group_id: str
    body: str
    ordered: bool = False  # the client named the group: its items must reach SQS in request order
    lane: str = DEFAULT_LANE

    @property
    def key(self) -> str:
        return self.envelope.key

    def outgoing(self) -> OutgoingMessage:
        # The entry id is the item's index in the request: unique within any batch of it.
        return OutgoingMessage(id=str(self.index), body=self.body, group_id=self.group_id,
                               dedup_id=self.envelope.dedup_id)


def decode_request(raw: bytes | str | Mapping[str, Any], max_body_bytes: int) -> Any:
    """Bytes/str from HTTP or an already-decoded dict from a direct invoke -> a JSON value."""
    if isinstance(raw, Mapping):
        size = len(json.dumps(raw, separators=(",", ":"), default=str).encode())
        if size > max_body_bytes:
            raise EnqueueRequestError(413, f"request body is {size} bytes; the limit is {max_body_bytes}")
        return dict(raw)
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    if len(data) > max_body_bytes:
        raise EnqueueRequestError(413, f"request body is {len(data)} bytes; the limit is {max_body_bytes}")
    if not data.strip():
        raise EnqueueRequestError(400, 'request body is empty; expected JSON {"items": [...]}')
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise EnqueueRequestError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        # Valid JSON can nest deeper than the parser's recursion limit well inside the size limit.
        raise EnqueueRequestError(400, "request body nests arrays or objects too deeply") from None


def _item_problems(item: Any) -> tuple[list[str], str | None, Any]:
    """Shape checks of one item; returns (problems, task name, payload)."""
    if not isinstance(item, Mapping):
        return [f"item must be an object, got {type(item).__name__}"], None, None
    problems: list[str] = []
    extra = sorted(str(k) for k in item if k not in ITEM_FIELDS)
    if extra:
        problems.append(f"unknown field(s) {', '.join(extra)}; allowed: group, key, payload, task")
    task_name = item.get("task")
    if not isinstance(task_name, str) or not task_name:
        problems.append("task is required and must be a non-empty string")
        task_name = None
    if "key" in item and item["key"] is not None:
        key = item["key"]
        if not isinstance(key, str):
            problems.append("key must be a string")
        elif not 1 <= len(key) <= MAX_KEY_LENGTH:
            problems.append(f"key must be 1..{MAX_KEY_LENGTH} characters, got {len(key)}")
        elif not key.isprintable():
            problems.append("key must contain printable characters only")
    if "group" in item and item["group"] is not None:
        group = item["group"]
        if not isinstance(group, str):
            problems.append("group must be a string")
        elif not 1 <= len(group) <= MAX_GROUP_LENGTH:
            problems.append(f"group must be 1..{MAX_GROUP_LENGTH} characters, got {len(group)}")
        elif not _GROUP_CHARS.match(group):
            problems.append("group may hold only letters, digits and ASCII punctuation "
                            "(an SQS MessageGroupId)")
    if "payload" not in item:
        problems.append("payload is required")
    return problems, task_name, item.get("payload")


def prepare_items(
    request: Any, *, max_items: int, groups: int = DEFAULT_GROUPS, trace_id: str | None = None,
    lanes: Sequence[LaneRoute] | None = None,
) -> list[PreparedItem]:
    """Validate a decoded request, route every item to its lane and build its message, or raise
    EnqueueRequestError (all-or-nothing across every lane). Without ``lanes``: one lane, ``groups``
    shards."""
    routes = list(lanes) if lanes else [single_lane("", groups)]
    if not isinstance(request, Mapping) or "items" not in request:
        raise EnqueueRequestError(400, 'request body must be a JSON object {"items": [...]}')
    extra = sorted(str(k) for k in request if k != "items")
    if extra:
        raise EnqueueRequestError(
            400, f"unknown top-level field(s) {', '.join(extra)}; only 'items' is allowed")
    items = request["items"]
    if not isinstance(items, list):
        raise EnqueueRequestError(400, f"'items' must be a list, got {type(items).__name__}")
    if not items:
        raise EnqueueRequestError(400, "'items' is empty; send at least one item")
    if len(items) > max_items:
        raise EnqueueRequestError(413, f"{len(items)} items in one request; the limit is {max_items}")

    errors: list[dict[str, Any]] = []
    prepared: list[PreparedItem] = []
    seen: dict[tuple[str, str], int] = {}
    for index, item in enumerate(items):
        problems, task_name, payload = _item_problems(item)
        if task_name is not None:
            try:
                task = get_task(task_name)
                if "payload" in item:
                    task.parse(payload)
            except UnknownTaskError as exc:
                problems.append(str(exc))
            except PayloadError as exc:
                problems.append(f"payload does not match task {task_name!r}: {exc}")
        lane = None
        if not problems and task_name is not None:
            lane = route(routes, task_name, payload)
            if lane is None:
                problems.append(why_unroutable(routes, task_name))
        if problems:
            errors.append({"index": index, "reason": "; ".join(problems)})
            continue
        assert task_name is not None and lane is not None
        envelope = Envelope.new(task_name, item.get("key"), payload, trace_id=trace_id)
        previous = seen.setdefault((task_name, envelope.key), index)
        if previous != index:
            errors.append({"index": index, "reason": f"duplicates item {previous} (same task and key "
                                                     f"{envelope.key!r}); send each key once per request"})
            continue
        body = envelope.to_body()
        size = len(body.encode())
        if size > MAX_MESSAGE_BYTES:
            errors.append({"index": index, "reason": f"message would be {size} bytes; SQS allows "
                                                     f"{MAX_MESSAGE_BYTES}"})
            continue
        group = group_id(task_name, envelope.key, item.get("group"), lane.groups)
        prepared.append(PreparedItem(index, envelope, group, body, ordered=bool(item.get("group")), lane=lane.name))
    if errors:
        raise EnqueueRequestError(
            400, f"{len(errors)} of {len(items)} items are invalid; nothing was enqueued", errors)
    return prepared


def plan_batches(items: Sequence[PreparedItem]) -> list[list[PreparedItem]]:
    """Request order, up to 10 entries and 256 KiB per batch."""
    batches: list[list[PreparedItem]] = []
    current: list[PreparedItem] = []
    size = 0
    for item in items:
        item_size = len(item.body.encode())
        if current and (len(current) == MAX_BATCH_ENTRIES or size + item_size > MAX_BATCH_BYTES):
            batches.append(current)
            current, size = [], 0
        current.append(item)
        size += item_size
    if current:
        batches.append(current)
    return batches


def chain_batches(batches: Sequence[list[PreparedItem]]) -> list[list[list[PreparedItem]]]:
    """Batches that share a client-named group, linked into chains sent one after another.

    SQS orders a group by arrival, so two batches holding items of one ordered group must not
    race; chains without a shared group go in parallel. Default groups (task:shard) carry no
    order promise and link nothing, so unordered work keeps its full parallelism."""
    parent = list(range(len(batches)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for b, batch in enumerate(batches):
        for item in batch:
            if item.ordered:
                first = owner.setdefault(item.group_id, b)
                parent[root(b)] = root(first)
    chains: dict[int, list[list[PreparedItem]]] = {}
    for b, batch in enumerate(batches):
        chains.setdefault(root(b), []).append(batch)  # batch order kept inside a chain
    return list(chains.values())


@dataclass
class EnqueueResult:
    items: list[PreparedItem]
    sent: dict[int, SentMessage] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    batch_calls: int = 0

    @property
    def status_code(self) -> int:
        if not self.failed:
            return 202
        # Nothing went in: the queue is unreachable or refusing, not the client's fault.
        return 503 if not self.sent else 207

    @property
    def body(self) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        for item in self.items:
            row: dict[str, Any] = {"key": item.key}
            sent = self.sent.get(item.index)
            if sent is not None:
                row.update(message_id=sent.message_id, sequence_number=sent.sequence_number)
            else:
                row["error"] = self.failed.get(item.index, "not sent")
            row["group"] = item.group_id
            row["lane"] = item.lane
            rows.append(row)
        body: dict[str, Any] = {"accepted": len(self.sent), "items": rows}
        if self.failed:
            body["failed"] = len(self.failed)
            body["error"] = (f"{len(self.failed)} of {len(self.items)} items were not enqueued; resubmitting "
                             "them is safe (same keys, same dedup ids)")
        return body


class Enqueuer:
    """Validates requests and sends their items, each to its lane's queue (one queue without lanes)."""

    def __init__(
        self,
        queue: Queue | None = None,
        *,
        groups: int = DEFAULT_GROUPS,
        max_items: int = 1000,
        max_body_bytes: int = 1048576,
        max_tps: float = 300,
        threads: int = 4,
        max_attempts: int = 4,
        backoff_s: float = 0.05,
        window: CallWindow | None = None,
        lanes: Sequence[LaneRoute] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        # Register the deployment's tasks now, so the first request does not pay for it and a
        # task module that fails to import fails the container, not a request.
        load_tasks()
        if lanes:
            self.lanes = list(lanes)
            self.queues = {lane.name: Queue(lane.queue_url) for lane in self.lanes}
        elif queue is not None:
            self.lanes = [single_lane(queue.url, groups, max_tps)]
            self.queues = {self.lanes[0].name: queue}
        else:
            raise ValueError("an Enqueuer needs a queue or lanes")
        self.max_items = max_items
        self.max_body_bytes = max_body_bytes
        self.threads = max(1, threads)
        self.max_attempts = max(1, max_attempts)
        self.backoff_s = backoff_s
        # Per lane (each its own queue, each SQS's own per-queue limit): never more than its
        # max_tps calls in any one-second window, evenly spaced (no first-second burst).
        self.windows = {lane.name: window if window is not None and len(self.lanes) == 1
                        else CallWindow(max(1.0, float(lane.max_tps)), 1.0, clock=clock, sleep=sleep)
                        for lane in self.lanes}
        self._sleep = sleep
        self._lock = threading.Lock()

    @property
    def queue(self) -> Queue:
        """The queue of a single-lane enqueuer."""
        if len(self.queues) != 1:
            raise ValueError("this enqueuer has several lanes; pick one from .queues")
        return next(iter(self.queues.values()))

    @classmethod
    def from_config(cls, config: RuntimeConfig, queue: Queue | None = None) -> Enqueuer:
        lanes = routes_from_env(config.lanes) if config.lanes else None
        return cls(None if lanes else (queue or Queue(config.queue_url)), groups=config.groups,
                   max_items=config.max_items, max_body_bytes=config.max_body_bytes, max_tps=config.max_tps,
                   lanes=lanes)

    def prepare(
        self, raw: bytes | str | Mapping[str, Any], trace_id: str | None = None
    ) -> list[PreparedItem]:
        request = decode_request(raw, self.max_body_bytes)
        return prepare_items(request, max_items=self.max_items, trace_id=trace_id, lanes=self.lanes)

    def enqueue(self, raw: bytes | str | Mapping[str, Any], trace_id: str | None = None) -> EnqueueResult:
        """Validate (raises EnqueueRequestError, nothing sent) and send every item to its lane."""
        items = self.prepare(raw, trace_id)
        result = EnqueueResult(items=items)
        chains = [(lane.name, chain) for lane in self.lanes
                  for chain in chain_batches(plan_batches([i for i in items if i.lane == lane.name]))]
        if len(chains) == 1:
            self._send_chain(*chains[0], result)
        else:
            with ThreadPoolExecutor(max_workers=min(self.threads, len(chains))) as pool:
                for future in [pool.submit(self._send_chain, lane, chain, result) for lane, chain in chains]:
                    future.result()
        return result

    def _send_chain(self, lane: str, chain: list[list[PreparedItem]], result: EnqueueResult) -> None:
        for batch in chain:
            self._send(lane, batch, result)

    def _send(self, lane: str, batch: list[PreparedItem], result: EnqueueResult) -> None:
        """Send one batch; re-send only the entries SQS refused, with jittered exponential backoff."""
        by_id = {str(item.index): item for item in batch}
        pending = list(batch)
        reasons: dict[int, str] = {}
        for attempt in range(self.max_attempts):
            if attempt:
                self._sleep(jittered(exponential_backoff_s(attempt, base_s=self.backoff_s)))
            with self._lock:
                result.batch_calls += 1
            try:
                with self.windows[lane].call():
                    sent, failed = self.queues[lane].send_batch([item.outgoing() for item in pending])
            except AwsError as exc:
                # botocore already retried the call itself; the whole batch is reported failed.
                for item in pending:
                    reasons[item.index] = str(exc)
                break
            with self._lock:
                for s in sent:
                    result.sent[by_id[s.id].index] = s
            retry: list[PreparedItem] = []
            for f in failed:
                item = by_id[f.id]
                reasons[item.index] = f"SQS refused the message: {f.code} {f.message}".strip()
                # A sender fault (e.g. an invalid parameter) fails the same way every time.
                if not f.sender_fault:
                    retry.append(item)
            pending = retry
            if not pending:
                break
        with self._lock:
            for index, reason in reasons.items():
                if index not in result.sent:
                    result.failed[index] = reason
