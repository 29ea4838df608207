"""One chaos scenario end to end: a local stack of its own, a known set of items, a fault,
then a count from the database and the queues.

The stack is the real one (`LocalStack`: fauxqs, the Lambda service running the real
handlers in warm processes, the HTTP API, the schedule, MariaDB), with the SQS fault proxy
always in between (at rate 0 unless the scenario breaks SQS) and the test-only task
``chaos.apply`` loaded (see sluice_tools.chaos.tasks). Nothing is faked: items go in through
``POST /jobs`` and are counted in ``chaos_effects``, ``processed_messages`` and the DLQ.

With ``flow=True`` the chaos lane is a workflow lane (docs/adr/0007-workflow-lanes.md): its
consumer starts one execution of sluice_tools/chaos/flow.asl.json per item, moto executes it,
and its steps (chaos.apply, then chaos.confirm) run in the lane's step function. The count then
also reads ``chaos_confirms`` and every execution of the lane's state machine (how many per item
key, from each execution's input), and a group's items need not commit in order (a workflow
lane's executions of one group may overlap).
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pymysql

from sluice.aws import Queue
from sluice.db import DbCredentials
from sluice.flowitem import FlowItem
from sluice.settings import Settings, load_settings
from sluice.sfn import FAILED_STATUSES, StateMachine
from sluice_tools.chaos.sqs_fault_proxy import FaultPlan, SqsFaultProxy
from sluice_tools.chaos.tasks import CONFIRMS_TABLE_SQL, EFFECTS_TABLE_SQL
from sluice_tools.local.fauxqs import FauxqsServer
from sluice_tools.local.mariadb import PrivateMariaDB
from sluice_tools.local.processes import StartStopContext, poll_until
from sluice_tools.local.stack import LocalStack
from sluice_tools.local.vendor_client import VendorClient
from sluice_tools.ops.dlq import list_dead_letters
from sluice_tools.ops.status import queue_counts

MACHINE_DB = "mysql://root@127.0.0.1:3306/"


class ScenarioError(AssertionError):
    """A scenario could not reach the state it needs (the stack never settled, a pause never came)."""


def wait_for(check: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; ScenarioError naming ``what`` at the deadline."""
    return poll_until(check, timeout_s, what, poll_s=poll_s, error=ScenarioError)


@dataclass
class ScenarioResult:
    scenario: str
    items: int
    applied_once: int
    duplicates: int
    lost: int
    in_dlq: int
    poison: int
    peak_workers: int
    cap: int
    order_ok: bool
    problems: list[str] = field(default_factory=list)
    # A workflow lane's: items whose executions numbered more than one (None: a worker lane).
    started_twice: int | None = None

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


