"""Child processes and ports of the local stack.

Every server the stack starts runs in a process group of its own, so stopping it stops its
children too (nothing orphaned on Ctrl-C), and announces readiness on stdout or by answering
on its port; the stack polls for that with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Self, TypeVar

LOOPBACK = "127.0.0.1"

T = TypeVar("T")


class LocalServiceError(RuntimeError):
    """A local service could not be started (port taken, binary missing, crashed on start)."""


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket() as s:
        # Servers bind with SO_REUSEADDR, so connections in TIME_WAIT do not make a port taken.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def choose_port(port: int | None, what: str) -> int:
    """``port`` when given and free (else fail naming it); a free one when not given."""
    if not port:
        return free_port()
    if not port_is_free(port):
        raise LocalServiceError(f"port {port} on {LOOPBACK} is taken: cannot start {what} there "
                                "(free it, or pick another port)")
    return port


def is_listening(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout_s: float, what: str,
               alive: Callable[[], bool] | None = None, poll_s: float = 0.05) -> None:
    """Poll ``check`` until true; fail after ``timeout_s`` or as soon as ``alive`` says the process died."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return
        if alive is not None and not alive():
            raise LocalServiceError(f"{what} exited while starting")
        if time.monotonic() > deadline:
            raise LocalServiceError(f"{what} did not become ready within {timeout_s:.0f} s")
        time.sleep(poll_s)


def poll_until(check: Callable[[], T], timeout_s: float, what: str, *, poll_s: float = 0.25,
               error: type[Exception] = LocalServiceError) -> T:
    """Poll ``check`` until it returns something truthy and return that; at the deadline raise
    ``error`` naming ``what`` and the last value seen (a test's AssertionError, a scenario's own)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout_s:g} s waiting for {what} (last: {value!r})")
        time.sleep(poll_s)


class ChildProcess:
    """One server process in its own process group, with its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], *, log_path: Path | None = None,
                 env: dict[str, str] | None = None, cwd: Path | None = None, stdout_pipe: bool = False,
                 stdin_pipe: bool = False) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log: IO[bytes] | None = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        sink: int | IO[bytes] = self._log if self._log is not None else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else sink,
                stderr=sink,
                env=env,
                cwd=cwd,
                start_new_session=True,  # its own process group: stop() takes its children with it
            )
        except OSError as exc:
            self._close_log()
            raise LocalServiceError(f"cannot run {name} ({self.argv[0]}): {exc}") from exc

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def failure(self, message: str) -> LocalServiceError:
        tail = self.log_tail()
        return LocalServiceError(f"{message}" + (f"\n{self.name} said:\n{tail}" if tail else ""))

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM the whole group, SIGKILL what is left after ``timeout_s`` (0 = SIGKILL at once)."""
        if self.alive():
            try:
                if timeout_s <= 0:
                    raise subprocess.TimeoutExpired(self.argv, 0)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)  # SIGKILL cannot be ignored; this only reaps it
        # Children that outlived their leader in the same group still get the signal.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class ServerProcess:
    """A server child process on 127.0.0.1, started by a subclass's ``start``; ``url`` is its
    endpoint once started. ``what`` names it in errors."""

    what = "the server"

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.requested_port = port
        self.log_path = log_path
        self.port = 0
        self._child: ChildProcess | None = None

    @property
    def url(self) -> str:
        if not self.port:
            raise LocalServiceError(f"{self.what} is not started")
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    def alive(self) -> bool:
        return self._child is not None and self._child.alive()

    def stop(self) -> None:
        if self._child is not None:
            self._child.stop()
            self._child = None


class StartStopContext:
    """``with thing as t:`` starts it and stops it. A start that fails part way stops what it
    had started before the error goes on, so a half-started stack leaves no process behind."""

    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
