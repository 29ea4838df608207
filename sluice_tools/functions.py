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

    @property
    def module(self) -> str:
        """The importable module of the handler (``enqueuer.handler``)."""
        return self.handler.rsplit(".", 1)[0].replace("/", ".")

    @property
    def attribute(self) -> str:
        return self.handler.rsplit(".", 1)[1]


def function_table(settings: Settings) -> dict[str, FunctionSpec]:
    d, w, e = settings.drain, settings.worker, settings.enqueuer
    return {
        "enqueuer": FunctionSpec("enqueuer", "enqueuer/handler.lambda_handler", e.timeout_s, e.memory_mb, None),
        # Reserved concurrency = consumers: a tick that finds the previous drain still running is
        # throttled instead of piling a second drain on top of it.
        "consumer": FunctionSpec("consumer", "consumer/handler.lambda_handler", d.timeout_s, d.memory_mb,
                                 d.consumers, schedule=d.schedule),
        "worker": FunctionSpec("worker", "worker/handler.lambda_handler", w.timeout_s, w.memory_mb,
                               w.reserved_concurrency),
        # Runs the schema migrations inside the VPC after a deploy (`sluice db migrate --stage S`).
        "migrate": FunctionSpec("migrate", "worker/migrate.lambda_handler", 300, 256, 1),
    }
