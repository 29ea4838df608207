"""What a Lambda handler needs, read once from its environment (DESIGN.md section 6).

``RuntimeConfig.from_env`` reads the variables that serverless.yml (or the local stack) derives
from ``config/<stage>.yml`` through ``sluice.settings.Settings.runtime_env``. This module imports
nothing heavier than the standard library, so a cold start does not pay for the config file's
pydantic models or the YAML parser: those are the tooling's (``sluice.settings``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_BATCH_SIZE = 100  # messages per worker invocation: several receives of 10 (DESIGN.md section 12)
DEFAULT_LANE = "default"  # the one lane of a config without `lanes`
# Shards of unordered work. A FIFO queue hands out no group with a message in flight, so groups
# bound what can be in flight: chosen from measurement (docs/adr/0008-queue-groups.md).
DEFAULT_GROUPS = 64


class SettingsError(Exception):
    """Settings are missing, malformed or unsafe; the message says which and why."""


@dataclass(frozen=True)
class RuntimeConfig:
    """What a handler needs, read once from its environment."""

    stage: str
    lane: str
    lanes: str  # SLUICE_LANES: every lane's route, for the enqueuer ("" = one lane, SLUICE_QUEUE_URL)
    queue_url: str
    dlq_url: str
    queue_arn: str
    worker_function: str
    flow_arn: str  # a workflow lane's state machine ("" = a worker lane)
    flow_max_run_s: int  # how long one of its executions may run (the failure scan's look-back)
    db_secret_id: str
    database_url: str
    db_name: str
    groups: int
    max_tps: int
    visibility_s: int
    max_receive_count: int
    consumers: int
    max_parallel: int
    min_parallel: int
    adaptive: bool
    max_rate: float
    safety_margin_ms: int
    wait_s: int
    worker_timeout_s: int
    batch_size: int
    max_items: int
    max_body_bytes: int

    @property
    def slots_per_consumer(self) -> int:
        """Each consumer owns an equal share of the cap, so all of them together never exceed it."""
        return max(1, self.max_parallel // self.consumers)

    @property
    def min_slots_per_consumer(self) -> int:
        """Each consumer's share of the floor; at least one, and never above its share of the cap."""
        return min(self.slots_per_consumer, max(1, self.min_parallel // self.consumers))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RuntimeConfig:
        env = os.environ if env is None else env

        def text(name: str, default: str | None = None) -> str:
            value = env.get(name, default)
            if value is None:
                raise SettingsError(f"environment variable {name} is not set")
            return value

        def number(name: str, kind: Any, default: str) -> Any:
            raw = text(name, default)
            try:
                value = kind(raw)
            except ValueError:
                raise SettingsError(f"environment variable {name}={raw!r} is not a {kind.__name__}") from None
            if value < 0:
                raise SettingsError(f"environment variable {name}={raw!r} must not be negative")
            return value

        def flag(name: str, default: str) -> bool:
            raw = text(name, default)
            if raw.strip().lower() not in ("true", "false"):
                raise SettingsError(f"environment variable {name}={raw!r} must be 'true' or 'false'")
            return raw.strip().lower() == "true"

        config = cls(
            stage=text("SLUICE_STAGE", "dev"),
            lane=text("SLUICE_LANE", DEFAULT_LANE),
            lanes=text("SLUICE_LANES", ""),
            queue_url=text("SLUICE_QUEUE_URL", ""),
            dlq_url=text("SLUICE_DLQ_URL", ""),
            queue_arn=text("SLUICE_QUEUE_ARN", ""),
            worker_function=text("SLUICE_WORKER_FUNCTION", ""),
            flow_arn=text("SLUICE_FLOW_ARN", ""),
            flow_max_run_s=number("SLUICE_FLOW_MAX_RUN_S", int, "0"),
            db_secret_id=text("SLUICE_DB_SECRET_ID", ""),
            database_url=text("DATABASE_URL", ""),
            db_name=text("SLUICE_DB_NAME", "sluice"),
            groups=number("SLUICE_QUEUE_GROUPS", int, str(DEFAULT_GROUPS)),
            max_tps=number("SLUICE_QUEUE_MAX_TPS", int, "300"),
            visibility_s=number("SLUICE_QUEUE_VISIBILITY_S", int, "180"),
            max_receive_count=number("SLUICE_QUEUE_MAX_RECEIVE_COUNT", int, "5"),
            consumers=number("SLUICE_DRAIN_CONSUMERS", int, "1"),
            max_parallel=number("SLUICE_DRAIN_MAX_PARALLEL", int, "4"),
            min_parallel=number("SLUICE_DRAIN_MIN_PARALLEL", int, "1"),
            adaptive=flag("SLUICE_DRAIN_ADAPTIVE", "true"),
            max_rate=number("SLUICE_DRAIN_MAX_RATE", float, "200"),
            safety_margin_ms=number("SLUICE_DRAIN_SAFETY_MARGIN_MS", int, "5000"),
            wait_s=number("SLUICE_DRAIN_WAIT_S", int, "1"),
            worker_timeout_s=number("SLUICE_WORKER_TIMEOUT_S", int, "30"),
            batch_size=number("SLUICE_WORKER_BATCH_SIZE", int, "10"),
            max_items=number("SLUICE_ENQUEUER_MAX_ITEMS", int, "1000"),
            max_body_bytes=number("SLUICE_ENQUEUER_MAX_BODY_BYTES", int, "1048576"),
        )
        if (config.groups < 1 or config.max_parallel < 1 or config.consumers < 1
                or not 1 <= config.batch_size <= MAX_BATCH_SIZE):
            raise SettingsError(
                "SLUICE_QUEUE_GROUPS, SLUICE_DRAIN_MAX_PARALLEL and SLUICE_DRAIN_CONSUMERS must be >= 1 "
                f"and SLUICE_WORKER_BATCH_SIZE within 1..{MAX_BATCH_SIZE}"
            )
        if not 1 <= config.min_parallel <= config.max_parallel:
            raise SettingsError(
                f"SLUICE_DRAIN_MIN_PARALLEL ({config.min_parallel}) must be within 1..SLUICE_DRAIN_MAX_PARALLEL "
                f"({config.max_parallel})"
            )
        return config
