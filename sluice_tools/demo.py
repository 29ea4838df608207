"""`make demo`: the whole flow on one machine, in four lanes, checked against the database,
the queues, Step Functions and the vendor.

1. Start the local stack with four lanes (``DEMO_LANES``: the seed's invoice flow as a workflow
   lane for some customers' invoices, the other invoices into MariaDB, and two vendor lanes for
   notify.send, one generous, one with a tight rate like a single phone number), unless one is
   running: then use it, whatever lanes it has, and say so.
2. POST a burst over real HTTP to the stack's API, in requests of a few hundred: invoices
   (into MariaDB; a few poison ones for an unknown customer, each in its own group),
   notifications (to the stand-in vendor API, which answers 429 above its rate; a few poison
   ones for a recipient the vendor refuses) and a few hundred invoices of the flow's customers
   (small and large; a few large ones in a currency the accounting stand-in refuses, so they
   fail at PostToAccounting, after SaveInvoice saved them), with some keys sent a second time
   in separate requests.
3. Show live progress per lane while the scheduled consumers drain: queue depth, in flight,
   workers busy (a flow lane: executions running) vs the lane's cap, applied (executions
   succeeded), failed executions, DLQ.
4. Summarise FROM THE DATABASE, THE QUEUES, STEP FUNCTIONS AND THE VENDOR, not from counters
   kept here, through the task modules' own queries: processed (invoice, delivery, accounting
   and ledger rows of this run), effects at the vendor (one per delivered item; repeated
   idempotency keys absorbed), the vendor's 429s, dead-lettered (DLQ, with reasons), duplicates
   (keys applied more than once: must be 0), lost (keys the API accepted that no row holds and
   no dead letter explains: must be 0), per lane: peak workers vs its cap, peak vendor calls/s
   vs its rate, 429s seen; per flow lane: executions succeeded and failed (ListExecutions by
   status), each failure in the DLQ with its state and cause, every invoice saved once, one
   accounting post per large invoice that succeeded, one SNS notification per success (a queue
   the demo subscribes to the lane's topics), peak running executions vs the cap (sampled
   while it drains). Exit 0 only if those invariants hold.

Every key of a run starts with ``DEMO-<run id>-``, so a run on a stack that already holds
other work counts only its own rows.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import typer
from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from sluice.aws import AwsError, Queue, client
from sluice.db import Database, DbError
from sluice.envelope import dedup_id
from sluice.settings import Lane, Settings
from sluice.sfn import FAILED_STATUSES, ExecutionSummary, StateMachine
from sluice_tools.local.env import queue_env_keys
from sluice_tools.local.vendor_client import VendorAdminError, VendorClient
from sluice_tools.ops.dlq import DeadLetter, list_dead_letters
from sluice_tools.ops.status import QueueCounts, lambda_stats, queue_counts
from worker.tasks import accounting, invoices, notify

CUSTOMERS = ("acme", "globex", "initech", "umbrella", "hooli")
CURRENCIES = ("EUR", "USD", "GBP", "CHF")
DEFAULT_VENDOR = "a"  # where notifications go on a stack without vendor lanes
EXIT_INVARIANT_BROKEN = 1
EXIT_INTERRUPTED = 130
# The flow lane takes these customers' invoices (the accounts moved onto the workflow), the ledger
# lane everyone else's: a match on a field every invoice has, so routing adds no payload field.
FLOW_CUSTOMERS = ("globex", "initech")
# worker/flows/invoice.asl.json's IsLarge: invoices from this amount on are posted to accounting.
LARGE_CENTS = 100_000
# The accounting stand-in books no yen: the demo puts accounting.post's text for a JPY invoice
# ("invoice K: 120000 JPY (globex)") in its content filter (vendor_api.py, blocked_phrases), so a
# large JPY invoice fails for good at PostToAccounting, after SaveInvoice saved it. invoice.record
# takes JPY, and the other invoices of the demo are never in it.
REFUSED_CURRENCY = "JPY"
REFUSED_PHRASE = f" {REFUSED_CURRENCY} ("
FAILED_STATE = "PostToAccounting"
CLOSED_LIST_S = 2.0  # how often the live view lists closed executions (see Demo)
# The demo's lanes (DESIGN.md section 11): config/local.yml's sections, these overrides. Each
# vendor lane's rate is its vendor's (config/local.yml local.vendors: a 50/s, b 5/s), its batch
# small enough that one batch does not outrun the vendor. The flow lane comes first: it takes
# its customers' invoices, the ledger lane the rest. Its cap counts running executions: a consumer
# that finds it full counts again 2 s later (sluice/flows.py), so it starts at most about cap/2
# executions a second; 10 runs 200 invoices beside the ledger lane's drain. Its rate (starts/s)
# keeps the large invoices' posts well below the accounting stand-in's 20/s.
DEMO_LANES: dict[str, dict[str, Any]] = {
    "invoices-flow": {"tasks": ["invoice.record"], "match": {"payload.customer": list(FLOW_CUSTOMERS)},
                      "flow": {"definition": "worker/flows/invoice.asl.json", "topics": ["Notify"]},
                      "drain": {"max_parallel": 10, "max_rate": 10}, "worker": {"reserved_concurrency": 10}},
    "ledger": {"tasks": ["invoice.record"]},
    "vendor-a": {"tasks": ["notify.send"], "match": {"payload.vendor": "a"},
                 "drain": {"max_parallel": 3, "max_rate": 40}, "worker": {"reserved_concurrency": 3, "batch_size": 5}},
    "vendor-b": {"tasks": ["notify.send"], "match": {"payload.vendor": "b"},
                 "drain": {"max_parallel": 1, "max_rate": 5}, "worker": {"reserved_concurrency": 1, "batch_size": 2}},
}

console = Console()


class DemoError(Exception):
    """The demo could not run (stack, API or database unreachable); the message says which."""


@dataclass(frozen=True)
class FlowWatch:
    """A workflow lane's state machine and topics on the stack, found by the names the stack
    gives them (``Settings.state_machine_name``, ``Settings.topic_name``)."""

    machine: StateMachine
    topic_arns: dict[str, str]  # topic (as lane.flow.topics names it) -> ARN


@dataclass(frozen=True)
class DemoLane:
    """One lane as the demo watches it: its queues, cap, rate, worker (a flow lane: its step
    function and state machine) and (for a vendor lane) vendor."""

    lane: Lane
    queue: Queue
    dlq: Queue
    worker_function: str
    consumer_function: str
    flow: FlowWatch | None = None

    @property
    def name(self) -> str:
        return self.lane.name

    @property
    def cap(self) -> int:
        return self.lane.drain.max_parallel

    @property
    def vendor(self) -> str | None:
        """The vendor this lane's notifications go to: its match's, or the default's on a lane that
        carries notify.send without one; None for a lane that carries no notifications."""
        if self.lane.tasks is not None and "notify.send" not in self.lane.tasks:
            return None
        match = dict(self.lane.match).get("payload.vendor")
        return str(match[0]) if match else DEFAULT_VENDOR

    @property
    def carries_invoices(self) -> bool:
        return self.lane.tasks is None or "invoice.record" in self.lane.tasks

    @property
    def flow_customers(self) -> tuple[str, ...]:
        """The customers whose invoices a flow lane takes (its ``payload.customer`` match); none
        for a worker lane or a flow lane that matches on something else."""
        if self.flow is None:
            return ()
        return tuple(str(c) for c in dict(self.lane.match).get("payload.customer", ()))


def find_flow(settings: Settings, lane: Lane) -> FlowWatch:
    """The lane's state machine and topics on the stack (moto), by name."""
    if lane.flow is None:
        raise DemoError(f"lane {lane.name!r} is not a workflow lane")
    name = settings.state_machine_name(lane)
    try:
        machines = [m for page in client("stepfunctions").get_paginator("list_state_machines").paginate()
                    for m in page["stateMachines"]]
        topics = [t["TopicArn"] for page in client("sns").get_paginator("list_topics").paginate()
                  for t in page["Topics"]]
    except (ClientError, BotoCoreError) as exc:
        raise DemoError(f"cannot list the local stack's state machines and topics: {exc}") from None
    arn = next((m["stateMachineArn"] for m in machines if m["name"] == name), None)
    if arn is None:
        raise DemoError(f"the local stack has no state machine {name!r} for lane {lane.name!r}")
    topic_arns = {}
    for topic in lane.flow.topics:
        found = next((t for t in topics if t.rsplit(":", 1)[-1] == settings.topic_name(lane, topic)), None)
        if found is None:
            raise DemoError(f"the local stack has no topic {settings.topic_name(lane, topic)!r} for lane {lane.name!r}")
        topic_arns[topic] = found
    return FlowWatch(StateMachine(arn), topic_arns)


