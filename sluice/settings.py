"""Typed settings, read once.

Two sources, one vocabulary:

* ``Settings`` is the whole of ``config/<stage>.yml``: what the CLI, the local stack and
  ``sluice config check`` use, and what serverless.yml reads through ``${file(...)}``.
* ``RuntimeConfig`` is what a Lambda handler needs, read from the environment that
  serverless.yml (or the local stack) derives from the same file. ``RUNTIME_ENV_NAMES``
  lists those variables; ``Settings.runtime_env`` builds them, so the two never drift.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# What the handlers need (RuntimeConfig, read from the environment) lives apart, so a cold start
# imports no pydantic model of the config file; re-exported here for the tooling.
from sluice.lanes import DEFAULT_LANE, lane_takes
from sluice.runtime import DEFAULT_GROUPS, MAX_BATCH_SIZE, RuntimeConfig, SettingsError

__all__ = ["DEFAULT_LANE", "MAX_BATCH_SIZE", "RuntimeConfig", "SettingsError", "lane_takes"]


PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR_ENV = "SLUICE_CONFIG_DIR"
_SCHEDULE = re.compile(r"^(rate\(\d+ (minute|minutes|hour|hours|day|days)\)|cron\(.+\))$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QueueSettings(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,70}$")
    groups: int = Field(DEFAULT_GROUPS, ge=1, le=1000)  # chosen from measurement: docs/adr/0008-queue-groups.md
    max_tps: int = Field(300, ge=1, le=70000)
    visibility_s: int = Field(180, ge=0, le=43200)
    retention_s: int = Field(345600, ge=60, le=1209600)
    max_receive_count: int = Field(5, ge=1, le=1000)
    dlq_retention_days: int = Field(14, ge=1, le=14)

    @property
    def fifo_name(self) -> str:
        return f"{self.name}.fifo"

    @property
    def dlq_fifo_name(self) -> str:
        return f"{self.name}-dlq.fifo"


class DrainSettings(_Section):
    schedule: str = "rate(1 minute)"
    consumers: int = Field(1, ge=1, le=100)
    timeout_s: int = Field(60, ge=3, le=900)
    memory_mb: int = Field(256, ge=128, le=10240)
    max_parallel: int = Field(4, ge=1, le=1000)
    # The adaptive limit moves within [min_parallel, max_parallel]; adaptive: false pins the cap.
    min_parallel: int = Field(1, ge=1, le=1000)
    adaptive: bool = True
    max_rate: float = Field(200, gt=0)
    safety_margin_ms: int = Field(5000, ge=0)
    wait_s: int = Field(1, ge=0, le=20)

    @model_validator(mode="after")
    def _schedule_shape(self) -> DrainSettings:
        if not _SCHEDULE.match(self.schedule):
            raise ValueError(f"schedule {self.schedule!r} is not 'rate(N minutes)' or 'cron(...)'")
        return self


# Messages one worker invocation may carry. SQS returns at most 10 per receive, so a batch above
# 10 takes several receives (the drain makes them only with a deep backlog); the invoke payload
# stays under Lambda's synchronous limit whatever this is (sluice/drain.py closes a batch first).


class WorkerSettings(_Section):
    timeout_s: int = Field(30, ge=1, le=900)
    memory_mb: int = Field(256, ge=128, le=10240)
    batch_size: int = Field(10, ge=1, le=MAX_BATCH_SIZE)
    reserved_concurrency: int = Field(4, ge=1)


class EnqueuerSettings(_Section):
    timeout_s: int = Field(29, ge=1, le=900)
    memory_mb: int = Field(256, ge=128, le=10240)
    max_items: int = Field(1000, ge=1, le=100000)
    max_body_bytes: int = Field(1048576, ge=1024, le=6291456)


class DatabaseSettings(_Section):
    name: str = Field("sluice", pattern=r"^[A-Za-z0-9_]{1,64}$")
    secret: str = ""
    existing_secret_arn: str = ""
    url: str = ""
    managed: bool = False
    instance_class: str = "db.t4g.micro"
    allocated_storage_gb: int = Field(20, ge=20, le=65536)
    backup_retention_days: int = Field(7, ge=0, le=35)


class ApiSettings(_Section):
    auth: Literal["iam", "jwt", "none"] = "iam"
    jwt_issuer: str = ""
    jwt_audience: list[str] = Field(default_factory=list)


class AlarmSettings(_Section):
    topic_arn: str = ""
    email: str = ""
    oldest_message_age_s: int = Field(900, ge=60)


_VENDOR_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


class LocalVendorSettings(_Section):
    """One vendor of the local stack's stand-in vendor API: the request rate it allows and how it
    misbehaves. ``burst`` defaults to one second's worth of ``rate_per_s``."""

    rate_per_s: float = Field(50, gt=0, le=100000)
    burst: float = Field(1, ge=1, le=100000)
    latency_ms: float = Field(0, ge=0, le=60000)
    jitter_ms: float = Field(0, ge=0, le=60000)
    failure_rate: float = Field(0, ge=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _burst_from_rate(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("burst") is None:
            rate = data.get("rate_per_s", 50)
            if isinstance(rate, int | float) and not isinstance(rate, bool):
                return {**data, "burst": max(1.0, float(rate))}
        return data


class LocalSettings(_Section):
    tick_s: float = Field(1.0, gt=0, le=3600)
    sqs: str = "fauxqs"
    vendors: dict[str, LocalVendorSettings] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _vendor_names(self) -> LocalSettings:
        for name in self.vendors:
            if not _VENDOR_NAME.match(name):
                raise ValueError(f"vendor name {name!r} must be 1-32 lower-case letters, digits or '-', "
                                 "starting with a letter or digit")
        return self


_MODULE_NAME = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
# A workflow definition's placeholder for its lane's step Lambda (worker/step.py).
STEP_FUNCTION_PLACEHOLDER = "StepFunctionArn"
# A definition without TimeoutSeconds may run for a Standard workflow's year: the failure scan
# (sluice/flows.py) then looks back that far for executions that may have closed lately.
MAX_FLOW_RUN_S = 365 * 86400
LANE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,15}$")
MatchValue = str | int | float | bool
# AWS keeps this much of an account's concurrency unreserved; reserved concurrency cannot take it.
UNRESERVED_MINIMUM = 100


class FlowSettings(_Section):
    """A workflow lane's state machine (DESIGN.md section 13): each item starts one execution
    of the definition in ``definition`` (ASL JSON or YAML, relative to the project root)."""

    definition: str = Field(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*\.(json|ya?ml)$")
    # The state machine's name; "" = <service>-<stage>-<lane>.
    name: str = Field("", pattern=r"^([A-Za-z0-9_-]{1,80})?$")
    # SNS topics the flow publishes to, made with the lane (deploy and local stack): topic
    # ``Events`` is ``<service>-<stage>-<lane>-events``, its ARN the definition's ${EventsTopicArn}.
    topics: list[str] = Field(default_factory=list)

    @field_validator("topics")
    @classmethod
    def _topic_names(cls, topics: list[str]) -> list[str]:
        for topic in topics:
            if not re.match(r"^[A-Z][A-Za-z0-9]{0,31}$", topic):
                raise ValueError(f"flow topic {topic!r} must be a CamelCase name (e.g. Events), "
                                 "at most 32 letters and digits")
        if len(set(topics)) != len(topics):
            raise ValueError("flow.topics names a topic twice")
        return topics

    @property
    def path(self) -> Path:
        return PROJECT_ROOT / self.definition

    def placeholders(self) -> tuple[str, ...]:
        """The ``${Name}`` placeholders a definition may use: the step function and each topic."""
        return (STEP_FUNCTION_PLACEHOLDER, *(f"{topic}TopicArn" for topic in self.topics))


class LaneSettings(_Section):
    """One entry of ``lanes:``: which items it carries and what it overrides."""

    tasks: list[str] = Field(min_length=1)
    # Exact values of payload fields, like an SNS filter policy on the body: "payload.vendor": "a",
    # or a list of values any of which fits. Every key must fit.
    match: dict[str, MatchValue | list[MatchValue]] = Field(default_factory=dict)
    queue: dict[str, Any] = Field(default_factory=dict)
    drain: dict[str, Any] = Field(default_factory=dict)
    worker: dict[str, Any] = Field(default_factory=dict)
    # A workflow lane: its items start executions of this state machine instead of worker invokes.
    flow: FlowSettings | None = None

    @model_validator(mode="after")
    def _match_paths(self) -> LaneSettings:
        for path, value in self.match.items():
            if not re.match(r"^payload(\.[A-Za-z_][A-Za-z0-9_]*)+$", path):
                raise ValueError(f"match key {path!r} must name a payload field, e.g. payload.vendor")
            if isinstance(value, list) and not value:
                raise ValueError(f"match {path!r} lists no value")
        if "name" in self.queue:
            raise ValueError("a lane's queue name is <queue.name>-<lane>; it cannot be set")
        return self


@dataclass(frozen=True)
class Lane:
    """One lane with its sections resolved: the base config with the lane's overrides."""

    name: str
    implicit: bool  # the one lane of a config without `lanes`: today's names, no suffix
    tasks: tuple[str, ...] | None  # None: every task
    match: tuple[tuple[str, tuple[MatchValue, ...]], ...]
    queue: QueueSettings
    drain: DrainSettings
    worker: WorkerSettings
    flow: FlowSettings | None = None  # a workflow lane's state machine; None: a worker lane

    def function_key(self, role: str) -> str:
        """serverless.yml's key of this lane's ``role`` function: ``worker``, ``worker-vendor-a``."""
        return role if self.implicit else f"{role}-{self.name}"

    @property
    def target_role(self) -> str:
        """What runs the lane's items: ``worker`` (the consumer invokes it) or, for a workflow
        lane, ``step`` (the state machine's Task states invoke it)."""
        return "step" if self.flow is not None else "worker"

    @property
    def target_key(self) -> str:
        """serverless.yml's key of the function that applies this lane's items."""
        return self.function_key(self.target_role)

    def route(self) -> dict[str, Any]:
        """What the enqueuer needs to route into this lane (queue URL added by the deployer)."""
        return {"name": self.name, "tasks": list(self.tasks) if self.tasks is not None else None,
                "match": {k: list(v) for k, v in self.match}, "groups": self.queue.groups,
                "max_tps": self.queue.max_tps}

    def takes(self, task: str, payload: Any) -> bool:
        return lane_takes(self.tasks, dict(self.match), task, payload)


def _shadows(earlier: Lane, later: Lane) -> bool:
    """Does ``earlier`` take every item ``later`` could take?"""
    if earlier.tasks is not None and (later.tasks is None or not set(later.tasks) <= set(earlier.tasks)):
        return False
    later_match = dict(later.match)
    # Every condition of the earlier lane must hold for every item the later one takes.
    return all(path in later_match and set(later_match[path]) <= set(allowed) for path, allowed in earlier.match)


class TaskModuleSettings(_Section):
    """One task module of the application: what the handlers import, where its schema lives."""

    module: str = Field(pattern=_MODULE_NAME)
    # Folder of NNNN_name.sql migrations (yoyo), relative to the project root; "" = none.
    migrations: str = Field("", pattern=r"^(/?[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*)?$")
    # Options the task reads with sluice.task_settings(<module>): a vendor URL, a secret name.
    settings: dict[str, Any] = Field(default_factory=dict)


class Settings(_Section):
    stage: str = Field(pattern=r"^[a-z][a-z0-9-]{0,15}$")
    service: str = Field("sluice", pattern=r"^[a-z][a-z0-9-]{0,30}$")
    region: str = "us-east-1"
    queue: QueueSettings
    drain: DrainSettings = DrainSettings()
    worker: WorkerSettings = WorkerSettings()
    enqueuer: EnqueuerSettings = EnqueuerSettings()
    database: DatabaseSettings = DatabaseSettings()
    api: ApiSettings = ApiSettings()
    alarms: AlarmSettings = AlarmSettings()
    local: LocalSettings = LocalSettings()
    tasks: list[TaskModuleSettings] = Field(default_factory=list)
    lanes: dict[str, LaneSettings] = Field(default_factory=dict)
    # The account's Lambda concurrency limit (AWS's default is 1,000): the lanes' caps and
    # consumers are reserved out of it, and AWS keeps 100 of it unreserved.
    account_concurrency: int = Field(1000, ge=100)

    @model_validator(mode="after")
    def _lane_names(self) -> Settings:
        for name in self.lanes:
            if not LANE_NAME.match(name):
                raise ValueError(f"lane name {name!r} must be 1-16 lower-case letters, digits or '-', "
                                 "starting with a letter")
        return self

    def resolved_lanes(self) -> list[Lane]:
        """Every lane, in routing order, its sections merged with the lane's overrides (raises
        ValueError naming the lane when an override is invalid)."""
        if not self.lanes:
            return [Lane(DEFAULT_LANE, True, None, (), self.queue, self.drain, self.worker)]
        lanes: list[Lane] = []
        for name, lane in self.lanes.items():
            section = "queue"
            try:
                queue = QueueSettings.model_validate({**self.queue.model_dump(), **lane.queue,
                                                      "name": f"{self.queue.name}-{name}"})
                section = "drain"
                drain = DrainSettings.model_validate({**self.drain.model_dump(), **lane.drain})
                section = "worker"
                worker = WorkerSettings.model_validate({**self.worker.model_dump(), **lane.worker})
            except ValidationError as exc:
                detail = "; ".join(f"{section}.{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
                                   for e in exc.errors(include_url=False))
                raise ValueError(f"lanes.{name}: {detail}") from None
            match = tuple((k, tuple(v) if isinstance(v, list) else (v,)) for k, v in lane.match.items())
            lanes.append(Lane(name, False, tuple(lane.tasks), match, queue, drain, worker, lane.flow))
        return lanes

    def lane(self, name: str | None) -> Lane:
        """One lane by name; None means the only lane (an error when there are several)."""
        lanes = self.resolved_lanes()
        if name is None:
            if len(lanes) == 1:
                return lanes[0]
            raise SettingsError(f"stage {self.stage!r} has {len(lanes)} lanes; pick one with --lane "
                                f"({', '.join(x.name for x in lanes)})")
        for lane in lanes:
            if lane.name == name:
                return lane
        raise SettingsError(f"no lane {name!r} in config/{self.stage}.yml "
                            f"(lanes: {', '.join(x.name for x in lanes)})")

    def problems(self, known_tasks: Iterable[str] | None = None) -> list[str]:
        """Every unsafe combination, each as a sentence saying what to change (empty = safe).

        ``known_tasks`` (the names the configured task modules register) lets the lane checks
        name a task no lane carries, or a lane naming a task that does not exist."""
        try:
            lanes = self.resolved_lanes()
        except ValueError as exc:
            return [str(exc)]
        found: list[str] = []
        for lane in lanes:
            prefix = "" if lane.implicit else f"lanes.{lane.name}: "
            found += [prefix + p for p in _lane_problems(lane.queue, lane.drain, lane.worker)]
        found += self._routing_problems(lanes, None if known_tasks is None else set(known_tasks))
        found += self._account_problems(lanes)
        found += _flow_problems(lanes, None if known_tasks is None else set(known_tasks))
        q = self.queue
        if self.api.auth == "jwt" and not (self.api.jwt_issuer and self.api.jwt_audience):
            found.append("api.auth is 'jwt' but api.jwt_issuer or api.jwt_audience is empty")
        db = self.database
        if not (db.url or db.secret or db.existing_secret_arn):
            found.append("database needs one of url, secret or existing_secret_arn")
        if db.managed and db.backup_retention_days == 0:
            found.append("database.managed is true but database.backup_retention_days is 0: the managed "
                         "instance would keep no automated backups (1 to 35 days)")
        if db.managed and db.url:
            found.append("database.managed is true but database.url is set: the managed instance would be unused")
        if self.enqueuer.max_items > 10 * q.max_tps * self.enqueuer.timeout_s:
            found.append(
                f"enqueuer.max_items ({self.enqueuer.max_items}) cannot be sent within enqueuer.timeout_s "
                f"at queue.max_tps ({q.max_tps}) batch calls/s"
            )
        found += self._task_problems()
        return found

    def _routing_problems(self, lanes: list[Lane], known_tasks: set[str] | None) -> list[str]:
        found: list[str] = []
        for lane in lanes:
            if len(lane.queue.dlq_fifo_name) > 80:
                found.append(f"lanes.{lane.name}: queue name {lane.queue.dlq_fifo_name!r} is longer than SQS's "
                             "80 characters; shorten queue.name or the lane's name")
        for i, lane in enumerate(lanes):
            for earlier in lanes[:i]:
                if _shadows(earlier, lane):
                    found.append(f"lanes.{lane.name} is unreachable: lanes.{earlier.name} comes first and takes "
                                 "every item it would (its tasks include this lane's, its match is no narrower)")
                    break
        if known_tasks is not None and not lanes[0].implicit:
            carried = {t for lane in lanes for t in lane.tasks or ()}
            for lane in lanes:
                unknown = sorted(set(lane.tasks or ()) - known_tasks)
                if unknown:
                    found.append(f"lanes.{lane.name} names task(s) no configured module registers: "
                                 f"{', '.join(unknown)} (known: {', '.join(sorted(known_tasks))})")
            # A task only a workflow's Task states call (never enqueued itself) needs no lane of its own.
            orphans = sorted(known_tasks - carried - _flow_step_tasks(lanes))
            if orphans:
                found.append(f"no lane carries task(s) {', '.join(orphans)}: every item of them would be refused "
                             "(add them to a lane's tasks)")
        return found

    def _account_problems(self, lanes: list[Lane]) -> list[str]:
        """Reserved concurrency is carved out of the account's: every lane's cap (its worker) and
        consumers, plus the migrate function, must leave AWS's unreserved 100."""
        reserved = sum(lane.worker.reserved_concurrency + lane.drain.consumers for lane in lanes) + 1
        room = self.account_concurrency - UNRESERVED_MINIMUM
        if reserved > room:
            parts = ", ".join(f"{x.name} {x.worker.reserved_concurrency}+{x.drain.consumers}" for x in lanes)
            return [f"the lanes reserve {reserved} concurrent executions ({parts}, migrate 1) but "
                    f"account_concurrency ({self.account_concurrency}) leaves {room} reservable "
                    f"({UNRESERVED_MINIMUM} stay unreserved)"]
        return []

    def _task_problems(self) -> list[str]:
        found: list[str] = []
        if not self.tasks:
            found.append("tasks lists no task module: the worker would have nothing to run "
                         "(add e.g. `- module: worker.tasks.reminders`)")
        modules = [t.module for t in self.tasks]
        for module in sorted({m for m in modules if modules.count(m) > 1}):
            found.append(f"tasks names module {module!r} more than once")
        for entry in self.tasks:
            if entry.migrations and not (PROJECT_ROOT / entry.migrations).is_dir():
                found.append(f"tasks: the migrations folder {entry.migrations!r} of {entry.module} does not exist "
                             "(a path relative to the project root)")
        return found

    def check(self) -> None:
        found = self.problems()
        if found:
            raise SettingsError(f"config/{self.stage}.yml is unsafe:\n- " + "\n- ".join(found))

    def function_name(self, function: str) -> str:
        """The deployed name of one function, as the Serverless Framework names it."""
        return f"{self.service}-{self.stage}-{function}"

    def runtime_env(
        self, *, queue_url: str, dlq_url: str, worker_function: str, db_secret_id: str = "", queue_arn: str = "",
        lane: Lane | None = None, routes: str = "", flow_arn: str = "",
    ) -> dict[str, str]:
        """The environment every handler of ``lane`` (default: the only one) gets; serverless.yml
        sets the same names. ``routes`` is ``lanes_env``'s JSON: how the enqueuer routes items
        into every lane's queue ("" with a single lane: everything goes to SLUICE_QUEUE_URL)."""
        lane = lane or self.resolved_lanes()[0]
        q, d, w = lane.queue, lane.drain, lane.worker
        return {
            "SLUICE_STAGE": self.stage,
            "SLUICE_LANE": lane.name,
            "SLUICE_LANES": routes,
            "SLUICE_QUEUE_URL": queue_url,
            "SLUICE_DLQ_URL": dlq_url,
            # The consumer puts it in the SQS records it hands workers (eventSourceARN); given here
            # so it needs no sqs:GetQueueAttributes to look it up.
            "SLUICE_QUEUE_ARN": queue_arn,
            "SLUICE_WORKER_FUNCTION": worker_function,
            # A workflow lane's state machine: its consumer starts executions instead of invoking
            # workers ("" for a worker lane).
            "SLUICE_FLOW_ARN": flow_arn,
            "SLUICE_FLOW_MAX_RUN_S": str(self.flow_max_run_s(lane)),
            "SLUICE_DB_SECRET_ID": db_secret_id,
            "SLUICE_DB_NAME": self.database.name,
            "SLUICE_QUEUE_GROUPS": str(q.groups),
            "SLUICE_QUEUE_MAX_TPS": str(q.max_tps),
            "SLUICE_QUEUE_VISIBILITY_S": str(q.visibility_s),
            "SLUICE_QUEUE_MAX_RECEIVE_COUNT": str(q.max_receive_count),
            "SLUICE_DRAIN_CONSUMERS": str(d.consumers),
            "SLUICE_DRAIN_MAX_PARALLEL": str(d.max_parallel),
            "SLUICE_DRAIN_MIN_PARALLEL": str(d.min_parallel),
            "SLUICE_DRAIN_ADAPTIVE": "true" if d.adaptive else "false",
            "SLUICE_DRAIN_MAX_RATE": str(d.max_rate),
            "SLUICE_DRAIN_SAFETY_MARGIN_MS": str(d.safety_margin_ms),
            "SLUICE_DRAIN_WAIT_S": str(d.wait_s),
            "SLUICE_WORKER_TIMEOUT_S": str(w.timeout_s),
            "SLUICE_WORKER_BATCH_SIZE": str(w.batch_size),
            "SLUICE_ENQUEUER_MAX_ITEMS": str(self.enqueuer.max_items),
            "SLUICE_ENQUEUER_MAX_BODY_BYTES": str(self.enqueuer.max_body_bytes),
            **self.task_env(),
            "POWERTOOLS_SERVICE_NAME": self.service,
            "POWERTOOLS_METRICS_NAMESPACE": "Sluice",
        }


    def state_machine_name(self, lane: Lane) -> str:
        """A workflow lane's state machine: ``flow.name``, else ``<service>-<stage>-<lane>``."""
        if lane.flow is None:
            raise SettingsError(f"lane {lane.name!r} is not a workflow lane (it has no flow)")
        return lane.flow.name or f"{self.service}-{self.stage}-{lane.name}"

    def topic_name(self, lane: Lane, topic: str) -> str:
        """The SNS topic ``topic`` of a workflow lane: ``<service>-<stage>-<lane>-<topic>``."""
        return f"{self.service}-{self.stage}-{lane.name}-{topic.lower()}"

    def flow_max_run_s(self, lane: Lane) -> int:
        """How long one execution may run: the definition's TimeoutSeconds, else a year (0 for a
        worker lane). The failure scan needs it to know how far back a closing execution started."""
        if lane.flow is None:
            return 0
        from sluice.asl import DefinitionError, load_definition

        try:
            timeout = load_definition(lane.flow.path).get("TimeoutSeconds")
        except DefinitionError:
            return MAX_FLOW_RUN_S  # config check names the file's fault
        return int(timeout) if isinstance(timeout, int) and 0 < timeout <= MAX_FLOW_RUN_S else MAX_FLOW_RUN_S

    def lanes_env(self, queue_urls: Mapping[str, str]) -> str:
        """SLUICE_LANES: every lane's route and queue URL, in routing order; "" for a config
        without lanes (the enqueuer then sends everything to SLUICE_QUEUE_URL)."""
        lanes = self.resolved_lanes()
        if lanes[0].implicit:
            return ""
        return json.dumps([{**lane.route(), "queue_url": queue_urls[lane.name]} for lane in lanes],
                          separators=(",", ":"))

    def task_env(self) -> dict[str, str]:
        """The task modules, their migration folders and their settings, as handlers read them
        (serverless.yml gets them from here too, through sluice_tools/infra_expand.py)."""
        return {
            "SLUICE_TASK_MODULES": ",".join(t.module for t in self.tasks),
            "SLUICE_TASK_MIGRATIONS": ",".join(f"{t.module}={t.migrations}" for t in self.tasks if t.migrations),
            "SLUICE_TASK_SETTINGS": json.dumps({t.module: t.settings for t in self.tasks if t.settings},
                                               sort_keys=True, separators=(",", ":")),
        }


def _flow_step_tasks(lanes: list[Lane]) -> set[str]:
    """Every task the workflow lanes' definitions run as steps (unreadable files count none:
    ``_flow_problems`` names them)."""
    from sluice.asl import DefinitionError, load_definition, step_tasks

    found: set[str] = set()
    for lane in lanes:
        if lane.flow is not None:
            with contextlib.suppress(DefinitionError):
                found |= set(step_tasks(load_definition(lane.flow.path)).values())
    return found


def _flow_problems(lanes: list[Lane], known_tasks: set[str] | None) -> list[str]:
    """A workflow lane's definition file must exist and be ASL; its steps must run known tasks."""
    from sluice.asl import DefinitionError, load_definition, placeholders, step_tasks

    found: list[str] = []
    for lane in lanes:
        if lane.flow is None:
            continue
        try:
            definition = load_definition(lane.flow.path)
        except DefinitionError as exc:
            found.append(f"lanes.{lane.name}.flow: {exc} (flow.definition {lane.flow.definition!r} is a path "
                         "relative to the project root)")
            continue
        known = lane.flow.placeholders()
        for name in sorted(set(placeholders(definition)) - set(known)):
            found.append(f"lanes.{lane.name}.flow: the definition uses ${{{name}}}, which nothing provides "
                         f"(known: {', '.join(known)}; a topic Foo is flow.topics: [Foo] -> ${{FooTopicArn}})")
        if known_tasks is not None:
            for state, task_name in step_tasks(definition).items():
                if task_name not in known_tasks:
                    found.append(f"lanes.{lane.name}.flow: state {state!r} runs task {task_name!r}, which no "
                                 f"configured module registers (known: {', '.join(sorted(known_tasks))})")
    return found


def _lane_problems(q: QueueSettings, d: DrainSettings, w: WorkerSettings) -> list[str]:
    """The checks that hold per lane: its queue, its consumer and its worker together."""
    found: list[str] = []
    if q.visibility_s <= d.timeout_s:
        found.append(
            f"queue.visibility_s ({q.visibility_s}) must exceed drain.timeout_s ({d.timeout_s}): "
            "otherwise a message the consumer still holds becomes visible again and is dispatched twice"
        )
    if w.timeout_s * 1000 + d.safety_margin_ms >= d.timeout_s * 1000:
        found.append(
            f"worker.timeout_s ({w.timeout_s}) plus drain.safety_margin_ms ({d.safety_margin_ms}) must stay "
            f"below drain.timeout_s ({d.timeout_s}): a consumer waits for its workers synchronously"
        )
    # The latest a consumer dispatches a message it received at its start is when its budget
    # is down to the safety margin; that worker may then run for its whole timeout.
    held_ms = d.timeout_s * 1000 - d.safety_margin_ms + w.timeout_s * 1000
    if q.visibility_s * 1000 <= held_ms:
        found.append(
            f"queue.visibility_s ({q.visibility_s}) must exceed drain.timeout_s ({d.timeout_s}) minus "
            f"drain.safety_margin_ms ({d.safety_margin_ms}) plus worker.timeout_s ({w.timeout_s}), "
            f"{held_ms / 1000:g} s: a message must stay hidden while its worker may still be applying it, "
            "or a second worker could receive it and the rest of its group"
        )
    if w.timeout_s <= 3:
        found.append(
            f"worker.timeout_s ({w.timeout_s}) must be at least 4: a worker keeps max(2, timeout/4) + 1 s"
            " in reserve to hand a batch back, so a shorter timeout hands every batch back unapplied"
        )
    if d.max_parallel > w.reserved_concurrency:
        found.append(
            f"drain.max_parallel ({d.max_parallel}) is above worker.reserved_concurrency "
            f"({w.reserved_concurrency}): the cap could never be reached and invokes would be throttled"
        )
    elif d.max_parallel < w.reserved_concurrency:
        found.append(
            f"drain.max_parallel ({d.max_parallel}) is below worker.reserved_concurrency "
            f"({w.reserved_concurrency}): set them equal. Reserved concurrency is what holds the cap "
            "when a worker outlives the consumer that invoked it and the next drain fills its slots"
        )
    if d.min_parallel > d.max_parallel:
        found.append(
            f"drain.min_parallel ({d.min_parallel}) exceeds drain.max_parallel ({d.max_parallel}): "
            "the adaptive limit moves between them, so the floor must not be above the cap"
        )
    if d.consumers > d.max_parallel:
        found.append(
            f"drain.consumers ({d.consumers}) exceeds drain.max_parallel ({d.max_parallel}): "
            "each consumer needs at least one worker slot"
        )
    if d.safety_margin_ms >= d.timeout_s * 1000:
        found.append(f"drain.safety_margin_ms ({d.safety_margin_ms}) leaves no budget in drain.timeout_s")
    if q.dlq_retention_days * 86400 <= q.retention_s:
        found.append(
            f"queue.dlq_retention_days ({q.dlq_retention_days}) must be longer than queue.retention_s "
            f"({q.retention_s} s): a FIFO message keeps its first enqueue time, so a shorter DLQ "
            "retention would expire dead letters on arrival"
        )
    return found


# Variables a handler reads; DATABASE_URL is optional and wins over the secret when set.
RUNTIME_ENV_NAMES: tuple[str, ...] = tuple(
    Settings(stage="x", queue=QueueSettings(name="x")).runtime_env(queue_url="", dlq_url="", worker_function="")
)


def config_dir() -> Path:
    return Path(os.environ.get(CONFIG_DIR_ENV) or PROJECT_ROOT / "config")


def _describe(err: ValidationError) -> str:
    return "\n".join(
        f"- {'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in err.errors(include_url=False)
    )


def load_settings(stage: str, directory: Path | None = None) -> Settings:
    """Read and validate ``config/<stage>.yml``. Raises SettingsError with every problem found."""
    if not re.match(r"^[a-z][a-z0-9-]{0,15}$", stage):
        raise SettingsError(f"stage {stage!r} must be lowercase letters, digits and dashes (max 16)")
    path = (directory or config_dir()) / f"{stage}.yml"
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SettingsError(f"no settings for stage {stage!r}: {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"{path} must hold a mapping of sections (queue, drain, worker, ...)")
    try:
        return Settings(stage=stage, **raw)
    except (ValidationError, TypeError) as exc:
        detail = _describe(exc) if isinstance(exc, ValidationError) else str(exc)
        raise SettingsError(f"{path} has invalid settings:\n{detail}") from None
