"""moto's server on 127.0.0.1: Secrets Manager (and SQS with ``--sqs moto``) for the local stack.

With ``step_functions_port`` it also executes state machines (FACTS.md, "moto Step Functions"):
its interpreter calls AWS at ``localhost:$MOTO_PORT``, so MOTO_PORT names the gateway that sends
Lambda tasks to the stack's Lambda service (sluice_tools/local/sfn_gateway.py).

It runs as a child process (``python -m moto.server``) rather than a thread, so it can be
stopped with its process group and never shares the stack's interpreter (or its GIL).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

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

    def __init__(self, port: int | None = None, log_path: Path | None = None,
                 step_functions_port: int | None = None) -> None:
        super().__init__(port, log_path)
        self.step_functions_port = step_functions_port

    def start(self, timeout_s: float = 30.0) -> str:
        try:
            import moto.server  # noqa: F401 - only to fail early with a clear message
        except ImportError:
            raise LocalServiceError("moto's server is not installed: run `make setup` "
                                    "(pip install -e '.[dev]' installs moto[server])") from None
        port = choose_port(self.requested_port, "the moto server")
        env = dict(os.environ)
        if self.step_functions_port:
            env["MOTO_PORT"] = str(self.step_functions_port)
        child = ChildProcess("moto", [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)],
                             log_path=self.log_path, env=env)
        self._child = child
        self.port = port
        try:
            wait_until(lambda: _answers(self.url), timeout_s, f"the moto server on port {port}", child.alive)
        except LocalServiceError as exc:
            failure = child.failure(str(exc))
            self.stop()
            raise failure from None
        if self.step_functions_port:
            self._execute_state_machines()
        return self.url

    def _execute_state_machines(self) -> None:
        request = urllib.request.Request(
            f"{self.url}/moto-api/config", method="POST",
            data=json.dumps({"stepfunctions": {"execute_state_machine": True}}).encode(),
            headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=5).close()  # noqa: S310 - the local moto server
        except OSError as exc:
            self.stop()
            raise LocalServiceError(f"the moto server would not execute state machines: {exc}") from None

    def stop(self) -> None:
        super().stop()
        # Its port is set before it answers, so a failed start must not leave a URL behind.
        self.port = 0
