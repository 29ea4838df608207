"""Every operator command at the edges a user meets first: no local stack running, a stage
whose AWS endpoint does not answer, and bad arguments. Each must end with one clear line and
a meaningful exit code (3: cannot reach it, 2: bad input), never a traceback."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sluice import aws
from sluice_tools.cli import app
from sluice_tools.cli.common import EXIT_UNAVAILABLE, EXIT_USAGE
from sluice_tools.local.env import ENDPOINT_ENV_KEYS, EXPORTED_ENV_KEYS, restore_environment

pytestmark = pytest.mark.e2e

ITEM = ["--task", "invoice.record", "--payload", '{"customer": "acme", "amount_cents": 1, "currency": "EUR"}']

# Every command that needs the stage's queues, functions or database.
REACHING_COMMANDS = {
    "status": ["status"],
    "send": ["send", *ITEM],
    "drain": ["drain"],
    "dlq-list": ["dlq", "list"],
    "dlq-redrive": ["dlq", "redrive", "--all"],
    "dlq-purge": ["dlq", "purge", "--yes"],
    "db-migrate": ["db", "migrate"],
}

# Environment a command could otherwise find a stack or a database through.
_STRAY_ENV = ("DATABASE_URL", *(key for key in ENDPOINT_ENV_KEYS if key.startswith("AWS_ENDPOINT_URL")))


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    """A CLI runner in an empty directory, pointed at a local.env that does not exist."""
    # The CLI exports a local.env's endpoints and credentials into this process (os.environ, not
    # through monkeypatch): put every one back afterwards so nothing leaks into other tests.
    saved = {name: os.environ.get(name) for name in (*_STRAY_ENV, *EXPORTED_ENV_KEYS)}
    for name in _STRAY_ENV:
        os.environ.pop(name, None)
    monkeypatch.setenv("SLUICE_LOCAL_ENV_FILE", str(tmp_path / ".sluice" / "local.env"))
    monkeypatch.chdir(tmp_path)
    aws.reset_clients()
    yield CliRunner()
    restore_environment(saved)


def one_clear_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert "Traceback" not in output, output
    assert len(lines) == 1, output
    return lines[0]


@pytest.mark.parametrize("argv", list(REACHING_COMMANDS.values()), ids=list(REACHING_COMMANDS))
def test_no_local_stack_is_exit_3_with_one_line(runner: CliRunner, argv: list[str]) -> None:
    # GIVEN no local stack (no local.env anywhere the CLI looks)
    # WHEN the command runs against the local stage
    result = runner.invoke(app, [*argv, "--stage", "local"])
    # THEN exit 3 and one line that says how to start the stack
    assert result.exit_code == EXIT_UNAVAILABLE, result.output
    assert "sluice local up" in one_clear_line(result.output)


@pytest.mark.parametrize("argv", list(REACHING_COMMANDS.values()), ids=list(REACHING_COMMANDS))
def test_unreachable_stage_is_exit_3_with_one_line(runner: CliRunner, argv: list[str]) -> None:
    # GIVEN a deployed stage whose AWS endpoint does not answer (the runner fixture restores it)
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{closed_port()}"
    aws.reset_clients()
    # WHEN the command runs against it
    result = runner.invoke(app, [*argv, "--stage", "dev"])
    # THEN exit 3 and one line naming the stage
    assert result.exit_code == EXIT_UNAVAILABLE, result.output
    assert "dev" in one_clear_line(result.output)


def write_stale_local_env(path: Path) -> None:
    """A local.env left by a stack that died (kill -9): every endpoint it names is closed."""
    url = f"http://127.0.0.1:{closed_port()}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key}={value}\n" for key, value in {
        "AWS_ENDPOINT_URL": url, "AWS_ENDPOINT_URL_SQS": url, "AWS_ENDPOINT_URL_LAMBDA": url,
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
        "SLUICE_API_URL": url, "DATABASE_URL": f"mysql://root@127.0.0.1:{closed_port()}/sluice",
        "SLUICE_QUEUE_URL": f"{url}/000000000000/sluice-local-jobs.fifo",
        "SLUICE_DLQ_URL": f"{url}/000000000000/sluice-local-jobs-dlq.fifo",
    }.items()))


@pytest.mark.parametrize("argv", list(REACHING_COMMANDS.values()), ids=list(REACHING_COMMANDS))
def test_a_dead_local_stack_is_exit_3_with_one_line(runner: CliRunner, tmp_path: Path,
                                                   argv: list[str]) -> None:
    # GIVEN a local.env whose stack is gone (its ports closed)
    write_stale_local_env(tmp_path / ".sluice" / "local.env")
    # WHEN the command runs against the local stage
    result = runner.invoke(app, [*argv, "--stage", "local"])
    # THEN exit 3 and one line saying what could not be reached (send: not a failure per item)
    assert result.exit_code == EXIT_UNAVAILABLE, result.output
    assert "127.0.0.1" in one_clear_line(result.output)


BAD_ARGUMENTS = {
    "negative-volume": (["plan", "--items-per-day", "-5", "--worker-ms", "10"], "items"),
    "payload-not-json": (["send", "--task", "invoice.record", "--payload", "{bad", "--stage", "local"], "JSON"),
    "redrive-without-selector": (["dlq", "redrive", "--stage", "local"], "--all"),
    "unknown-stage": (["status", "--stage", "nosuchstage"], "nosuchstage"),
    "bad-stage-name": (["dlq", "list", "--stage", "Bad/Stage"], "Bad/Stage"),
    "bad-since": (["dlq", "redrive", "--since", "yesterday", "--stage", "local"], "yesterday"),
    # User text that looks like rich markup is shown as typed, not parsed (a stray closing tag crashed).
    "since-like-markup": (["dlq", "redrive", "--since", "[/oops]", "--stage", "local"], "[/oops]"),
    "port-out-of-range": (["local", "up", "--api-port", "70000", "--local-dir", "stack"], "--api-port"),
    "negative-port": (["local", "up", "--lambda-port", "-1", "--local-dir", "stack"], "--lambda-port"),
    "infinite-worker-ms": (["plan", "--items-per-day", "100", "--worker-ms", "inf"], "--worker-ms"),
    "binary-file": (["send", "--file", "binary.json", "--stage", "local"], "not UTF-8"),
    "missing-file": (["send", "--file", "no-such-file.json", "--stage", "local"], "no-such-file.json"),
}


@pytest.mark.parametrize(("argv", "reason"), list(BAD_ARGUMENTS.values()), ids=list(BAD_ARGUMENTS))
def test_bad_arguments_are_exit_2_with_the_reason(runner: CliRunner, argv: list[str], reason: str) -> None:
    # GIVEN a file that is not text, for --file
    Path("binary.json").write_bytes(b"\xff\xfe{}")
    # WHEN a command gets an argument it cannot use
    result = runner.invoke(app, argv)
    # THEN exit 2, the reason is named, and no traceback
    assert result.exit_code == EXIT_USAGE, result.output
    assert reason in result.output and "Traceback" not in result.output, result.output


def test_a_since_older_than_the_calendar_selects_everything(runner: CliRunner) -> None:
    # WHEN --since reaches back past year 1 (no dead letter is older: it means "all")
    result = runner.invoke(app, ["dlq", "redrive", "--since", "99999999999d", "--dry-run", "--stage", "local"])
    # THEN it is accepted and the command goes on to reach the stack (none here: exit 3), no traceback
    assert result.exit_code == EXIT_UNAVAILABLE, result.output
    assert "sluice local up" in one_clear_line(result.output)
