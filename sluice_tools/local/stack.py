"""The whole local stack in one object: `LocalStack(settings).start()` ... `.stop()`.

Servers it starts, all on 127.0.0.1: a moto server (Secrets Manager and the rest), an SQS
server (fauxqs by default; moto, or any URL), MariaDB (found or private), the Lambda service
running the functions of ``sluice_tools.functions.function_table``, the HTTP API in front of the
enqueuer, the schedule for the consumers and the stand-in vendor API (``local.vendors``; its
token in the secret ``<service>/<stage>/tasks/vendor``).

Workflow lanes (docs/adr/0007-workflow-lanes.md): moto executes their state machines, made from
each lane's definition file with its topics on moto's SNS; moto's interpreter calls Lambda at
``localhost:$MOTO_PORT``, so moto is started with MOTO_PORT naming a gateway that sends Lambda
invokes to this stack's Lambda service (the lane's ``step-<lane>`` function) and the rest to moto.

Lanes (DESIGN.md section 11): every lane gets its queue and DLQ (from its own ``queue``
settings), its consumer and worker (each with its lane's environment, ``Settings.runtime_env(
lane=...)``) and a schedule of its own (``drain.consumers`` invokes per tick, every
``local.tick_s``); the enqueuer gets every lane's route and queue URL in ``SLUICE_LANES``.
local.env names each lane's queues as ``env.queue_env_keys`` says. Once everything answers it writes
``.sluice/local.env`` and a state file with every child pid, so `sluice local down` can stop
the stack, and clean up after it even if the stack process itself was killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from sluice.db import DbCredentials
from sluice.migrations import configured_sources
from sluice.settings import PROJECT_ROOT, Lane, Settings
from sluice_tools.functions import FunctionSpec, function_table
from sluice_tools.local.env import (
    DUMMY_ACCESS_KEY_ID,
    DUMMY_SECRET_ACCESS_KEY,
    LOCAL_DIR,
    queue_env_keys,
    write_local_env,
)
from sluice_tools.local.fauxqs import FauxqsServer
from sluice_tools.local.http_api import HttpApi, lambda_invoker
from sluice_tools.local.lambda_service import FunctionDefinition, LambdaService, LambdaServiceError
from sluice_tools.local.mariadb import LocalDatabase, find_database
from sluice_tools.local.moto_server import MotoServer
from sluice_tools.local.processes import LocalServiceError, choose_port
from sluice_tools.local.resources import (
    FlowResources,
    QueueUrls,
    create_db_secret,
    create_flows,
    create_lane_queues,
    create_vendor_secret,
)
from sluice_tools.local.scheduler import ACCOUNT_ID, Scheduler
from sluice_tools.local.sfn_gateway import SfnGateway, SfnGatewayError
from sluice_tools.local.vendor_api import VendorApi, configured_vendors

STATE_FILE = "stack.json"


class StackAlreadyRunningError(LocalServiceError):
    """Another local stack owns this state directory."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is not running. The process can also be reaped
    # between kill(0) and the read, which then fails with ESRCH or ENOENT.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError, IndexError):
        return False
    except OSError:
        return True  # no /proc to ask: kill(0) already said it exists


def read_state(local_dir: Path = LOCAL_DIR) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((local_dir / STATE_FILE).read_text())
        return state
    except (OSError, ValueError):
        return None


def running_stack(local_dir: Path = LOCAL_DIR) -> dict[str, Any] | None:
    """The state of the stack running from ``local_dir``, or None (a stale state file is ignored)."""
    state = read_state(local_dir)
    if state and pid_alive(int(state.get("pid", 0))):
        return state
    return None


