"""Resolve a `--stage` into what an operator command needs: settings, queues, functions.

Stage ``local`` means the stack of `sluice local up`: its endpoints come from
``.sluice/local.env`` and are put into this process's environment, so every boto3 client
(sluice.aws makes them) reaches the local servers. Any other stage means AWS through the
usual credential chain: queue URLs by name (``get_queue_url``), function names as the
Serverless Framework makes them. Failures become a CliError with EXIT_UNAVAILABLE, never a
traceback.
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
from sluice.settings import Settings, load_settings
from sluice_tools.errors import EXIT_UNAVAILABLE, CliError
from sluice_tools.functions import function_table
from sluice_tools.local.env import LocalStackNotRunningError, read_local_env, use_local_stack

LOCAL_STAGE = "local"
# Lets a test (or a second stack) point the CLI at another local.env than the project's.
LOCAL_ENV_FILE_VAR = "SLUICE_LOCAL_ENV_FILE"


@dataclass(frozen=True)
class StageContext:
    """Everything an operator command needs to reach one deployed (or local) sluice."""

    settings: Settings
    queue_url: str
    dlq_url: str
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
    def cap(self) -> int:
        return self.settings.drain.max_parallel

    def queue(self) -> aws.Queue:
        return aws.Queue(self.queue_url)

    def dlq(self) -> aws.Queue:
        return aws.Queue(self.dlq_url)

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


def resolve_stage(stage: str) -> StageContext:
    """The StageContext of ``stage``; raises CliError (exit 3) when it cannot be reached."""
    settings = load_settings(stage)
    if stage == LOCAL_STAGE:
        return _resolve_local(settings)
    return _resolve_aws(settings)


def _function_names(settings: Settings) -> dict[str, str]:
    return {key: settings.function_name(key) for key in function_table(settings)}


def _resolve_local(settings: Settings) -> StageContext:
    try:
        env = read_local_env(local_env_path())
    except LocalStackNotRunningError as exc:
        raise CliError(str(exc), EXIT_UNAVAILABLE) from None
    missing = [k for k in ("SLUICE_QUEUE_URL", "SLUICE_DLQ_URL") if not env.get(k)]
    if missing:
        raise CliError(f"local.env lacks {', '.join(missing)}: restart the stack with `sluice local up`",
                       EXIT_UNAVAILABLE)
    use_local_stack(env, default_region=settings.region)
    return StageContext(
        settings=settings,
        queue_url=env["SLUICE_QUEUE_URL"],
        dlq_url=env["SLUICE_DLQ_URL"],
        functions=_function_names(settings),
        database_url=env.get("DATABASE_URL", ""),
        api_url=env.get("SLUICE_API_URL", ""),
        lambda_stats_url=env.get("SLUICE_LAMBDA_STATS_URL", ""),
        local_env=env,
    )


def _resolve_aws(settings: Settings) -> StageContext:
    os.environ.setdefault("AWS_DEFAULT_REGION", settings.region)
    sqs = aws.client("sqs")
    try:
        queue_url = sqs.get_queue_url(QueueName=settings.queue.fifo_name)["QueueUrl"]
        dlq_url = sqs.get_queue_url(QueueName=settings.queue.dlq_fifo_name)["QueueUrl"]
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
                f"queue {settings.queue.fifo_name} (or its DLQ) does not exist in {settings.region}: "
                f"is stage {settings.stage!r} deployed?",
                EXIT_UNAVAILABLE,
            ) from None
        raise CliError(f"AWS refused to look up the queues of stage {settings.stage!r}: {exc}",
                       EXIT_UNAVAILABLE) from None
    except BotoCoreError as exc:
        raise CliError(f"cannot reach AWS for stage {settings.stage!r}: {exc}", EXIT_UNAVAILABLE) from None
    return StageContext(
        settings=settings,
        queue_url=queue_url,
        dlq_url=dlq_url,
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
