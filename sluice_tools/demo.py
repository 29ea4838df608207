"""`make demo`: the whole flow on one machine, in three lanes, checked against the database,
the queues and the vendor.

1. Start the local stack with three lanes (``DEMO_LANES``: invoices into MariaDB, and two vendor
   lanes for notify.send, one generous, one with a tight rate like a single phone number), unless
   one is running: then use it, whatever lanes it has, and say so.
2. POST a burst over real HTTP to the stack's API, in requests of a few hundred: invoices
   (into MariaDB; a few poison ones for an unknown customer, each in its own group) and
   notifications (to the stand-in vendor API, which answers 429 above its rate; a few poison
   ones for a recipient the vendor refuses), with some keys sent a second time in separate
   requests.
3. Show live progress per lane while the scheduled consumers drain: queue depth, in flight,
   workers busy vs the lane's cap, applied, DLQ.
4. Summarise FROM THE DATABASE, THE QUEUES AND THE VENDOR, not from counters kept here, through
   the task modules' own queries: processed (invoice, delivery and ledger rows of this run),
   effects at the vendor (one per delivered item; repeated idempotency keys absorbed), the
   vendor's 429s, dead-lettered (DLQ, with reasons), duplicates (keys applied more than once:
   must be 0), lost (keys the API accepted that no row holds and no dead letter explains: must
   be 0), per lane: peak workers vs its cap, peak vendor calls/s vs its rate, 429s seen. Exit 0
   only if those invariants hold.

Every key of a run starts with ``DEMO-<run id>-``, so a run on a stack that already holds
other work counts only its own rows.
"""

from __future__ import annotations

import json
import random
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

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from sluice.aws import Queue
from sluice.db import Database, DbError
from sluice.settings import Lane, Settings
from sluice_tools.local.env import queue_env_keys
from sluice_tools.local.vendor_client import VendorAdminError, VendorClient
from sluice_tools.ops.dlq import list_dead_letters
from sluice_tools.ops.status import QueueCounts, lambda_stats, queue_counts
from worker.tasks import invoices, notify

CUSTOMERS = ("acme", "globex", "initech", "umbrella", "hooli")
CURRENCIES = ("EUR", "USD", "GBP", "CHF")
DEFAULT_VENDOR = "a"  # where notifications go on a stack without vendor lanes
EXIT_INVARIANT_BROKEN = 1
EXIT_INTERRUPTED = 130
# The demo's lanes (DESIGN.md section 11): config/local.yml's sections, these overrides. Each
# vendor lane's rate is its vendor's (config/local.yml local.vendors: a 50/s, b 5/s), its batch
# small enough that one batch does not outrun the vendor.
DEMO_LANES: dict[str, dict[str, Any]] = {
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
class DemoLane:
    """One lane as the demo watches it: its queues, cap, rate, worker and (for a vendor lane) vendor."""

    lane: Lane
    queue: Queue
    dlq: Queue
    worker_function: str
    consumer_function: str

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


def demo_lanes(settings: Settings, env: dict[str, str]) -> list[DemoLane]:
    lanes = []
    for lane in settings.resolved_lanes():
        queue_key, dlq_key = queue_env_keys(lane)
        if not env.get(queue_key) or not env.get(dlq_key):
            raise DemoError(f"the local stack's local.env names no queue for lane {lane.name!r}")
        lanes.append(DemoLane(lane, Queue(env[queue_key]), Queue(env[dlq_key]),
                              settings.function_name(lane.function_key("worker")),
                              settings.function_name(lane.function_key("consumer"))))
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

    @property
    def all_poison(self) -> set[str]:
        return self.poison_keys | self.notify_poison_keys

    @property
    def items_sent(self) -> int:
        return sum(len(r) for r in self.requests)

    def keys_in(self, lane: Lane, lanes: list[Lane]) -> set[str]:
        """The keys routing sends to ``lane``: the first lane that takes each item."""
        return {key for key, item in self.items.items()
                if next((x for x in lanes if x.takes(item["task"], item["payload"])), None) == lane}


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


def make_burst(items: int, poison: int, duplicates: int, request_size: int, seed: int | None = None,
               notifications: dict[str, int] | None = None, notify_poison: int = 0) -> Burst:
    """``items`` distinct invoices (``poison`` of them for unknown customers) and, per vendor,
    ``notifications[vendor]`` messages (``notify_poison`` of each refused by the vendor), then
    ``duplicates`` of their keys again in requests of their own."""
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
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
                      "payload": {"customer": rng.choice(CUSTOMERS), "amount_cents": rng.randint(100, 500_000),
                                  "currency": rng.choice(CURRENCIES), "description": f"demo invoice {i}"}})
        valid.add(key)
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
    requests += [again[i:i + request_size] for i in range(0, len(again), request_size)]
    return Burst(run=run, requests=requests, valid_keys=valid, poison_keys=bad,
                 duplicate_keys={x["key"] for x in again}, first_pass=first_pass,
                 notify_keys=delivered, notify_poison_keys=refused, items={x["key"]: x for x in burst})


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

    def ledger_rows(self, run: str) -> int:
        return self.db.count_processed(run_prefix(run))

    def duplicates(self, run: str) -> int:
        return invoices.duplicates(self.db, run_prefix(run)) + notify.duplicates(self.db, run_prefix(run))