@dataclass
class LocalStack:
    settings: Settings
    sqs: str = "fauxqs"  # "fauxqs" | "moto" | http(s)://URL
    api_port: int | None = None
    lambda_port: int | None = None
    sqs_port: int | None = None
    moto_port: int | None = None
    vendor_port: int | None = None  # the vendor API's shared port (each vendor also gets a free one)
    database_url: str | None = None  # None: DATABASE_URL, else 127.0.0.1:3306, else a private mariadbd
    tick_s: float | None = None  # None: settings.local.tick_s
    local_dir: Path = LOCAL_DIR
    extra_function_env: dict[str, str] = field(default_factory=dict)
    schedule: bool = True  # False: no ticks (a test or the CLI invokes the consumer itself)
    write_env: bool = True

    moto: MotoServer | None = field(default=None, init=False)
    fauxqs: FauxqsServer | None = field(default=None, init=False)
    database: LocalDatabase | None = field(default=None, init=False)
    lambdas: LambdaService | None = field(default=None, init=False)
    api: HttpApi | None = field(default=None, init=False)
    vendors: VendorApi | None = field(default=None, init=False)
    sfn_gateway: SfnGateway | None = field(default=None, init=False)  # only with workflow lanes
    flows: dict[str, FlowResources] = field(default_factory=dict, init=False)  # by workflow lane
    schedulers: dict[str, Scheduler] = field(default_factory=dict, init=False)  # by lane
    lane_queues: dict[str, QueueUrls] = field(default_factory=dict, init=False)  # by lane, routing order
    queues: QueueUrls | None = field(default=None, init=False)  # the first lane's (a config without lanes: the queue)
    env: dict[str, str] = field(default_factory=dict, init=False)
    sqs_url: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if self.sqs not in ("fauxqs", "moto") and not self.sqs.startswith(("http://", "https://")):
            raise LocalServiceError(f"--sqs {self.sqs!r} is not fauxqs, moto or an http(s):// URL")
        self.region = self.settings.region

    # -- names ---------------------------------------------------------------------------------

    def function_definitions(
        self, environment: Mapping[str, str] | Callable[[FunctionSpec], Mapping[str, str]],
    ) -> list[FunctionDefinition]:
        """The functions this stack runs: the function table (the source serverless.yml agrees
        with, see tests/infra) under their deployed names, each with ``environment`` (one for
        all, or a function of the spec: each lane's consumer and worker get their lane's)."""
        return [
            FunctionDefinition.from_spec(
                spec, name=self.function_name(key), cwd=str(PROJECT_ROOT),
                environment=dict(environment(spec) if callable(environment) else environment))
            for key, spec in function_table(self.settings).items()
        ]

    def lane_env(self, lane: Lane, db_secret_id: str, routes: str = "") -> dict[str, str]:
        """The runtime environment of ``lane``'s functions: its own queues, worker and settings."""
        queues = self.lane_queues[lane.name]
        flow = self.flows.get(lane.name)
        return self.settings.runtime_env(
            queue_url=queues.url, dlq_url=queues.dlq_url, queue_arn=queues.arn, lane=lane, routes=routes,
            worker_function="" if flow else self.function_name(lane.target_key), db_secret_id=db_secret_id,
            flow_arn=flow.machine_arn if flow else "")

    def function_name(self, key: str) -> str:
        return self.settings.function_name(key)

    @property
    def logs_dir(self) -> Path:
        return self.local_dir / "logs"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> dict[str, str]:
        """Start everything; on any failure stop what was started and re-raise. Returns the env."""
        other = running_stack(self.local_dir)
        if other is not None:
            raise StackAlreadyRunningError(
                f"a local stack is already running (pid {other['pid']}, API {other.get('api_url', '?')}): "
                "use it, or stop it with `sluice local down`")
        self.local_dir.mkdir(parents=True, exist_ok=True)
        # Logs belong to one run of the stack: `sluice status` reads the last drains from the
        # consumer's log, and a previous run's drains there would pass for this one's.
        for old_log in self.logs_dir.glob("*.log"):
            old_log.unlink()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self.env

    def _start(self) -> None:
        # Ports asked for explicitly are checked up front, so a taken one fails before anything starts.
        if self.api_port:
            choose_port(self.api_port, "the HTTP API")
        if self.vendor_port:
            choose_port(self.vendor_port, "the vendor API")
        # The functions' environment names the Lambda endpoint (the consumer invokes workers there),
        # so its port is settled before the service starts.
        lambda_port = choose_port(self.lambda_port, "the Lambda service")
        lambda_url = f"http://127.0.0.1:{lambda_port}"
        flow_lanes = [lane for lane in self.settings.resolved_lanes() if lane.flow is not None]
        gateway_port = choose_port(None, "the Step Functions gateway") if flow_lanes else None
        self.moto = MotoServer(self.moto_port, self.logs_dir / "moto.log", step_functions_port=gateway_port)
        moto_url = self.moto.start()
        if gateway_port:
            try:
                self.sfn_gateway = SfnGateway(moto_url, lambda_url, port=gateway_port).start()
            except SfnGatewayError as exc:
                raise LocalServiceError(str(exc)) from exc
        if self.sqs == "fauxqs":
            self.fauxqs = FauxqsServer(self.sqs_port, self.logs_dir / "fauxqs.log")
            self.sqs_url = self.fauxqs.start()
        elif self.sqs == "moto":
            self.sqs_url = moto_url
        else:
            self.sqs_url = self.sqs.rstrip("/")
        self._write_state()
        self.database = find_database(self.settings.database.name, self.local_dir / "mariadb",
                                      database_url=self.database_url,
                                      tasks=configured_sources(self.settings))
        self._write_state()
        aws = {"region_name": self.region, "aws_access_key_id": DUMMY_ACCESS_KEY_ID,
               "aws_secret_access_key": DUMMY_SECRET_ACCESS_KEY}
        self.lane_queues = create_lane_queues(boto3.client("sqs", endpoint_url=self.sqs_url, **aws), self.settings)
        lanes = self.settings.resolved_lanes()
        self.queues = self.lane_queues[lanes[0].name]
        secrets_client = boto3.client("secretsmanager", endpoint_url=moto_url, **aws)
        secret_arn = create_db_secret(secrets_client, self.settings, self.database.url)
        if flow_lanes:
            self.flows = create_flows(
                boto3.client("stepfunctions", endpoint_url=moto_url, **aws),
                boto3.client("sns", endpoint_url=moto_url, **aws), self.settings,
                lambda lane: f"arn:aws:lambda:{self.region}:{ACCOUNT_ID}:function:"
                             f"{self.function_name(lane.target_key)}")
        # The vendor's token is made per run: the task reads it from the secret, as it would on AWS.
        vendor_token = secrets.token_urlsafe(24)
        self.vendors = VendorApi(configured_vendors(self.settings.local.vendors, vendor_token),
                                 port=self.vendor_port)
        self.vendors.start()
        vendor_env = {**self.vendors.env(),
                      "SLUICE_VENDOR_SECRET_ID": create_vendor_secret(secrets_client, self.settings, vendor_token)}
        # What points a process at this stack: the functions get it, and so does local.env.
        endpoints = {
            "AWS_ENDPOINT_URL": moto_url,
            "AWS_ENDPOINT_URL_SQS": self.sqs_url,
            "AWS_ENDPOINT_URL_LAMBDA": lambda_url,
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_ACCESS_KEY,
        }
        common_env = {
            # An RDS secret always has a password; the machine's root may not, so the URL (which wins
            # over the secret in the handlers) is passed too. The secret is still made and valid.
            "DATABASE_URL": self.database.url,
            **endpoints,
            "AWS_REGION": self.region,
            **vendor_env,
            **self.extra_function_env,
        }
        common_env.pop("AWS_SESSION_TOKEN", None)
        by_lane = {lane.name: lane for lane in lanes}
        routes = self.settings.lanes_env({name: q.url for name, q in self.lane_queues.items()})

        def environment(spec: FunctionSpec) -> dict[str, str]:
            # A lane's consumer and worker get their lane's; the enqueuer every lane's routes; the
            # stage-wide migrate the first lane's (it touches no queue).
            if spec.lane is not None:
                return {**self.lane_env(by_lane[spec.lane], secret_arn), **common_env}
            return {**self.lane_env(lanes[0], secret_arn, routes if spec.role == "enqueuer" else ""),
                    **common_env}

        self.lambdas = LambdaService(self.function_definitions(environment), port=lambda_port,
                                     log_dir=self.logs_dir, region=self.region)
        try:
            self.lambdas.start()
        except LambdaServiceError as exc:
            raise LocalServiceError(str(exc)) from exc
        enqueuer = function_table(self.settings)["enqueuer"]
        self.api = HttpApi(lambda_invoker(self.function_name("enqueuer"), lambda_url, enqueuer.timeout_s,
                                          self.region),
                           port=self.api_port, openapi_path=PROJECT_ROOT / "docs" / "openapi.yaml")
        api_url = self.api.start()
        table = function_table(self.settings)
        for lane in lanes:
            # Each lane its own schedule, as each lane's consumer has its own rule on AWS.
            consumer = self.function_name(lane.function_key("consumer"))
            self.schedulers[lane.name] = Scheduler(
                lambda_invoker(consumer, lambda_url, table[lane.function_key("consumer")].timeout_s, self.region),
                consumers=lane.drain.consumers,
                tick_s=self.tick_s if self.tick_s is not None else self.settings.local.tick_s,
                rule_arn=f"arn:aws:events:{self.region}:{ACCOUNT_ID}:rule/{consumer}-schedule",
                region=self.region,
            )
        self.env = {
            **endpoints,
            "SLUICE_API_URL": api_url,
            **vendor_env,
            "DATABASE_URL": self.database.url,
            **DbCredentials.from_url(self.database.url).client_env(),
            **self._queue_env(lanes),
            "SLUICE_LAMBDA_STATS_URL": f"{lambda_url}/sluice/stats",
            "SLUICE_STAGE": self.settings.stage,
            "SLUICE_STACK_PID": str(os.getpid()),
        }
        if self.schedule:
            for scheduler in self.schedulers.values():
                scheduler.start()
        self._write_state()
        if self.write_env:
            write_local_env(self.env, self.local_dir / "local.env")

    def stop(self) -> None:
        """Stop everything this stack started, last started first; safe to call twice."""
        for scheduler in self.schedulers.values():
            scheduler.stop()
        if self.api is not None:
            self.api.stop()
        if self.lambdas is not None:
            self.lambdas.stop()
        if self.vendors is not None:
            self.vendors.stop()
        if self.sfn_gateway is not None:
            self.sfn_gateway.stop()
        if self.database is not None:
            self.database.stop()
        if self.fauxqs is not None:
            self.fauxqs.stop()
        if self.moto is not None:
            self.moto.stop()
        state = read_state(self.local_dir)
        if state is not None and state.get("pid") == os.getpid():
            (self.local_dir / STATE_FILE).unlink(missing_ok=True)
            if self.write_env:
                (self.local_dir / "local.env").unlink(missing_ok=True)

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _queue_env(self, lanes: list[Lane]) -> dict[str, str]:
        """local.env's queue URLs: the one queue of a config without lanes, else each lane's pair."""
        env: dict[str, str] = {}
        for lane in lanes:
            queue_key, dlq_key = queue_env_keys(lane)
            env[queue_key] = self.lane_queues[lane.name].url
            env[dlq_key] = self.lane_queues[lane.name].dlq_url
        return env

    # -- state ---------------------------------------------------------------------------------

    def _children(self) -> dict[str, int]:
        """Pids of the server processes (each leads its own process group)."""
        children: dict[str, int] = {}
        for name, server in (("moto", self.moto), ("fauxqs", self.fauxqs)):
            if server is not None and server.pid:
                children[name] = server.pid
        if self.database is not None and self.database.private is not None and self.database.private.pid:
            children["mariadbd"] = self.database.private.pid
        return children

    def _write_state(self) -> None:
        state = {"pid": os.getpid(), "stage": self.settings.stage, "sqs": self.sqs,
                 "children": self._children(), "api_url": self.env.get("SLUICE_API_URL", ""),
                 "database": self.database.source if self.database else ""}
        tmp = self.local_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.local_dir / STATE_FILE)

    def status(self) -> dict[str, Any]:
        """What runs, where, and how busy it is (for `sluice local status` and the demo)."""
        functions = {name: s.as_dict() for name, s in self.lambdas.stats().items()} if self.lambdas else {}
        return {
            "pid": os.getpid(),
            "stage": self.settings.stage,
            "sqs": {"server": self.sqs, "url": self.sqs_url,
                    "alive": self.fauxqs.alive() if self.fauxqs else bool(self.sqs_url)},
            "moto": {"url": self.moto.url if self.moto and self.moto.port else "",
                     "alive": bool(self.moto and self.moto.alive())},
            "database": {"source": self.database.source if self.database else "",
                         "private_alive": bool(self.database and self.database.private
                                               and self.database.private.alive())},
            "api_url": self.env.get("SLUICE_API_URL", ""),
            "vendor_url": self.env.get("SLUICE_VENDOR_URL", ""),
            "lambda_url": self.env.get("AWS_ENDPOINT_URL_LAMBDA", ""),
            "queues": {"url": self.queues.url, "dlq_url": self.queues.dlq_url} if self.queues else {},
            "lanes": {name: {"url": q.url, "dlq_url": q.dlq_url} for name, q in self.lane_queues.items()},
            "flows": {name: {"state_machine_arn": f.machine_arn, "topics": f.topics} for name, f in self.flows.items()},
            "sfn_gateway": dict(self.sfn_gateway.forwarded) if self.sfn_gateway else {},
            "functions": functions,
            "schedule": _summed_schedule([s.stats() for s in self.schedulers.values()]),
            "schedules": {name: s.stats() for name, s in self.schedulers.items()},
        }


def _summed_schedule(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Every lane's schedule counters added up (a config without lanes: its one schedule's)."""
    if len(stats) == 1:
        return stats[0]
    total: dict[str, Any] = {}
    for one in stats:
        for key, value in one.items():
            if key == "recent_reports":
                total[key] = total.get(key, []) + list(value)
            elif key == "last_error":
                total[key] = value or total.get(key, "")
            else:
                total[key] = total.get(key, 0) + value
    return total


def stop_stack(local_dir: Path = LOCAL_DIR, timeout_s: float = 30.0) -> str:
    """Stop the stack running from ``local_dir`` (by its pid file); returns what was done."""
    import time

    state = read_state(local_dir)
    if state is None:
        return "no local stack is running"
    pid = int(state.get("pid", 0))
    if pid and pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    # Whatever the stack process could not stop itself (it was killed): stop by process group.
    for child in state.get("children", {}).values():
        if pid_alive(int(child)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(child), signal.SIGTERM)
    for name in (STATE_FILE, "local.env"):
        (local_dir / name).unlink(missing_ok=True)
    return f"stopped the local stack (pid {pid})"
