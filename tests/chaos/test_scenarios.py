"""Issue 7's scenarios: break the running system on purpose, then count.

Each scenario enqueues a known set (valid + poison) through POST /jobs, injects its fault
while the drain runs, polls until the queue is empty and nothing is in flight, and checks
from the database and the queues: every valid item applied exactly once (chaos_effects has
no unique key, so a double application would show), every poison item in the DLQ with its
reason, each group's items committed in order, worker concurrency never above the cap.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

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
