"""The whole local stack end to end, once with fauxqs and once with moto as the SQS server:
POST over real HTTP, let the schedule drain, and check the database and the queues."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from sluice.settings import Settings, load_settings
from sluice_tools.local.stack import LocalStack
from tests.helpers import drop_machine_database, eventually, post
from tests.helpers import stack_sql as query

pytestmark = pytest.mark.e2e


def small_settings() -> Settings:
    """config/local.yml with test-sized timings; workers capped BELOW the parallelism asked for,
    so the consumer meets 429s, and a short worker timeout so a slow item times out quickly."""
    base = load_settings("local")
    return base.model_copy(update={
        # A low redrive threshold: a 429 must not cost a receive (the consumer holds and retries
        # the batch), or valid items would reach the DLQ here without a reason.
        "queue": base.queue.model_copy(update={"visibility_s": 12, "max_receive_count": 3}),
        "drain": base.drain.model_copy(update={"timeout_s": 10, "safety_margin_ms": 1000, "max_parallel": 4}),
        # A worker keeps ~3 s in reserve to hand a batch back, so 6 s leaves it 3 s of work.
        "worker": base.worker.model_copy(update={"timeout_s": 6, "batch_size": 2, "reserved_concurrency": 2}),
    })


@pytest.fixture(scope="module", params=["fauxqs", "moto"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # A scratch database of its own on the machine's MariaDB, so runs never share state.
    name = f"sluice_e2e_{uuid.uuid4().hex[:10]}"
    local_dir = tmp_path_factory.mktemp(f"stack-{request.param}")
    settings = small_settings()
    settings = settings.model_copy(update={
        "queue": settings.queue.model_copy(update={"name": f"e2e-{uuid.uuid4().hex[:8]}"})})
    stack = LocalStack(settings, sqs=request.param, database_url=f"mysql://root@127.0.0.1:3306/{name}",
                       tick_s=0.5, local_dir=local_dir,
                       extra_function_env={"SLUICE_EXTRA_TASK_MODULES": "tests.e2e.slow_task"})
    stack.start()
    yield stack
    stack.stop()
    drop_machine_database(name)


def diagnosis(stack: LocalStack) -> str:
    """What the stack did, for a failure message: schedule, functions, last log lines."""
    status = stack.status()
    schedule = {k: v for k, v in status["schedule"].items() if k != "recent_reports"}
    counters = ("invocations", "errors", "throttles", "timeouts")
    functions = {k: {n: v[n] for n in counters} for k, v in status["functions"].items()}
    lines = [f"schedule: {json.dumps(schedule)}", f"functions: {json.dumps(functions)}"]
    lines.append(f"database: {query(stack, 'SELECT COUNT(*) FROM invoices')} invoices, "
                 f"{query(stack, 'SELECT item_key FROM invoices ORDER BY id DESC LIMIT 3')} latest")
    sqs = boto3.client("sqs", endpoint_url=stack.sqs_url, region_name="us-east-1",
                       aws_access_key_id="local", aws_secret_access_key="local")
    assert stack.queues is not None
    attrs = sqs.get_queue_attributes(QueueUrl=stack.queues.url, AttributeNames=["All"])["Attributes"]
    lines.append(f"queue: {attrs}")
    for log in sorted(stack.logs_dir.glob("*.log")):
        lines.append(f"--- {log.name}")
        text = log.read_text(errors="replace").splitlines()
        noteworthy = [line for line in text if '"level":"WARNING"' in line or '"level":"ERROR"' in line]
        lines += [line[:400] for line in noteworthy[-5:]]
    return "\n".join(lines)


def invoices(stack: LocalStack, keys: list[str]) -> dict[str, int]:
    """How many times each of ``keys`` was applied: the rows' apply_count summed (a key applied
    twice keeps one row, the UNIQUE key sees to that, but its apply_count reads 2)."""
    marks = ",".join(["%s"] * len(keys))
    sql = f"SELECT item_key, SUM(apply_count) FROM invoices WHERE item_key IN ({marks}) GROUP BY item_key"
    rows = query(stack, sql, *keys)
    return {k: int(n) for k, n in rows}


def dlq_messages(stack: LocalStack) -> list[dict[str, Any]]:
    sqs = boto3.client("sqs", endpoint_url=stack.sqs_url, region_name="us-east-1",
                       aws_access_key_id="local", aws_secret_access_key="local")
    assert stack.queues is not None
    reply = sqs.receive_message(QueueUrl=stack.queues.dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=0,
                                MessageAttributeNames=["All"], WaitTimeSeconds=0)
    messages: list[dict[str, Any]] = reply.get("Messages", [])
    return messages


def invoice(key: str, customer: str = "acme", group: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"task": "invoice.record", "key": key,
                            "payload": {"customer": customer, "amount_cents": 1250, "currency": "EUR"}}
    if group:
        item["group"] = group
    return item


def test_valid_items_applied_once_and_poison_dead_lettered(stack: LocalStack) -> None:
    # GIVEN a burst of valid invoices (one sent twice) and one for an unknown customer
    run = uuid.uuid4().hex[:6]
    keys = [f"INV-{run}-{i:03d}" for i in range(24)]
    poison = f"INV-{run}-poison"
    status, body = post(stack, {"items": [invoice(k) for k in keys] + [invoice(poison, customer="nobody")]})
    assert status == 202, body
    assert body["accepted"] == 25
    assert post(stack, {"items": [invoice(keys[0])]})[0] == 202  # a client retry: same key
    # WHEN the schedule drains the queue
    def all_applied() -> dict[str, int] | None:
        found = invoices(stack, keys)
        return found if len(found) == len(keys) else None

    try:
        applied = eventually(all_applied, 90, "every valid invoice in the database")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnosis(stack)}") from None
    # THEN each valid item is applied exactly once, the poison one never
    assert set(applied.values()) == {1}
    assert invoices(stack, [poison]) == {}
    # AND the poison item sits in the DLQ with its reason
    dead = eventually(lambda: [m for m in dlq_messages(stack) if poison in m["Body"]], 60,
                      "the poison item in the DLQ")
    reason = dead[0]["MessageAttributes"]["sluice_error"]["StringValue"]
    assert "unknown customer" in reason and "nobody" in reason
    # AND the worker cap was held even though the consumer asked for more: the 429 path ran
    stats = stack.status()["functions"][stack.function_name("worker")]
    assert stats["peak_busy"] <= 2
    assert stats["throttles"] > 0


def test_invalid_batch_is_400_and_enqueues_nothing(stack: LocalStack) -> None:
    # GIVEN a batch with one good item, one unknown task and one bad payload
    run = uuid.uuid4().hex[:6]
    good, group = f"INV-{run}-good", f"refused-{run}"
    negative = {"customer": "acme", "amount_cents": -1, "currency": "EUR"}
    items = [invoice(good, group=group), {"task": "no.such", "payload": {}},
             {"task": "invoice.record", "payload": negative}]
    # WHEN it is POSTed
    status, body = post(stack, {"items": items})
    # THEN it is refused as a whole, each bad item named by index
    assert status == 400, body
    text = json.dumps(body)
    assert "no.such" in text and "amount_cents" in text
    # AND once a later valid item of the SAME group has drained, the good item of the refused
    # batch is still absent: had it been enqueued, FIFO order would have applied it first
    marker = f"INV-{run}-after"
    assert post(stack, {"items": [invoice(marker, group=group)]})[0] == 202
    eventually(lambda: invoices(stack, [marker]), 60, "the later item applied")
    assert invoices(stack, [good]) == {}


def test_worker_timeout_redelivers_and_applies_once(stack: LocalStack) -> None:
    # GIVEN an item whose first attempt outlasts the worker timeout (6 s) mid-transaction
    run = uuid.uuid4().hex[:6]
    key = f"SLOW-{run}"
    item = {"task": "test.slow_invoice", "key": key, "group": f"slow-{run}",
            "payload": {"customer": "acme", "amount_cents": 700, "first_sleep_s": 9}}
    def worker_timeouts() -> int:
        return int(stack.status()["functions"][stack.function_name("worker")]["timeouts"])

    timeouts_before = worker_timeouts()
    assert post(stack, {"items": [item]})[0] == 202
    # WHEN the schedule drains: the first worker is killed at its timeout
    eventually(lambda: worker_timeouts() > timeouts_before, 60, "a worker timeout")
    # THEN the message comes back after its visibility timeout and is applied exactly once
    eventually(lambda: invoices(stack, [key]), 90, "the slow item applied after redelivery")
    assert invoices(stack, [key]) == {key: 1}
    rows = query(stack, "SELECT COUNT(*), MAX(apply_count) FROM invoices WHERE item_key = %s", key)
    assert rows == [(1, 1)]  # one row, applied once: the killed attempt's insert was rolled back