def demo_lanes(settings: Settings, env: dict[str, str]) -> list[DemoLane]:
    lanes = []
    for lane in settings.resolved_lanes():
        queue_key, dlq_key = queue_env_keys(lane)
        if not env.get(queue_key) or not env.get(dlq_key):
            raise DemoError(f"the local stack's local.env names no queue for lane {lane.name!r}")
        lanes.append(DemoLane(lane, Queue(env[queue_key]), Queue(env[dlq_key]),
                              settings.function_name(lane.target_key),
                              settings.function_name(lane.function_key("consumer")),
                              find_flow(settings, lane) if lane.flow is not None else None))
    return lanes


@dataclass
class Burst:
    run: str
    requests: list[list[dict[str, Any]]]
    valid_keys: set[str]  # invoices expected applied
    poison_keys: set[str]
    duplicate_keys: set[str]
    first_pass: int  # requests[:first_pass] hold each key once; the rest repeat keys
    notify_keys: set[str] = field(default_factory=set)  # notifications expected delivered
    notify_poison_keys: set[str] = field(default_factory=set)
    items: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> the item (first send)
    # The flow's invoices: all of them (each saved by SaveInvoice), the large ones (posted to
    # accounting), the refused ones (large, in the currency accounting refuses: they fail late).
    flow_keys: set[str] = field(default_factory=set)
    flow_large_keys: set[str] = field(default_factory=set)
    flow_refused_keys: set[str] = field(default_factory=set)

    @property
    def all_poison(self) -> set[str]:
        """Items no worker applies (they are dead letters instead); a refused flow invoice is not
        one: SaveInvoice applied it before its execution failed."""
        return self.poison_keys | self.notify_poison_keys

    @property
    def flow_prefix(self) -> str:
        return flow_prefix(self.run)

    def execution_names(self) -> dict[str, str]:
        """The flow's executions by name (the message's deduplication id, ADR 0007) -> key."""
        return {dedup_id(self.items[k]["task"], k): k for k in self.flow_keys}

    @property
    def items_sent(self) -> int:
        return sum(len(r) for r in self.requests)

    def keys_in(self, lane: Lane, lanes: list[Lane]) -> set[str]:
        """The keys routing sends to ``lane``: the first lane that takes each item."""
        return {key for key, item in self.items.items()
                if next((x for x in lanes if x.takes(item["task"], item["payload"])), None) == lane}

    def expected(self, lane: DemoLane, lanes: list[Lane]) -> int:
        """What ``lane`` should apply of this run (a flow lane: its executions that succeed)."""
        keys = self.keys_in(lane.lane, lanes)
        return len(keys - (self.flow_refused_keys if lane.flow is not None else self.all_poison))


def make_notifications(run: str, vendor: str, count: int, poison: int, rng: random.Random
                       ) -> tuple[list[dict[str, Any]], set[str], set[str]]:
    """``count`` messages to ``vendor``, each recipient its own group (order per recipient),
    ``poison`` of them to a recipient the vendor refuses."""
    poison_at = set(rng.sample(range(count), min(poison, count)))
    items: list[dict[str, Any]] = []
    good: set[str] = set()
    bad: set[str] = set()
    for i in range(count):
        key = f"DEMO-{run}-{vendor}{i:05d}"
        to = f"not-a-number-{i}" if i in poison_at else f"+4915{i:09d}"
        items.append({"task": "notify.send", "key": key, "group": f"{vendor}{to}",
                      "payload": {"vendor": vendor, "to": to, "text": f"DEMO-{run} message {i}"}})
        (bad if i in poison_at else good).add(key)
    return items, good, bad


def make_flow_invoices(run: str, count: int, refused: int, customers: tuple[str, ...], rng: random.Random
                       ) -> tuple[list[dict[str, Any]], set[str], set[str]]:
    """``count`` invoices of ``customers`` for the flow, about 40% large, ``refused`` of them large
    and in the currency accounting refuses; returns them, the large keys and the refused keys."""
    refused_at = set(rng.sample(range(count), min(refused, count)))
    items: list[dict[str, Any]] = []
    large: set[str] = set()
    for i in range(count):
        key = f"{flow_prefix(run)}{i:05d}"
        is_large = i in refused_at or rng.random() < 0.4
        items.append({"task": "invoice.record", "key": key, "payload": {
            "customer": rng.choice(customers),
            "amount_cents": rng.randint(LARGE_CENTS, 900_000) if is_large else rng.randint(100, LARGE_CENTS - 1),
            "currency": REFUSED_CURRENCY if i in refused_at else rng.choice(CURRENCIES),
            "description": f"demo flow invoice {i}"}})
        if is_large:
            large.add(key)
    return items, large, {items[i]["key"] for i in refused_at}


