"""Issue 7's scenarios: break the running system on purpose, then count.

Each scenario enqueues a known set (valid + poison) through POST /jobs, injects its fault
while the drain runs, polls until the queue is empty and nothing is in flight, and checks
from the database and the queues: every valid item applied exactly once (chaos_effects has
no unique key, so a double application would show), every poison item in the DLQ with its
reason, each group's items committed in order, worker concurrency never above the cap.

The workflow-lane scenarios (``flow: ...``) run the chaos lane as a workflow lane (ADR 0007):
there each item must also have started exactly one execution (counted by the item key in every
execution's input, whatever its status), both steps applied once, and the step function never
ran more steps at once than the cap allows executions; group order is not promised there.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sluice_tools.chaos.runner import ChaosRun, ScenarioResult, make_items, wait_for
from sluice_tools.chaos.sqs_fault_proxy import FaultPlan

pytestmark = pytest.mark.chaos

FULL = os.environ.get("SLUICE_CHAOS_FULL") == "1"
VALID, POISON = (200, 10) if FULL else (24, 3)
Record = Callable[[ScenarioResult], ScenarioResult]


def check(result: ScenarioResult) -> None:
    assert result.duplicates == 0, result.problems
    assert result.lost == 0, result.problems
    assert result.passed, result.problems


@pytest.mark.parametrize("point", ["after_commit",
                                   pytest.param("before_commit", marks=pytest.mark.chaos_full_only)])
def test_worker_killed(point: str, tmp_path: Path, record_result: Record) -> None:
    with ChaosRun(f"worker kill -9 {point.replace('_', ' ')}", tmp_path) as run:
        # GIVEN items whose first one pauses its worker at a known point of its transaction
        items = make_items(run.run_id, VALID, POISON,
                           extra=lambda i: {"pause": point} if i == 0 else {})
        run.enqueue(items)
        # WHEN that worker process is killed -9 there
        pid = run.wait_for_marker(items[0].key, point)
        run.kill(pid)
        # THEN once the queue drains, everything was applied exactly once
        run.settle()
        check(record_result(run.verify(items)))


@pytest.mark.chaos_full_only
def test_consumer_killed_mid_drain(tmp_path: Path, record_result: Record) -> None:
    with ChaosRun("consumer kill -9 mid-drain", tmp_path) as run:
        # GIVEN a drain in progress (slowish items, so it lasts)
        items = make_items(run.run_id, VALID, POISON, extra=lambda i: {"sleep_ms": 100})
        run.enqueue(items)
        wait_for(lambda: run.effects() >= 3, 60, "the drain to start applying items")
        # WHEN every consumer process is killed -9
        pids = wait_for(lambda: run.function("consumer")["pids"], 30, "a running consumer")
        for pid in pids:
            run.kill(pid)
        # THEN its messages come back after the visibility timeout and are applied once
        run.settle()
        check(record_result(run.verify(items)))


@pytest.mark.chaos_full_only
def test_database_restarted_mid_drain(tmp_path: Path, record_result: Record) -> None:
    with ChaosRun("MariaDB crash + restart mid-drain", tmp_path, private_db=True) as run:
        items = make_items(run.run_id, VALID, POISON, extra=lambda i: {"sleep_ms": 50})
        run.enqueue(items)
        wait_for(lambda: run.effects() >= 3, 60, "the drain to start applying items")
        # WHEN the (private) server is killed -9 mid-drain and started again after an outage
        assert run.mariadb is not None
        run.mariadb.kill()
        threading.Event().wait(3.0)  # the outage itself: workers meet a dead database meanwhile
        run.mariadb.start()
        # THEN the retried items are applied once, in group order
        run.settle()
        check(record_result(run.verify(items)))


@pytest.mark.chaos_full_only
def test_lambda_throttling(tmp_path: Path, record_result: Record) -> None:
    # GIVEN a consumer allowed 4 workers, but the worker's reserved concurrency is 2 (429s)
    # (one message per invocation, so the consumer really asks for 4 at once)
    with ChaosRun("Lambda throttling (cap 4 > reserved 2)", tmp_path, max_parallel=4,
                  reserved_concurrency=2, batch_size=1) as run:
        items = make_items(run.run_id, VALID, POISON, groups=8, extra=lambda i: {"sleep_ms": 50})
        # WHEN the burst drains
        run.enqueue(items)
        run.settle()
        # THEN throttled invokes were retried, nothing lost or doubled, never above 2
        result = record_result(run.verify(items, cap=2))
        assert run.function("worker")["throttles"] > 0, "the scenario never met a 429"
        check(result)


# At full size a random 15% of calls; the bounded run is too small for chance to reach every
# operation, so it fails every 4th call of each instead.
PLAN, PLAN_NAME = (FaultPlan(rate=0.15), "15%") if FULL else (FaultPlan(every=4), "every 4th call")


def test_sqs_faults(tmp_path: Path, record_result: Record) -> None:
    with ChaosRun(f"SQS 5xx/throttle, {PLAN_NAME}", tmp_path) as run:
        # GIVEN SQS failing a share of SendMessageBatch, ReceiveMessage and DeleteMessage(Batch)
        # calls, half of them after the call took effect
        assert run.proxy is not None
        run.proxy.set_plan(PLAN)
        items = make_items(run.run_id, VALID, POISON)
        # WHEN the items are enqueued and drained through the faulty endpoint
        run.enqueue(items)
        run.settle()
        run.proxy.set_plan(FaultPlan(rate=0.0))
        # THEN faults really happened on each operation, and the count is still exact
        for operations in (["SendMessageBatch"], ["ReceiveMessage"], ["DeleteMessage", "DeleteMessageBatch"]):
            assert run.proxy.injected(operations) > 0, f"no fault injected on {operations}"
        check(record_result(run.verify(items)))


@pytest.mark.chaos_full_only
def test_worker_timeout_keeps_group_order(tmp_path: Path, record_result: Record) -> None:
    with ChaosRun("worker timeout on a slow item", tmp_path) as run:
        # GIVEN the first item of a group is slower than the worker timeout on its first receive
        items = make_items(run.run_id, VALID, POISON,
                           extra=lambda i: {"sleep_ms": 8000, "slow_receives": 1} if i == 0 else {})
        # WHEN the burst drains
        run.enqueue(items)
        run.settle()
        # THEN the worker timed out, the item was applied once later, and its group stayed in order
        assert run.function("worker")["timeouts"] > 0, "the slow item never timed the worker out"
        result = record_result(run.verify(items))
        assert result.order_ok
        check(result)


def _invoices(run: ChaosRun, tag: str, n: int) -> list[dict[str, Any]]:
    return [{"task": "invoice.record", "key": f"{run.run_id}-{tag}-{i}",
             "payload": {"customer": "acme", "amount_cents": 100 + i, "currency": "EUR"}} for i in range(n)]


def _time_to_apply(run: ChaosRun, items: list[dict[str, Any]], timeout_s: float = 120) -> float:
    """Seconds from the POST until every one of these invoices is in the database."""
    prefix = items[0]["key"].rsplit("-", 1)[0] + "-%"
    started = time.monotonic()
    run.post_items(items)
    wait_for(lambda: run.count("SELECT COUNT(*) FROM invoices WHERE item_key LIKE %s", prefix) >= len(items),
             timeout_s, "the ledger lane's invoices applied")
    return time.monotonic() - started


def test_one_lanes_vendor_down_mid_drain(tmp_path: Path, record_result: Record, summary_lines: list[str]) -> None:
    valid, poison, invoices = (60, 4, 200) if FULL else (20, 2, 40)
    with ChaosRun("vendor b down 20 s (refused, then 503)", tmp_path) as run:
        vendors = run.vendors()
        # A vendor in trouble asks for more than a second between tries.
        vendors.update("b", retry_after_s=5)
        # GIVEN how long the ledger lane (warm) takes for a batch of invoices with every vendor healthy
        _time_to_apply(run, _invoices(run, "warm", 2))
        alone_s = _time_to_apply(run, _invoices(run, "alone", invoices))
        # AND a backlog in vendor b's lane (5 messages/s), some of them refused by the vendor
        messages = [{"task": "notify.send", "key": f"{run.run_id}-b-{i}", "group": f"to-{i}",
                     "payload": {"vendor": "b", "to": "not-a-number" if i >= valid else f"+4915{i:09d}",
                                 "text": f"{run.run_id} message {i}"}} for i in range(valid + poison)]
        answer = run.post_items(messages)
        assert {row["lane"] for row in answer["items"]} == {"vendor-b"}
        wait_for(lambda: vendors.counters("b").effects_applied >= 3, 60, "vendor b's drain to start")
        # WHEN vendor b goes away mid-drain: connections refused for 10 s, then 503s for 10 s
        vendors.outage("b", refuse_s=10, down_s=10)
        # AND the ledger lane gets the same batch of invoices meanwhile
        loaded_s = _time_to_apply(run, _invoices(run, "loaded", invoices))
        # THEN every valid message is delivered once it is back, the refused ones dead-lettered
        wait_for(lambda: run.count("SELECT COUNT(*) FROM notifications WHERE item_key LIKE %s",
                                   f"{run.run_id}-b-%") >= valid, 240, "vendor b's messages delivered")
        dead = wait_for(lambda: (d := run.lane_dead_letters("vendor-b")) and len(d) >= poison and d, 120,
                        "vendor b's refused messages in its DLQ")
        ours = [m for m in vendors.messages("b") if m.text.startswith(f"{run.run_id} ")]
        repeated = len(ours) - len({m.key for m in ours})
        applied_once = run.count("SELECT COUNT(*) FROM notifications WHERE item_key LIKE %s AND apply_count = 1",
                                 f"{run.run_id}-b-%")
        worker = run.function("worker", "vendor-b")
        result = record_result(ScenarioResult(
            scenario=run.name, items=valid + poison, applied_once=applied_once,
            duplicates=repeated + run.count("SELECT COUNT(*) FROM notifications WHERE item_key LIKE %s AND "
                                            "apply_count > 1", f"{run.run_id}-b-%"),
            lost=valid - len({m.key for m in ours}), in_dlq=len(set(dead) & {m["key"] for m in messages[valid:]}),
            poison=poison, peak_workers=int(worker["peak_busy"]), cap=1, order_ok=True))
        if set(dead) - {m["key"] for m in messages[valid:]}:
            result.problems.append(f"valid messages dead-lettered: {sorted(set(dead))[:3]}")
        # AND the other lane was not slowed by it (a ratio of two timings in this run, printed, not asserted)
        summary_lines.append(f"vendor outage: ledger lane time to apply {invoices} invoices with vendor b down / "
                             f"all healthy = {loaded_s / alone_s:.2f} ({loaded_s:.1f} s / {alone_s:.1f} s; "
                             "goal <= 1.2)")
        check(result)


# A workflow lane's cap counts running executions; the consumer waits poll_s (2 s) when it is
# full, so a cap of 2 would make the full-size run crawl. The step function's reserved
# concurrency follows the cap (ChaosRun's default).
FLOW_CAP = 6


def test_flow_consumer_killed_between_start_and_delete(tmp_path: Path, record_result: Record) -> None:
    with ChaosRun("flow: consumer kill -9 after start, before delete", tmp_path, flow=True,
                  max_parallel=FLOW_CAP) as run:
        assert run.proxy is not None and run.stack is not None and run.stack.queues is not None
        # GIVEN the workflow lane's deletes held in the SQS proxy: a consumer that has started
        # executions waits in the call that would delete their messages
        hold = run.proxy.hold(["DeleteMessage", "DeleteMessageBatch"], run.stack.queues.url)
        items = make_items(run.run_id, VALID, POISON)
        run.enqueue(items)
        wait_for(hold.reached.is_set, 60, "the workflow lane's consumer to delete started messages")
        # (the first delete on this queue: what started so far is exactly what it was deleting)
        started = sum(len(runs) for runs in run.executions_by_key().values())
        # WHEN that consumer process is killed -9 there (reserved concurrency 1: it is the only one),
        # and the delete it was making is dropped: it never reaches SQS
        pids = run.function("consumer")["pids"]
        assert pids, "no consumer process to kill"
        for pid in pids:
            run.kill(pid)
        wait_for(lambda: not set(pids) & set(run.function("consumer")["pids"]), 30, "the killed consumer gone")
        hold.release()
        # THEN the schedule carries on: the messages come back after the visibility timeout, each
        # finds its execution by name and is only deleted; one execution per item, each applied once
        run.settle()
        result = record_result(run.verify(items))
        assert hold.messages == started >= 1, f"held deletes of {hold.messages} messages, {started} started"
        assert run.proxy.counts["DeleteMessageBatch:held:dropped"] + run.proxy.counts["DeleteMessage:held:dropped"]
        assert result.started_twice == 0, result.problems
        check(result)


@pytest.mark.chaos_full_only
@pytest.mark.parametrize(("step", "point"), [("apply", "before_commit"), ("confirm", "after_commit")])
def test_flow_step_killed_mid_step(step: str, point: str, tmp_path: Path, record_result: Record) -> None:
    with ChaosRun(f"flow: step kill -9 in {step}, {point.replace('_', ' ')}", tmp_path, flow=True,
                  max_parallel=FLOW_CAP) as run:
        # GIVEN items whose first one pauses its step Lambda at a known point of one step
        items = make_items(run.run_id, VALID, POISON,
                           extra=lambda i: {"pause": point, "pause_step": step} if i == 0 else {})
        run.enqueue(items)
        # WHEN that step's process is killed -9 there
        pid = run.wait_for_marker(items[0].key, point)
        run.kill(pid)
        # THEN Step Functions saw the task fail as a killed runtime, the definition's Retry ran the
        # step again, and it applied once (rolled back before the commit; the ledger after it)
        run.settle()
        [(arn, status)] = run.executions_by_key()[items[0].key]
        failures = run.task_failures(arn)
        result = record_result(run.verify(items))
        assert (status, failures) == ("SUCCEEDED", ["Runtime.ExitError"]), (status, failures)
        assert result.started_twice == 0, result.problems
        check(result)
