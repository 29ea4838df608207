"""The local stack at its edges, as a user meets them: `sluice local up` as a real subprocess,
stopped with Ctrl-C (SIGINT), refused with the port named when --api-port is taken; and the
HTTP API taking chunked request bodies as API Gateway does. Each run keeps its state in a
directory of its own and its data in a scratch database on the machine's MariaDB."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pymysql
import pytest

from sluice.settings import PROJECT_ROOT, load_settings
from sluice_tools.local.http_api import MAX_BODY_BYTES, HttpApi, lambda_invoker
from sluice_tools.local.lambda_service import FunctionDefinition, LambdaService
from sluice_tools.local.processes import is_listening
from sluice_tools.local.vendor_client import VendorClient

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-c", "from sluice_tools.cli import main; main()"]
HERE = Path(__file__).parent


@pytest.fixture
def scratch_database_url() -> Iterator[str]:
    name = f"sluice_life_{uuid.uuid4().hex[:10]}"
    yield f"mysql://root@127.0.0.1:3306/{name}"
    conn = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


def poll(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.1)


def group_alive(pgid: int) -> bool:
    """Is any process of this process group still running (zombies excluded)?"""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def function_pids(env: dict[str, str]) -> list[int]:
    """Pids of the warm function processes, from the local Lambda service's stats."""
    with urllib.request.urlopen(env["SLUICE_LAMBDA_STATS_URL"], timeout=5) as reply:
        stats = json.loads(reply.read())
    return [pid for function in stats.values() for pid in function["pids"]]


def process_groups(local_dir: Path, env: dict[str, str]) -> list[int]:
    """Every server (from the state file) and function process leads a process group of its own."""
    state = json.loads((local_dir / "stack.json").read_text())
    return [int(pid) for pid in state["children"].values()] + function_pids(env)