def make_burst(items: int, poison: int, duplicates: int, request_size: int, seed: int | None = None,
               notifications: dict[str, int] | None = None, notify_poison: int = 0, flow: int = 0,
               flow_refused: int = 0, flow_duplicates: int = 0, flow_customers: tuple[str, ...] = ()) -> Burst:
    """``items`` distinct invoices (``poison`` of them for unknown customers; none of
    ``flow_customers``), per vendor ``notifications[vendor]`` messages (``notify_poison`` of each
    refused by the vendor) and ``flow`` invoices of ``flow_customers`` (``flow_refused`` of them
    refused by accounting), then ``duplicates`` of the first two kinds' keys and
    ``flow_duplicates`` of the flow's again in requests of their own."""
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    # The other invoices stay out of the flow lane: it would take every invoice of its customers.
    customers = tuple(c for c in CUSTOMERS if c not in flow_customers) or CUSTOMERS
    poison = min(poison, items)
    poison_at = set(rng.sample(range(items), poison))
    burst: list[dict[str, Any]] = []
    valid: set[str] = set()
    bad: set[str] = set()
    for i in range(items):
        key = f"DEMO-{run}-{i:06d}"
        if i in poison_at:
            # Each poison invoice in a group of its own: a dead letter then blocks nothing else.
            customer = f"ghost-{run}-{i}"
            burst.append({"task": "invoice.record", "key": key, "group": customer,
                          "payload": {"customer": customer, "amount_cents": 999, "currency": "EUR"}})
            bad.add(key)
            continue
        burst.append({"task": "invoice.record", "key": key,
                      "payload": {"customer": rng.choice(customers), "amount_cents": rng.randint(100, 500_000),
                                  "currency": rng.choice(CURRENCIES), "description": f"demo invoice {i}"}})
        valid.add(key)
    flow_items, flow_large, flow_refused_keys = make_flow_invoices(
        run, flow if flow_customers else 0, flow_refused, flow_customers, rng)
    # Ahead of the other invoices: the flow runs at its own rate beside the ledger lane's drain.
    burst[:0] = flow_items
    delivered: set[str] = set()
    refused: set[str] = set()
    for vendor, count in (notifications or {}).items():
        messages, good, dead = make_notifications(run, vendor, count, notify_poison, rng)
        # The notifications go first, as one burst per vendor: faster than the vendor's rate, so
        # it answers 429s that the retries (hidden for its Retry-After) must recover.
        burst[:0] = messages
        delivered |= good
        refused |= dead
    requests = [burst[i:i + request_size] for i in range(0, len(burst), request_size)]
    first_pass = len(requests)
    repeatable = [x for x in burst if x["key"] in valid or x["key"] in delivered]
    again = rng.sample(repeatable, min(duplicates, len(repeatable)))
    again += rng.sample(flow_items, min(flow_duplicates, len(flow_items)))
    requests += [again[i:i + request_size] for i in range(0, len(again), request_size)]
    return Burst(run=run, requests=requests, valid_keys=valid, poison_keys=bad,
                 duplicate_keys={x["key"] for x in again}, first_pass=first_pass,
                 notify_keys=delivered, notify_poison_keys=refused, items={x["key"]: x for x in burst},
                 flow_keys={x["key"] for x in flow_items}, flow_large_keys=flow_large,
                 flow_refused_keys=flow_refused_keys)


def post_json(url: str, body: Any, timeout_s: float = 120) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:  # noqa: S310 - loopback API
            return reply.status, json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, {"error": raw.decode(errors="replace")}
    except (urllib.error.URLError, OSError) as exc:
        raise DemoError(f"the API at {url} did not answer: {exc}") from None


@dataclass
class EnqueueOutcome:
    accepted: set[str] = field(default_factory=set)
    lanes: dict[str, str] = field(default_factory=dict)  # key -> the lane the API said
    refused: dict[int, Any] = field(default_factory=dict)  # status -> a body, per status seen
    seconds: float = 0.0


def send_burst(api_url: str, burst: Burst, threads: int = 4) -> EnqueueOutcome:
    """POST every request (the duplicate ones after the first pass); collect the accepted keys."""
    outcome = EnqueueOutcome()
    started = time.monotonic()

    def one(items: list[dict[str, Any]]) -> None:
        status, body = post_json(f"{api_url}/jobs", {"items": items})
        if status in (202, 207) and isinstance(body, dict):
            for row in body.get("items", []):
                if "error" not in row:
                    outcome.accepted.add(row["key"])
                    outcome.lanes[row["key"]] = row.get("lane", "")
        if status != 202:
            outcome.refused[status] = body

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, burst.requests[:burst.first_pass]))
    # The repeats go in after the originals, in separate requests, as a client retrying would.
    for items in burst.requests[burst.first_pass:]:
        one(items)
    outcome.seconds = time.monotonic() - started
    return outcome


class DemoDatabase:
    """What the demo reads back: the rows of one run, whose keys all start ``DEMO-<run>-``,
    through the task modules' own queries (and sluice's ledger)."""

    def __init__(self, url: str) -> None:
        self.db = Database(url=url, program="sluice-demo")

    def invoice_rows(self, run: str) -> int:
        return invoices.count(self.db, key_prefix=run_prefix(run))

    def delivery_rows(self, run: str, vendor: str | None = None) -> int:
        return notify.delivered(self.db, key_prefix=run_prefix(run), vendor=vendor)

    def applied_keys(self, run: str) -> set[str]:
        return set(invoices.keys(self.db, run_prefix(run))) | set(notify.keys(self.db, run_prefix(run)))

    def flow_invoice_rows(self, run: str) -> int:
        return invoices.count(self.db, key_prefix=flow_prefix(run))

    def flow_invoice_keys(self, run: str) -> list[str]:
        return invoices.keys(self.db, flow_prefix(run))

    def accounting_rows(self, run: str) -> int:
        return accounting.posted(self.db, key_prefix=run_prefix(run))

    def ledger_rows(self, run: str) -> int:
        return self.db.count_processed(run_prefix(run))

    def duplicates(self, run: str) -> int:
        return (invoices.duplicates(self.db, run_prefix(run)) + notify.duplicates(self.db, run_prefix(run))
                + accounting.duplicates(self.db, run_prefix(run)))


def run_prefix(run: str) -> str:
    return f"DEMO-{run}-"


def flow_prefix(run: str) -> str:
    """The flow's invoices' keys start so: the other invoices' rows can be told from theirs."""
    return f"{run_prefix(run)}flow-"


@dataclass
class LaneSnapshot:
    queue: QueueCounts
    dlq: QueueCounts
    applied: int  # a flow lane: this run's executions that succeeded
    busy: int | None  # a flow lane: the machine's executions running (anyone's: the cap counts them all)
    peak: int | None
    flow: FlowExecutions | None = None


@dataclass
class FlowExecutions:
    """This run's executions of a flow lane's machine by status (ListExecutions), as item keys."""

    running: set[str]
    succeeded: set[str]
    failed: set[str]  # FAILED, TIMED_OUT or ABORTED
    running_all: int  # every running execution of the machine, this run's or not
    span_s: float = 0.0  # from this run's first start to its last close

    @property
    def closed(self) -> set[str]:
        return self.succeeded | self.failed

    @property
    def every(self) -> set[str]:
        return self.running | self.closed


ClosedExecutions = dict[str, list[ExecutionSummary]]  # status -> this run's executions that ended so


def closed_executions(machine: StateMachine, names: dict[str, str]) -> ClosedExecutions:
    return {status: [e for e in machine.executions(status) if e.name in names]
            for status in ("SUCCEEDED", *FAILED_STATUSES)}


