"""DLQ list / redrive against real services: moto's SQS server and the machine's MariaDB.

The dead letters are made by the real worker logic (sluice.work) on poison invoices
(unknown customer), so the attributes `dlq list` reads are exactly the ones it writes. The
CLI is driven through a local.env that points at the moto server (SLUICE_LOCAL_ENV_FILE).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sluice import aws
from sluice.aws import Queue
from sluice.db import Database
from sluice.enqueue import Enqueuer
from sluice.work import work
from sluice_tools.chaos.sqs_fault_proxy import FaultPlan, SqsFaultProxy
from sluice_tools.cli import app
from sluice_tools.ops import dlq as dead_letters
from sluice_tools.stage import LOCAL_ENV_FILE_VAR
from tests.conftest import FifoQueues
from tests.functional.conftest import point_cli_at
from tests.helpers import sql
from worker.tasks import invoices

pytestmark = pytest.mark.functional


def run_worker(queues: FifoQueues, db: Database, deadline_s: float = 30) -> list[str]:
    """Receive and work until the source queue holds nothing; returns the outcomes."""
    queue, dlq = Queue(queues.url), Queue(queues.dlq_url)
    outcomes: list[str] = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        messages = queue.receive(max_messages=10, wait_s=0)
        if not messages:
            if dead_letters.depth(queue) == 0:
                return outcomes
            continue
        event = {"Records": [m.to_sqs_record(queues.arn) for m in messages]}
        reply = work(event, db=db, queue=queue, dlq=dlq, max_receive_count=3, remaining_ms=lambda: 60_000)
        outcomes += [r["outcome"] for r in reply["results"]]
    raise AssertionError(f"source queue not drained within {deadline_s} s; outcomes so far {outcomes}")


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(url=database_url)
    yield database
    database.close()


@pytest.fixture
def poisoned(fifo_queues: FifoQueues, db: Database) -> dict[str, str]:
    """Two poison invoices (each for its own unknown customer) dead-lettered by the worker, one good."""
    tag = uuid.uuid4().hex[:8]
    keys = {"ghost-a": f"INV-{tag}-a", "ghost-b": f"INV-{tag}-b", "acme": f"INV-{tag}-ok"}
    customers = {"ghost-a": f"ghost-a-{tag}", "ghost-b": f"ghost-b-{tag}", "acme": "acme"}
    items = [{"task": "invoice.record", "key": keys[c], "group": customers[c],
              "payload": {"customer": customers[c], "amount_cents": 1250, "currency": "EUR"}} for c in keys]
    assert Enqueuer(Queue(fifo_queues.url)).enqueue({"items": items}).status_code == 202
    outcomes = run_worker(fifo_queues, db)
    assert sorted(outcomes) == ["dead_lettered", "dead_lettered", "done"]
    return {"tag": tag, **{f"key_{c}": k for c, k in keys.items()}, **{f"customer_{c}": v for c, v in
                                                                       customers.items()}}


def cli_json(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, [*args, "--stage", "local", "--json"])
    assert result.exit_code == 0, result.output
    body: dict[str, Any] = json.loads(result.stdout)
    return body


def test_dlq_list_shows_reasons_and_releases_the_messages(poisoned: dict[str, str], local_env: Path,
                                                          fifo_queues: FifoQueues) -> None:
    # GIVEN two invoices dead-lettered by the worker for unknown customers
    # WHEN `sluice dlq list --json` runs
    body = cli_json("dlq", "list")
    # THEN both are listed with the worker's reason, their task, key, group and attempts
    rows = {m["key"]: m for m in body["messages"]}
    assert set(rows) == {poisoned["key_ghost-a"], poisoned["key_ghost-b"]}
    for who in ("ghost-a", "ghost-b"):
        row = rows[poisoned[f"key_{who}"]]
        assert "unknown customer" in row["reason"] and row["error_type"] == "business"
        assert row["task"] == "invoice.record" and row["group"] == poisoned[f"customer_{who}"]
        assert row["attempts"] == 1 and row["age_s"] is not None
    # AND listing consumed nothing: both are visible again at once
    attributes = fifo_queues.sqs.get_queue_attributes(QueueUrl=fifo_queues.dlq_url, AttributeNames=["All"])
    assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "2"
    assert attributes["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_redrive_dry_run_changes_nothing(poisoned: dict[str, str], local_env: Path,
                                         fifo_queues: FifoQueues) -> None:
    # GIVEN two dead letters
    # WHEN `sluice dlq redrive --all --dry-run` runs
    body = cli_json("dlq", "redrive", "--all", "--dry-run")
    # THEN it names both and moves neither: the DLQ still holds 2 (all visible), the source none
    assert body["count"] == 2 and body["dry_run"] is True
    assert dead_letters.depth(Queue(fifo_queues.dlq_url)) == 2
    assert dead_letters.depth(Queue(fifo_queues.url)) == 0
    assert len(dead_letters.list_dead_letters(Queue(fifo_queues.dlq_url)).letters) == 2


def test_fix_the_data_then_redrive_applies_each_item_exactly_once(
        poisoned: dict[str, str], local_env: Path, fifo_queues: FifoQueues, db: Database,
        database_url: str) -> None:
    # GIVEN two dead letters and no invoice or ledger row for them
    poison_keys = [poisoned["key_ghost-a"], poisoned["key_ghost-b"]]
    assert all(invoices.applications(db, k) == 0 for k in poison_keys)
    # AND the data is fixed: the missing customers now exist
    for who in ("ghost-a", "ghost-b"):
        code = poisoned[f"customer_{who}"]
        sql(database_url, "INSERT INTO customers (code, name) VALUES (%s, %s)", code, who)
    # WHEN one is redriven by key, then the rest with --all, and the worker runs after each
    one = cli_json("dlq", "redrive", "--key", poison_keys[0])
    assert one["count"] == 1
    assert run_worker(fifo_queues, db) == ["done"]
    rest = cli_json("dlq", "redrive", "--all")
    assert rest["count"] == 1
    assert run_worker(fifo_queues, db) == ["done"]
    # THEN each applied exactly once (one invoice row, one ledger row) and the DLQ is empty
    for key in poison_keys:
        assert invoices.applications(db, key) == 1
        ledger = sql(database_url, "SELECT COUNT(*) FROM processed_messages WHERE item_key = %s", key)
        assert ledger[0][0] == 1
    assert dead_letters.depth(Queue(fifo_queues.dlq_url)) == 0
    # AND redriving again finds nothing to move
    assert cli_json("dlq", "redrive", "--all")["count"] == 0


def test_redrive_keeps_the_group_and_uses_a_fresh_dedup_id(poisoned: dict[str, str], local_env: Path,
                                                           fifo_queues: FifoQueues) -> None:
    # GIVEN a dead letter
    key = poisoned["key_ghost-a"]
    # WHEN it is redriven
    assert cli_json("dlq", "redrive", "--key", key)["count"] == 1
    # THEN the source queue holds it in its original group with a dedup id unlike the original
    reply = fifo_queues.sqs.receive_message(QueueUrl=fifo_queues.url, MaxNumberOfMessages=10,
                                            MessageSystemAttributeNames=["All"], VisibilityTimeout=0)
    [message] = reply["Messages"]
    assert message["Attributes"]["MessageGroupId"] == poisoned["customer_ghost-a"]
    assert json.loads(message["Body"])["key"] == key
    from sluice.envelope import dedup_id

    assert message["Attributes"]["MessageDeduplicationId"] != dedup_id("invoice.record", key)


def test_redrive_without_a_selection_and_purge_without_yes_are_refused(local_env: Path) -> None:
    # GIVEN a reachable stage
    runner = CliRunner()
    # WHEN redrive names nothing to move, or purge runs unattended without --yes
    no_selection = runner.invoke(app, ["dlq", "redrive", "--stage", "local"])
    no_yes = runner.invoke(app, ["dlq", "purge", "--stage", "local"], input="")
    # THEN both stop with a usage error and a reason, no traceback
    assert no_selection.exit_code == 2 and "--all, --key K or --since T" in no_selection.output
    assert no_yes.exit_code == 2 and "--yes" in no_yes.output
    assert "Traceback" not in no_selection.output + no_yes.output


def test_purge_with_yes_empties_the_dlq(poisoned: dict[str, str], local_env: Path,
                                        fifo_queues: FifoQueues) -> None:
    # GIVEN two dead letters
    # WHEN `sluice dlq purge --yes` runs
    body = cli_json("dlq", "purge", "--yes")
    # THEN it reports them and the DLQ is empty
    assert body["purged"] == 2
    assert dead_letters.depth(Queue(fifo_queues.dlq_url)) == 0


def test_a_stopped_local_stack_is_a_clear_unavailable_error(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN no local.env
    monkeypatch.setenv(LOCAL_ENV_FILE_VAR, str(tmp_path / "absent.env"))
    # WHEN a command needs the local stack
    result = CliRunner().invoke(app, ["dlq", "list", "--stage", "local"])
    # THEN it exits 3 telling how to start it
    assert result.exit_code == 3
    assert "sluice local up" in result.output


def test_redrive_says_when_dead_letters_are_hidden_behind_their_group(
        fifo_queues: FifoQueues, db: Database, local_env: Path) -> None:
    # GIVEN 11 dead letters of ONE FIFO group: a receive returns at most 10, and the 11th cannot be
    # received while those ahead of it in the group are held (on every SQS, whatever it returns per group)
    tag = uuid.uuid4().hex[:8]
    customer = f"ghost-{tag}"
    keys = [f"INV-{tag}-{n:02d}" for n in range(11)]
    items = [{"task": "invoice.record", "key": k, "group": customer,
              "payload": {"customer": customer, "amount_cents": 100, "currency": "EUR"}} for k in keys]
    assert Enqueuer(Queue(fifo_queues.url)).enqueue({"items": items}).status_code == 202
    assert run_worker(fifo_queues, db) == ["dead_lettered"] * 11
    runner = CliRunner()
    # WHEN a dry run of --all and a redrive of the last key run
    dry = runner.invoke(app, ["dlq", "redrive", "--all", "--dry-run", "--stage", "local", "--json"])
    by_key = runner.invoke(app, ["dlq", "redrive", "--key", keys[-1], "--stage", "local"])
    # THEN the dry run counts the hidden one instead of implying the DLQ holds only what it saw
    assert dry.exit_code == 0, dry.output
    body = json.loads(dry.stdout)
    assert body["count"] == 10 and body["not_seen"] == 1
    # AND in text the dry run says a real redrive reaches them, not to pass the --all it was given
    dry_text = runner.invoke(app, ["dlq", "redrive", "--all", "--dry-run", "--stage", "local"])
    assert dry_text.exit_code == 0, dry_text.output
    assert "1 more dead letter(s) not examined" in dry_text.output
    assert "a real redrive reaches them" in dry_text.output and "or --all" not in dry_text.output
    # AND the redrive of the hidden key is a problem found (exit 1) that says why, not a silent 0
    assert by_key.exit_code == 1, by_key.output
    assert "behind" in by_key.output and "Traceback" not in by_key.output
    # AND nothing moved
    assert dead_letters.depth(Queue(fifo_queues.dlq_url)) == 11
    assert dead_letters.depth(Queue(fifo_queues.url)) == 0


def dead_letter_invoices(queues: FifoQueues, db: Database, count: int) -> list[str]:
    """``count`` poison invoices, each for an unknown customer of its own (its own FIFO group),
    dead-lettered by the real worker; returns their keys."""
    tag = uuid.uuid4().hex[:8]
    keys = [f"INV-{tag}-{n}" for n in range(count)]
    items = [{"task": "invoice.record", "key": k, "group": f"ghost-{tag}-{n}",
              "payload": {"customer": f"ghost-{tag}-{n}", "amount_cents": 700, "currency": "EUR"}}
             for n, k in enumerate(keys)]
    assert Enqueuer(Queue(queues.url)).enqueue({"items": items}).status_code == 202
    assert run_worker(queues, db) == ["dead_lettered"] * count
    return keys


@pytest.fixture
def send_fails(fifo_queues: FifoQueues, moto_aws: str, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[SqsFaultProxy]:
    """The CLI reaches SQS through a fault proxy on which every SendMessageBatch fails with a 500
    before it reaches the server; every other call (receive, delete, release) passes through."""
    plan = FaultPlan(rate=1.0, operations=("SendMessageBatch",), kinds=("server_error",),
                     after_forward_share=0.0)
    with SqsFaultProxy(moto_aws, plan, seed=3) as proxy:
        point_cli_at(monkeypatch, tmp_path / "local.env", proxy.url, fifo_queues)
        yield proxy
    # The CLI exported the proxy's URL into this process: point every client at moto again.
    os.environ["AWS_ENDPOINT_URL"] = moto_aws
    aws.reset_clients()


def test_redrive_keeps_the_dead_letter_when_the_re_send_fails(
        fifo_queues: FifoQueues, db: Database, send_fails: SqsFaultProxy) -> None:
    # GIVEN two dead letters, and a work queue whose SendMessageBatch fails (after botocore's retries)
    keys = dead_letter_invoices(fifo_queues, db, 2)
    # WHEN `sluice dlq redrive --all` runs
    result = CliRunner().invoke(app, ["dlq", "redrive", "--all", "--stage", "local"])
    # THEN it exits 1, names each item it could not move and why, and shows no traceback
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "redrove 0 message(s)" in text and "Traceback" not in result.output
    for key in keys:
        assert f"failed invoice.record {key}: SQS send_message_batch" in text
    assert "InternalFailure" in text
    # AND the re-sends really were tried and failed, none reached the server
    assert send_fails.counts["SendMessageBatch:server_error:before"] >= 2
    assert send_fails.counts["SendMessageBatch:forwarded"] == 0
    # AND both dead letters are still in the DLQ, visible again at once; the work queue got nothing
    dlq_attributes = fifo_queues.sqs.get_queue_attributes(QueueUrl=fifo_queues.dlq_url,
                                                          AttributeNames=["All"])["Attributes"]
    assert (dlq_attributes["ApproximateNumberOfMessages"],
            dlq_attributes["ApproximateNumberOfMessagesNotVisible"]) == ("2", "0")
    listed = dead_letters.list_dead_letters(Queue(fifo_queues.dlq_url, sqs=fifo_queues.sqs))
    assert sorted(x.key for x in listed.letters) == sorted(keys)
    assert dead_letters.depth(Queue(fifo_queues.url, sqs=fifo_queues.sqs)) == 0


def test_dlq_list_limit_shows_at_most_n_and_counts_the_rest(
        fifo_queues: FifoQueues, db: Database, local_env: Path) -> None:
    # GIVEN five dead letters, each in a FIFO group of its own
    keys = dead_letter_invoices(fifo_queues, db, 5)
    runner = CliRunner()
    # WHEN `sluice dlq list --limit 3` runs, as JSON and as text
    as_json = runner.invoke(app, ["dlq", "list", "--limit", "3", "--stage", "local", "--json"])
    as_text = runner.invoke(app, ["dlq", "list", "--limit", "3", "--stage", "local"])
    # THEN exactly three of them are shown and the other two are counted as not shown
    assert as_json.exit_code == 0, as_json.output
    body = json.loads(as_json.stdout)
    assert (body["depth"], body["shown"], body["not_shown"]) == (5, 3, 2)
    assert len(body["messages"]) == 3 and {m["key"] for m in body["messages"]} <= set(keys)
    assert as_text.exit_code == 0, as_text.output
    text = " ".join(as_text.output.split())
    assert "3 shown of about 5" in text and "2 more not shown" in text
    # AND listing released what it showed: all five are visible again
    attributes = fifo_queues.sqs.get_queue_attributes(QueueUrl=fifo_queues.dlq_url,
                                                      AttributeNames=["All"])["Attributes"]
    assert (attributes["ApproximateNumberOfMessages"], attributes["ApproximateNumberOfMessagesNotVisible"]) == (
        "5", "0")


def backdate_dead_letter(queues: FifoQueues, key: str, hours: float) -> None:
    """Put the worker's dead letter of ``key`` back into the DLQ as if it had failed ``hours`` ago:
    same body, group and worker attributes, only ``sluice_failed_at`` moved back."""
    reply = queues.sqs.receive_message(QueueUrl=queues.dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=30,
                                       MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"])
    [message] = [m for m in reply["Messages"] if json.loads(m["Body"])["key"] == key]
    others = [m["ReceiptHandle"] for m in reply["Messages"] if m is not message]
    attributes = dict(message["MessageAttributes"])
    failed_at = datetime.now(UTC) - timedelta(hours=hours)
    attributes["sluice_failed_at"] = {"DataType": "String",
                                      "StringValue": failed_at.isoformat(timespec="milliseconds")}
    queues.sqs.send_message(QueueUrl=queues.dlq_url, MessageBody=message["Body"],
                            MessageGroupId=message["Attributes"]["MessageGroupId"],
                            MessageDeduplicationId=f"backdated-{uuid.uuid4().hex}", MessageAttributes=attributes)
    queues.sqs.delete_message(QueueUrl=queues.dlq_url, ReceiptHandle=message["ReceiptHandle"])
    for handle in others:
        queues.sqs.change_message_visibility(QueueUrl=queues.dlq_url, ReceiptHandle=handle, VisibilityTimeout=0)


def test_redrive_since_selects_by_the_time_of_dead_lettering(
        fifo_queues: FifoQueues, db: Database, local_env: Path) -> None:
    # GIVEN three dead letters: two just now, one (same worker attributes) dead-lettered 3 hours ago
    fresh_a, fresh_b, old = dead_letter_invoices(fifo_queues, db, 3)
    backdate_dead_letter(fifo_queues, old, hours=3)
    listed = dead_letters.list_dead_letters(Queue(fifo_queues.dlq_url)).letters
    assert {x.key for x in listed} == {fresh_a, fresh_b, old}
    # WHEN --since is a moment still to come
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat(timespec="seconds")
    none = cli_json("dlq", "redrive", "--since", future)
    # THEN it selects none of them and moves nothing
    assert (none["count"], none["skipped"]) == (0, 3)
    assert dead_letters.depth(Queue(fifo_queues.dlq_url)) == 3
    assert dead_letters.depth(Queue(fifo_queues.url)) == 0
    # WHEN --since reaches back 4 hours, as a dry run
    wide = cli_json("dlq", "redrive", "--since", "4h", "--dry-run")
    # THEN the old one is included
    assert {x["key"] for x in wide["would_redrive"]} == {fresh_a, fresh_b, old}
    # WHEN `sluice dlq redrive --since 1h` runs
    moved = cli_json("dlq", "redrive", "--since", "1h")
    # THEN exactly the two fresh ones move to the work queue; the 3-hour-old one stays in the DLQ
    assert {x["key"] for x in moved["redriven"]} == {fresh_a, fresh_b} and moved["skipped"] == 1
    reply = fifo_queues.sqs.receive_message(QueueUrl=fifo_queues.url, MaxNumberOfMessages=10,
                                            VisibilityTimeout=0)
    assert sorted(json.loads(m["Body"])["key"] for m in reply["Messages"]) == sorted([fresh_a, fresh_b])
    assert [x.key for x in dead_letters.list_dead_letters(Queue(fifo_queues.dlq_url)).letters] == [old]
