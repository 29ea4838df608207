"""A three-lane local stack, end to end: `LocalStack` starts every lane's queues, consumer,
worker and schedule; items POSTed over HTTP for the three lanes each go to their own lane's
queue and are applied from it; `sluice status`, `drain` and `dlq` answer per lane.

The config is config/local.yml with three lanes (ledger, vendor-a, vendor-b, as config/lanes.yml
names them, sized for a laptop), written as ``local.yml`` into a config folder of the test's own
(SLUICE_CONFIG_DIR), so the CLI's ``--stage local`` reads the same lanes the stack runs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from typer.testing import CliRunner

from sluice import aws
from sluice.settings import CONFIG_DIR_ENV, PROJECT_ROOT, load_settings
from sluice_tools.cli import app
from sluice_tools.local.env import EXPORTED_ENV_KEYS, lane_queue_keys, read_local_env
from sluice_tools.local.stack import LocalStack
from sluice_tools.stage import LOCAL_ENV_FILE_VAR
from tests.helpers import drop_machine_database, eventually, post
from tests.helpers import stack_sql as query

pytestmark = pytest.mark.e2e

LANES = {
    "ledger": {"tasks": ["invoice.record"]},
    "vendor-a": {"tasks": ["notify.send"], "match": {"payload.vendor": "a"},
                 "drain": {"max_parallel": 2}, "worker": {"reserved_concurrency": 2}},
    "vendor-b": {"tasks": ["notify.send"], "match": {"payload.vendor": "b"},
                 "drain": {"max_parallel": 1}, "worker": {"reserved_concurrency": 1}},
}


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = yaml.safe_load((PROJECT_ROOT / "config" / "local.yml").read_text())
    raw["queue"]["name"] = f"lanes-{uuid.uuid4().hex[:8]}"
    raw["drain"].update(timeout_s=6, safety_margin_ms=1000)
    raw["worker"]["timeout_s"] = 4
    raw["lanes"] = LANES
    folder = tmp_path_factory.mktemp("lanes-config")
    (folder / "local.yml").write_text(yaml.safe_dump(raw))
    return folder


@pytest.fixture(scope="module")
def stack(config_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    name = f"sluice_lanes_{uuid.uuid4().hex[:10]}"
    settings = load_settings("local", config_dir)
    assert [lane.name for lane in settings.resolved_lanes()] == list(LANES)
    # No schedule: every drain here is `sluice drain`, so what each lane applied is the test's doing.
    stack = LocalStack(settings, database_url=f"mysql://root@127.0.0.1:3306/{name}", schedule=False,
                       local_dir=tmp_path_factory.mktemp("lanes-stack"))
    stack.start()
    yield stack
    stack.stop()
    drop_machine_database(name)


@pytest.fixture
def cli(stack: LocalStack, config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """Run `sluice <args> --stage local [--json]` against the stack; the environment is restored after."""
    for key in EXPORTED_ENV_KEYS:
        if key in stack.env:
            monkeypatch.setenv(key, stack.env[key])
        else:
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv(LOCAL_ENV_FILE_VAR, str(stack.local_dir / "local.env"))
    monkeypatch.setenv(CONFIG_DIR_ENV, str(config_dir))

    def run(*args: str, code: int = 0, as_json: bool = True) -> Any:
        result = CliRunner().invoke(app, [*args, "--stage", "local", *(["--json"] if as_json else [])])
        assert result.exit_code == code, result.output
        return json.loads(result.stdout) if code == 0 and as_json else result.output

    yield run
    aws.reset_clients()


def by_lane(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["lane"]: row for row in status["lanes"]}


def test_every_lane_has_its_queues_functions_and_schedule(stack: LocalStack) -> None:
    # GIVEN the running three-lane stack
    env = read_local_env(stack.local_dir / "local.env")
    sqs = boto3.client("sqs", endpoint_url=stack.sqs_url, region_name="us-east-1",
                       aws_access_key_id="local", aws_secret_access_key="local")
    prefix = stack.settings.queue.name
    for lane in LANES:
        # THEN local.env names each lane's queue and DLQ, under <queue.name>-<lane>(-dlq).fifo
        queue_key, dlq_key = lane_queue_keys(lane)
        assert env[queue_key].endswith(f"/{prefix}-{lane}.fifo") and env[dlq_key].endswith(f"/{prefix}-{lane}-dlq.fifo")
        # AND the queue redrives into its own lane's DLQ
        attrs = sqs.get_queue_attributes(QueueUrl=env[queue_key], AttributeNames=["All"])["Attributes"]
        assert json.loads(attrs["RedrivePolicy"])["deadLetterTargetArn"].endswith(f"{prefix}-{lane}-dlq.fifo")
    assert "SLUICE_QUEUE_URL" not in env  # a config with lanes has no single queue
    # AND each lane's consumer and worker run with their own lane's environment; the enqueuer has every route
    lam = boto3.client("lambda", endpoint_url=env["AWS_ENDPOINT_URL_LAMBDA"], region_name="us-east-1",
                       aws_access_key_id="local", aws_secret_access_key="local")
    functions = {f["FunctionName"]: f for f in lam.list_functions()["Functions"]}
    for lane in LANES:
        for role in ("consumer", "worker"):
            variables = functions[stack.function_name(f"{role}-{lane}")]["Environment"]["Variables"]
            assert variables["SLUICE_LANE"] == lane
            assert variables["SLUICE_QUEUE_URL"] == env[lane_queue_keys(lane)[0]]
        worker = lam.get_function(FunctionName=stack.function_name(f"worker-{lane}"))["Concurrency"]
        assert worker["ReservedConcurrentExecutions"] == stack.settings.lane(lane).worker.reserved_concurrency
    enqueuer = functions[stack.function_name("enqueuer")]["Environment"]["Variables"]
    assert [r["name"] for r in json.loads(enqueuer["SLUICE_LANES"])] == list(LANES)
    # AND every lane has a schedule of its own
    assert set(stack.status()["schedules"]) == set(LANES)


def test_items_for_three_lanes_apply_each_from_its_own_lane(stack: LocalStack, cli: Callable[..., Any]) -> None:
    # GIVEN one request holding an invoice and a message for each vendor (one the vendor will refuse)
    run = uuid.uuid4().hex[:8]
    items = [
        {"task": "invoice.record", "key": f"inv-{run}", "payload": {"customer": "acme", "amount_cents": 5,
                                                                   "currency": "EUR"}},
        {"task": "notify.send", "key": f"a-{run}", "payload": {"vendor": "a", "to": "+15550001", "text": "hi"}},
        {"task": "notify.send", "key": f"b-{run}", "payload": {"vendor": "b", "to": "+15550002", "text": "hi"}},
        {"task": "notify.send", "key": f"bad-{run}", "payload": {"vendor": "b", "to": "nobody", "text": "hi"}},
    ]
    # WHEN it is POSTed over HTTP
    status, body = post(stack, {"items": items})
    # THEN the reply says each item's lane
    assert status == 202, body
    assert [row["lane"] for row in body["items"]] == ["ledger", "vendor-a", "vendor-b", "vendor-b"]
    # AND `sluice status --json` lists the three lanes, each holding its own items
    lanes = by_lane(cli("status"))
    assert list(lanes) == list(LANES)
    assert {name: row["queue"]["visible"] for name, row in lanes.items()} == {"ledger": 1, "vendor-a": 1, "vendor-b": 2}
    assert lanes["vendor-b"]["workers"]["cap"] == 1 and lanes["vendor-a"]["workers"]["cap"] == 2
    # WHEN only lane ledger is drained
    report = cli("drain", "--lane", "ledger")["lanes"]
    # THEN only its item is applied; the vendor lanes still hold theirs
    assert [(x["lane"], x["report"]["succeeded"]) for x in report] == [("ledger", 1)]
    assert query(stack, "SELECT COUNT(*) FROM invoices WHERE item_key = %s", f"inv-{run}")[0][0] == 1
    assert query(stack, "SELECT COUNT(*) FROM notifications WHERE item_key LIKE %s", f"%{run}")[0][0] == 0

    # WHEN every lane is drained until each lane's queue is empty
    def drained() -> bool:
        cli("drain")
        rows = by_lane(cli("status"))
        return all(row["queue"]["visible"] + row["queue"]["in_flight"] == 0 for row in rows.values())

    eventually(drained, 60, "every lane drained")
    # THEN each message reached its own vendor once, and the refused one is in vendor-b's DLQ only
    sent = dict(query(stack, "SELECT item_key, vendor FROM notifications WHERE item_key LIKE %s", f"%{run}"))
    assert sent == {f"a-{run}": "a", f"b-{run}": "b"}
    dead = cli("dlq", "list", "--lane", "vendor-b")
    assert [m["key"] for m in dead["messages"]] == [f"bad-{run}"] and dead["messages"][0]["lane"] == "vendor-b"
    assert "E.164" in dead["messages"][0]["reason"]
    assert cli("dlq", "list", "--lane", "vendor-a")["messages"] == []
    assert by_lane(cli("status"))["vendor-b"]["dlq"]["visible"] == 1


def test_lane_mistakes_are_one_line_and_exit_2(stack: LocalStack, cli: Callable[..., Any]) -> None:
    # GIVEN the three-lane stack
    # WHEN a lane it does not have is named THEN one line names the lanes there are
    for argv in (["status"], ["drain"], ["dlq", "list"], ["dlq", "purge", "--yes"]):
        out = cli(*argv, "--lane", "vendor-z", code=2, as_json=False)
        assert out.strip().count("\n") == 0 and "vendor-z" in out and "ledger, vendor-a, vendor-b" in out
    # WHEN redrive or purge is given no lane THEN one line says to pick one, and nothing moves
    for argv in (["dlq", "redrive", "--all"], ["dlq", "purge", "--yes"]):
        out = cli(*argv, code=2, as_json=False)
        assert out.strip().count("\n") == 0 and "--lane" in out and "vendor-b" in out
    # WHEN `send` gets an item no lane takes THEN it is refused with the reason, exit 2
    out = cli("send", "--task", "notify.send", "--payload", '{"vendor": "c", "to": "+15550003", "text": "x"}',
              code=2, as_json=False)
    assert "no lane takes" in out
    # AND an item it routes lands in its lane's queue
    sent = cli("send", "--task", "notify.send", "--payload", '{"vendor": "a", "to": "+15550004", "text": "x"}')
    assert [row["lane"] for row in sent["items"]] == ["vendor-a"]
    assert by_lane(cli("status", "--lane", "vendor-a"))["vendor-a"]["queue"]["visible"] >= 1
