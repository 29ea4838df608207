"""Lane isolation (issue 14 item 5): lanes never borrow each other's capacity.

Two lanes in one bench stack, like config/lanes.yml's vendor lanes: ``vendor-a`` and
``vendor-b`` carry ``notify.send`` (``match: payload.vendor``), each with its own queue, DLQ,
consumer and worker (its lane env from ``Settings.runtime_env(lane=...)``), cap and rate. The
stand-in vendor API (sluice_tools/local/vendor_api.py) serves both: vendor a is slow (high
latency) and allows fewer calls per second than lane A's workers would make, so a share of its
answers are 429s; vendor b is quick.

In one run, lane B's consumer draining back to back throughout:

1. warm-up: a few lane B items, until their deliveries are recorded (no cold start is timed);
2. alone: lane B items sent one every ``b_interval_s``, each timed from its send to its effect
   (its ``notifications.delivered_at``, written in the worker's transaction after the vendor
   accepted it);
3. loaded: lane A gets a deep backlog of notify.send items plus a poison burst (numbers the
   vendor refuses with a 422: dead-lettered), its consumer draining; the same lane B items
   (new keys) are sent and timed the same way.

Figures: lane B's p50 and p95 time-to-effect, loaded / alone (goal <= 1.2), and each lane's
peak vendor calls per second (the vendor's per-second counters, every request counted, 429s
too) / its ``drain.max_rate`` (a bound: <= 1).
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.figures import Figure, percentile
from bench.scenarios.enqueue_rate import timed_enqueue
from bench.stack import BenchStack, ScratchDatabase, bench_settings
from sluice.settings import LaneSettings, Settings
from sluice_tools.local.vendor_api import VendorApi, VendorSettings
from sluice_tools.local.vendor_client import VendorClient

NOTIFY = "worker.tasks.notify"
LANE_A, LANE_B = "vendor-a", "vendor-b"
VENDOR_OF = {LANE_A: "a", LANE_B: "b"}
# Lane caps and rates as config/lanes.yml's vendor lanes, scaled to two cores.
LANES = {
    LANE_A: {"drain": {"max_parallel": 4, "max_rate": 25}, "worker": {"reserved_concurrency": 4}},
    LANE_B: {"drain": {"max_parallel": 2, "max_rate": 10}, "worker": {"reserved_concurrency": 2}},
}


def vendors(token: str) -> dict[str, VendorSettings]:
    """Vendor a: slow (300 +- 100 ms) and stingy (10/s: lane A's 4 workers would make ~13/s, so
    some calls meet 429s); vendor b: quick and generous."""
    return {"a": VendorSettings(token=token, rate_per_s=10, burst=2, latency_ms=300, jitter_ms=100),
            "b": VendorSettings(token=token, rate_per_s=50, burst=10, latency_ms=20, jitter_ms=20)}


def lane_settings(drain_timeout_s: int, token: str) -> Settings:
    """config/local.yml as the bench runs it, with the two vendor lanes and only the notify task
    (every task must have a lane); the vendor token in the task's settings (no secret store)."""
    base = bench_settings(max(int(lane["drain"]["max_parallel"]) for lane in LANES.values()), drain_timeout_s)
    notify = next(t for t in base.tasks if t.module == NOTIFY)
    settings = base.model_copy(update={
        "tasks": [notify.model_copy(update={"settings": {"url": "", "token": token, "timeout_s": 5}})],
        "lanes": {name: LaneSettings(tasks=["notify.send"], match={"payload.vendor": VENDOR_OF[name]}, **lane)
                  for name, lane in LANES.items()},
    })
    settings.check()
    return settings


def notify_item(prefix: str, i: int, vendor: str, poison: bool = False) -> dict[str, Any]:
    # A poison item: a number the vendor refuses (no "+", 422), so it dead-letters.
    return {"task": "notify.send", "key": f"{prefix}-{i:06d}",
            "payload": {"vendor": vendor, "to": "12345" if poison else f"+4915{i:08d}", "text": "bench"}}


class DrainLoop:
    """One lane's consumer started back to back on a thread (one drain at a time, as
    ``drain.consumers: 1`` with a tick that finds the previous drain done)."""

    def __init__(self, stack: BenchStack, lane: str) -> None:
        self.stack, self.lane = stack, lane
        self.reports: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"drain-{lane}", daemon=True)

    def start(self) -> DrainLoop:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.reports.append(self.stack.drain_once(self.lane))
            except Exception as exc:  # noqa: BLE001 - recorded and raised by stop()
                self.errors.append(str(exc))
                return

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise RuntimeError(f"the {self.lane} drain did not return within {timeout_s} s")
        if self.errors:
            raise RuntimeError(f"the {self.lane} drain failed: {self.errors[0]}")


@dataclass
class Timed:
    sent: dict[str, float] = field(default_factory=dict)  # key -> epoch s of its send
    effect: dict[str, float] = field(default_factory=dict)  # key -> epoch s of its delivery row

    def latencies_ms(self) -> list[float]:
        return [(self.effect[k] - self.sent[k]) * 1000 for k in self.sent if k in self.effect]


