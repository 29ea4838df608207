"""The operator CLI against the running local stack: a DLQ incident end to end.

poison items -> `dlq list` shows their reasons -> `dlq redrive --dry-run` changes nothing ->
fix the data -> `dlq redrive` -> they apply exactly once and the DLQ is empty. Plus
`send`, `status` and `drain` on the same stack. The CLI runs in-process (typer's CliRunner)
and finds the stack through its local.env (SLUICE_LOCAL_ENV_FILE).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner

from sluice import aws
from sluice.aws import Queue
from sluice.enqueue import Enqueuer
from sluice.settings import load_settings
from sluice_tools.cli import app
from sluice_tools.local.env import EXPORTED_ENV_KEYS
from sluice_tools.local.stack import LocalStack
from sluice_tools.stage import LOCAL_ENV_FILE_VAR
from tests.helpers import drop_machine_database, eventually
from tests.helpers import stack_sql as query

pytestmark = pytest.mark.e2e

@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    name = f"sluice_ops_{uuid.uuid4().hex[:10]}"
    base = load_settings("local")
    settings = base.model_copy(update={
        "queue": base.queue.model_copy(update={"name": f"ops-{uuid.uuid4().hex[:8]}"}),
        "drain": base.drain.model_copy(update={"timeout_s": 6, "safety_margin_ms": 1000}),
        "worker": base.worker.model_copy(update={"timeout_s": 4}),
    })
    # No schedule: every drain here is `sluice drain`, so each step is the operator's own.
    stack = LocalStack(settings, database_url=f"mysql://root@127.0.0.1:3306/{name}", schedule=False,
                       local_dir=tmp_path_factory.mktemp("ops-stack"))
    stack.start()
    yield stack
    stack.stop()
    drop_machine_database(name)


@pytest.fixture
def cli(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, Any]]:
    """Run `sluice <args> --stage local --json` against the stack; the environment is restored after."""
    for key in EXPORTED_ENV_KEYS:  # resolve_stage exports these; monkeypatch puts the old values back
        if key in stack.env:
            monkeypatch.setenv(key, stack.env[key])
        else:
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv(LOCAL_ENV_FILE_VAR, str(stack.local_dir / "local.env"))

    def run(*args: str, code: int = 0) -> dict[str, Any]:
        result = CliRunner().invoke(app, [*args, "--stage", "local", "--json"])
        assert result.exit_code == code, result.output
        body: dict[str, Any] = json.loads(result.stdout) if code == 0 else {"output": result.output}
        return body

    yield run
    aws.reset_clients()


def applications(stack: LocalStack, key: str) -> int:
    """How many times the invoice of ``key`` was applied (its apply_count; 0 when never)."""
    return int(query(stack, "SELECT COALESCE(SUM(apply_count), 0) FROM invoices WHERE item_key = %s", key)[0][0])


def test_dlq_incident_end_to_end(stack: LocalStack, cli: Callable[..., dict[str, Any]],
                                 tmp_path: Path) -> None:
    # GIVEN invoices for two customers the database does not know yet, sent with `sluice send`
    run = uuid.uuid4().hex[:6]
    ghosts = [f"newco-{run}-{n}" for n in range(2)]
    keys = [f"OPS-{run}-{n}" for n in range(2)]
    items = tmp_path / "items.ndjson"
    items.write_text("".join(
        json.dumps({"task": "invoice.record", "key": k, "group": g,
                    "payload": {"customer": g, "amount_cents": 4200, "currency": "EUR"}}) + "\n"
        for k, g in zip(keys, ghosts, strict=True)))
    assert cli("send", "--file", str(items))["accepted"] == 2

    # WHEN `sluice drain` drains them, they end in the DLQ, and `dlq list` says why
    def listed() -> dict[str, Any]:
        cli("drain")
        rows = {m["key"]: m for m in cli("dlq", "list")["messages"]}
        return rows if set(keys) <= set(rows) else {}

    rows = eventually(listed, 60, "both poison items in the DLQ")
    for key, ghost in zip(keys, ghosts, strict=True):
        assert rows[key]["reason"] == f"unknown customer {ghost!r}"
        assert rows[key]["group"] == ghost and rows[key]["task"] == "invoice.record"

    # AND a dry run moves nothing
    dry = cli("dlq", "redrive", "--all", "--dry-run")
    assert {x["key"] for x in dry["would_redrive"]} >= set(keys)
    assert set(keys) <= {m["key"] for m in cli("dlq", "list")["messages"]}
    assert all(applications(stack, k) == 0 for k in keys)

    # WHEN the data is fixed and the dead letters are redriven
    for ghost in ghosts:
        query(stack, "INSERT INTO customers (code, name) VALUES (%s, %s)", ghost, ghost)
    moved = cli("dlq", "redrive", "--all")
    assert {x["key"] for x in moved["redriven"]} >= set(keys) and not moved["failed"]

    # THEN each applies exactly once, and the DLQ and the work queue end empty
    eventually(lambda: cli("drain") and all(applications(stack, k) == 1 for k in keys), 60,
               "redriven items applied")
    status = eventually(lambda: (lambda s: s if s["dlq"]["visible"] + s["dlq"]["in_flight"] == 0
                                 and s["queue"]["visible"] + s["queue"]["in_flight"] == 0 else None)(
        cli("status")), 30, "empty queues")
    assert status["workers"]["cap"] == stack.settings.drain.max_parallel
    assert all(applications(stack, k) == 1 for k in keys)
    ledger = query(stack, "SELECT COUNT(*) FROM processed_messages WHERE item_key IN (%s, %s)", *keys)
    assert ledger[0][0] == 2


def test_send_one_item_then_drain_now_reports(stack: LocalStack, cli: Callable[..., dict[str, Any]]) -> None:
    # GIVEN one valid invoice sent with `sluice send`
    key = f"OPS-{uuid.uuid4().hex[:8]}"
    sent = cli("send", "--task", "invoice.record", "--key", key,
               "--payload", '{"customer": "acme", "amount_cents": 1000, "currency": "EUR"}')
    assert sent["accepted"] == 1 and sent["items"][0]["key"] == key
    # WHEN `sluice drain` invokes the consumer now
    report = cli("drain")
    # THEN it prints the drain report, and the item is applied exactly once
    assert {"received", "succeeded", "dead_lettered", "stopped_because"} <= set(report["report"])
    assert report["report"]["succeeded"] >= 1
    assert applications(stack, key) == 1


def test_send_refuses_an_invalid_item_and_enqueues_nothing(stack: LocalStack,
                                                           cli: Callable[..., dict[str, Any]]) -> None:
    # GIVEN an item whose payload breaks the task's schema
    key = f"OPS-{uuid.uuid4().hex[:8]}"
    # WHEN it is sent
    out = cli("send", "--task", "invoice.record", "--key", key, "--payload", '{"customer": "acme"}', code=2)
    # THEN the CLI names the fault, exits 2, and nothing reached the queue or the database
    assert "amount_cents" in out["output"] and "nothing was enqueued" in out["output"]
    assert applications(stack, key) == 0


def stack_sqs(stack: LocalStack) -> Any:
    """A boto3 SQS client on the stack's SQS server, of the test's own (not the CLI's cached one)."""
    return boto3.client("sqs", endpoint_url=stack.env["AWS_ENDPOINT_URL_SQS"],
                        region_name=stack.env["AWS_DEFAULT_REGION"],
                        aws_access_key_id=stack.env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=stack.env["AWS_SECRET_ACCESS_KEY"])


def empty_queues(cli: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """Drain until `sluice status` shows both queues empty; returns that status."""
    def empty() -> dict[str, Any] | None:
        status = cli("status")
        if sum(status["queue"].values()) + sum(status["dlq"].values()) == 0:
            return status
        cli("drain")
        return None

    status = eventually(empty, 60, "both queues empty before the test")
    assert status is not None
    return status


def write_items(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def acme_invoice(key: str, group: str) -> dict[str, Any]:
    return {"task": "invoice.record", "key": key, "group": group,
            "payload": {"customer": "acme", "amount_cents": 1500, "currency": "EUR"}}


def test_status_counts_visible_in_flight_delayed_and_the_dlq(
        stack: LocalStack, cli: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    # GIVEN both queues empty
    empty_queues(cli)
    sqs = stack_sqs(stack)
    queue_url, dlq_url = stack.env["SLUICE_QUEUE_URL"], stack.env["SLUICE_DLQ_URL"]
    run = uuid.uuid4().hex[:6]
    try:
        # AND three items sent with `sluice send`, each in a group of its own, one of them received
        # (in flight for 5 minutes)
        now = [acme_invoice(f"ST-{run}-{n}", f"st-{run}-{n}") for n in range(3)]
        assert cli("send", "--file", str(write_items(tmp_path / "now.ndjson", now)))["accepted"] == 3
        taken = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1, VisibilityTimeout=300)
        assert len(taken["Messages"]) == 1
        # AND two more sent while the queue delays every new message by 15 minutes
        sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"DelaySeconds": "900"})
        later = [acme_invoice(f"ST-{run}-late-{n}", f"st-{run}-late-{n}") for n in range(2)]
        assert cli("send", "--file", str(write_items(tmp_path / "later.ndjson", later)))["accepted"] == 2
        sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"DelaySeconds": "0"})
        # AND two items in the DLQ (as SQS's own redrive leaves them: envelope, no worker attributes)
        dead = [acme_invoice(f"ST-{run}-dead-{n}", f"st-{run}-dead-{n}") for n in range(2)]
        assert Enqueuer(Queue(dlq_url, sqs=sqs)).enqueue({"items": dead}).status_code == 202
        # WHEN `sluice status` runs, as JSON and as text
        status = cli("status")
        text = CliRunner().invoke(app, ["status", "--stage", "local"])
        # THEN it counts each state apart, for the work queue and for the DLQ
        assert status["queue"] == {"visible": 2, "in_flight": 1, "delayed": 2}
        assert status["dlq"] == {"visible": 2, "in_flight": 0, "delayed": 0}
        # AND the DLQ's oldest age comes from a peek, which left both dead letters visible
        assert status["dlq_oldest_age_s"] is not None and 0 <= status["dlq_oldest_age_s"] < 600
        assert status["oldest_age_s"] is None and status["workers"]["cap"] == stack.settings.drain.max_parallel
        assert text.exit_code == 0, text.output
        rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:5]]
                for line in text.output.splitlines() if line.count("│") >= 5}
        assert rows["work"] == ["2", "1", "2"] and rows["DLQ"] == ["2", "0", "0"], text.output
        dlq_attributes = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["All"])["Attributes"]
        assert dlq_attributes["ApproximateNumberOfMessagesNotVisible"] == "0"
    finally:
        # The stack is shared by this module: leave both queues as found.
        sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"DelaySeconds": "0"})
        sqs.purge_queue(QueueUrl=queue_url)
        sqs.purge_queue(QueueUrl=dlq_url)