def run_prefix(run: str) -> str:
    return f"DEMO-{run}-"


@dataclass
class LaneSnapshot:
    queue: QueueCounts
    dlq: QueueCounts
    applied: int
    busy: int | None
    peak: int | None


class Demo:
    def __init__(self, env: dict[str, str], lanes: list[DemoLane]) -> None:
        self.env = env
        self.lanes = lanes
        self.db = DemoDatabase(env["DATABASE_URL"])

    def applied(self, lane: DemoLane, run: str) -> int:
        """What ``lane`` applied of this run: its invoices and its vendor's deliveries."""
        total = self.db.invoice_rows(run) if lane.carries_invoices else 0
        if lane.vendor is not None:
            total += self.db.delivery_rows(run, None if lane.lane.implicit else lane.vendor)
        return total

    def snapshot(self, run: str) -> dict[str, LaneSnapshot]:
        try:
            stats = lambda_stats(self.env["SLUICE_LAMBDA_STATS_URL"])
        except (OSError, ValueError, KeyError):
            stats = {}
        return {lane.name: LaneSnapshot(queue=queue_counts(lane.queue), dlq=queue_counts(lane.dlq),
                                        applied=self.applied(lane, run),
                                        busy=stats.get(lane.worker_function, {}).get("busy"),
                                        peak=stats.get(lane.worker_function, {}).get("peak_busy"))
                for lane in self.lanes}

    def view(self, snaps: dict[str, LaneSnapshot], expected: dict[str, int], phase: str, elapsed: float) -> Table:
        table = Table(title=f"sluice demo: {phase} ({elapsed:,.1f} s)", min_width=60)
        for column in ("lane", "queue", "in flight", "delayed", "workers / cap", "applied", "DLQ"):
            table.add_column(column, justify="left" if column == "lane" else "right")
        for lane in self.lanes:
            s = snaps[lane.name]
            workers = f"{'?' if s.busy is None else s.busy} / {lane.cap}" + (
                "" if s.peak is None else f" (peak {s.peak})")
            table.add_row(lane.name, f"{s.queue.visible:,}", f"{s.queue.in_flight:,}", f"{s.queue.delayed:,}",
                          workers, f"{s.applied:,} / {expected[lane.name]:,}", f"{s.dlq.total:,}")
        return table


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


def vendor_facts(vendor_url: str, vendor: str, run: str) -> VendorFacts | None:
    """None when no vendor API answers (a stack without one)."""
    if not vendor_url:
        return None
    client = VendorClient(vendor_url)
    try:
        state = client.get(vendor)
        ours = [m for m in client.messages(vendor) if m.text.startswith(f"DEMO-{run} ")]
    except VendorAdminError:
        return None
    c = state.counters
    return VendorFacts(effects=len(ours), distinct_effect_keys=len({m.key for m in ours}), requests=c.requests,
                       replays=c.replays, throttled=c.throttled, peak_requests_per_s=c.peak_requests_per_s,
                       rate_per_s=state.settings.rate_per_s)


@dataclass
class LaneSummary:
    name: str
    expected: int
    applied: int
    dead: list[Any]
    lost: int
    peak: int | None
    cap: int
    max_rate: float
    vendor: str | None
    vendor_facts: VendorFacts | None

    def facts(self) -> dict[str, Any]:
        return {"expected": self.expected, "applied": self.applied, "dead_lettered": len(self.dead),
                "reasons": dict(Counter(f"{x.task} {x.error_type or 'error'}" for x in self.dead)),
                "lost": self.lost, "peak_workers": self.peak, "cap": self.cap, "max_rate": self.max_rate,
                "vendor": self.vendor, "vendor_facts": None if self.vendor_facts is None else
                self.vendor_facts.__dict__}