def flow_executions(machine: StateMachine, names: dict[str, str], closed: ClosedExecutions | None = None
                    ) -> FlowExecutions:
    """``names`` maps an execution's name to its item's key; other executions are not this run's.
    ``closed``: the closed ones as listed a moment ago (None: list them now)."""
    running = list(machine.executions("RUNNING"))
    if closed is None:
        closed = closed_executions(machine, names)
    starts = [e.started for e in running if e.name in names] + [e.started for c in closed.values() for e in c]
    stops = [e.stopped for c in closed.values() for e in c if e.stopped is not None]
    return FlowExecutions(
        running={names[e.name] for e in running if e.name in names},
        succeeded={names[e.name] for e in closed["SUCCEEDED"]},
        failed={names[e.name] for status in FAILED_STATUSES for e in closed[status]},
        running_all=len(running),
        span_s=(max(stops) - min(starts)).total_seconds() if starts and stops else 0.0)


class Demo:
    def __init__(self, env: dict[str, str], lanes: list[DemoLane]) -> None:
        self.env = env
        self.lanes = lanes
        self.db = DemoDatabase(env["DATABASE_URL"])
        # The most executions seen running per flow lane, sampled each refresh: Step Functions
        # keeps no such figure, and the consumers' own counts are in their logs, not here.
        self.flow_peaks: dict[str, int] = {}
        # Closed executions by flow lane, with when they were listed: moto takes tens of ms to
        # list a few hundred, on the cores the stack drains with, so they are listed every
        # CLOSED_LIST_S while the lane's queue holds work (RUNNING, a handful, every refresh).
        self._closed: dict[str, tuple[float, ClosedExecutions]] = {}
        self.accounting_vendor = accounting.DEFAULT_VENDOR  # the flow's accounting step calls it
        self.taps: dict[str, tuple[NotificationTap | None, str]] = {}  # by flow lane: the tap, or why none

    def applied(self, lane: DemoLane, run: str) -> int:
        """What worker lane ``lane`` applied of this run: its invoices (not the flow's) and its
        vendor's deliveries."""
        total = self.db.invoice_rows(run) - self.db.flow_invoice_rows(run) if lane.carries_invoices else 0
        if lane.vendor is not None:
            total += self.db.delivery_rows(run, None if lane.lane.implicit else lane.vendor)
        return total

    def snapshot(self, burst: Burst) -> dict[str, LaneSnapshot]:
        try:
            stats = lambda_stats(self.env["SLUICE_LAMBDA_STATS_URL"])
        except (OSError, ValueError, KeyError):
            stats = {}
        names = burst.execution_names()
        snaps = {}
        for tap, _ in self.taps.values():
            if tap is not None:
                tap.read()
        for lane in self.lanes:
            queue, dlq = queue_counts(lane.queue), queue_counts(lane.dlq)
            if lane.flow is None:
                snaps[lane.name] = LaneSnapshot(queue=queue, dlq=dlq, applied=self.applied(lane, burst.run),
                                                busy=stats.get(lane.worker_function, {}).get("busy"),
                                                peak=stats.get(lane.worker_function, {}).get("peak_busy"))
                continue
            listed_at, closed = self._closed.get(lane.name, (0.0, None))
            # An empty queue: the lane may be about to settle, so no stale listing may hold it up.
            if closed is None or queue.total == 0 or time.monotonic() - listed_at >= CLOSED_LIST_S:
                closed = closed_executions(lane.flow.machine, names)
                self._closed[lane.name] = (time.monotonic(), closed)
            executions = flow_executions(lane.flow.machine, names, closed)
            peak = self.flow_peaks[lane.name] = max(self.flow_peaks.get(lane.name, 0), executions.running_all)
            snaps[lane.name] = LaneSnapshot(queue=queue, dlq=dlq, applied=len(executions.succeeded),
                                            busy=executions.running_all, peak=peak, flow=executions)
        return snaps

    def settled(self, lane: DemoLane, snap: LaneSnapshot, burst: Burst, expected: int, routed: int) -> bool:
        """Nothing of ``lane`` left to do: its queue empty and, for a worker lane, the ``expected``
        items applied; for a flow lane, an execution closed for each of the ``routed`` items and
        each failed one's item in the DLQ (the next drain's failure scan sends it there)."""
        if snap.queue.total:
            return False
        if snap.flow is None:
            return snap.applied >= expected
        if snap.flow.running or len(snap.flow.closed) < routed:
            return False
        return not snap.flow.failed or snap.flow.failed <= {x.key for x in run_dead_letters(lane, burst)}

    def view(self, snaps: dict[str, LaneSnapshot], expected: dict[str, int], phase: str, elapsed: float) -> Table:
        table = Table(title=f"sluice demo: {phase} ({elapsed:,.1f} s)", min_width=60,
                      caption="busy: workers invoked; on a flow lane, executions running. "
                              "applied: on a flow lane, executions succeeded.")
        for column in ("lane", "queue", "in flight", "delayed", "busy / cap", "applied", "failed", "DLQ"):
            add_column(table, column)
        for lane in self.lanes:
            s = snaps[lane.name]
            workers = f"{'?' if s.busy is None else s.busy} / {lane.cap}" + (
                "" if s.peak is None else f" (peak {s.peak})")
            table.add_row(lane.name, f"{s.queue.visible:,}", f"{s.queue.in_flight:,}", f"{s.queue.delayed:,}",
                          workers, f"{s.applied:,} / {expected[lane.name]:,}",
                          "" if s.flow is None else f"{len(s.flow.failed):,}", f"{s.dlq.total:,}")
        return table


def add_column(table: Table, column: str) -> None:
    """Numbers right-aligned; the lane's name whole (``invoices-flow`` would be cut on 80 columns)."""
    if column == "lane":
        table.add_column(column, justify="left", no_wrap=True, min_width=13)
    else:
        table.add_column(column, justify="right")


def run_dead_letters(lane: DemoLane, burst: Burst) -> list[DeadLetter]:
    """This run's dead letters in ``lane``'s DLQ (listing releases them again at once)."""
    listing = list_dead_letters(lane.dlq, limit=max(50, len(burst.all_poison) + len(burst.flow_refused_keys) + 50))
    return [x for x in listing.letters if x.key.startswith(run_prefix(burst.run))]


@dataclass
class VendorFacts:
    """What the stand-in vendor saw of one run: its own counters, not the demo's."""

    effects: int  # messages of this run the vendor applied
    distinct_effect_keys: int
    requests: int  # every call, all runs (the vendor counts per server, not per run)
    replays: int  # calls with a key it had already applied: absorbed, no second effect
    throttled: int  # 429s answered
    peak_requests_per_s: int
    rate_per_s: float


def vendor_facts(vendor_url: str, vendor: str, text_prefix: str) -> VendorFacts | None:
    """What ``vendor`` took of this run (its messages whose text starts with ``text_prefix``);
    None when no vendor API answers (a stack without one)."""
    if not vendor_url:
        return None
    client = VendorClient(vendor_url)
    try:
        state = client.get(vendor)
        ours = [m for m in client.messages(vendor) if m.text.startswith(text_prefix)]
    except VendorAdminError:
        return None
    c = state.counters
    return VendorFacts(effects=len(ours), distinct_effect_keys=len({m.key for m in ours}), requests=c.requests,
                       replays=c.replays, throttled=c.throttled, peak_requests_per_s=c.peak_requests_per_s,
                       rate_per_s=state.settings.rate_per_s)


