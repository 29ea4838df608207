"""`make demo`: the whole flow on one machine, checked against the database and the queues.

1. Start the local stack (unless one is running: then use it, and say so).
2. POST a burst over real HTTP to the stack's API, in requests of a few hundred: invoices
   (into MariaDB; a few poison ones for an unknown customer, each in its own group) and
   notifications (to the stand-in vendor API, which answers 429 above its rate; a few poison
   ones for a recipient the vendor refuses), with some keys sent a second time in separate
   requests.
3. Show live progress while the scheduled consumer drains: queue depth, in flight, workers
   busy vs cap, applied, DLQ, drains.
4. Summarise FROM THE DATABASE, THE QUEUES AND THE VENDOR, not from counters kept here, through
   the task modules' own queries: processed (invoice, delivery and ledger rows of this run),
   effects at the vendor (one per delivered item; repeated idempotency keys absorbed), the
   vendor's 429s, dead-lettered (DLQ, with reasons), duplicates (keys applied more than once:
   must be 0), lost (keys the API accepted that no row holds and no dead letter explains: must
   be 0), peak workers vs cap, time and items/s per stage. Exit 0 only if those invariants hold.

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
from sluice_tools.local.vendor_client import VendorAdminError, VendorClient
from sluice_tools.ops.dlq import list_dead_letters
from sluice_tools.ops.status import QueueCounts, lambda_stats, queue_counts
from worker.tasks import invoices, notify

CUSTOMERS = ("acme", "globex", "initech", "umbrella", "hooli")
CURRENCIES = ("EUR", "USD", "GBP", "CHF")
DEMO_VENDOR = "a"  # config/local.yml's generous vendor: a burst still meets its rate (429s)
EXIT_INVARIANT_BROKEN = 1
EXIT_INTERRUPTED = 130

console = Console()


class DemoError(Exception):
    """The demo could not run (stack, API or database unreachable); the message says which."""


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

    @property
    def all_poison(self) -> set[str]:
        return self.poison_keys | self.notify_poison_keys

    @property
    def items_sent(self) -> int:
        return sum(len(r) for r in self.requests)


def make_notifications(run: str, count: int, poison: int, rng: random.Random) -> tuple[list[dict[str, Any]], set[str],
                                                                                     set[str]]:
    """``count`` messages to the demo vendor, each recipient its own group (order per recipient),
    ``poison`` of them to a recipient the vendor refuses."""
    poison_at = set(rng.sample(range(count), min(poison, count)))
    items: list[dict[str, Any]] = []
    good: set[str] = set()
    bad: set[str] = set()
    for i in range(count):
        key = f"DEMO-{run}-N{i:05d}"
        to = f"not-a-number-{i}" if i in poison_at else f"+4915{i:09d}"
        items.append({"task": "notify.send", "key": key, "group": to,
                      "payload": {"vendor": DEMO_VENDOR, "to": to, "text": f"DEMO-{run} message {i}"}})
        (bad if i in poison_at else good).add(key)
    return items, good, bad


def make_burst(items: int, poison: int, duplicates: int, request_size: int, seed: int | None = None,
               notifications: int = 0, notify_poison: int = 0) -> Burst:
    """``items`` distinct invoices (``poison`` of them for unknown customers) and ``notifications``
    messages (``notify_poison`` refused by the vendor), mixed, then ``duplicates`` of their keys
    again in requests of their own."""
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    poison = min(poison, items)
    poison_at = set(rng.sample(range(items), poison))
    invoices: list[dict[str, Any]] = []
    valid: set[str] = set()
    bad: set[str] = set()
    for i in range(items):
        key = f"DEMO-{run}-{i:06d}"
        if i in poison_at:
            # Each poison invoice in a group of its own: a dead letter then blocks nothing else.
            customer = f"ghost-{run}-{i}"
            invoices.append({"task": "invoice.record", "key": key, "group": customer,
                             "payload": {"customer": customer, "amount_cents": 999, "currency": "EUR"}})
            bad.add(key)
            continue
        invoices.append({"task": "invoice.record", "key": key,
                         "payload": {"customer": rng.choice(CUSTOMERS),
                                     "amount_cents": rng.randint(100, 500_000),
                                     "currency": rng.choice(CURRENCIES),
                                     "description": f"demo invoice {i}"}})
        valid.add(key)
    messages, delivered, refused = make_notifications(run, notifications, notify_poison, rng)
    # The notifications go first, as one burst: faster than the vendor's rate, so it answers 429s
    # that the retries (hidden for its Retry-After) must recover.
    invoices[:0] = messages
    requests = [invoices[i:i + request_size] for i in range(0, len(invoices), request_size)]
    first_pass = len(requests)
    repeatable = [x for x in invoices if x["key"] in valid or x["key"] in delivered]
    again = rng.sample(repeatable, min(duplicates, len(repeatable)))
    requests += [again[i:i + request_size] for i in range(0, len(again), request_size)]
    return Burst(run=run, requests=requests, valid_keys=valid, poison_keys=bad,
                 duplicate_keys={x["key"] for x in again}, first_pass=first_pass,
                 notify_keys=delivered, notify_poison_keys=refused)


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
    refused: dict[int, Any] = field(default_factory=dict)  # status -> a body, per status seen
    seconds: float = 0.0


def send_burst(api_url: str, burst: Burst, threads: int = 4) -> EnqueueOutcome:
    """POST every request (the duplicate ones after the first pass); collect the accepted keys."""
    outcome = EnqueueOutcome()
    started = time.monotonic()

    def one(items: list[dict[str, Any]]) -> None:
        status, body = post_json(f"{api_url}/jobs", {"items": items})
        if status in (202, 207) and isinstance(body, dict):
            outcome.accepted.update(row["key"] for row in body.get("items", []) if "error" not in row)
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
    through the invoice task module's own queries (and sluice's ledger)."""

    def __init__(self, url: str) -> None:
        self.db = Database(url=url, program="sluice-demo")

    def applied(self, run: str) -> int:
        """Items of the run applied so far: invoice rows and delivery rows."""
        return self.invoice_rows(run) + self.delivery_rows(run)

    def invoice_rows(self, run: str) -> int:
        return invoices.count(self.db, key_prefix=run_prefix(run))

    def delivery_rows(self, run: str) -> int:
        return notify.delivered(self.db, key_prefix=run_prefix(run))

    def applied_keys(self, run: str) -> set[str]:
        return set(invoices.keys(self.db, run_prefix(run))) | set(notify.keys(self.db, run_prefix(run)))

    def ledger_rows(self, run: str) -> int:
        return self.db.count_processed(run_prefix(run))

    def duplicates(self, run: str) -> int:
        return invoices.duplicates(self.db, run_prefix(run)) + notify.duplicates(self.db, run_prefix(run))


