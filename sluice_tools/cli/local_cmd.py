"""`sluice local up | down | status`: the one-machine stack (DESIGN.md section 7)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import typer

from sluice_tools.cli.common import EXIT_UNAVAILABLE, EXIT_USAGE, JsonOption, command, console, emit_json, fail

# Hidden: a test (or a second stack beside the project's) keeps its state out of .sluice/.
LocalDirOption = typer.Option(None, "--local-dir", hidden=True, help="State directory (default .sluice).")

local_app = typer.Typer(no_args_is_help=True, help="The local stack: every service on 127.0.0.1.")


class _StopRequestedError(Exception):
    """Ctrl-C (SIGINT) or SIGTERM arrived: unwind so every started service is stopped."""


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    # Only the first signal unwinds: a second Ctrl-C (users press it again when stopping takes a
    # moment) must not cut the cleanup short and orphan the servers still being stopped.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _StopRequestedError()


def _state_dir(local_dir: Path | None) -> Path:
    from sluice_tools.local.env import LOCAL_DIR

    return (local_dir or LOCAL_DIR).resolve()


@local_app.command("up")
@command
def up(
    stage: str = typer.Option("local", "--stage", "-s", help="Settings: config/<stage>.yml."),
    sqs: str = typer.Option("", "--sqs", help="fauxqs | moto | http(s)://URL (default: local.sqs)"),
    detach: bool = typer.Option(False, "--detach", "-d", help="Run in the background; return once healthy."),
    api_port: int = typer.Option(0, "--api-port", min=0, max=65535, help="HTTP API port (0 = a free one)."),
    lambda_port: int = typer.Option(0, "--lambda-port", min=0, max=65535,
                                    help="Lambda endpoint port (0 = a free one)."),
    timeout_s: float = typer.Option(120, "--timeout", help="Seconds to wait for a detached stack."),
    local_dir: Path = LocalDirOption,
) -> None:
    """Start the local stack (foreground until Ctrl-C, or --detach)."""
    from sluice.settings import load_settings
    from sluice_tools.local.env import read_local_env
    from sluice_tools.local.processes import LocalServiceError
    from sluice_tools.local.stack import LocalStack, pid_alive, running_stack

    settings = load_settings(stage)
    state_dir = _state_dir(local_dir)
    env_file = state_dir / "local.env"
    other = running_stack(state_dir)
    if other is not None:
        fail(f"a local stack is already running (pid {other['pid']}, API {other.get('api_url') or '?'}); "
             "`sluice local down` stops it", EXIT_USAGE)
    if detach:
        state_dir.mkdir(parents=True, exist_ok=True)
        env_file.unlink(missing_ok=True)
        argv = [sys.executable, "-c", "from sluice_tools.cli import main; main()", "local", "up", "--stage", stage,
                "--api-port", str(api_port), "--lambda-port", str(lambda_port), "--local-dir", str(state_dir)]
        argv += ["--sqs", sqs] if sqs else []
        log = open(state_dir / "stack.log", "ab")  # noqa: SIM115 - handed to the child
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if child.poll() is not None:
                fail(f"the local stack did not start; see {state_dir.name}/stack.log", EXIT_UNAVAILABLE)
            if env_file.exists() and read_local_env(env_file).get("SLUICE_STACK_PID") == str(child.pid):
                env = read_local_env(env_file)
                console.print(f"[green]local stack up[/green] (pid {child.pid}) API {env['SLUICE_API_URL']}")
                console.print(f"endpoints in {state_dir.name}/local.env; stop with `sluice local down`")
                return
            time.sleep(0.2)
        if pid_alive(child.pid):
            os.killpg(child.pid, signal.SIGTERM)
        fail(f"the local stack was not healthy within {timeout_s:.0f} s; see {state_dir.name}/stack.log",
             EXIT_UNAVAILABLE)
    try:
        stack = LocalStack(settings, sqs=sqs or settings.local.sqs, api_port=api_port or None,
                           lambda_port=lambda_port or None, local_dir=state_dir)
    except LocalServiceError as exc:
        fail(str(exc), EXIT_USAGE)
    signal.signal(signal.SIGINT, _on_stop_signal)
    signal.signal(signal.SIGTERM, _on_stop_signal)
    try:
        stack.start()
        source = stack.database.source if stack.database else ""
        console.print(f"[green]local stack up[/green] (pid {os.getpid()}): API {stack.env['SLUICE_API_URL']} "
                      f"SQS {stack.sqs} {stack.sqs_url}, database {source}")
        console.print(f"endpoints in {state_dir.name}/local.env; Ctrl-C or `sluice local down` stops it")
        signal.pause()
    except (KeyboardInterrupt, _StopRequestedError):
        pass
    except LocalServiceError as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    finally:
        # Whatever ended the wait (a signal, a failed start), nothing may interrupt the cleanup.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        console.print("local stack stopped")


@local_app.command("down")
@command
def down(local_dir: Path = LocalDirOption) -> None:
    """Stop the local stack started by `sluice local up`."""
    from sluice_tools.local.stack import stop_stack

    console.print(stop_stack(_state_dir(local_dir)))


@local_app.command("status")
@command
def status(as_json: bool = JsonOption, local_dir: Path = LocalDirOption) -> None:
    """Is the local stack running, and where."""
    from sluice_tools.local.env import read_local_env
    from sluice_tools.local.stack import running_stack

    directory = _state_dir(local_dir)
    state = running_stack(directory)
    if state is None:
        if as_json:
            emit_json({"running": False})
        fail("the local stack is not running: start it with `sluice local up`", EXIT_UNAVAILABLE)
    env = read_local_env(directory / "local.env")
    if as_json:
        emit_json({"running": True, **state, "env": env})
        return
    console.print(f"[green]running[/green] pid {state['pid']} stage {state['stage']} SQS {state['sqs']} "
                  f"database {state.get('database', '')}")
    for key in ("SLUICE_API_URL", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_LAMBDA", "AWS_ENDPOINT_URL",
                "DATABASE_URL"):
        console.print(f"  {key}={env.get(key, '')}")


def register(app: typer.Typer) -> None:
    app.add_typer(local_app, name="local")