def format_table(results: list[ScenarioResult]) -> str:
    head = ("scenario", "items", "applied once", "duplicates", "started twice", "lost", "in DLQ", "peak/cap",
            "verdict")
    rows = [head] + [(r.scenario, str(r.items), str(r.applied_once), str(r.duplicates),
                      "-" if r.started_twice is None else str(r.started_twice), str(r.lost),
                      f"{r.in_dlq}/{r.poison}", f"{r.peak_workers}/{r.cap}", r.verdict) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in results:
        lines += [f"  {r.scenario}: {p}" for p in r.problems]
    return "\n".join(lines)


@dataclass(frozen=True)
class Item:
    key: str
    group: str
    seq: int
    poison: bool
    payload: dict[str, Any]

    def request_item(self) -> dict[str, Any]:
        return {"task": "chaos.apply", "key": self.key, "group": self.group, "payload": self.payload}


def make_items(run: str, valid: int, poison: int, *, groups: int = 4,
               extra: Callable[[int], dict[str, Any]] | None = None) -> list[Item]:
    """``valid`` + ``poison`` items spread over ``groups`` groups, seq rising within each group."""
    items: list[Item] = []
    per_group: Counter[str] = Counter()
    for i in range(valid + poison):
        group = f"{run}-g{i % groups}"
        is_poison = i >= valid
        payload: dict[str, Any] = {"seq": per_group[group], "poison": is_poison}
        payload.update(extra(i) if extra else {})
        items.append(Item(f"{run}-k{i}", group, per_group[group], is_poison, payload))
        per_group[group] += 1
    return items


CHAOS_LANE = "chaos"
# The chaos lane's state machine when it is a workflow lane (ChaosRun(flow=True)).
CHAOS_FLOW = "sluice_tools/chaos/flow.asl.json"
# Every status an execution can have: the count of executions per item reads them all.
EXECUTION_STATUSES = ("RUNNING", "SUCCEEDED", *FAILED_STATUSES)
# Beside the chaos lane, each with a cap of one: what the vendor-outage scenario breaks, and what
# proves the other scenarios hold on a stack of several lanes.
CHAOS_SIDE_LANES: dict[str, dict[str, Any]] = {
    "ledger": {"tasks": ["invoice.record"], "drain": {"max_parallel": 1}, "worker": {"reserved_concurrency": 1}},
    "vendor-a": {"tasks": ["notify.send"], "match": {"payload.vendor": "a"},
                 "drain": {"max_parallel": 1, "max_rate": 25}, "worker": {"reserved_concurrency": 1, "batch_size": 5}},
    "vendor-b": {"tasks": ["notify.send"], "match": {"payload.vendor": "b"},
                 "drain": {"max_parallel": 1, "max_rate": 5}, "worker": {"reserved_concurrency": 1, "batch_size": 2}},
}


@dataclass
class ChaosRun(StartStopContext):
    """A stack for one scenario. ``with ChaosRun(...) as run:`` starts it and stops it."""

    name: str
    work_dir: Path
    max_parallel: int = 2
    # The worker's reserved concurrency; None: the cap, as `sluice config check` demands. That
    # is what holds the cap when a worker outlives the consumer that started it (SQS faults
    # slow its deletes past the consumer's deadline, a consumer is killed): the next consumer's
    # invokes get 429s instead of running above the cap. Only the throttling scenario sets it.
    reserved_concurrency: int | None = None
    drain_timeout_s: int = 10
    worker_timeout_s: int = 6  # the worker keeps max(2, t/4) + 1 s in reserve: 3 s would leave none
    visibility_s: int = 12
    max_receive_count: int = 6
    batch_size: int = 10
    private_db: bool = False
    tick_s: float = 0.3
    seed: int = 1
    # The scenarios run on a multi-lane stack: chaos.apply in the first lane (the one every
    # scenario breaks and counts), invoices and two vendor lanes beside it (CHAOS_SIDE_LANES).
    lanes: bool = True
    # The chaos lane as a workflow lane: its items run CHAOS_FLOW (needs lanes); the step function
    # takes the worker's settings (timeout, reserved concurrency), the cap counts running executions.
    flow: bool = False

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8], init=False)
    stack: LocalStack | None = field(default=None, init=False)
    proxy: SqsFaultProxy | None = field(default=None, init=False)
    mariadb: PrivateMariaDB | None = field(default=None, init=False)
    _fauxqs: FauxqsServer | None = field(default=None, init=False)
    _admin_url: str = field(default="", init=False)
    _db_name: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if self.flow and not self.lanes:
            raise ScenarioError("a workflow lane is a named lane: flow=True needs lanes=True")

    @property
    def settings(self) -> Settings:
        local = load_settings("local")
        return Settings(
            stage="chaos",
            queue={"name": f"chaos-{self.run_id}", "groups": 4, "visibility_s": self.visibility_s,
                   "max_receive_count": self.max_receive_count},
            drain={"timeout_s": self.drain_timeout_s, "max_parallel": self.max_parallel,
                   "safety_margin_ms": 1000, "wait_s": 1, "max_rate": 500},
            worker={"timeout_s": self.worker_timeout_s,
                    "reserved_concurrency": self.reserved_concurrency or self.max_parallel,
                    "batch_size": self.batch_size},
            enqueuer={"max_items": 1000},
            database={"name": self._db_name, "secret": "sluice/chaos/database"},
            api={"auth": "none"},
            local={"tick_s": self.tick_s, "sqs": "fauxqs", "vendors": local.local.vendors},
            # The application's task modules, as the local stage runs them (chaos.apply is added
            # to this stack's functions only, through SLUICE_EXTRA_TASK_MODULES).
            tasks=local.tasks,
            lanes={CHAOS_LANE: self._chaos_lane(), **CHAOS_SIDE_LANES} if self.lanes else {},
        )

    def _chaos_lane(self) -> dict[str, Any]:
        lane: dict[str, Any] = {"tasks": ["chaos.apply"]}
        if self.flow:
            lane["flow"] = {"definition": CHAOS_FLOW}
        return lane

    def function_key(self, role: str, lane: str | None = None) -> str:
        """The function of ``role`` in ``lane`` (default: the chaos lane, or the only one);
        role ``target`` is what applies the lane's items (its worker, or a workflow lane's step)."""
        if role not in ("consumer", "worker", "step", "target"):
            return role
        resolved = self.settings.lane(lane or (CHAOS_LANE if self.lanes else None))
        return resolved.target_key if role == "target" else resolved.function_key(role)

    @property
    def chaos_dir(self) -> Path:
        return self.work_dir / "markers"

    def start(self) -> None:
        self.chaos_dir.mkdir(parents=True, exist_ok=True)
        self._db_name = f"chaos_{self.run_id}"
        if self.private_db:
            self.mariadb = PrivateMariaDB(self.work_dir / "mariadb")
            self._admin_url = self.mariadb.start().url()
        else:
            self._admin_url = MACHINE_DB
        self._fauxqs = FauxqsServer(log_path=self.work_dir / "fauxqs.log")
        upstream = self._fauxqs.start()
        self.proxy = SqsFaultProxy(upstream, FaultPlan(rate=0.0), seed=self.seed)
        proxy_url = self.proxy.start()
        db_url = DbCredentials.from_url(self._admin_url).with_database(self._db_name).url()
        self.stack = LocalStack(self.settings, sqs=proxy_url, database_url=db_url, tick_s=self.tick_s,
                                local_dir=self.work_dir / "stack", write_env=False, schedule=True,
                                extra_function_env={"SLUICE_EXTRA_TASK_MODULES": "sluice_tools.chaos.tasks",
                                                    "SLUICE_CHAOS_DIR": str(self.chaos_dir),
                                                    "POWERTOOLS_LOG_LEVEL": "WARNING"})
        self.stack.start()
        with self.db() as conn, conn.cursor() as cur:
            cur.execute(EFFECTS_TABLE_SQL)
            cur.execute(CONFIRMS_TABLE_SQL)
        self._direct_sqs = boto3.client("sqs", endpoint_url=upstream, region_name="us-east-1",
                                        aws_access_key_id="local", aws_secret_access_key="local")

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()
        if self.proxy is not None:
            self.proxy.stop()
        if self._fauxqs is not None:
            self._fauxqs.stop()
        if self._db_name and self.mariadb is None and self._admin_url:
            try:
                conn = pymysql.connect(**_connect_args(self._admin_url), autocommit=True)
                with conn.cursor() as cur:
                    cur.execute(f"DROP DATABASE IF EXISTS `{self._db_name}`")
                conn.close()
            except pymysql.MySQLError:
                pass
        if self.mariadb is not None:
            self.mariadb.stop()

    # -- the parts a scenario touches -------------------------------------------------------

    def db(self) -> pymysql.connections.Connection:
        return pymysql.connect(**_connect_args(self._admin_url), database=self._db_name, autocommit=True)

    def lambda_stats(self) -> dict[str, Any]:
        assert self.stack is not None and self.stack.lambdas is not None
        return {name: s.as_dict() for name, s in self.stack.lambdas.stats().items()}

    def function(self, key: str, lane: str | None = None) -> dict[str, Any]:
        """The Lambda service's counters of one function: a role of the chaos lane by default."""
        assert self.stack is not None
        return self.lambda_stats()[self.stack.function_name(self.function_key(key, lane))]

    def enqueue(self, items: list[Item], timeout_s: float = 60) -> None:
        """POST the items to /jobs (real HTTP) in requests of 100 until each one is accepted.

        Under SQS faults the enqueuer may answer 207/503 for some items; resubmitting is its
        documented remedy (same keys, same dedup ids), so that is what a client does here.
        """
        assert self.stack is not None and self.stack.api is not None
        url = self.stack.api.url.rstrip("/") + "/jobs"
        pending = list(items)
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise ScenarioError(f"{len(pending)} items still not accepted by POST /jobs")
            chunk, rest = pending[:100], pending[100:]
            body = json.dumps({"items": [i.request_item() for i in chunk]}).encode()
            request = urllib.request.Request(url, data=body, method="POST",
                                             headers={"content-type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as reply:
                    status, answer = reply.status, json.loads(reply.read())
            except urllib.error.HTTPError as exc:
                status, answer = exc.code, json.loads(exc.read() or b"{}")
            if status == 202:
                pending = rest
            elif status in (207, 503):
                failed = {row["key"] for row in answer.get("items", []) if "error" in row} if status == 207 \
                    else {i.key for i in chunk}
                pending = [i for i in chunk if i.key in failed] + rest
            else:
                raise ScenarioError(f"POST /jobs answered {status}: {answer}")

    def depth(self) -> tuple[int, int]:
        assert self.stack is not None and self.stack.queues is not None
        # Straight from fauxqs, not through the fault proxy: the count must not meet a fault.
        counts = queue_counts(Queue(self.stack.queues.url, sqs=self._direct_sqs))
        return counts.visible, counts.in_flight

    def effects(self) -> int:
        with self.db() as conn, conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM chaos_effects")
            row = cur.fetchone()
            return int(row[0]) if row else 0

    def wait_for_marker(self, key: str, point: str, timeout_s: float = 60) -> int:
        """The pid of the worker process paused at ``point`` on item ``key``."""
        marker = self.chaos_dir / f"{key}.{point}"
        wait_for(marker.exists, timeout_s, f"item {key} to reach {point}")
        return int(marker.read_text())

    def settle(self, timeout_s: float = 180) -> None:
        """Poll until the queue is empty, nothing is in flight and no function is busy (twice in a
        row); on a workflow lane also until no execution runs and every failed one is in the DLQ."""
        def idle() -> bool:
            visible, in_flight = self.depth()
            busy = self.function("target")["busy"]
            return visible == 0 and in_flight == 0 and busy == 0 and (not self.flow or self._flow_idle())

        def twice() -> bool:
            if not idle():
                return False
            time.sleep(self.tick_s * 2)  # a drain may have just taken the last message: look again
            return idle()

        wait_for(twice, timeout_s, "the queue to drain (queue empty, nothing in flight, workers idle"
                 + (", no execution running, each failed one dead-lettered)" if self.flow else ")"), 0.5)

    def _flow_idle(self) -> bool:
        machine = self.machine()
        if machine.count_running(1):
            return False
        failed = sum(1 for status in FAILED_STATUSES for _ in machine.executions(status))
        assert self.stack is not None and self.stack.queues is not None
        # The consumer's failure scan sends each failed execution's item to the DLQ on its next drain.
        return queue_counts(Queue(self.stack.queues.dlq_url, sqs=self._direct_sqs)).visible >= failed

    # -- the workflow lane ----------------------------------------------------------------------

    def machine(self) -> StateMachine:
        """The chaos lane's state machine (flow=True), on moto."""
        assert self.stack is not None
        if CHAOS_LANE not in self.stack.flows:
            raise ScenarioError("this run's chaos lane is not a workflow lane (ChaosRun(flow=True))")
        sfn = boto3.client("stepfunctions", endpoint_url=self.stack.env["AWS_ENDPOINT_URL"],
                           region_name=self.stack.region, aws_access_key_id="local",
                           aws_secret_access_key="local")
        return StateMachine(self.stack.flows[CHAOS_LANE].machine_arn, sfn)

    def executions_by_key(self) -> dict[str, list[tuple[str, str]]]:
        """Item key -> (execution ARN, status) of every execution of the machine, whatever its
        name: the key comes from the execution's input, so a second start under another name shows."""
        machine = self.machine()
        # One ListExecutions per status, one after another: an execution that closes between two
        # of them is listed twice (RUNNING, then SUCCEEDED). Keyed by ARN, it counts once, with
        # the later status.
        statuses: dict[str, str] = {}
        for status in EXECUTION_STATUSES:
            for execution in machine.executions(status):
                statuses[execution.arn] = execution.status
        found: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for arn, status in statuses.items():
            found[FlowItem.from_input(json.loads(machine.execution_input(arn))).key].append((arn, status))
        return found

    def task_failures(self, execution_arn: str) -> list[str]:
        """The error of every failed Lambda task attempt of one execution, in order (its retries)."""
        machine = self.machine()
        events = machine.sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
        return [str(e["lambdaFunctionFailedEventDetails"].get("error", "")) for e in events
                if e.get("type") == "LambdaFunctionFailed"]

    def dead_letters(self) -> dict[str, dict[str, str]]:
        """Every DLQ message: item key -> its sluice_* attributes (the reason). Empties the DLQ."""
        assert self.stack is not None and self.stack.queues is not None
        found: dict[str, dict[str, str]] = {}
        empty_rounds = 0
        while empty_rounds < 2:
            reply = self._direct_sqs.receive_message(
                QueueUrl=self.stack.queues.dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=300,
                MessageAttributeNames=["All"], WaitTimeSeconds=0)
            messages = reply.get("Messages", [])
            empty_rounds = 0 if messages else empty_rounds + 1
            for m in messages:
                key = json.loads(m["Body"]).get("key", "?")
                found[key] = {k: v.get("StringValue", "") for k, v in m.get("MessageAttributes", {}).items()}
                # A FIFO group with a message in flight hands out nothing more: the read is the
                # end of this queue's life, so each message is deleted once counted.
                self._direct_sqs.delete_message(QueueUrl=self.stack.queues.dlq_url,
                                                ReceiptHandle=m["ReceiptHandle"])
        return found

    # -- the side lanes (invoices, vendors) ----------------------------------------------------

    def vendors(self) -> VendorClient:
        """The stand-in vendor API's admin client (vendor outages, counters)."""
        assert self.stack is not None
        return VendorClient(self.stack.env["SLUICE_VENDOR_URL"])

    def post_items(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """POST request items as they are (any task, any lane); the API's 202 body."""
        assert self.stack is not None and self.stack.api is not None
        request = urllib.request.Request(self.stack.api.url.rstrip("/") + "/jobs", method="POST",
                                         data=json.dumps({"items": items}).encode(),
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            if reply.status != 202:
                raise ScenarioError(f"POST /jobs answered {reply.status}")
            answer: dict[str, Any] = json.loads(reply.read())
        return answer

    def count(self, sql: str, *args: Any) -> int:
        with self.db() as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            row = cur.fetchone()
            return int(row[0]) if row and row[0] is not None else 0

    def lane_dead_letters(self, lane: str) -> dict[str, dict[str, str]]:
        """Every dead letter of ``lane``'s DLQ: item key -> its sluice_* attributes (left in place)."""
        assert self.stack is not None
        queue = Queue(self.stack.lane_queues[lane].dlq_url, sqs=self._direct_sqs)
        return {letter.key: {"sluice_error": letter.reason, "sluice_error_type": letter.error_type}
                for letter in list_dead_letters(queue).letters}

    # -- faults ---------------------------------------------------------------------------

    def kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)

    # -- the count --------------------------------------------------------------------------

    def verify(self, items: list[Item], *, cap: int | None = None) -> ScenarioResult:
        valid = {i.key for i in items if not i.poison}
        poison = {i.key for i in items if i.poison}
        with self.db() as conn, conn.cursor() as cur:
            cur.execute("SELECT item_key, group_id, seq FROM chaos_effects ORDER BY id")
            rows = cur.fetchall()
            cur.execute("SELECT item_key FROM processed_messages")
            ledger = {r[0] for r in cur.fetchall()}
            cur.execute("SELECT item_key FROM chaos_confirms")
            confirmed = Counter(r[0] for r in cur.fetchall())
        applied = Counter(r[0] for r in rows)
        by_group: dict[str, list[int]] = defaultdict(list)
        for _, group, seq in rows:
            by_group[group].append(seq)
        order_ok = all(seqs == sorted(seqs) for seqs in by_group.values())
        executions = self.executions_by_key() if self.flow else {}
        dlq = self.dead_letters()
        # A workflow lane's execution runs one step at a time (no Parallel or Map state), so its
        # step function's peak passes the cap only if more executions ran than the cap allows.
        target = self.function("target")
        cap = cap if cap is not None else self.max_parallel

        def once(key: str) -> bool:
            return applied[key] == 1 and (not self.flow or confirmed[key] == 1)

        result = ScenarioResult(
            scenario=self.name, items=len(items),
            applied_once=sum(1 for k in valid if once(k)),
            duplicates=sum(n - 1 for n in applied.values() if n > 1)
            + sum(n - 1 for n in confirmed.values() if n > 1),
            lost=sum(1 for k in valid if applied[k] == 0),
            in_dlq=len(set(dlq) & poison), poison=len(poison),
            peak_workers=int(target["peak_busy"]), cap=cap, order_ok=order_ok,
            started_twice=sum(1 for runs in executions.values() if len(runs) > 1) if self.flow else None,
        )
        if result.duplicates:
            result.problems.append(f"{result.duplicates} duplicate applications")
        if result.lost:
            result.problems.append(f"{result.lost} valid items never applied: "
                                   f"{sorted(k for k in valid if applied[k] == 0)[:5]}")
        if poison - set(dlq):
            result.problems.append(f"poison items missing from the DLQ: {sorted(poison - set(dlq))[:5]}")
        if set(dlq) - poison:
            wrongly = {k: dlq[k].get("sluice_error", "") for k in sorted(set(dlq) - poison)[:3]}
            result.problems.append(f"valid items dead-lettered: {wrongly}")
        no_reason = [k for k in set(dlq) & poison if not dlq[k].get("sluice_error")]
        if no_reason:
            result.problems.append(f"dead letters without a reason: {no_reason[:5]}")
        if applied.keys() & poison:
            result.problems.append("a poison item left an effect")
        if ledger != valid:
            result.problems.append(f"ledger rows {len(ledger)} != valid items {len(valid)}")
        if not order_ok and not self.flow:
            result.problems.append("a group's items were committed out of order")
        if self.flow:
            self._check_flow(result, valid, poison, applied, confirmed, executions)
        if result.peak_workers > cap:
            result.problems.append(f"worker concurrency peaked at {result.peak_workers}, above the cap {cap}")
        visible, in_flight = self.depth()
        if visible or in_flight:
            result.problems.append(f"queue not empty: {visible} visible, {in_flight} in flight")
        return result


    @staticmethod
    def _check_flow(result: ScenarioResult, valid: set[str], poison: set[str], applied: Counter[str],
                    confirmed: Counter[str], executions: dict[str, list[tuple[str, str]]]) -> None:
        """A workflow lane's own promises: one execution per item, each step applied once."""
        twice = {k: [status for _, status in runs] for k, runs in executions.items() if len(runs) > 1}
        if twice:
            result.problems.append(f"{len(twice)} items started more than once: {dict(list(twice.items())[:3])}")
        never = sorted((valid | poison) - set(executions))
        if never:
            result.problems.append(f"{len(never)} items never started an execution: {never[:5]}")
        unconfirmed = sorted(k for k in valid if applied[k] and confirmed[k] == 0)
        if unconfirmed:
            result.problems.append(f"{len(unconfirmed)} items applied but their second step never ran: "
                                   f"{unconfirmed[:5]}")
        if confirmed.keys() & poison:
            result.problems.append("a poison item's execution went past its failing step")
        unfinished = {k: runs[-1][1] for k, runs in executions.items() if k in valid and runs[-1][1] != "SUCCEEDED"}
        if unfinished:
            result.problems.append(f"valid items whose execution did not succeed: {dict(list(unfinished.items())[:3])}")


def _connect_args(url: str) -> dict[str, Any]:
    parsed = DbCredentials.from_url(url)
    return {"host": parsed.host, "port": parsed.port, "user": parsed.user, "password": parsed.password,
            "connect_timeout": 5}