def run_prefix(run: str) -> str:
    return f"DEMO-{run}-"


@dataclass
class Snapshot:
    queue: QueueCounts
    dlq: QueueCounts
    applied: int
    busy: int | None
    peak: int | None
    drains: int | None


class Demo:
    def __init__(self, env: dict[str, str], cap: int, worker_function: str, consumer_function: str) -> None:
        self.env = env
        self.cap = cap
        self.queue = Queue(env["SLUICE_QUEUE_URL"])
        self.dlq = Queue(env["SLUICE_DLQ_URL"])
        self.db = DemoDatabase(env["DATABASE_URL"])
        self.worker_function = worker_function
        self.consumer_function = consumer_function

    def snapshot(self, run: str) -> Snapshot:
        busy = peak = drains = None
        try:
            stats = lambda_stats(self.env["SLUICE_LAMBDA_STATS_URL"])
            worker, consumer = stats.get(self.worker_function, {}), stats.get(self.consumer_function, {})
            busy, peak, drains = worker.get("busy"), worker.get("peak_busy"), consumer.get("invocations")
        except (OSError, ValueError, KeyError):
            pass
        return Snapshot(queue=queue_counts(self.queue), dlq=queue_counts(self.dlq),
                        applied=self.db.applied(run), busy=busy, peak=peak, drains=drains)

    def view(self, s: Snapshot, expected: int, phase: str, elapsed: float) -> Table:
        table = Table(title=f"sluice demo: {phase} ({elapsed:,.1f} s)", show_header=False, min_width=50)
        table.add_row("queue depth (visible)", f"{s.queue.visible:,}")
        table.add_row("in flight", f"{s.queue.in_flight:,}")
        table.add_row("delayed (backing off)", f"{s.queue.delayed:,}")
        table.add_row("workers busy / cap", f"{'?' if s.busy is None else s.busy} / {self.cap}"
                      + ("" if s.peak is None else f"  (peak {s.peak})"))
        table.add_row("applied", f"{s.applied:,} / {expected:,}")
        table.add_row("dead-lettered (DLQ)", f"{s.dlq.total:,}")
        table.add_row("drains", "?" if s.drains is None else f"{s.drains:,}")
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