def summarise(demo: Demo, burst: Burst, sent: EnqueueOutcome, drain_s: float,
              peaks: dict[str, int | None]) -> tuple[Table, bool, dict[str, Any]]:
    run = burst.run
    db = demo.db
    applied_keys = db.applied_keys(run)
    invoice_rows = db.invoice_rows(run)
    delivery_rows = db.delivery_rows(run)
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
        listing = list_dead_letters(lane.dlq, limit=max(50, len(poison) + 50))
        dead = [x for x in listing.letters if x.key.startswith(run_prefix(run))]
        every_dead |= {x.key for x in dead}
        valid = keys - poison
        seen = vendor_facts(demo.env.get("SLUICE_VENDOR_URL", ""), lane.vendor, run) if lane.vendor else None
        summaries.append(LaneSummary(lane.name, len(valid), len(valid & applied_keys), dead,
                                     len(valid - applied_keys), peaks.get(lane.name), lane.cap,
                                     lane.lane.drain.max_rate, lane.vendor, seen))
    accepted_valid = sent.accepted & (burst.valid_keys | burst.notify_keys)
    lost = accepted_valid - applied_keys
    poison_missing = (sent.accepted & poison) - every_dead
    queue_left = sum(queue_counts(lane.queue).total for lane in demo.lanes)
    routed_as_expected = all(sent.lanes.get(k) == lane.name for lane in demo.lanes
                             for k in burst.keys_in(lane.lane, lanes) & sent.accepted)
    checks = {
        "duplicates is 0": duplicates == 0 and ledger_rows == invoice_rows + delivery_rows,
        "lost is 0": not lost,
        "every poison item is in the DLQ": not poison_missing,
        "no poison item applied": not (applied_keys & poison),
        "every item the API was sent was accepted": not sent.refused,
        "every item in the lane its routing names": routed_as_expected,
        "workers never above a lane's cap": all(x.peak is None or x.peak <= x.cap for x in summaries),
    }
    vendor_lanes = [x for x in summaries if x.vendor is not None and x.expected]
    if vendor_lanes:
        checks["one effect at the vendor per delivered item"] = all(
            x.vendor_facts is not None and x.vendor_facts.effects == x.vendor_facts.distinct_effect_keys == x.applied
            for x in vendor_lanes)
    title = f"sluice demo summary (run {run}): from the database, the queues and the vendor"
    table = Table(title=title)
    for column in ("lane", "applied", "dead-lettered", "lost", "workers peak/cap", "vendor calls/s peak/rate",
                   "vendor 429s"):
        table.add_column(column, justify="left" if column == "lane" else "right")
    for x in summaries:
        vf = x.vendor_facts
        table.add_row(x.name, f"{x.applied:,} / {x.expected:,}", f"{len(x.dead):,}", str(x.lost),
                      f"{'?' if x.peak is None else x.peak} / {x.cap}",
                      "" if vf is None else f"{vf.peak_requests_per_s} / {x.max_rate:g}",
                      "" if vf is None else f"{vf.throttled:,}")
    console.print(table)
    details = Table(show_header=False, title="and over all lanes")
    details.add_row("items sent (incl. repeats)", f"{burst.items_sent:,} in {len(burst.requests)} requests")
    details.add_row("distinct keys accepted", f"{len(sent.accepted):,} ({len(burst.duplicate_keys):,} sent twice)")
    details.add_row("invoice rows / delivery rows / ledger rows",
                    f"{invoice_rows:,} / {delivery_rows:,} / {ledger_rows:,}")
    for x in summaries:
        for kind, n in Counter(f"{d.task} {d.error_type or 'error'}" for d in x.dead).most_common(3):
            example = next(d.reason for d in x.dead if f"{d.task} {d.error_type or 'error'}" == kind)
            details.add_row(f"  {x.name}: {n} x {kind}", f"e.g. {example}")
        if x.vendor_facts is not None:
            details.add_row(f"  vendor {x.vendor}: effects / distinct keys / repeated keys absorbed",
                            f"{x.vendor_facts.effects:,} / {x.vendor_facts.distinct_effect_keys:,} / "
                            f"{x.vendor_facts.replays:,}")
    details.add_row("duplicates (keys applied > once)", str(duplicates))
    details.add_row("lost (accepted valid keys not applied)", str(len(lost)))
    details.add_row("still in the work queues", f"{queue_left:,}")
    enqueue_rate = len(sent.accepted) / sent.seconds if sent.seconds else 0.0
    drain_rate = (invoice_rows + delivery_rows + len(every_dead)) / drain_s if drain_s else 0.0
    details.add_row("enqueue", f"{sent.seconds:,.1f} s, {enqueue_rate:,.0f} items/s")
    details.add_row("drain (first POST to queues empty)", f"{drain_s:,.1f} s, {drain_rate:,.0f} items/s")
    ok = all(checks.values())
    for name, passed in checks.items():
        details.add_row(name, "[green]yes[/green]" if passed else "[red]NO[/red]")
    first = summaries[0]
    facts = {"run": run, "processed": invoice_rows + delivery_rows, "invoices": invoice_rows,
             "notifications": delivery_rows, "ledger_rows": ledger_rows, "dead_lettered": len(every_dead),
             "duplicates": duplicates, "lost": len(lost), "lanes": {x.name: x.facts() for x in summaries},
             "peak_workers": first.peak, "cap": first.cap, "enqueue_s": sent.seconds, "drain_s": drain_s,
             "checks": checks, "ok": ok}
    return details, ok, facts


