"""`sluice status --watch` against moto's SQS server.

The CLI finds the queues through a local.env that points at the moto server
(SLUICE_LOCAL_ENV_FILE). `status --watch` runs as a real subprocess, stopped with SIGINT as a
user's Ctrl-C would: on a pseudo-terminal (where it redraws a table) and on a pipe with --json
(where it writes one JSON document per snapshot).
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import IO, Any

import pytest

from sluice.aws import Queue
from sluice.enqueue import Enqueuer
from sluice.settings import PROJECT_ROOT
from tests.conftest import FifoQueues
from tests.helpers import eventually

pytestmark = pytest.mark.functional

CLI = [sys.executable, "-c", "from sluice_tools.cli import main; main()"]
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_WORK_ROW = re.compile(r"│ work\s+│\s+([\d,]+) │")


def enqueue_one(queues: FifoQueues) -> None:
    item = {"task": "invoice.record", "key": f"WATCH-{uuid.uuid4().hex[:8]}",
            "payload": {"customer": "acme", "amount_cents": 100, "currency": "EUR"}}
    assert Enqueuer(Queue(queues.url)).enqueue({"items": [item]}).status_code == 202


class Output:
    """Everything a child process writes to one file descriptor, collected by a thread."""

    def __init__(self, read: Any) -> None:
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, args=(read,), daemon=True)
        self._thread.start()

    def _pump(self, read: Any) -> None:
        while True:
            try:
                chunk = read()
            except OSError:  # the pty's other end closed (EIO): the child is gone
                return
            if not chunk:
                return
            with self._lock:
                self._chunks.append(chunk)

    def text(self) -> str:
        with self._lock:
            return b"".join(self._chunks).decode(errors="replace")

    def finish(self, timeout_s: float = 10) -> str:
        self._thread.join(timeout_s)
        return self.text()


def work_rows(screen: str) -> list[int]:
    """The work queue's visible count of every table frame drawn, in order."""
    return [int(n.replace(",", "")) for n in _WORK_ROW.findall(_ANSI.sub("", screen))]


def reap(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc`` if it still runs, so a failed test leaves no process behind."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def stop(proc: subprocess.Popen[bytes]) -> int:
    """Ctrl-C, as a user would; its exit code."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=30)
    finally:
        reap(proc)


def test_status_watch_redraws_on_a_terminal_until_ctrl_c(fifo_queues: FifoQueues, local_env: Path) -> None:
    # GIVEN an empty work queue and `sluice status --watch --interval 0.2` on a terminal
    controller, terminal = pty.openpty()
    # (the child inherits the environment, where local_env put the CLI's local.env)
    proc = subprocess.Popen([*CLI, "status", "--watch", "--interval", "0.2", "--stage", "local"],
                            cwd=PROJECT_ROOT, stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    screen = Output(lambda: os.read(controller, 65536))
    try:
        eventually(lambda: 0 in work_rows(screen.text()), 30, "a first frame showing the empty work queue")
        # WHEN an item is enqueued while it watches, and then the user presses Ctrl-C
        enqueue_one(fifo_queues)
        eventually(lambda: 1 in work_rows(screen.text()), 30, "a later frame showing the item")
        code = stop(proc)
    finally:
        reap(proc)
        output = screen.finish()
        os.close(controller)
    # THEN it exits 0 without a traceback, having drawn at least two frames, the item only in a later one
    assert code == 0, output
    assert "Traceback" not in output, output
    rows = work_rows(output)
    assert len(rows) >= 2, output
    assert rows[0] == 0 and rows[-1] == 1 and rows.index(1) > 0


def json_documents(text: str) -> list[dict[str, Any]]:
    """The JSON documents written one after another; anything else in the stream fails the test."""
    decoder = json.JSONDecoder()
    documents: list[dict[str, Any]] = []
    at = 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return documents
        document, at = decoder.raw_decode(text, at)
        documents.append(document)


def visible_counts(text: str) -> list[int]:
    """The work queue's visible count of each complete JSON document written so far."""
    complete = text[:text.rfind("\n}\n") + 3] if "\n}\n" in text else ""
    return [d["queue"]["visible"] for d in json_documents(complete)]


def test_status_watch_json_writes_one_document_per_snapshot_until_ctrl_c(
        fifo_queues: FifoQueues, local_env: Path) -> None:
    # GIVEN an empty work queue and `sluice status --watch --json` writing into a pipe (block-buffered,
    # as from a user's shell: no PYTHONUNBUFFERED)
    env = dict(os.environ)  # with the CLI's local.env that local_env put there
    env.pop("PYTHONUNBUFFERED", None)
    proc = subprocess.Popen([*CLI, "status", "--watch", "--interval", "2", "--json", "--stage", "local"],
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout_pipe: IO[bytes] = proc.stdout  # type: ignore[assignment]
    stderr_pipe: IO[bytes] = proc.stderr  # type: ignore[assignment]
    out = Output(lambda: os.read(stdout_pipe.fileno(), 65536))
    err = Output(lambda: os.read(stderr_pipe.fileno(), 65536))
    try:
        # THEN the first snapshot reaches the reader at once, not when a buffer fills many intervals later
        eventually(lambda: visible_counts(out.text()), 15, "the first snapshot in the pipe")
        # WHEN an item is enqueued while it watches, and then the user presses Ctrl-C
        enqueue_one(fifo_queues)
        eventually(lambda: 1 in visible_counts(out.text()), 30, "a later snapshot showing the item")
        code = stop(proc)
    finally:
        reap(proc)
    stdout, stderr = out.finish(), err.finish()
    # THEN it exits 0 without a traceback
    assert code == 0, stderr
    assert "Traceback" not in stdout + stderr, stderr
    # AND the stream is JSON documents only (no table after them), at least two, the item in a later one
    documents = json_documents(stdout)
    assert len(documents) >= 2, stdout
    assert all(d["stage"] == "local" and set(d["queue"]) == {"visible", "in_flight", "delayed"}
               for d in documents)
    assert documents[0]["queue"]["visible"] == 0 and documents[-1]["queue"]["visible"] == 1