def vendor_token(env: dict[str, str]) -> str:
    """The stand-in vendor's token, read from the secret the stack stored it in."""
    secrets = boto3.client("secretsmanager", endpoint_url=env["AWS_ENDPOINT_URL_SECRETS_MANAGER"],
                           region_name=env["AWS_DEFAULT_REGION"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                           aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    value = secrets.get_secret_value(SecretId=env["SLUICE_VENDOR_SECRET_ID"])["SecretString"]
    token: str = json.loads(value)["token"]
    return token


def start_stack(local_dir: Path, database_url: str, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.Popen([*CLI, "local", "up", "--local-dir", str(local_dir), *extra], cwd=PROJECT_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_ctrl_c_stops_the_foreground_stack_and_every_process_it_started(
        tmp_path: Path, scratch_database_url: str) -> None:
    # GIVEN `sluice local up` in the foreground, healthy (local.env names its pid)
    local_dir = tmp_path / "stack"
    proc = start_stack(local_dir, scratch_database_url)
    env_file = local_dir / "local.env"
    try:
        poll(lambda: proc.poll() is not None or (
            env_file.exists() and f"SLUICE_STACK_PID={proc.pid}\n" in env_file.read_text()), 60, "stack healthy")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        env = read_env(env_file)
        # AND function processes started: one POST warms the enqueuer; the schedule warms the consumer
        body = json.dumps({"items": [{"task": "invoice.record", "key": f"LIFE-{uuid.uuid4().hex[:8]}",
                                      "payload": {"customer": "acme", "amount_cents": 100, "currency": "EUR"}}]})
        request = urllib.request.Request(env["SLUICE_API_URL"] + "/jobs", data=body.encode(), method="POST",
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            assert reply.status == 202

        # AND the mysql client reaches the stack's database from local.env alone
        assert (env["MYSQL_HOST"], env["MYSQL_TCP_PORT"]) == ("127.0.0.1", "3306")
        client = subprocess.run(["mariadb", "-u", "root", "-N", "-e", "SELECT COUNT(*) FROM customers",
                                 scratch_database_url.rsplit("/", 1)[1]],
                                env={**os.environ, **env}, capture_output=True, text=True, timeout=30)
        assert client.returncode == 0 and int(client.stdout) >= 1, client.stderr
        # AND the stand-in vendor API answers at SLUICE_VENDOR_URL with the configured vendors, and a
        # vendor's own URL takes a message sent with the token from the vendor secret
        vendors = VendorClient(env["SLUICE_VENDOR_URL"]).vendors()
        assert sorted(vendors) == sorted(load_settings("local").local.vendors)
        assert env["SLUICE_VENDOR_URL_A"] == vendors["a"].url
        message = urllib.request.Request(
            env["SLUICE_VENDOR_URL_A"] + "/vendors/a/messages", method="POST",
            data=json.dumps({"to": "+4915112345678", "text": "hello"}).encode(),
            headers={"Authorization": f"Bearer {vendor_token(env)}", "Idempotency-Key": uuid.uuid4().hex,
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(message, timeout=10) as reply:
            assert reply.status == 201
        vendor_ports = [int(url.rsplit(":", 1)[1]) for key, url in env.items() if key.startswith("SLUICE_VENDOR_URL")]
        poll(lambda: len(function_pids(env)) >= 2, 20, "enqueuer and consumer processes running")
        groups = process_groups(local_dir, env)
        assert len(groups) >= 4 and all(group_alive(g) for g in groups)
        # AND a second `local up` on the same state directory says one is running, and starts nothing
        second = subprocess.run([*CLI, "local", "up", "--local-dir", str(local_dir)], cwd=PROJECT_ROOT,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and f"already running (pid {proc.pid}" in second.stderr, second.stderr
        # WHEN the user presses Ctrl-C
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        # THEN it exits cleanly, says so, and leaves no traceback, no state and no process behind
        assert proc.returncode in (0, 130), stderr
        assert "Traceback" not in stderr, stderr
        assert not (local_dir / "stack.json").exists() and not env_file.exists()
        poll(lambda: not any(group_alive(g) for g in groups), 10, f"process groups {groups} gone")
        assert not any(is_listening(port) for port in vendor_ports)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_ctrl_c_pressed_again_while_stopping_still_stops_everything(
        tmp_path: Path, scratch_database_url: str) -> None:
    # GIVEN a healthy foreground stack
    local_dir = tmp_path / "stack"
    proc = start_stack(local_dir, scratch_database_url)
    env_file = local_dir / "local.env"
    try:
        poll(lambda: proc.poll() is not None or env_file.exists(), 60, "stack healthy")
        assert proc.poll() is None, proc.communicate()
        groups = process_groups(local_dir, read_env(env_file))
        # WHEN the user keeps pressing Ctrl-C until it exits
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            proc.send_signal(signal.SIGINT)
            time.sleep(0.02)  # the pace of a user's key presses, not a wait for a condition
        _, stderr = proc.communicate(timeout=30)
        # THEN the cleanup still ran to the end: clean exit, no traceback, no state, no process left
        assert proc.returncode in (0, 130), stderr
        assert "Traceback" not in stderr, stderr
        assert not (local_dir / "stack.json").exists()
        poll(lambda: not any(group_alive(g) for g in groups), 10, f"process groups {groups} gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_a_taken_api_port_fails_naming_the_port(tmp_path: Path, scratch_database_url: str) -> None:
    # GIVEN a port on 127.0.0.1 something already listens on
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # WHEN `sluice local up --api-port` asks for it
        proc = start_stack(tmp_path / "stack", scratch_database_url, "--api-port", str(port))
        try:
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    # THEN it exits non-zero with one clear line naming the port, and nothing is left running
    assert proc.returncode != 0
    assert f"port {port}" in stderr and "Traceback" not in stderr, stderr
    assert not (tmp_path / "stack" / "stack.json").exists()


def test_ctrl_c_on_the_demo_stops_the_stack_it_started(tmp_path: Path, scratch_database_url: str) -> None:
    # GIVEN `sluice demo` running: its stack is up and its workers are busy with a burst
    local_dir = tmp_path / "stack"
    proc = subprocess.Popen([*CLI, "demo", "--items", "50", "--local-dir", str(local_dir), "--database-url",
                             scratch_database_url], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        env_file = local_dir / "local.env"
        poll(lambda: proc.poll() is not None or env_file.exists(), 60, "the demo's stack up")
        assert proc.poll() is None, proc.communicate()
        env = read_env(env_file)
        poll(lambda: len(function_pids(env)) >= 2, 20, "function processes running")
        groups = process_groups(local_dir, env)
        # WHEN the user presses Ctrl-C, and again while it stops
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            proc.send_signal(signal.SIGINT)
            time.sleep(0.02)  # the pace of a user's key presses, not a wait for a condition
        stdout, stderr = proc.communicate(timeout=30)
        # THEN it says it was interrupted, exits 130 without a traceback, and leaves nothing running
        assert proc.returncode == 130, stdout[-2000:] + stderr[-2000:]
        assert "interrupted" in stdout and "Traceback" not in stderr + stdout, stderr
        assert not (local_dir / "stack.json").exists()
        poll(lambda: not any(group_alive(g) for g in groups), 10, f"process groups {groups} gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def echo_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpApi]:
    """The HTTP API in front of a real function process (tests/e2e/toy_api.py echoes its event)."""
    service = LambdaService([FunctionDefinition(name="toy", handler="toy_api.handler", timeout_s=10,
                                                cwd=str(HERE))], log_dir=tmp_path_factory.mktemp("logs"))
    service.start()
    api = HttpApi(lambda_invoker("toy", service.url, 10, "us-east-1"))
    api.start()
    yield api
    api.stop()
    service.stop()


def post_chunked(api: HttpApi, chunks: list[bytes], raw: bytes | None = None) -> tuple[int, bytes]:
    """POST /jobs with Transfer-Encoding: chunked; ``raw`` sends exactly those bytes as the body."""
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    try:
        conn.putrequest("POST", "/jobs")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        if raw is not None:
            conn.send(raw)
        else:
            for chunk in chunks:
                conn.send(b"%x;ext=1\r\n%s\r\n" % (len(chunk), chunk))
            conn.send(b"0\r\nX-Trailer: t\r\n\r\n")
        reply = conn.getresponse()
        return reply.status, reply.read()
    except (BrokenPipeError, ConnectionResetError):
        # The server answered early and hung up while the client was still sending.
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def test_http_api_accepts_a_chunked_body_as_api_gateway_does(echo_api: HttpApi) -> None:
    # GIVEN a JSON body sent in three chunks, with a chunk extension and a trailer
    body = json.dumps({"items": [{"task": "invoice.record", "key": "CHUNKED-1"}]}).encode()
    chunks = [body[:7], body[7:20], body[20:]]
    # WHEN it is POSTed with Transfer-Encoding: chunked
    status, reply = post_chunked(echo_api, chunks)
    # THEN the function got the whole body, reassembled, as a payload-v2.0 event
    assert status == 201, reply
    event = json.loads(reply)["event"]
    assert event["body"] == body.decode() and event["isBase64Encoded"] is False


def test_http_api_answers_a_chunked_body_over_10_mb_with_413(echo_api: HttpApi) -> None:
    # GIVEN chunks adding up to just over API Gateway's 10 MB limit
    chunks = [b"x" * (1 << 20)] * 10 + [b"x"]
    # WHEN they are POSTed chunked THEN 413, and the API still serves the next request
    status, _ = post_chunked(echo_api, chunks)
    assert status == 413
    assert post_chunked(echo_api, [b"{}"])[0] == 201
    assert MAX_BODY_BYTES == 10 * (1 << 20)


@pytest.mark.parametrize("raw", [b"zz\r\nabc\r\n0\r\n\r\n", b"3\r\nabcdef\r\n0\r\n\r\n"],
                         ids=["size-not-hex", "chunk-longer-than-its-size"])
def test_http_api_answers_a_malformed_chunked_body_with_400(echo_api: HttpApi, raw: bytes) -> None:
    # WHEN a chunked body breaks the chunked coding THEN 400 with the reason, never a 5xx
    status, reply = post_chunked(echo_api, [], raw=raw)
    assert status == 400 and b"Bad chunked body" in reply
