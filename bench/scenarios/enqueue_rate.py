"""P5: enqueue makes ceil(n/10) batch calls and keeps under its configured rate.

The cap is set below what the endpoint takes, which this run measures first: the same
enqueue with the cap out of the way. Call times come from a botocore hook on the client
the Enqueuer uses, so every SendMessageBatch is seen, including retried ones.
"""

from __future__ import annotations

import math
import time
from typing import Any

import boto3

from bench.figures import Figure
from bench.stack import REGION, BenchStack
from bench.writers import invoice_item
from sluice.aws import Queue
from sluice.enqueue import Enqueuer

UNCAPPED_TPS = 100_000


def max_in_window(times: list[float], window_s: float = 1.0) -> int:
    """The most calls that fell in any window of ``window_s`` seconds (two-pointer sweep)."""
    ordered, best, start = sorted(times), 0, 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def steady_rate(times: list[float]) -> float:
    """Calls per second after the first second: the token bucket lets one second's worth go
    at once (never more than max_tps in any second), so the steady rate is what follows."""
    ordered = sorted(times)
    if not ordered:
        return 0.0
    after = [t for t in ordered if t >= ordered[0] + 1.0]
    if len(after) < 2:
        span = ordered[-1] - ordered[0]
        return len(ordered) / span if span > 0 else float(len(ordered))
    return (len(after) - 1) / (after[-1] - after[0])


def timed_enqueue(stack: BenchStack, queue_url: str, items: list[dict[str, Any]], max_tps: float
                  ) -> tuple[list[float], float, int]:
    """(call times, seconds, items accepted) of one enqueue of ``items`` at ``max_tps``."""
    sqs = boto3.client("sqs", endpoint_url=stack.sqs_url, region_name=REGION)
    calls: list[float] = []
    sqs.meta.events.register("before-send.sqs.SendMessageBatch", lambda **_: calls.append(time.monotonic()))
    enqueuer = Enqueuer(Queue(queue_url, sqs=sqs), groups=stack.settings.queue.groups, max_items=len(items),
                        max_body_bytes=64 * 1024 * 1024, max_tps=max_tps)
    started = time.monotonic()
    result = enqueuer.enqueue({"items": items})
    seconds = time.monotonic() - started
    if result.failed:
        first = next(iter(result.failed.values()))
        raise RuntimeError(f"enqueue refused {len(result.failed)} item(s): {first}")
    return calls, seconds, len(result.sent)


def scratch_queue(stack: BenchStack, name: str) -> str:
    url: str = stack.sqs.create_queue(QueueName=f"{stack.settings.queue.name}-{name}.fifo",
                                      Attributes={"FifoQueue": "true"})["QueueUrl"]
    return url


def run(stack: BenchStack, items: int, max_tps: int) -> list[Figure]:
    # Uncapped first: what the endpoint takes from this client (same threads, same batches).
    free_url = scratch_queue(stack, "p5-free")
    free_calls, free_s, _ = timed_enqueue(stack, free_url, [invoice_item("p5f", i) for i in range(items)],
                                          UNCAPPED_TPS)
    endpoint_tps = len(free_calls) / free_s
    capped_url = scratch_queue(stack, "p5-capped")
    capped_items = [invoice_item("p5c", i) for i in range(items)]
    calls, seconds, accepted = timed_enqueue(stack, capped_url, capped_items, max_tps)
    expected_calls = math.ceil(items / 10)
    busiest_second = max_in_window(calls)
    inputs = {"items": items, "max_tps": max_tps}
    return [
        Figure("P5", "enqueue batch calls / ceil(n/10)", len(calls), "SendMessageBatch calls",
               expected_calls, "ceil(n/10)", {**inputs, "accepted": accepted}, expect="== 1"),
        Figure("P5", "busiest 1 s of calls / configured max_tps", busiest_second, "calls in busiest 1 s",
               max_tps, "max_tps", inputs, expect="<= 1"),
        Figure("P5", "steady calls/s / configured max_tps", round(steady_rate(calls), 1),
               "calls/s after 1st s",
               max_tps, "max_tps", {**inputs, "seconds": round(seconds, 2)}),
        Figure("P5", "configured max_tps / endpoint calls/s uncapped", max_tps, "max_tps",
               round(endpoint_tps, 1), "uncapped calls/s",
               {"items": items, "uncapped_seconds": round(free_s, 2)},
               expect="<= 1"),
    ]