def test_status_shows_the_last_drain_the_consumer_logged(
        stack: LocalStack, cli: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    # GIVEN both queues empty, then two invoices sent with `sluice send`, and `sluice drain` run until both applied
    empty_queues(cli)
    run = uuid.uuid4().hex[:6]
    keys = [f"LD-{run}-{n}" for n in range(2)]
    items = [acme_invoice(k, f"ld-{run}-{n}") for n, k in enumerate(keys)]
    assert cli("send", "--file", str(write_items(tmp_path / "items.ndjson", items)))["accepted"] == 2
    reports: list[dict[str, Any]] = []

    def drain_applied() -> bool:
        reports.append(cli("drain")["report"])
        return all(applications(stack, k) == 1 for k in keys)

    eventually(drain_applied, 60, "both invoices applied")
    assert sum(r["succeeded"] for r in reports) >= 2
    # WHEN `sluice status` runs
    # THEN its last drain is the drain just run, as the consumer logged it, with the time it finished
    def last_drain() -> dict[str, Any] | None:
        drains = cli("status")["last_drains"]
        return drains[-1] if drains and {k: v for k, v in drains[-1].items() if k != "at"} == reports[-1] else None

    latest = eventually(last_drain, 30, f"status showing the last drain report {reports[-1]}")
    assert latest is not None and latest["at"]
    # AND the text shows a "last drains" table with that drain's counts
    text = CliRunner().invoke(app, ["status", "--stage", "local"])
    assert text.exit_code == 0 and "last drains" in text.output, text.output
    assert "Traceback" not in text.output


def test_send_a_file_of_several_requests_enqueues_every_item(
        stack: LocalStack, cli: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    # GIVEN both queues empty
    empty_queues(cli)
    sqs = stack_sqs(stack)
    queue_url = stack.env["SLUICE_QUEUE_URL"]
    # AND an NDJSON file of more items than one request takes: the CLI sends it in chunks and
    # draws a progress bar
    per_request = stack.settings.enqueuer.max_items
    count = 2 * per_request + 37
    run = uuid.uuid4().hex[:6]
    items = [acme_invoice(f"BULK-{run}-{n:05d}", f"bulk-{run}-{n % 16}") for n in range(count)]
    path = write_items(tmp_path / "bulk.ndjson", items)
    try:
        # WHEN `sluice send --file` sends it (as text, so the progress bar is on)
        result = CliRunner().invoke(app, ["send", "--file", str(path), "--stage", "local"])
        # THEN it says every item was enqueued, without a traceback
        assert result.exit_code == 0, result.output
        assert f"enqueued {count:,} of {count:,} item(s)" in result.output, result.output
        assert "not enqueued" not in result.output and "Traceback" not in result.output
        # AND the work queue holds exactly that many messages
        status = cli("status")
        assert status["queue"] == {"visible": count, "in_flight": 0, "delayed": 0}
    finally:
        # Not drained: the module's stack is shared, and the point here is the enqueue.
        sqs.purge_queue(QueueUrl=queue_url)
