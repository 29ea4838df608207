"""lambda_handler for the consumer: any event (normally an EventBridge schedule) -> one drain.

A worker lane's drain invokes workers (sluice/drain.py). A workflow lane's (SLUICE_FLOW_ARN set)
first sends the executions that failed lately to the DLQ, then starts one execution per message
under the cap on running executions (sluice/flows.py, docs/adr/0007-workflow-lanes.md).

The time budget is the Lambda's own: ``context.get_remaining_time_in_millis``. Queue,
invoker, queue ARN, the measured worker durations and the concurrency limit live for the
container, so a warm consumer starts with the prediction and the limit learned by the drains
before it. A cold one reads the limit's saved state from its queue's tag once
(sluice/limit_state.py), and each drain writes it back when it moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from sluice.aws import AwsError, FunctionInvoker, Queue
from sluice.budget import BatchBudget
from sluice.concurrency import ConcurrencyLimit, ConcurrencyLimitError, limit_for
from sluice.drain import Drainer
from sluice.flows import dead_letter_failures, start_executions
from sluice.limit_state import QueueTagStore
from sluice.observability import logger, metrics
from sluice.runtime import RuntimeConfig
from sluice.sfn import StateMachine


@dataclass
class _Container:
    config: RuntimeConfig
    queue: Queue
    invoker: FunctionInvoker
    budget: BatchBudget
    limit: ConcurrencyLimit
    limit_store: QueueTagStore
    queue_arn: str = ""
    machine: StateMachine | None = None  # a workflow lane's state machine
    dlq: Queue | None = None


_container: _Container | None = None
# A Lambda client to use instead of boto3's (an in-process stand-in in tests; None = boto3).
_lambda_client: Any | None = None


def get_container() -> _Container:
    global _container
    if _container is None:
        config = RuntimeConfig.from_env()
        queue = Queue(config.queue_url)
        store = QueueTagStore(queue)
        _container = _Container(
            config=config,
            queue=queue,
            invoker=FunctionInvoker(config.worker_function, config.worker_timeout_s,
                                    lambda_client=_lambda_client),
            budget=BatchBudget(config.worker_timeout_s * 1000),
            limit=_cold_limit(config, store),
            limit_store=store,
        )
        if config.flow_arn:
            _container.machine = StateMachine(config.flow_arn)
            _container.dlq = Queue(config.dlq_url)
    if not _container.queue_arn:
        # serverless.yml sets SLUICE_QUEUE_ARN; without it (a deployment of its own) ask SQS once,
        # which needs sqs:GetQueueAttributes.
        _container.queue_arn = _container.config.queue_arn or _container.queue.arn
    return _container


def _cold_limit(config: RuntimeConfig, store: QueueTagStore) -> ConcurrencyLimit:
    """The limit a cold consumer starts with: resumed from the saved state when there is one."""
    if not config.adaptive:
        return limit_for(config)
    saved = store.load()
    try:
        limit = limit_for(config, saved)
    except ConcurrencyLimitError as exc:
        logger.warning("ignoring the saved concurrency limit", extra={"saved": saved, "error": str(exc)})
        limit = limit_for(config)
    store.started_from(limit.to_dict())
    return limit


def reset(lambda_client: Any | None = None) -> None:
    """Forget the cached dependencies (tests change the environment between cases), and
    optionally invoke workers through ``lambda_client`` (boto3's ``invoke`` shape)."""
    global _container, _lambda_client
    _container = None
    _lambda_client = lambda_client


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    deps = get_container()
    if deps.machine is not None and deps.dlq is not None:
        return _drain_flow(deps, deps.machine, deps.dlq, context)
    drainer = Drainer.from_config(
        deps.config,
        context.get_remaining_time_in_millis,
        queue=deps.queue,
        invoker=deps.invoker,
        budget=deps.budget,
        queue_arn=deps.queue_arn,
        limit=deps.limit,
    )
    report = drainer.run()
    if report.adaptive:
        deps.limit_store.save(deps.limit.to_dict())
    return report.to_dict()


def _drain_flow(deps: _Container, machine: StateMachine, dlq: Queue, context: LambdaContext) -> dict[str, Any]:
    """A workflow lane's drain: failures to the DLQ first (a scan that fails is retried by the
    next drain, within the dedup window), then the starts."""
    config = deps.config
    try:
        failures = dead_letter_failures(machine, dlq, max_run_s=config.flow_max_run_s or 86400).to_dict()
    except AwsError as exc:
        logger.exception("could not scan for failed executions; the next drain tries again")
        failures = {"error": str(exc)}
    report = start_executions(
        deps.queue, dlq, machine, cap=config.max_parallel, consumers=config.consumers, max_rate=config.max_rate,
        remaining_ms=context.get_remaining_time_in_millis, reserve_ms=config.safety_margin_ms,
        wait_s=config.wait_s)
    return {"lane": config.lane, "flow": report.to_dict(), "failures": failures}