def run_demo(env: dict[str, str], settings: Settings, *, items: int, poison: int, duplicates: int,
             request_size: int, timeout_s: float, refresh_s: float = 0.5, json_out: Path | None = None,
             notifications: int = 0, notify_poison: int = 0) -> bool:
    lanes = demo_lanes(settings, env)
    demo = Demo(env, lanes)
    vendors = sorted({lane.vendor for lane in lanes if lane.vendor is not None})
    # The tight vendor's lane gets a fifth of the messages: at its rate they take as long as the rest.
    per_vendor = {v: (notifications if i == 0 else max(1, notifications // 5)) for i, v in enumerate(vendors)}
    burst = make_burst(items, poison, duplicates, request_size, notifications=per_vendor if notifications else {},
                       notify_poison=notify_poison)
    every_lane = [x.lane for x in lanes]
    expected = {lane.name: len(burst.keys_in(lane.lane, every_lane) - burst.all_poison) for lane in lanes}
    started = time.monotonic()
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        with ThreadPoolExecutor(max_workers=1) as pool:
            sending = pool.submit(send_burst, env["SLUICE_API_URL"], burst)
            while not sending.done():
                live.update(demo.view(demo.snapshot(burst.run), expected, "enqueueing", time.monotonic() - started))
                time.sleep(refresh_s)  # screen refresh period
            sent = sending.result()
        deadline = started + timeout_s
        while True:
            snaps = demo.snapshot(burst.run)
            live.update(demo.view(snaps, expected, "draining", time.monotonic() - started))
            settled = all(s.queue.total == 0 and s.applied >= expected[name] for name, s in snaps.items())
            if settled or time.monotonic() > deadline:
                break
            time.sleep(refresh_s)
        drain_s = time.monotonic() - started
    if not console.is_terminal:
        console.line()  # off a terminal, Live leaves its last frame without a line end
    peaks = {name: s.peak for name, s in demo.snapshot(burst.run).items()}
    table, ok, facts = summarise(demo, burst, sent, drain_s, peaks)
    console.print(table)
    if sent.refused:
        console.print(f"[red]the API refused some requests:[/red] {escape(json.dumps(sent.refused)[:500])}")
    if json_out is not None:
        json_out.write_text(json.dumps(facts, indent=2, default=str))
    console.print("[green]invariants hold[/green]" if ok else "[red]an invariant is broken[/red]")
    return ok


def demo_settings(settings: Settings, cap: int | None, lanes: bool) -> Settings:
    """The local settings with the demo's lanes (unless the config has lanes of its own or
    ``lanes`` is off), the first lane's cap set to ``cap``."""
    if lanes and not settings.lanes:
        settings = Settings.model_validate({**settings.model_dump(), "lanes": DEMO_LANES})
    if cap is not None:
        if settings.lanes:
            first, *_ = settings.lanes
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
    cap: int = typer.Option(None, "--cap", min=1, help="Worker cap, default from config/local.yml."),
    poison: int = typer.Option(5, "--poison", min=0, help="Invoices for unknown customers (-> DLQ)."),
    notifications: int = typer.Option(200, "--notifications", min=0,
                                      help="Messages to the stand-in vendor (notify.send), mixed into the burst."),
    notify_poison: int = typer.Option(3, "--notify-poison", min=0,
                                      help="Messages to a recipient the vendor refuses (-> DLQ)."),
    duplicates: int = typer.Option(None, "--duplicates", min=0, help="Keys sent twice, default 1% of items."),
    request_size: int = typer.Option(500, "--request-size", min=1, max=1000, help="Items per POST."),
    sqs: str = typer.Option(None, "--sqs", help="fauxqs | moto | URL, default local.sqs."),
    timeout_s: float = typer.Option(600, "--timeout", help="Give up draining after this many seconds."),
    database_url: str = typer.Option(None, "--database-url", help="MariaDB, default DATABASE_URL or :3306."),
    local_dir: Path = typer.Option(None, "--local-dir", help="Stack state directory, default .sluice."),
    json_out: Path = typer.Option(None, "--json-out", help="Also write the summary as JSON here."),
    lanes: bool = typer.Option(True, "--lanes/--no-lanes",
                               help="Run the demo's three lanes (ledger, vendor-a, vendor-b) or one lane."),
) -> None:
    """Start the local stack, POST a burst of invoices and notifications, watch each lane drain,
    check the result."""
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
                      notifications=notifications, notify_poison=notify_poison)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping what the demo started[/yellow]")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (LocalServiceError, DemoError, DbError) as exc:
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
