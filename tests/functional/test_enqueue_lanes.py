"""One request fanned out over lanes, each lane's items to its own queue in tens (moto's SQS)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sluice.enqueue import Enqueuer, EnqueueRequestError
from sluice.lanes import LaneRoute
from tests.conftest import FifoQueues, make_fifo_queues

pytestmark = pytest.mark.functional


def invoice(i: int) -> dict[str, Any]:
    return {"task": "invoice.record", "key": f"L-I-{i}",
            "payload": {"customer": "acme", "amount_cents": 100 + i, "currency": "EUR"}}


def notification(i: int, vendor: str) -> dict[str, Any]:
    return {"task": "notify.send", "key": f"L-N-{vendor}-{i}",
            "payload": {"vendor": vendor, "to": f"+49151{i:08d}", "text": "hello"}}


def bodies(queues: FifoQueues) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while True:
        got = queues.sqs.receive_message(QueueUrl=queues.url, MaxNumberOfMessages=10).get("Messages", [])
        if not got:
            return found
        found += [json.loads(m["Body"]) for m in got]
        queues.sqs.delete_message_batch(QueueUrl=queues.url, Entries=[
            {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(got)])


def test_each_lane_gets_only_its_items_in_tens(moto_aws: str) -> None:
    # GIVEN three lanes, each with its own queue
    ledger, a, b = (make_fifo_queues(moto_aws) for _ in range(3))
    lanes = [LaneRoute("ledger", ("invoice.record",), {}, ledger.url),
             LaneRoute("vendor-a", ("notify.send",), {"payload.vendor": ("a",)}, a.url),
             LaneRoute("vendor-b", ("notify.send",), {"payload.vendor": ("b",)}, b.url)]
    calls: list[str] = []
    enqueuer = Enqueuer(lanes=lanes, backoff_s=0.01)
    for queue in enqueuer.queues.values():
        queue.sqs.meta.events.register("provide-client-params.sqs.SendMessageBatch",
                                       lambda params, **_: calls.append(params["QueueUrl"]),
                                       unique_id="lane-calls")
    # WHEN one request holds 12 invoices, 15 notifications for vendor a and 3 for vendor b
    items = [invoice(i) for i in range(12)] + [notification(i, "a") for i in range(15)] + \
            [notification(i, "b") for i in range(3)]
    try:
        result = enqueuer.enqueue({"items": items})
    finally:
        for queue in enqueuer.queues.values():
            queue.sqs.meta.events.unregister("provide-client-params.sqs.SendMessageBatch", unique_id="lane-calls")
    # THEN every item is accepted with its lane, and each queue holds exactly its lane's items
    assert result.status_code == 202
    assert [row["lane"] for row in result.body["items"]] == ["ledger"] * 12 + ["vendor-a"] * 15 + ["vendor-b"] * 3
    assert sorted(m["key"] for m in bodies(ledger)) == sorted(f"L-I-{i}" for i in range(12))
    assert sorted(m["key"] for m in bodies(a)) == sorted(f"L-N-a-{i}" for i in range(15))
    assert sorted(m["key"] for m in bodies(b)) == sorted(f"L-N-b-{i}" for i in range(3))
    # AND in tens per lane: ceil(12/10) + ceil(15/10) + ceil(3/10) = 5 batch calls
    assert sorted(calls.count(q.url) for q in (ledger, a, b)) == [1, 2, 2]


def test_one_unroutable_item_enqueues_nothing_in_any_lane(moto_aws: str) -> None:
    # GIVEN two lanes and a request with good items for both and one for a vendor no lane serves
    ledger, a = make_fifo_queues(moto_aws), make_fifo_queues(moto_aws)
    enqueuer = Enqueuer(lanes=[LaneRoute("ledger", ("invoice.record",), {}, ledger.url),
                               LaneRoute("vendor-a", ("notify.send",), {"payload.vendor": ("a",)}, a.url)])
    # WHEN enqueued / THEN a 400 naming the item, and neither queue got anything
    with pytest.raises(EnqueueRequestError) as refused:
        enqueuer.enqueue({"items": [invoice(1), notification(1, "a"), notification(2, "zz")]})
    assert refused.value.status == 400 and [e["index"] for e in refused.value.errors] == [2]
    assert bodies(ledger) == [] and bodies(a) == []
