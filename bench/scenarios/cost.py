"""P1 restated as all-in dollars per million items: everything a drain is billed for, measured,
against an event source mapping doing the same worker work.

sluice: SQS requests (the proxy's counts) + Lambda requests (consumer and worker invocations) +
GB-s of the workers (the Lambda service's summed worker durations x worker memory) and of the
consumer (its drains' ``used_ms`` x consumer memory: a consumer is billed while it drains).

The model (bench/scenarios/request_model.py): full batches of 10, one receive + one invocation +
one DeleteMessageBatch per batch, and the same worker GB-s as sluice's workers measured (the same
tasks, the same durations; an ESM has no consumer to pay for). Prices: sluice_tools/ops/prices.py.
"""

from __future__ import annotations

from bench.figures import Figure
from bench.scenarios import request_model as esm
from bench.scenarios.drain_burst import DrainRun, sluice_requests
from bench.stack import BenchStack
from sluice_tools.ops.prices import price

PER_MILLION = 1_000_000


def gb_seconds(run: DrainRun, stack: BenchStack) -> tuple[float, float]:
    """(worker GB-s, consumer GB-s) of ``run``."""
    settings = stack.lane(run.lane).settings
    worker = run.worker["duration_ms"] / 1000 * settings.worker.memory_mb / 1024
    consumer = sum(r["used_ms"] for r in run.reports) / 1000 * settings.drain.memory_mb / 1024
    return worker, consumer


def figure(run: DrainRun, stack: BenchStack) -> Figure:
    n = run.items
    invocations, sqs_calls = sluice_requests(run)
    worker_gb_s, consumer_gb_s = gb_seconds(run, stack)
    scale = PER_MILLION / n
    sluice_usd = (sqs_calls * price("sqs_fifo_request") + invocations * price("lambda_request")
                  + (worker_gb_s + consumer_gb_s) * price("lambda_gb_second")) * scale
    model = esm.esm_burst(n)
    esm_usd = (model.sqs_calls * price("sqs_fifo_request") + model.lambda_invocations * price("lambda_request")
               + worker_gb_s * price("lambda_gb_second")) * scale
    consumer_share = consumer_gb_s * price("lambda_gb_second") * scale / sluice_usd if sluice_usd else 0.0
    return Figure(
        "P1", "all-in USD per million items: sluice / ESM model", round(sluice_usd, 3), "sluice $/M",
        round(esm_usd, 3), "ESM $/M",
        {"items": n, "sqs_calls": sqs_calls, "lambda_invocations": invocations,
         "worker_gb_s": round(worker_gb_s, 2), "consumer_gb_s": round(consumer_gb_s, 2),
         "consumer_share_of_usd": round(consumer_share, 3),
         "esm_sqs": model.sqs_calls, "esm_invocations": model.lambda_invocations,
         "esm_worker_gb_s": round(worker_gb_s, 2)},
        goal="<= 1.0",
        note=("the consumer is billed for the whole drain while it waits on its workers; an ESM has no "
              "consumer, and its full batches of 10 make fewer requests" if esm_usd < sluice_usd else ""),
    )