def accounting_vendor(settings: Settings) -> str:
    """The vendor accounting.post calls (its task settings' ``vendor``, as the task reads it)."""
    module = next((m for m in settings.tasks if m.module == accounting.__name__), None)
    return str((module.settings if module else {}).get("vendor") or accounting.DEFAULT_VENDOR)


def refuse_currency_at_accounting(vendor_url: str, vendor: str) -> None:
    """Put accounting.post's text for a REFUSED_CURRENCY invoice in the accounting stand-in's
    content filter (keeping its other settings and phrases): those posts are then refused (422)."""
    if not vendor_url:
        raise DemoError("the local stack has no stand-in vendor API (SLUICE_VENDOR_URL) for the flow's accounting step")
    vendors = VendorClient(vendor_url)
    try:
        phrases = vendors.get(vendor).settings.blocked_phrases
        vendors.update(vendor, blocked_phrases=tuple(dict.fromkeys((*phrases, REFUSED_PHRASE))))
    except VendorAdminError as exc:
        raise DemoError(f"cannot make the accounting stand-in {vendor!r} refuse {REFUSED_CURRENCY}: {exc}") from None


class NotificationTap:
    """A queue on moto subscribed to a flow lane's topics: the summary counts what the flow
    published from the messages themselves. Made before the burst, removed after the summary;
    read (and emptied) at each refresh, as every moto SQS call costs in proportion to the queue's
    depth (FACTS.md): read at the end, a few hundred messages would take seconds."""

    def __init__(self, sqs: Any, sns: Any, name: str) -> None:
        self.sqs, self.sns = sqs, sns
        self.texts: list[str] = []  # every message read so far
        self.url: str = sqs.create_queue(QueueName=name)["QueueUrl"]
        self.subscriptions: list[str] = []

    def subscribe(self, topic_arns: list[str]) -> None:
        arn = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        for topic in topic_arns:
            self.subscriptions.append(self.sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn,
                                                         ReturnSubscriptionArn=True)["SubscriptionArn"])

    @classmethod
    def open(cls, env: dict[str, str], region: str, lane: DemoLane, run: str) -> tuple[NotificationTap | None, str]:
        """The tap on ``lane``'s topics, or None and why there is none."""
        if lane.flow is None or not lane.flow.topic_arns:
            return None, "the lane publishes to no topic"
        # moto's SNS delivers only to moto's own SQS, whichever SQS server the lanes' queues are on.
        aws = {"endpoint_url": env.get("AWS_ENDPOINT_URL"), "region_name": region}
        tap: NotificationTap | None = None
        try:
            tap = cls(boto3.client("sqs", **aws), boto3.client("sns", **aws), f"sluice-demo-{run}-{lane.name}")
            tap.subscribe(list(lane.flow.topic_arns.values()))
            return tap, ""
        except (ClientError, BotoCoreError, KeyError) as exc:
            if tap is not None:
                tap.close()
            return None, f"cannot subscribe a queue to the lane's topics: {exc}"

    def read(self, max_receives: int = 5) -> bool:
        """Take what the queue holds (up to ``max_receives`` receives) into ``texts`` (each SNS
        envelope's ``Message``) and delete it; True once a receive came back empty."""
        try:
            for _ in range(max_receives):
                batch = self.sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                                 VisibilityTimeout=600).get("Messages", [])
                if not batch:
                    return True
                for message in batch:
                    try:
                        self.texts.append(str(json.loads(message["Body"])["Message"]))
                    except (ValueError, KeyError, TypeError):
                        self.texts.append(str(message["Body"]))  # raw delivery: the body is the message
                self.sqs.delete_message_batch(QueueUrl=self.url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)])
        except (ClientError, BotoCoreError) as exc:
            raise DemoError(f"cannot read the flow's notifications off {self.url}: {exc}") from None
        return False

    def messages(self) -> list[str]:
        """Every message published to the topics so far."""
        while not self.read():
            pass
        return self.texts

    def close(self) -> None:
        for subscription in self.subscriptions:
            with contextlib.suppress(ClientError, BotoCoreError):
                self.sns.unsubscribe(SubscriptionArn=subscription)
        with contextlib.suppress(ClientError, BotoCoreError):
            self.sqs.delete_queue(QueueUrl=self.url)


def failed_state(letter: DeadLetter) -> str:
    return str(letter.message_attributes.get("sluice_failed_state", {}).get("StringValue", ""))


@dataclass
class FlowSummary:
    """What one flow lane did with this run's invoices: from Step Functions (ListExecutions by
    status), its DLQ, the database, the accounting stand-in and the messages on its topics."""

    name: str
    accepted: set[str]  # this run's keys in the lane that the API accepted
    executions: FlowExecutions
    refused: set[str]  # accepted keys in the currency accounting refuses: expected to fail late
    large: set[str]  # accepted keys IsLarge sends to accounting
    dead: list[DeadLetter]
    saved: list[str]  # keys of the lane's invoice rows (SaveInvoice)
    posts: int  # accounting_posts rows of this run
    accounting: VendorFacts | None
    notified: Counter[str] | None  # key -> notifications published; None: not counted
    not_counted: str  # why notifications are not counted
    peak_running: int | None  # sampled while the demo ran
    cap: int

    @property
    def lost(self) -> set[str]:
        """Accepted keys that neither succeeded nor are a dead letter."""
        return self.accepted - self.executions.succeeded - {x.key for x in self.dead}

    def checks(self) -> dict[str, bool]:
        dead_keys = [x.key for x in self.dead]
        succeeded_large = len((self.large - self.refused) & self.executions.succeeded)
        checks = {
            f"{self.name}: one execution per item (keys sent twice started once)":
                self.executions.every == self.accepted and not self.executions.running,
            f"{self.name}: every execution succeeded but the refused invoices'":
                self.executions.succeeded == self.accepted - self.refused,
            f"{self.name}: each failed one in the DLQ once, failed at {FAILED_STATE}":
                self.executions.failed == self.refused and sorted(dead_keys) == sorted(self.refused)
                and all(failed_state(x) == FAILED_STATE for x in self.dead),
            f"{self.name}: every invoice saved once": sorted(self.saved) == sorted(self.accepted),
            f"{self.name}: one accounting post per large invoice that succeeded":
                self.accounting is not None
                and self.posts == succeeded_large == self.accounting.effects == self.accounting.distinct_effect_keys,
            f"{self.name}: running executions never above its cap":
                self.peak_running is not None and self.peak_running <= self.cap,
        }
        if self.notified is not None:
            checks[f"{self.name}: one notification per execution that succeeded"] = (
                set(self.notified) == self.executions.succeeded and set(self.notified.values()) <= {1})
        return checks

    def facts(self) -> dict[str, Any]:
        return {"accepted": len(self.accepted), "executions": len(self.executions.every),
                "succeeded": len(self.executions.succeeded), "failed": len(self.executions.failed),
                "running": len(self.executions.running), "span_s": self.executions.span_s,
                "dead_lettered": len(self.dead),
                "failed_states": dict(Counter(failed_state(x) for x in self.dead)),
                "dead_letters": [{"key": x.key, "state": failed_state(x), "reason": x.reason} for x in self.dead],
                "saved": len(self.saved), "saved_distinct": len(set(self.saved)),
                "large_succeeded": len((self.large - self.refused) & self.executions.succeeded),
                "accounting_posts": self.posts,
                "accounting": None if self.accounting is None else self.accounting.__dict__,
                "notifications": None if self.notified is None else sum(self.notified.values()),
                "notified_keys": None if self.notified is None else len(self.notified),
                "notifications_not_counted": self.not_counted,
                "peak_running": self.peak_running, "cap": self.cap, "lost": len(self.lost)}


