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

import pytest
from typer.testing import CliRunner

from sluice import aws
from sluice.cli import app
from sluice.local.env import ENDPOINT_ENV_KEYS
from sluice.local.stack import LocalStack
from sluice.settings import load_settings
from sluice.stage import LOCAL_ENV_FILE_VAR
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
    for key in ENDPOINT_ENV_KEYS:  # resolve_stage exports these; monkeypatch puts the old values back
        monkeypatch.setenv(key, stack.env[key])
    monkeypatch.setenv(LOCAL_ENV_FILE_VAR, str(stack.local_dir / "local.env"))

    def run(*args: str, code: int = 0) -> dict[str, Any]:
        result = CliRunner().invoke(app, [*args, "--stage", "local", "--json"])
        assert result.exit_code == code, result.output
        body: dict[str, Any] = json.loads(result.stdout) if code == 0 else {"output": result.output}
        return body

    yield run
    aws.reset_clients()


def invoice_rows(stack: LocalStack, key: str) -> int:
    return int(query(stack, "SELECT COUNT(*) FROM invoices WHERE item_key = %s", key)[0][0])


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
    assert all(invoice_rows(stack, k) == 0 for k in keys)

    # WHEN the data is fixed and the dead letters are redriven
    for ghost in ghosts:
        query(stack, "INSERT INTO customers (code, name) VALUES (%s, %s)", ghost, ghost)
    moved = cli("dlq", "redrive", "--all")
    assert {x["key"] for x in moved["redriven"]} >= set(keys) and not moved["failed"]

    # THEN each applies exactly once, and the DLQ and the work queue end empty
    eventually(lambda: cli("drain") and all(invoice_rows(stack, k) == 1 for k in keys), 60,
               "redriven items applied")
    status = eventually(lambda: (lambda s: s if s["dlq"]["visible"] + s["dlq"]["in_flight"] == 0
                                 and s["queue"]["visible"] + s["queue"]["in_flight"] == 0 else None)(
        cli("status")), 30, "empty queues")
    assert status["workers"]["cap"] == stack.settings.drain.max_parallel
    assert all(invoice_rows(stack, k) == 1 for k in keys)
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
    assert invoice_rows(stack, key) == 1


def test_send_refuses_an_invalid_item_and_enqueues_nothing(stack: LocalStack,
                                                           cli: Callable[..., dict[str, Any]]) -> None:
    # GIVEN an item whose payload breaks the task's schema
    key = f"OPS-{uuid.uuid4().hex[:8]}"
    # WHEN it is sent
    out = cli("send", "--task", "invoice.record", "--key", key, "--payload", '{"customer": "acme"}', code=2)
    # THEN the CLI names the fault, exits 2, and nothing reached the queue or the database
    assert "amount_cents" in out["output"] and "nothing was enqueued" in out["output"]
    assert invoice_rows(stack, key) == 0
