"""P2's denominator: each component of the drain measured alone, in the same run.

* SQS: receive 10 + one DeleteMessageBatch for them (what consumer and workers do), from
  ``cap`` threads, through the same endpoint (the counting proxy in front of fauxqs);
* DB: the worker's transaction (ledger + invoice) from ``cap`` processes, no queue at all;
* the drain's own rate cap, ``drain.max_rate``: a limit on purpose (it spares the database, P7),
  so when it is the slowest it is the ceiling the drain is measured against.
"""

from __future__ import annotations

import threading
import time

import boto3

from bench.figures import Figure
from bench.scenarios.enqueue_rate import scratch_queue
from bench.stack import REGION, BenchStack
from bench.writers import write_direct


def sqs_receive_delete_rate(stack: BenchStack, messages: int, threads: int) -> float:
    url = scratch_queue(stack, "p2-sqs")
    filler = boto3.client("sqs", endpoint_url=stack.sqs_url, region_name=REGION)
    for start in range(0, messages, 10):
        filler.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "MessageBody": "x" * 200, "MessageGroupId": f"g{(start + i) % 64}",
             "MessageDeduplicationId": f"p2-{start + i}"} for i in range(min(10, messages - start))])
    done = [0] * threads

    def drain(slot: int) -> None:
        sqs = boto3.client("sqs", endpoint_url=stack.sqs_url, region_name=REGION)
        empty = 0
        while empty < 3:  # fauxqs hands out a group only when nothing of it is in flight
            reply = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            got = reply.get("Messages", [])
            empty = 0 if got else empty + 1
            if got:
                sqs.delete_message_batch(QueueUrl=url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])
            done[slot] += len(got)

    workers = [threading.Thread(target=drain, args=(i,)) for i in range(threads)]
    started = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join(300)
    seconds = time.monotonic() - started
    if sum(done) != messages:
        raise RuntimeError(f"SQS component run received {sum(done)} of {messages} messages")
    return messages / seconds


def figure(stack: BenchStack, db_url: str, e2e_items: int, e2e_seconds: float, sqs_messages: int) -> Figure:
    cap = stack.cap
    sqs_rate = sqs_receive_delete_rate(stack, sqs_messages, cap)
    db_run = write_direct(db_url, "p2db", e2e_items, cap)
    max_rate = float(stack.settings.drain.max_rate)
    slowest, which = min((sqs_rate, "SQS receive+delete"), (db_run.rate, "DB transactions"),
                         (max_rate, "drain.max_rate"))
    e2e = e2e_items / e2e_seconds
    return Figure("P2", "end-to-end drain items/s / slowest component alone", round(e2e, 1), "drain items/s",
                  round(slowest, 1), f"{which} items/s",
                  {"items": e2e_items, "cap": cap, "max_rate": max_rate,
                   "sqs_items_per_s": round(sqs_rate, 1),
                   "db_items_per_s": round(db_run.rate, 1)})