def flow_summary(demo: Demo, lane: DemoLane, burst: Burst, accepted: set[str], dead: list[DeadLetter],
                 tap: tuple[NotificationTap | None, str]) -> FlowSummary:
    if lane.flow is None:
        raise DemoError(f"lane {lane.name!r} is not a workflow lane")
    executions = flow_executions(lane.flow.machine, burst.execution_names())
    notified: Counter[str] | None = None
    if tap[0] is not None:
        mentioned = re.compile(re.escape(burst.flow_prefix) + r"\d+")
        notified = Counter(key for text in tap[0].messages() for key in set(mentioned.findall(text)))
    return FlowSummary(
        name=lane.name, accepted=accepted, executions=executions, refused=accepted & burst.flow_refused_keys,
        large=accepted & burst.flow_large_keys, dead=dead,
        saved=demo.db.flow_invoice_keys(burst.run),
        posts=demo.db.accounting_rows(burst.run),
        accounting=vendor_facts(demo.env.get("SLUICE_VENDOR_URL", ""), demo.accounting_vendor,
                                f"invoice {burst.flow_prefix}"),
        notified=notified, not_counted=tap[1], peak_running=demo.flow_peaks.get(lane.name), cap=lane.cap)


@dataclass
class LaneSummary:
    name: str
    expected: int
    applied: int  # a flow lane: executions that succeeded
    dead: list[Any]
    lost: int
    peak: int | None  # a flow lane: running executions
    cap: int
    max_rate: float
    vendor: str | None
    vendor_facts: VendorFacts | None
    flow: FlowSummary | None = None
    delivered: int = 0  # its vendor's delivery rows (a lane carrying invoices too applies more)

    def facts(self) -> dict[str, Any]:
        return {"expected": self.expected, "applied": self.applied, "dead_lettered": len(self.dead),
                "reasons": dict(Counter(f"{x.task} {x.error_type or 'error'}" for x in self.dead)),
                "lost": self.lost, "peak_workers": self.peak, "cap": self.cap, "max_rate": self.max_rate,
                "vendor": self.vendor, "vendor_facts": None if self.vendor_facts is None else
                self.vendor_facts.__dict__, "flow": None if self.flow is None else self.flow.facts()}


def summarise(demo: Demo, burst: Burst, sent: EnqueueOutcome, drain_s: float, peaks: dict[str, int | None]
              ) -> tuple[Table, bool, dict[str, Any]]:
    run = burst.run
    db = demo.db
    applied_keys = db.applied_keys(run)
    invoice_rows = db.invoice_rows(run)
    delivery_rows = db.delivery_rows(run)
    accounting_rows = db.accounting_rows(run)
    ledger_rows = db.ledger_rows(run)
    # A key applied twice keeps one row (the UNIQUE key) but an apply_count above 1; a second row
    # should be impossible and is counted all the same.
    duplicates = db.duplicates(run)
    poison = burst.all_poison
    lanes = [x.lane for x in demo.lanes]
    summaries: list[LaneSummary] = []
    every_dead: set[str] = set()
    for lane in demo.lanes:
        keys = burst.keys_in(lane.lane, lanes) & sent.accepted
        dead = run_dead_letters(lane, burst)
        every_dead |= {x.key for x in dead}
        if lane.flow is not None:
            flow = flow_summary(demo, lane, burst, keys, dead, demo.taps.get(lane.name, (None, "no tap")))
            summaries.append(LaneSummary(lane.name, len(keys - flow.refused), len(flow.executions.succeeded), dead,
                                         len(flow.lost), flow.peak_running, lane.cap, lane.lane.drain.max_rate,
                                         None, None, flow))
            continue
        valid = keys - poison
        seen = (vendor_facts(demo.env.get("SLUICE_VENDOR_URL", ""), lane.vendor, f"DEMO-{run} ")
                if lane.vendor else None)
        delivered = db.delivery_rows(run, None if lane.lane.implicit else lane.vendor) if lane.vendor else 0
        summaries.append(LaneSummary(lane.name, len(valid), len(valid & applied_keys), dead,
                                     len(valid - applied_keys), peaks.get(lane.name), lane.cap,
                                     lane.lane.drain.max_rate, lane.vendor, seen, delivered=delivered))
    flows = [x.flow for x in summaries if x.flow is not None]
    accepted_valid = sent.accepted & (burst.valid_keys | burst.notify_keys)
    lost = accepted_valid - applied_keys
    lost_count = len(lost) + sum(len(f.lost) for f in flows)
    poison_missing = (sent.accepted & poison) - every_dead
    queue_left = sum(queue_counts(lane.queue).total for lane in demo.lanes)
    routed_as_expected = all(sent.lanes.get(k) == lane.name for lane in demo.lanes
                             for k in burst.keys_in(lane.lane, lanes) & sent.accepted)
    checks = {
        "duplicates is 0": duplicates == 0 and ledger_rows == invoice_rows + delivery_rows + accounting_rows,
        "lost is 0": lost_count == 0,
        "every poison item is in the DLQ": not poison_missing,
        "no poison item applied": not (applied_keys & poison),
        "every item the API was sent was accepted": not sent.refused,
        "every item in the lane its routing names": routed_as_expected,
        "workers never above a lane's cap": all(x.peak is None or x.peak <= x.cap for x in summaries
                                                if x.flow is None),
    }
    vendor_lanes = [x for x in summaries if x.vendor is not None and x.expected]
    if vendor_lanes:
        checks["one effect at the vendor per delivered item"] = all(
            x.vendor_facts is not None and x.vendor_facts.effects == x.vendor_facts.distinct_effect_keys == x.delivered
            for x in vendor_lanes)
    for flow in flows:
        checks.update(flow.checks())
    title = f"sluice demo summary (run {run}): from the database, the queues, Step Functions and the vendor"
    table = Table(title=title, caption="on a flow lane: applied = executions succeeded, busy = executions "
                                       "running (sampled), vendor = its accounting step's")
    for column in ("lane", "applied", "dead-lettered", "lost", "busy peak/cap", "vendor calls/s peak/rate",
                   "vendor 429s"):
        add_column(table, column)
    for x in summaries:
        vf = x.vendor_facts or (x.flow.accounting if x.flow is not None else None)
        table.add_row(x.name, f"{x.applied:,} / {x.expected:,}", f"{len(x.dead):,}", str(x.lost),
                      f"{'?' if x.peak is None else x.peak} / {x.cap}",
                      "" if vf is None else f"{vf.peak_requests_per_s} / {x.max_rate:g}",
                      "" if vf is None else f"{vf.throttled:,}")
    console.print(table)
    details = Table(show_header=False, title="and over all lanes")
    details.add_row("items sent (incl. repeats)", f"{burst.items_sent:,} in {len(burst.requests)} requests")
    details.add_row("distinct keys accepted", f"{len(sent.accepted):,} ({len(burst.duplicate_keys):,} sent twice)")
    details.add_row("invoice rows / delivery rows / accounting rows / ledger rows",
                    f"{invoice_rows:,} / {delivery_rows:,} / {accounting_rows:,} / {ledger_rows:,}")
    for x in summaries:
        if x.flow is not None:
            add_flow_details(details, x.flow, burst)
            continue
        for kind, n in Counter(f"{d.task} {d.error_type or 'error'}" for d in x.dead).most_common(3):
            example = next(d.reason for d in x.dead if f"{d.task} {d.error_type or 'error'}" == kind)
            details.add_row(f"  {x.name}: {n} x {kind}", f"e.g. {example}")
        if x.vendor_facts is not None:
            details.add_row(f"  vendor {x.vendor}: effects / distinct keys / repeated keys absorbed",
                            f"{x.vendor_facts.effects:,} / {x.vendor_facts.distinct_effect_keys:,} / "
                            f"{x.vendor_facts.replays:,}")
    details.add_row("duplicates (keys applied > once)", str(duplicates))
    details.add_row("lost (accepted keys neither applied nor dead-lettered)", str(lost_count))
    details.add_row("still in the work queues", f"{queue_left:,}")
    enqueue_rate = len(sent.accepted) / sent.seconds if sent.seconds else 0.0
    # A refused flow invoice is both a row (SaveInvoice) and a dead letter: counted once.
    finished = len(applied_keys | every_dead)
    drain_rate = finished / drain_s if drain_s else 0.0
    details.add_row("enqueue", f"{sent.seconds:,.1f} s, {enqueue_rate:,.0f} items/s")
    details.add_row("drain (first POST to queues empty)", f"{drain_s:,.1f} s, {drain_rate:,.0f} items/s")
    ok = all(checks.values())
    for name, passed in checks.items():
        details.add_row(name, "[green]yes[/green]" if passed else "[red]NO[/red]")
    first = next((x for x in summaries if x.flow is None), summaries[0])
    facts = {"run": run, "processed": invoice_rows + delivery_rows, "invoices": invoice_rows,
             "notifications": delivery_rows, "accounting_posts": accounting_rows, "ledger_rows": ledger_rows,
             "dead_lettered": len(every_dead), "duplicates": duplicates, "lost": lost_count,
             "lanes": {x.name: x.facts() for x in summaries},
             "peak_workers": first.peak, "cap": first.cap, "enqueue_s": sent.seconds, "drain_s": drain_s,
             "checks": checks, "ok": ok}
    return details, ok, facts


