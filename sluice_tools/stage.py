"""Resolve a `--stage` into what an operator command needs: settings, queues, functions.

Stage ``local`` means the stack of `sluice local up`: its endpoints come from
``.sluice/local.env`` and are put into this process's environment, so every boto3 client
(sluice.aws makes them) reaches the local servers. Any other stage means AWS through the
usual credential chain: queue URLs by name (``get_queue_url``), function names as the
Serverless Framework makes them.

Every lane's queue and DLQ are known (``StageContext.lanes``, in routing order): locally from
local.env (``SLUICE_QUEUE_URL``/``SLUICE_DLQ_URL`` for a config without lanes, each lane's
``SLUICE_QUEUE_URL_<LANE>``/``SLUICE_DLQ_URL_<LANE>`` otherwise), on AWS by name
(``<queue.name>-<lane>.fifo``). So is the function that applies its items (``worker-<lane>``,
or ``step-<lane>`` for a workflow lane) and, for a workflow lane, its state machine's ARN, built
from ``Settings.state_machine_name`` and the account: the local stack's moto account, or on
AWS the caller's (STS GetCallerIdentity, asked only when the stage has a workflow lane). The
name is what the deploy and the local stack give the machine, so no stack output is needed.
A command for one lane asks ``ctx.lane(name)``: a name the config does not hold, or none
where there are several, is a SettingsError (one line, exit 2).
Failures to reach a stage become a CliError with EXIT_UNAVAILABLE, never a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from sluice import aws
from sluice.settings import Lane, Settings, load_settings
from sluice_tools.errors import EXIT_UNAVAILABLE, EXIT_USAGE, CliError
from sluice_tools.functions import function_table
from sluice_tools.local.env import LocalStackNotRunningError, queue_env_keys, read_local_env, use_local_stack
from sluice_tools.local.scheduler import ACCOUNT_ID as LOCAL_ACCOUNT_ID

LOCAL_STAGE = "local"
# Lets a test (or a second stack) point the CLI at another local.env than the project's.
LOCAL_ENV_FILE_VAR = "SLUICE_LOCAL_ENV_FILE"


@dataclass(frozen=True)
class LaneQueues:
    """One lane, resolved, with its queue and DLQ, and the functions that serve it."""

    lane: Lane
    queue_url: str
    dlq_url: str
    consumer: str  # deployed function names
    target: str  # the function that applies the lane's items: its worker, or a workflow lane's step
    machine_arn: str | None = None  # a workflow lane's state machine; None for a worker lane

    @property
    def name(self) -> str:
        return self.lane.name

    @property
    def cap(self) -> int:
        """Worker invocations in flight at most; for a workflow lane, executions running at most."""
        return self.lane.drain.max_parallel

    @property
    def is_flow(self) -> bool:
        return self.lane.flow is not None

    def queue(self) -> aws.Queue:
        return aws.Queue(self.queue_url)

    def dlq(self) -> aws.Queue:
        return aws.Queue(self.dlq_url)


@dataclass(frozen=True)
class StageContext:
    """Everything an operator command needs to reach one deployed (or local) sluice."""

    settings: Settings
    lanes: tuple[LaneQueues, ...]  # every lane, in routing order (one for a config without lanes)
    functions: dict[str, str]  # function key ("worker") -> deployed name
    database_url: str = ""
    api_url: str = ""
    lambda_stats_url: str = ""
    local_env: dict[str, str] = field(default_factory=dict)

    @property
    def stage(self) -> str:
        return self.settings.stage

    @property
    def is_local(self) -> bool:
        return self.stage == LOCAL_STAGE

    @property
    def has_lanes(self) -> bool:
        """Does the config name lanes (False: one implicit lane, today's names)?"""
        return not self.lanes[0].lane.implicit

    def lane(self, name: str | None = None) -> LaneQueues:
        """One lane's queues; None: the only lane. Raises SettingsError (exit 2) for a name the
        config does not hold, or for None when there are several lanes to pick from."""
        wanted = self.settings.lane(name).name
        return next(x for x in self.lanes if x.name == wanted)

    def selected(self, name: str | None) -> tuple[LaneQueues, ...]:
        """The lane named, or every lane when none is."""
        return self.lanes if name is None else (self.lane(name),)

    @property
    def queue_url(self) -> str:
        return self.lane().queue_url

    @property
    def dlq_url(self) -> str:
        return self.lane().dlq_url

    @property
    def cap(self) -> int:
        return self.lane().cap

    def queue(self, lane: str | None = None) -> aws.Queue:
        return self.lane(lane).queue()

    def dlq(self, lane: str | None = None) -> aws.Queue:
        return self.lane(lane).dlq()

    def routes(self) -> str:
        """SLUICE_LANES for an Enqueuer in this process: every lane's route and queue URL ("" for a
        config without lanes: everything goes to the one queue)."""
        return self.settings.lanes_env({x.name: x.queue_url for x in self.lanes})

    def function(self, key: str) -> str:
        try:
            return self.functions[key]
        except KeyError:
            known = ", ".join(self.functions)
            raise CliError(f"no function {key!r} in stage {self.stage!r} (known: {known})") from None

    def lambda_client(self, read_timeout: int | None = None) -> Any:
        return aws.client("lambda", read_timeout=read_timeout)


def local_env_path() -> Path:
    from sluice_tools.local.env import LOCAL_ENV

    override = os.environ.get(LOCAL_ENV_FILE_VAR)
    return Path(override) if override else LOCAL_ENV


def resolve_stage(stage: str, lane: str | None = None, *, one_lane: bool = False) -> StageContext:
    """The StageContext of ``stage``; raises CliError (exit 3) when it cannot be reached.

    ``lane`` (a command's --lane) is checked before anything is reached, and so, with
    ``one_lane``, is that a lane is picked where the stage has several: either mistake is one
    line and exit 2, whether or not the stage is up."""
    settings = load_settings(stage)
    _lanes_or_usage(settings)
    if lane is not None or one_lane:
        settings.lane(lane)  # SettingsError (exit 2) naming the lanes there are
    if stage == LOCAL_STAGE:
        return _resolve_local(settings)
    return _resolve_aws(settings)


def _function_names(settings: Settings) -> dict[str, str]:
    return {key: settings.function_name(key) for key in function_table(settings)}


def _lane_queues(settings: Settings, urls: dict[str, tuple[str, str]],
                 account: str = "", partition: str = "aws") -> tuple[LaneQueues, ...]:
    """Every lane with its queues and functions; ``account`` (and ``partition``) make each
    workflow lane's state machine ARN."""
    return tuple(LaneQueues(lane, *urls[lane.name], consumer=settings.function_name(lane.function_key("consumer")),
                            target=settings.function_name(lane.target_key),
                            machine_arn=state_machine_arn(settings, lane, account, partition))
                 for lane in settings.resolved_lanes())


def state_machine_arn(settings: Settings, lane: Lane, account: str, partition: str = "aws") -> str | None:
    """A workflow lane's state machine ARN in ``account`` (None for a worker lane)."""
    if lane.flow is None:
        return None
    return f"arn:{partition}:states:{settings.region}:{account}:stateMachine:{settings.state_machine_name(lane)}"


def _has_flows(settings: Settings) -> bool:
    return any(lane.flow is not None for lane in settings.resolved_lanes())


def _caller_account() -> tuple[str, str]:
    """The AWS account and partition of the credentials in use (``arn:aws-cn:...`` in China)."""
    identity = aws.client("sts").get_caller_identity()
    return str(identity["Account"]), str(identity["Arn"]).split(":")[1]


def _lanes_or_usage(settings: Settings) -> list[Lane]:
    try:
        return settings.resolved_lanes()
    except ValueError as exc:  # a lane's override is invalid: `sluice config check` says more
        raise CliError(str(exc), EXIT_USAGE) from None


def _resolve_local(settings: Settings) -> StageContext:
    try:
        env = read_local_env(local_env_path())
    except LocalStackNotRunningError as exc:
        raise CliError(str(exc), EXIT_UNAVAILABLE) from None
    lanes = _lanes_or_usage(settings)
    keys = {lane.name: queue_env_keys(lane) for lane in lanes}
    missing = [k for pair in keys.values() for k in pair if not env.get(k)]
    if missing:
        raise CliError(f"local.env lacks {', '.join(missing)}: is the running stack of another config? "
                       "Restart it with `sluice local up`", EXIT_UNAVAILABLE)
    use_local_stack(env, default_region=settings.region)
    return StageContext(
        settings=settings,
        # The local stack makes each workflow lane's state machine in moto's one account.
        lanes=_lane_queues(settings, {name: (env[q], env[d]) for name, (q, d) in keys.items()}, LOCAL_ACCOUNT_ID),
        functions=_function_names(settings),
        database_url=env.get("DATABASE_URL", ""),
        api_url=env.get("SLUICE_API_URL", ""),
        lambda_stats_url=env.get("SLUICE_LAMBDA_STATS_URL", ""),
        local_env=env,
    )


def _resolve_aws(settings: Settings) -> StageContext:
    os.environ.setdefault("AWS_DEFAULT_REGION", settings.region)
    sqs = aws.client("sqs")
    urls: dict[str, tuple[str, str]] = {}
    account, partition = "", "aws"
    try:
        for lane in _lanes_or_usage(settings):
            urls[lane.name] = (sqs.get_queue_url(QueueName=lane.queue.fifo_name)["QueueUrl"],
                               sqs.get_queue_url(QueueName=lane.queue.dlq_fifo_name)["QueueUrl"])
        if _has_flows(settings):
            account, partition = _caller_account()
    except NoCredentialsError:
        raise CliError(
            f"no AWS credentials for stage {settings.stage!r}: configure them (AWS_PROFILE, "
            "`aws configure` or SSO) or use --stage local",
            EXIT_UNAVAILABLE,
        ) from None
    except NoRegionError:
        raise CliError("no AWS region: set AWS_DEFAULT_REGION", EXIT_UNAVAILABLE) from None
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if "NonExistentQueue" in code or "QueueDoesNotExist" in code:
            raise CliError(
                f"queue {lane.queue.fifo_name} (or its DLQ) does not exist in {settings.region}: "
                f"is stage {settings.stage!r} deployed?",
                EXIT_UNAVAILABLE,
            ) from None
        raise CliError(f"AWS refused to look up the queues of stage {settings.stage!r}: {exc}",
                       EXIT_UNAVAILABLE) from None
    except BotoCoreError as exc:
        raise CliError(f"cannot reach AWS for stage {settings.stage!r}: {exc}", EXIT_UNAVAILABLE) from None
    return StageContext(
        settings=settings,
        lanes=_lane_queues(settings, urls, account, partition),
        functions=_function_names(settings),
        database_url=settings.database.url or os.environ.get("DATABASE_URL", ""),
    )


@contextmanager
def reaching(what: str) -> Iterator[None]:
    """Turn an AWS failure while ``what`` into a one-line CliError with EXIT_UNAVAILABLE."""
    try:
        yield
    except aws.AwsError as exc:
        raise CliError(f"{what}: {exc}", EXIT_UNAVAILABLE) from None
    except (BotoCoreError, ClientError) as exc:
        raise CliError(f"{what}: {exc}", EXIT_UNAVAILABLE) from None
