"""Fixtures of the functional suite: the CLI pointed at the moto server's queues."""

from __future__ import annotations

from pathlib import Path

import pytest

import sluice_tools.cli  # noqa: F401  sluice_tools.stage imports sluice_tools.cli.common, which needs the package loaded first
from sluice_tools.stage import LOCAL_ENV_FILE_VAR
from tests.conftest import FifoQueues


def point_cli_at(monkeypatch: pytest.MonkeyPatch, path: Path, endpoint: str, queues: FifoQueues) -> Path:
    """Write a local.env for ``queues`` on ``endpoint`` and make `--stage local` read it."""
    path.write_text(f"AWS_ENDPOINT_URL={endpoint}\nSLUICE_QUEUE_URL={queues.url}\n"
                    f"SLUICE_DLQ_URL={queues.dlq_url}\n")
    monkeypatch.setenv(LOCAL_ENV_FILE_VAR, str(path))
    return path


@pytest.fixture
def local_env(fifo_queues: FifoQueues, moto_aws: str, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Path:
    """`--stage local` reaches this test's FIFO queues on the moto server (in this process and,
    through the environment, in the CLI processes it starts)."""
    return point_cli_at(monkeypatch, tmp_path / "local.env", moto_aws, fifo_queues)