def add_flow_details(details: Table, flow: FlowSummary, burst: Burst) -> None:
    ex = flow.executions
    twice = len(flow.accepted & burst.duplicate_keys)
    details.add_row(f"  {flow.name}: executions succeeded / failed / running",
                    f"{len(ex.succeeded):,} / {len(ex.failed):,} / {len(ex.running):,} "
                    f"(of {len(flow.accepted):,} invoices; {twice} sent twice)")
    rate = len(ex.closed) / ex.span_s if ex.span_s else 0.0
    details.add_row(f"  {flow.name}: first start to last close", f"{ex.span_s:,.1f} s, {rate:,.1f} executions/s")
    details.add_row(f"  {flow.name}: invoices saved / large ones posted (accounting_posts)",
                    f"{len(flow.saved):,} / {flow.posts:,} of {len((flow.large - flow.refused) & ex.succeeded):,} "
                    "large that succeeded")
    if flow.accounting is not None:
        details.add_row(f"  {flow.name}: accounting effects / distinct keys / repeated keys absorbed",
                        f"{flow.accounting.effects:,} / {flow.accounting.distinct_effect_keys:,} / "
                        f"{flow.accounting.replays:,}")
    details.add_row(f"  {flow.name}: SNS notifications published / keys",
                    f"not counted: {flow.not_counted}" if flow.notified is None else
                    f"{sum(flow.notified.values()):,} / {len(flow.notified):,}")
    details.add_row(f"  {flow.name}: peak running executions / cap",
                    f"{'?' if flow.peak_running is None else flow.peak_running} / {flow.cap} (sampled)")
    for letter in flow.dead[:2]:
        details.add_row(f"  {flow.name}: DLQ {letter.key}", letter.reason)
    if len(flow.dead) > 2:
        details.add_row(f"  {flow.name}: DLQ", f"... and {len(flow.dead) - 2} more")


