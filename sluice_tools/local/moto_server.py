"""moto's server on 127.0.0.1: Secrets Manager (and SQS with ``--sqs moto``) for the local stack.

It runs as a child process (``python -m moto.server``) rather than a thread, so it can be
stopped with its process group and never shares the stack's interpreter (or its GIL).
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from sluice_tools.local.processes import (
    LOOPBACK,
    ChildProcess,
    LocalServiceError,
    ServerProcess,
    choose_port,
    wait_until,
)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/", timeout=1) as reply:
            return reply.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


class MotoServer(ServerProcess):
    """A ``moto.server`` process; ``url`` is its endpoint (every service on one port)."""

    what = "the moto server"

    def start(self, timeout_s: float = 30.0) -> str:
        try:
            import moto.server  # noqa: F401 - only to fail early with a clear message
        except ImportError:
            raise LocalServiceError("moto's server is not installed: run `make setup` "
                                    "(pip install -e '.[dev]' installs moto[server])") from None
        port = choose_port(self.requested_port, "the moto server")
        child = ChildProcess("moto", [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)],
                             log_path=self.log_path)
        self._child = child
        self.port = port
        try:
            wait_until(lambda: _answers(self.url), timeout_s, f"the moto server on port {port}", child.alive)
        except LocalServiceError as exc:
            failure = child.failure(str(exc))
            self.stop()
            raise failure from None
        return self.url

    def stop(self) -> None:
        super().stop()
        # Its port is set before it answers, so a failed start must not leave a URL behind.
        self.port = 0