def _delivered_at(db: ScratchDatabase, prefix: str) -> dict[str, float]:
    from bench.probe import connect

    conn = connect(db.url)
    try:
        with conn.cursor() as cur:
            # delivered_at is UTC_TIMESTAMP(3): epoch seconds without the session's time zone.
            cur.execute("SELECT item_key, TIMESTAMPDIFF(MICROSECOND, '1970-01-01', delivered_at) / 1e6 "
                        "FROM notifications WHERE item_key LIKE %s", (prefix + "-%",))
            return {str(k): float(t) for k, t in cur.fetchall()}
    finally:
        conn.close()


def send_timed(stack: BenchStack, db: ScratchDatabase, prefix: str, items: int, interval_s: float,
               deadline_s: float) -> Timed:
    """Send ``items`` lane B items one every ``interval_s``; wait until each one's delivery is recorded."""
    timed = Timed()
    queue_url = stack.lane(LANE_B).queue_url
    for i in range(items):
        item = notify_item(prefix, i, VENDOR_OF[LANE_B])
        timed.sent[str(item["key"])] = time.time()
        timed_enqueue(stack, queue_url, [item], max_tps=300)
        time.sleep(interval_s)  # the send schedule itself (not a wait for a result)
    deadline = time.monotonic() + deadline_s
    while True:
        timed.effect = _delivered_at(db, prefix)
        if len(timed.effect) >= items:
            return timed
        if time.monotonic() > deadline:
            raise RuntimeError(f"lane B: {len(timed.effect)}/{items} {prefix} items took effect within "
                               f"{deadline_s} s")
        time.sleep(0.1)  # polling the database for the rows, with a deadline


@dataclass
class LaneRun:
    alone: Timed
    loaded: Timed
    vendor_counters: dict[str, Any]
    a_items: int
    poison: int
    a_dead_lettered: int
    a_reports: int
    b_items: int


def run(db: ScratchDatabase, log_dir: Path, drain_timeout_s: int, a_items: int, poison: int, b_items: int,
        b_interval_s: float, deadline_s: float) -> LaneRun:
    token = secrets.token_hex(16)
    api = VendorApi(vendors(token))
    api.start()
    try:
        settings = lane_settings(drain_timeout_s, token)
        with BenchStack(settings.drain.max_parallel, drain_timeout_s, db.url, log_dir / "lanes", settings=settings,
                        extra_env={"SLUICE_VENDOR_URL": api.url}) as stack:
            b_loop = DrainLoop(stack, LANE_B).start()
            a_loop: DrainLoop | None = None
            try:
                send_timed(stack, db, "bw", 2, b_interval_s, deadline_s)
                alone = send_timed(stack, db, "ba", b_items, b_interval_s, deadline_s)
                backlog = [notify_item("a", i, VENDOR_OF[LANE_A], poison=i < poison) for i in range(a_items)]
                timed_enqueue(stack, stack.lane(LANE_A).queue_url, backlog, max_tps=300)
                a_loop = DrainLoop(stack, LANE_A).start()
                client = VendorClient(api.url)
                wait_until = time.monotonic() + deadline_s
                while client.counters("a").requests == 0:  # lane A is at work before B is timed
                    if time.monotonic() > wait_until:
                        raise RuntimeError("lane A made no vendor call")
                    time.sleep(0.05)
                loaded = send_timed(stack, db, "bl", b_items, b_interval_s, deadline_s)
                a_left = sum(stack.depth(stack.lane(LANE_A).queue_url))
                dlq = sum(stack.depth(stack.lane(LANE_A).dlq_url))
            finally:
                # Lane A's leftover backlog goes: its drain then finds the queue empty and returns.
                stack._direct_sqs().purge_queue(QueueUrl=stack.lane(LANE_A).queue_url)
                if a_loop is not None:
                    a_loop.stop(drain_timeout_s + 30)
                b_loop.stop(drain_timeout_s + 30)
            counters = {name: client.counters(name) for name in ("a", "b")}
            if a_left == 0:
                raise RuntimeError("lane A's backlog was drained before lane B's loaded phase ended: "
                                   "make it deeper")
            return LaneRun(alone, loaded, {n: c.as_dict() for n, c in counters.items()}, a_items, poison, dlq,
                           len(a_loop.reports) if a_loop else 0, b_items)
    finally:
        api.stop()


def figures(run_: LaneRun) -> list[Figure]:
    alone, loaded = run_.alone.latencies_ms(), run_.loaded.latencies_ms()
    inputs = {"b_items": run_.b_items, "a_backlog": run_.a_items, "a_poison": run_.poison,
              "a_dead_lettered_by_then": run_.a_dead_lettered,
              "a_429s": run_.vendor_counters["a"]["throttled"], "a_requests": run_.vendor_counters["a"]["requests"]}
    out = []
    for q in (50, 95):
        out.append(Figure("L1", f"lane B time-to-effect p{q}: lane A loaded / alone",
                          round(percentile(loaded, q), 1), "loaded ms", round(percentile(alone, q), 1), "alone ms",
                          inputs, goal="<= 1.2"))
    for lane, settings in LANES.items():
        counters = run_.vendor_counters[VENDOR_OF[lane]]
        peak = max(counters["requests_per_second"].values(), default=0)
        out.append(Figure("L1", f"peak vendor calls/s / max_rate ({lane})", peak, "peak calls/s",
                          float(settings["drain"]["max_rate"]), "max_rate",
                          {"requests": counters["requests"], "429s": counters["throttled"],
                           "cap": settings["drain"]["max_parallel"]}, expect="<= 1"))
    return out