def run_demo(env: dict[str, str], settings: Settings, *, items: int, poison: int, duplicates: int,
             request_size: int, timeout_s: float, refresh_s: float = 0.5, json_out: Path | None = None,
             notifications: int = 0, notify_poison: int = 0, flow_items: int = 0, flow_refused: int = 0,
             flow_duplicates: int = 0) -> bool:
    lanes = demo_lanes(settings, env)
    demo = Demo(env, lanes)
    demo.accounting_vendor = accounting_vendor(settings)
    vendors = sorted({lane.vendor for lane in lanes if lane.vendor is not None})
    # The tight vendor's lane gets a fifth of the messages: at its rate they take as long as the rest.
    per_vendor = {v: (notifications if i == 0 else max(1, notifications // 5)) for i, v in enumerate(vendors)}
    flow_lane = next((lane for lane in lanes if lane.flow is not None), None)
    flow_customers = flow_lane.flow_customers if flow_lane is not None else ()
    if flow_lane is not None and not flow_customers:
        console.print(f"lane {flow_lane.name} matches no payload.customer: no invoices are sent for it alone")
    burst = make_burst(items, poison, duplicates, request_size, notifications=per_vendor if notifications else {},
                       notify_poison=notify_poison, flow=flow_items, flow_refused=flow_refused,
                       flow_duplicates=flow_duplicates, flow_customers=flow_customers)
    if burst.flow_refused_keys:
        refuse_currency_at_accounting(env.get("SLUICE_VENDOR_URL", ""), demo.accounting_vendor)
        console.print(f"the accounting stand-in ({demo.accounting_vendor}) now refuses posts in {REFUSED_CURRENCY}: "
                      f"{len(burst.flow_refused_keys)} large {REFUSED_CURRENCY} invoices will fail at {FAILED_STATE}")
    every_lane = [x.lane for x in lanes]
    expected = {lane.name: burst.expected(lane, every_lane) for lane in lanes}
    routed = {lane.name: len(burst.keys_in(lane.lane, every_lane)) for lane in lanes}
    taps = demo.taps = {lane.name: NotificationTap.open(env, settings.region, lane, burst.run)
                        for lane in lanes if lane.flow}
    try:
        started = time.monotonic()
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            with ThreadPoolExecutor(max_workers=1) as pool:
                sending = pool.submit(send_burst, env["SLUICE_API_URL"], burst)
                while not sending.done():
                    live.update(demo.view(demo.snapshot(burst), expected, "enqueueing", time.monotonic() - started))
                    time.sleep(refresh_s)  # screen refresh period
                sent = sending.result()
            deadline = started + timeout_s
            while True:
                snaps = demo.snapshot(burst)
                live.update(demo.view(snaps, expected, "draining", time.monotonic() - started))
                settled = all(demo.settled(lane, snaps[lane.name], burst, expected[lane.name], routed[lane.name])
                              for lane in lanes)
                if settled or time.monotonic() > deadline:
                    break
                time.sleep(refresh_s)
            drain_s = time.monotonic() - started
        if not console.is_terminal:
            console.line()  # off a terminal, Live leaves its last frame without a line end
        peaks = {name: s.peak for name, s in demo.snapshot(burst).items()}
        table, ok, facts = summarise(demo, burst, sent, drain_s, peaks)
    finally:
        for tap, _ in taps.values():
            if tap is not None:
                tap.close()
    console.print(table)
    if sent.refused:
        console.print(f"[red]the API refused some requests:[/red] {escape(json.dumps(sent.refused)[:500])}")
    if json_out is not None:
        json_out.write_text(json.dumps(facts, indent=2, default=str))
    console.print("[green]invariants hold[/green]" if ok else "[red]an invariant is broken[/red]")
    return ok


def demo_settings(settings: Settings, cap: int | None, lanes: bool) -> Settings:
    """The local settings with the demo's lanes (unless the config has lanes of its own or
    ``lanes`` is off), the first worker lane's cap set to ``cap``."""
    if lanes and not settings.lanes:
        settings = Settings.model_validate({**settings.model_dump(), "lanes": DEMO_LANES})
    if cap is not None:
        if settings.lanes:
            first = next((name for name, lane in settings.lanes.items() if lane.flow is None),
                         next(iter(settings.lanes)))
            raw = settings.model_dump()
            raw["lanes"][first]["drain"] = {**raw["lanes"][first]["drain"], "max_parallel": cap}
            raw["lanes"][first]["worker"] = {**raw["lanes"][first]["worker"], "reserved_concurrency": cap}
            settings = Settings.model_validate(raw)
        else:
            settings = settings.model_copy(update={
                "drain": settings.drain.model_copy(update={"max_parallel": cap}),
                "worker": settings.worker.model_copy(update={"reserved_concurrency": cap}),  # config check: equal
            })
    return settings


def _interrupt_once(signum: int, frame: object) -> None:
    # Only the first Ctrl-C or SIGTERM unwinds: another one while the stack is being stopped
    # would cut that cleanup short and orphan its servers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(
    items: int = typer.Option(10_000, "--items", min=1, help="Distinct invoices in the burst."),
    cap: int = typer.Option(None, "--cap", min=1, help="The first worker lane's cap, default from config/local.yml."),
    poison: int = typer.Option(5, "--poison", min=0, help="Invoices for unknown customers (-> DLQ)."),
    notifications: int = typer.Option(200, "--notifications", min=0,
                                      help="Messages to the stand-in vendor (notify.send), mixed into the burst."),
    notify_poison: int = typer.Option(3, "--notify-poison", min=0,
                                      help="Messages to a recipient the vendor refuses (-> DLQ)."),
    duplicates: int = typer.Option(None, "--duplicates", min=0, help="Keys sent twice, default 1% of items."),
    flow_items: int = typer.Option(200, "--flow-items", min=0,
                                   help="Invoices of the flow lane's customers: one execution each."),
    flow_refused: int = typer.Option(4, "--flow-refused", min=0,
                                     help=f"Of those, large ones in {REFUSED_CURRENCY}, which accounting refuses "
                                          f"(-> they fail at {FAILED_STATE}, -> DLQ)."),
    flow_duplicates: int = typer.Option(5, "--flow-duplicates", min=0, help="Flow invoices sent twice."),
    request_size: int = typer.Option(500, "--request-size", min=1, max=1000, help="Items per POST."),
    sqs: str = typer.Option(None, "--sqs", help="fauxqs | moto | URL, default local.sqs."),
    timeout_s: float = typer.Option(600, "--timeout", help="Give up draining after this many seconds."),
    database_url: str = typer.Option(None, "--database-url", help="MariaDB, default DATABASE_URL or :3306."),
    local_dir: Path = typer.Option(None, "--local-dir", help="Stack state directory, default .sluice."),
    json_out: Path = typer.Option(None, "--json-out", help="Also write the summary as JSON here."),
    lanes: bool = typer.Option(True, "--lanes/--no-lanes",
                               help="Run the demo's four lanes (invoices-flow, ledger, vendor-a, vendor-b) or one."),
) -> None:
    """Start the local stack, POST a burst of invoices (some through the invoice flow) and
    notifications, watch each lane drain, check the result."""
    from sluice.settings import SettingsError, load_settings
    from sluice_tools.local.env import LOCAL_DIR, read_local_env, use_local_stack
    from sluice_tools.local.processes import LocalServiceError
    from sluice_tools.local.stack import LocalStack, running_stack

    # SIGTERM (e.g. from `make` being stopped) cleans up like Ctrl-C.
    signal.signal(signal.SIGINT, _interrupt_once)
    signal.signal(signal.SIGTERM, _interrupt_once)
    directory = local_dir or LOCAL_DIR
    try:
        settings = load_settings("local")
    except SettingsError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    stack: LocalStack | None = None
    try:
        if running_stack(directory) is not None:
            env = read_local_env(directory / "local.env")
            console.print(f"using the local stack already running from {directory.name}/ with its own lanes "
                          "(--cap, --sqs and --lanes apply only to a stack the demo starts)")
        else:
            settings = demo_settings(settings, cap, lanes)
            stack = LocalStack(settings, sqs=sqs or settings.local.sqs, database_url=database_url,
                               local_dir=directory)
            caps = ", ".join(f"{lane.name} cap {lane.drain.max_parallel} rate {lane.drain.max_rate:g}/s"
                             for lane in settings.resolved_lanes())
            console.print(f"starting the local stack (SQS: {stack.sqs}; {caps}) ...")
            env = stack.start()
        # boto3 in this process talks to the stack's servers.
        use_local_stack(env, default_region=settings.region)
        ok = run_demo(env, settings, items=items, poison=poison,
                      duplicates=items // 100 if duplicates is None else duplicates,
                      request_size=request_size, timeout_s=timeout_s, json_out=json_out,
                      notifications=notifications, notify_poison=notify_poison, flow_items=flow_items,
                      flow_refused=flow_refused, flow_duplicates=flow_duplicates)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping what the demo started[/yellow]")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (LocalServiceError, DemoError, DbError, AwsError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(3) from None
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # nothing may cut the cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if stack is not None:
            console.print("stopping the local stack ...")
            stack.stop()
    raise typer.Exit(0 if ok else EXIT_INVARIANT_BROKEN)


def cli() -> None:
    typer.run(main)


if __name__ == "__main__":
    cli()
