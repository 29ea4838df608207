"""An outside load on the database: other processes' heavy writes, the way a report job, a
backup or another service slows a shared MariaDB down for a while.

Each of ``processes`` spawned processes rewrites its own slice of a scratch table in one
transaction per round (UPDATE of a few thousand rows with fresh MD5 padding, then commit), as
fast as the server lets it: the redo log, the buffer pool and both cores are busy, so every
other transaction (the probe's, the workers') waits longer. Nothing sleeps inside a task.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import time
from dataclasses import dataclass

from bench.probe import connect

LOAD_TABLE = "bench_load"
LOAD_ROWS = 40_000


def create_load_table(url: str, rows: int = LOAD_ROWS) -> None:
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE IF NOT EXISTS {LOAD_TABLE} (id INT PRIMARY KEY, n BIGINT NOT NULL DEFAULT 0, "
                        "pad CHAR(64) NOT NULL DEFAULT '') ENGINE=InnoDB")
            cur.execute(f"SELECT COUNT(*) FROM {LOAD_TABLE}")
            have = int(cur.fetchone()[0])
            for start in range(have, rows, 1000):
                values = ",".join(f"({i}, 0, MD5({i}))" for i in range(start, min(rows, start + 1000)))
                cur.execute(f"INSERT INTO {LOAD_TABLE} (id, n, pad) VALUES {values}")
        conn.commit()
    finally:
        conn.close()


def _load_loop(url: str, slice_no: int, slices: int, stop: multiprocessing.synchronize.Event,
               rounds: multiprocessing.sharedctypes.Synchronized) -> None:  # type: ignore[name-defined]
    conn = connect(url)
    while not stop.is_set():
        with conn.cursor() as cur:
            cur.execute(f"UPDATE {LOAD_TABLE} SET n = n + 1, pad = MD5(CONCAT(pad, RAND())) "
                        "WHERE id %% %s = %s", (slices, slice_no))
        conn.commit()
        with rounds.get_lock():
            rounds.value += 1
    conn.close()


@dataclass
class OutsideLoad:
    """``start()`` the writers, ``stop()`` them; ``started``/``stopped`` are epoch seconds."""

    url: str
    processes: int
    started: float = 0.0
    stopped: float = 0.0
    rounds: int = 0

    def start(self) -> OutsideLoad:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._rounds = context.Value("q", 0)
        self._procs = [context.Process(target=_load_loop, daemon=True,
                                       args=(self.url, i, self.processes, self._stop, self._rounds))
                       for i in range(self.processes)]
        for p in self._procs:
            p.start()
        self.started = time.time()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.stopped = time.time()
        for p in self._procs:
            p.join(30)
            if p.is_alive():
                p.kill()
        self.rounds = int(self._rounds.value)

    @property
    def seconds(self) -> float:
        return self.stopped - self.started