def vendor_facts(vendor_url: str, run: str) -> VendorFacts | None:
    """None when no vendor API answers (a stack without one)."""
    if not vendor_url:
        return None
    client = VendorClient(vendor_url)
    try:
        state = client.get(DEMO_VENDOR)
        ours = [m for m in client.messages(DEMO_VENDOR) if m.text.startswith(f"DEMO-{run} ")]
    except VendorAdminError:
        return None
    c = state.counters
    return VendorFacts(effects=len(ours), distinct_effect_keys=len({m.key for m in ours}), requests=c.requests,
                       replays=c.replays, throttled=c.throttled, peak_requests_per_s=c.peak_requests_per_s,
                       rate_per_s=state.settings.rate_per_s)


def summarise(demo: Demo, burst: Burst, sent: EnqueueOutcome, drain_s: float, peak: int | None
              ) -> tuple[Table, bool, dict[str, Any]]:
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
    listing = list_dead_letters(demo.dlq, limit=max(50, len(poison) + 50))
    ours = [x for x in listing.letters if x.key.startswith(run_prefix(run))]
    dead_keys = {x.key for x in ours}
    # Grouped by task and kind, with one example each: every poison reason names its own item.
    reasons = Counter(f"{x.task} {x.error_type or 'error'}" for x in ours)
    example = {f"{x.task} {x.error_type or 'error'}": x.reason for x in ours}
    accepted_valid = sent.accepted & (burst.valid_keys | burst.notify_keys)
    lost = accepted_valid - applied_keys
    poison_missing = (sent.accepted & poison) - dead_keys
    queue_left = queue_counts(demo.queue).total
    vendor = vendor_facts(demo.env.get("SLUICE_VENDOR_URL", ""), run)
    expected_deliveries = len(sent.accepted & burst.notify_keys)
    checks = {
        "duplicates is 0": duplicates == 0 and ledger_rows == invoice_rows + delivery_rows,
        "lost is 0": not lost,
        "every poison item is in the DLQ": not poison_missing,
        "no poison item applied": not (applied_keys & poison),
        "every item the API was sent was accepted": not sent.refused,
        "workers never above the cap": peak is None or peak <= demo.cap,
    }
    if burst.notify_keys:
        checks["one effect at the vendor per delivered item"] = (
            vendor is not None and vendor.effects == vendor.distinct_effect_keys == delivery_rows
            == expected_deliveries)
    title = f"sluice demo summary (run {run}): from the database, the queues and the vendor"
    table = Table(title=title, show_header=False)
    table.add_row("items sent (incl. repeats)", f"{burst.items_sent:,} in {len(burst.requests)} requests")
    twice = len(burst.duplicate_keys)
    table.add_row("distinct keys accepted", f"{len(sent.accepted):,} ({twice:,} sent twice)")
    table.add_row("invoices (invoice rows)", f"{invoice_rows:,}")
    table.add_row("notifications (delivery rows)", f"{delivery_rows:,}")
    table.add_row("ledger rows", f"{ledger_rows:,}")
    if vendor is not None:
        table.add_row(f"vendor {DEMO_VENDOR}: effects of this run / distinct keys",
                      f"{vendor.effects:,} / {vendor.distinct_effect_keys:,}")
        table.add_row(f"vendor {DEMO_VENDOR}: repeated keys absorbed / 429s answered",
                      f"{vendor.replays:,} / {vendor.throttled:,}")
        table.add_row(f"vendor {DEMO_VENDOR}: peak calls/s / its rate",
                      f"{vendor.peak_requests_per_s:,} / {vendor.rate_per_s:g}")
    table.add_row("dead-lettered (this run / DLQ depth)", f"{len(ours):,} / {listing.depth:,}")
    for kind, n in reasons.most_common(5):
        table.add_row(f"  {n} x {kind}", f"e.g. {example[kind]}")
    table.add_row("duplicates (keys applied > once)", str(duplicates))
    table.add_row("lost (accepted valid keys not applied)", str(len(lost)))
    table.add_row("still in the work queue", f"{queue_left:,}")
    table.add_row("peak workers / cap", f"{'?' if peak is None else peak} / {demo.cap}")
    enqueue_rate = len(sent.accepted) / sent.seconds if sent.seconds else 0.0
    drain_rate = (invoice_rows + delivery_rows + len(ours)) / drain_s if drain_s else 0.0
    table.add_row("enqueue", f"{sent.seconds:,.1f} s, {enqueue_rate:,.0f} items/s")
    table.add_row("drain (first POST to queue empty)", f"{drain_s:,.1f} s, {drain_rate:,.0f} items/s")
    ok = all(checks.values())
    for name, passed in checks.items():
        table.add_row(name, "[green]yes[/green]" if passed else "[red]NO[/red]")
    facts = {"run": run, "processed": invoice_rows + delivery_rows, "invoices": invoice_rows,
             "notifications": delivery_rows, "ledger_rows": ledger_rows, "dead_lettered": len(ours),
             "dlq_depth": listing.depth, "reasons": dict(reasons), "duplicates": duplicates,
             "lost": len(lost), "vendor": None if vendor is None else vendor.__dict__,
             "peak_workers": peak, "cap": demo.cap, "enqueue_s": sent.seconds, "drain_s": drain_s,
             "checks": checks, "ok": ok}
    return table, ok, facts


