"""Direct writers: N processes applying invoice items to MariaDB with no queue in between.

Each item is the same transaction a sluice worker commits (ledger row + invoice row, via
sluice.db), so "through sluice" and "direct" differ only in how many write at once. Writers
are processes, not threads: a Lambda container is a process, and threads would share one GIL.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass

from sluice.envelope import dedup_id

CUSTOMERS = ("acme", "globex", "initech", "umbrella", "hooli")


def item_key(prefix: str, i: int) -> str:
    return f"{prefix}-{i:07d}"


def invoice_item(prefix: str, i: int) -> dict[str, object]:
    """The work item the bench enqueues (and writes directly): an ordinary invoice."""
    return {"task": "invoice.record", "key": item_key(prefix, i),
            "payload": {"customer": CUSTOMERS[i % len(CUSTOMERS)], "amount_cents": 100 + i,
                        "currency": "EUR"}}


def _write(url: str, prefix: str, indices: list[int], ready: object, go: object, done: object) -> None:
    from sluice.db import Database, claim
    from worker.tasks.invoices import InvoicePayload, customer_id, insert_invoice

    db = Database(url=url, program="sluice-bench-direct")
    db.connection()  # connect before the start line, as a warm worker would be
    customer_ids: dict[str, int] = {}
    with db.transaction() as tx:
        for code in CUSTOMERS:
            found = customer_id(tx, code)
            if found is None:
                raise RuntimeError(f"customer {code!r} is missing: migrations did not run")
            customer_ids[code] = found
    ready.release()  # type: ignore[attr-defined]
    go.wait()  # type: ignore[attr-defined]
    for i in indices:
        key = item_key(prefix, i)
        with db.transaction() as tx:
            if claim(tx, dedup_id=dedup_id("invoice.record", key), task="invoice.record", item_key=key,
                     message_id=f"direct-{i}", group_id="direct"):
                code = CUSTOMERS[i % len(CUSTOMERS)]
                insert_invoice(tx, item_key=key, customer=customer_ids[code],
                               payload=InvoicePayload(customer=code, amount_cents=100 + i, currency="EUR"))
    db.close()
    done.put(time.time())  # type: ignore[attr-defined]


@dataclass(frozen=True)
class WriteRun:
    items: int
    writers: int
    started: float  # epoch s, when every writer was connected and released
    finished: float

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("inf")


def write_direct(url: str, prefix: str, items: int, writers: int, on_start: object = None,
                 timeout_s: float = 300) -> WriteRun:
    """Apply ``items`` invoices from ``writers`` concurrent processes; ``on_start()`` runs at the start."""
    context = multiprocessing.get_context("spawn")
    ready, go, done = context.Semaphore(0), context.Event(), context.Queue()
    shares = [list(range(w, items, writers)) for w in range(writers)]
    processes = [context.Process(target=_write, args=(url, prefix, share, ready, go, done), daemon=True)
                 for share in shares if share]
    for p in processes:
        p.start()
    deadline = time.monotonic() + timeout_s
    for p in processes:
        if not ready.acquire(timeout=max(0.1, deadline - time.monotonic())):
            raise RuntimeError(f"direct writer {p.pid} did not connect to the database in time")
    if callable(on_start):
        on_start()
    started = time.time()
    go.set()
    finished = max(done.get(timeout=max(0.1, deadline - time.monotonic())) for _ in processes)
    for p in processes:
        p.join(10)
        if p.exitcode != 0:
            raise RuntimeError(f"direct writer {p.pid} exited with {p.exitcode}")
    return WriteRun(items=items, writers=len(processes), started=started, finished=finished)
