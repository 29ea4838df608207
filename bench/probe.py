"""The DB probe: one short transaction of some other user of the database, timed, on a loop.

It runs in a process of its own (never a thread beside the writers) so the latency it sees
is the database's and the machine's, not the bench process's GIL. Each probe reads one row
by primary key and updates it, then commits: the read path and the commit path both count.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

import pymysql

PROBE_TABLE = "bench_probe"


def connect(url: str) -> pymysql.connections.Connection:
    """A connection from ``mysql://user:pass@host:port/db``."""
    parts = urlparse(url)
    return pymysql.connect(
        host=parts.hostname or "127.0.0.1", port=parts.port or 3306, user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""), database=(parts.path or "/").lstrip("/") or None,
        autocommit=False, connect_timeout=10,
    )


def create_probe_table(url: str) -> None:
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE IF NOT EXISTS {PROBE_TABLE} "
                        "(id INT PRIMARY KEY, hits BIGINT NOT NULL DEFAULT 0) ENGINE=InnoDB")
            cur.execute(f"INSERT IGNORE INTO {PROBE_TABLE} (id) VALUES (1)")
        conn.commit()
    finally:
        conn.close()


def _probe_loop(url: str, interval_s: float, limit: int, pipe: multiprocessing.connection.Connection) -> None:
    conn = connect(url)
    samples: list[tuple[float, float]] = []
    next_at = time.monotonic()
    while len(samples) < limit and not pipe.poll():
        started = time.monotonic()
        with conn.cursor() as cur:
            cur.execute(f"SELECT hits FROM {PROBE_TABLE} WHERE id = 1")
            cur.fetchone()
            cur.execute(f"UPDATE {PROBE_TABLE} SET hits = hits + 1 WHERE id = 1")
        conn.commit()
        finished = time.monotonic()
        samples.append((time.time() - (finished - started), (finished - started) * 1000))
        # A fixed schedule (not "interval after the last one"), so a slow DB is probed as often.
        next_at += interval_s
        pause = next_at - time.monotonic()
        if pause > 0 and pipe.poll(pause):
            break
    conn.close()
    pipe.send(samples)


@dataclass
class ProbeRun:
    """A running probe process; ``stop()`` returns its samples as (epoch_s, latency_ms)."""

    process: multiprocessing.process.BaseProcess
    pipe: multiprocessing.connection.Connection

    def stop(self, timeout_s: float = 30) -> list[tuple[float, float]]:
        self.pipe.send("stop")
        if not self.pipe.poll(timeout_s):
            self.process.kill()
            raise RuntimeError("the DB probe did not answer within its deadline")
        samples: list[tuple[float, float]] = self.pipe.recv()
        self.process.join(timeout_s)
        return samples

    def wait(self, timeout_s: float) -> list[tuple[float, float]]:
        """For a probe started with a sample limit: its samples once it has taken them all."""
        if not self.pipe.poll(timeout_s):
            self.process.kill()
            raise RuntimeError("the DB probe did not finish within its deadline")
        samples: list[tuple[float, float]] = self.pipe.recv()
        self.process.join(timeout_s)
        return samples


def start_probe(url: str, interval_s: float, limit: int = 10**9) -> ProbeRun:
    # spawn: the bench process may hold threads (servers, pools) that fork would copy half-way.
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_probe_loop, args=(url, interval_s, limit, theirs), daemon=True)
    process.start()
    return ProbeRun(process, ours)