def run_demo(env: dict[str, str], *, cap: int, worker_function: str, consumer_function: str, items: int,
             poison: int, duplicates: int, request_size: int, timeout_s: float, refresh_s: float = 0.5,
             json_out: Path | None = None, notifications: int = 0, notify_poison: int = 0) -> bool:
    demo = Demo(env, cap, worker_function, consumer_function)
    burst = make_burst(items, poison, duplicates, request_size, notifications=notifications,
                       notify_poison=notify_poison)
    expected = len(burst.valid_keys) + len(burst.notify_keys)
    started = time.monotonic()
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        with ThreadPoolExecutor(max_workers=1) as pool:
            sending = pool.submit(send_burst, env["SLUICE_API_URL"], burst)
            while not sending.done():
                live.update(demo.view(demo.snapshot(burst.run), expected, "enqueueing",
                                      time.monotonic() - started))
                time.sleep(refresh_s)  # screen refresh period
            sent = sending.result()
        deadline = started + timeout_s
        while True:
            s = demo.snapshot(burst.run)
            live.update(demo.view(s, expected, "draining", time.monotonic() - started))
            settled = s.queue.total == 0 and s.applied >= len(sent.accepted & (burst.valid_keys | burst.notify_keys))
            if settled or time.monotonic() > deadline:
                break
            time.sleep(refresh_s)
        drain_s = time.monotonic() - started
    if not console.is_terminal:
        console.line()  # off a terminal, Live leaves its last frame without a line end
    peak = demo.snapshot(burst.run).peak
    table, ok, facts = summarise(demo, burst, sent, drain_s, peak)
    console.print(table)
    if sent.refused:
        console.print(f"[red]the API refused some requests:[/red] {escape(json.dumps(sent.refused)[:500])}")
    if json_out is not None:
        json_out.write_text(json.dumps(facts, indent=2, default=str))
    console.print("[green]invariants hold[/green]" if ok else "[red]an invariant is broken[/red]")
    return ok


def _function_names(stage_settings: Any) -> tuple[str, str]:
    return stage_settings.function_name("worker"), stage_settings.function_name("consumer")


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
) -> None:
    """Start the local stack, POST a burst of invoices, watch it drain, check the result."""
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
            worker, consumer = _function_names(settings)
            cap_used = settings.drain.max_parallel
            console.print(f"using the local stack already running from {directory.name}/ "
                          f"(its cap: {cap_used}; --cap and --sqs apply only to a stack the demo starts)")
        else:
            if cap is not None:
                settings = settings.model_copy(update={
                    "drain": settings.drain.model_copy(update={"max_parallel": cap}),
                    "worker": settings.worker.model_copy(
                        update={"reserved_concurrency": cap}),  # config check: equal to the cap
                })
            cap_used = settings.drain.max_parallel
            stack = LocalStack(settings, sqs=sqs or settings.local.sqs, database_url=database_url,
                               local_dir=directory)
            console.print(f"starting the local stack (SQS: {stack.sqs}, cap {cap_used}) ...")
            env = stack.start()
            worker, consumer = _function_names(settings)
        # boto3 in this process talks to the stack's servers.
        use_local_stack(env, default_region=settings.region)
        ok = run_demo(env, cap=cap_used, worker_function=worker, consumer_function=consumer, items=items,
                      poison=poison, duplicates=items // 100 if duplicates is None else duplicates,
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
