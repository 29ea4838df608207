"""The function table: one definition of each Lambda function sluice runs.

The local stack starts its function processes from this table; serverless.yml declares the
same functions from the same config file, and tests/infra proves the packaged template and
this table agree (names, handlers, timeouts, memory, concurrency, environment names).
"""

from __future__ import annotations

from dataclasses import dataclass

from sluice.settings import RUNTIME_ENV_NAMES, Settings


@dataclass(frozen=True)
class FunctionSpec:
    key: str  # the function's key in serverless.yml
    handler: str  # "path/module.function", the Lambda handler string
    timeout_s: int
    memory_mb: int
    reserved_concurrency: int | None
    schedule: str | None = None  # EventBridge expression for scheduled functions
    env_names: tuple[str, ...] = RUNTIME_ENV_NAMES
    lane: str | None = None  # the lane a consumer or worker serves; None for the stage-wide ones
    role: str = ""  # "enqueuer" | "consumer" | "worker" | "step" | "migrate"

    @property
    def module(self) -> str:
        """The importable module of the handler (``enqueuer.handler``)."""
        return self.handler.rsplit(".", 1)[0].replace("/", ".")

    @property
    def attribute(self) -> str:
        return self.handler.rsplit(".", 1)[1]


def function_table(settings: Settings) -> dict[str, FunctionSpec]:
    """Every function of the stage by its serverless.yml key: the enqueuer and migrate once, a
    consumer and a worker per lane (``consumer``/``worker`` for a config without lanes,
    ``consumer-<lane>``/``worker-<lane>`` otherwise), each with its lane's settings."""
    e = settings.enqueuer
    table = {
        "enqueuer": FunctionSpec("enqueuer", "enqueuer/handler.lambda_handler", e.timeout_s, e.memory_mb, None,
                                 role="enqueuer"),
    }
    for lane in settings.resolved_lanes():
        d, w = lane.drain, lane.worker
        consumer, target = lane.function_key("consumer"), lane.target_key
        # Reserved concurrency = consumers: a tick that finds the previous drain still running is
        # throttled instead of piling a second drain on top of it.
        table[consumer] = FunctionSpec(consumer, "consumer/handler.lambda_handler", d.timeout_s, d.memory_mb,
                                       d.consumers, schedule=d.schedule, lane=lane.name, role="consumer")
        # Reserved concurrency = the lane's cap: what holds it when a worker outlives its drain. A
        # workflow lane's step function (its Task states call it) takes the worker's settings.
        handler = "worker/step.lambda_handler" if lane.flow is not None else "worker/handler.lambda_handler"
        table[target] = FunctionSpec(target, handler, w.timeout_s, w.memory_mb, w.reserved_concurrency,
                                     lane=lane.name, role=lane.target_role)
    # Runs the schema migrations inside the VPC after a deploy (`sluice db migrate --stage S`).
    table["migrate"] = FunctionSpec("migrate", "worker/migrate.lambda_handler", 300, 256, 1, role="migrate")
    return table
