"""Request validation: all-or-nothing, every bad item listed by index and reason."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from sluice.enqueue import EnqueueRequestError, chain_batches, decode_request, plan_batches, prepare_items
from sluice.envelope import Envelope, dedup_id
from sluice.tasks import load_tasks, task

pytestmark = pytest.mark.unit

load_tasks(("worker.tasks.invoices",))


def invoice(n: int, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"task": "invoice.record", "key": f"INV-{n}",
                            "payload": {"customer": "acme", "amount_cents": 100 + n, "currency": "EUR"}}
    item.update(extra)
    return item


def prepare(items: Any, **kw: Any) -> Any:
    return prepare_items({"items": items}, max_items=kw.pop("max_items", 100), groups=16, **kw)


def test_valid_items_become_envelopes_with_derived_ids() -> None:
    # GIVEN two valid items, one with a group
    prepared = prepare([invoice(1), invoice(2, group="acme")])
    # THEN each carries its envelope, dedup id of task:key and a group id
    assert [p.index for p in prepared] == [0, 1]
    assert prepared[0].outgoing().dedup_id == dedup_id("invoice.record", "INV-1")
    assert prepared[0].group_id.startswith("invoice.record:")
    assert prepared[1].group_id == "acme"
    assert Envelope.from_body(prepared[1].body).payload["amount_cents"] == 102


def test_missing_key_defaults_to_the_payload_hash() -> None:
    item = invoice(1)
    del item["key"]
    (prepared,) = prepare([item])
    assert len(prepared.key) == 64


def errors_of(items: Any, **kw: Any) -> EnqueueRequestError:
    with pytest.raises(EnqueueRequestError) as caught:
        prepare(items, **kw)
    return caught.value


def test_every_bad_item_is_listed_by_index_with_its_reason() -> None:
    # GIVEN a mix of good and bad items
    items = [
        invoice(0),
        {"task": "no.such", "payload": {}},
        invoice(2, key=""),
        invoice(3, group="bad group!"),
        {"task": "invoice.record", "key": "X", "payload": {"customer": "acme", "amount_cents": -1,
                                                            "currency": "EUR"}},
        invoice(5, colour="red"),
        {"key": "K", "payload": {}},
        "not an object",
        invoice(8, key="a\nb"),
        invoice(9, key="k" * 257),
        {"task": "invoice.record", "key": "nopayload"},
        invoice(0),
    ]
    # WHEN validated
    err = errors_of(items)
    # THEN a 400 names every bad index (all but the first), each with a reason
    assert err.status == 400
    reasons = {e["index"]: e["reason"] for e in err.errors}
    assert sorted(reasons) == list(range(1, 12))
    assert "unknown task 'no.such'" in reasons[1]
    assert "key must be 1..256" in reasons[2]
    assert "group may hold only" in reasons[3]
    assert "amount_cents" in reasons[4]
    assert "unknown field(s) colour" in reasons[5]
    assert "task is required" in reasons[6]
    assert "must be an object" in reasons[7]
    assert "printable" in reasons[8]
    assert "got 257" in reasons[9]
    assert "payload is required" in reasons[10]
    assert "duplicates item 0" in reasons[11]
    assert err.body["error"].startswith("11 of 12 items are invalid")


@pytest.mark.parametrize(
    ("request_body", "status", "reason"),
    [
        ([], 400, "must be a JSON object"),
        ({"items": []}, 400, "'items' is empty"),
        ({"items": {}}, 400, "must be a list"),
        ({"things": []}, 400, "must be a JSON object"),
        ({"items": [invoice(1)], "extra": 1}, 400, "unknown top-level field"),
    ],
)
def test_request_shape_errors(request_body: Any, status: int, reason: str) -> None:
    with pytest.raises(EnqueueRequestError, match=reason) as caught:
        prepare_items(request_body, max_items=10, groups=16)
    assert caught.value.status == status


def test_too_many_items_is_413() -> None:
    err = errors_of([invoice(i) for i in range(11)], max_items=10)
    assert err.status == 413
    assert "11 items" in err.message and "limit is 10" in err.message


def test_decode_refuses_oversized_empty_and_bad_json() -> None:
    # GIVEN bodies that are too large, empty, not JSON, or not UTF-8
    with pytest.raises(EnqueueRequestError, match="limit is 1024") as caught:
        decode_request(b"x" * 1025, 1024)
    assert caught.value.status == 413
    with pytest.raises(EnqueueRequestError, match="limit is 1024") as caught:
        decode_request({"items": ["x" * 2000]}, 1024)
    assert caught.value.status == 413
    for raw in (b"", b"  ", b"{not json", b"\xff\xfe"):
        with pytest.raises(EnqueueRequestError) as caught:
            decode_request(raw, 1024)
        assert caught.value.status == 400
    # AND good JSON, as text or bytes, decodes
    assert decode_request(json.dumps({"items": []}), 1024) == {"items": []}


class BlobPayload(BaseModel):
    data: str


@task("unit.blob", BlobPayload)
def _blob(tx: Any, payload: BlobPayload, item: Any) -> None:
    """A permissive test task: any string payload, so size limits can be reached."""


def test_message_over_256_kib_is_refused() -> None:
    # GIVEN one item whose envelope would exceed the SQS message limit
    err = errors_of([{"task": "unit.blob", "key": "ok", "payload": {"data": "x"}},
                     {"task": "unit.blob", "key": "huge", "payload": {"data": "x" * 262_144}}])
    # THEN only that item is listed, with the size it would have
    assert [e["index"] for e in err.errors] == [1]
    assert "SQS allows 262144" in err.errors[0]["reason"]


def test_batches_also_respect_the_256_kib_batch_limit() -> None:
    # GIVEN 6 items of ~100 KiB each / WHEN planned
    prepared = prepare([{"task": "unit.blob", "key": str(i), "payload": {"data": "x" * 100_000}}
                        for i in range(6)])
    # THEN no batch holds more than 256 KiB (two per batch), order kept
    batches = plan_batches(prepared)
    assert [len(b) for b in batches] == [2, 2, 2]
    assert [p.index for b in batches for p in b] == list(range(6))


def test_batches_are_tens_in_request_order() -> None:
    prepared = prepare([invoice(i) for i in range(25)])
    batches = plan_batches(prepared)
    assert [len(b) for b in batches] == [10, 10, 5]
    assert [p.index for b in batches for p in b] == list(range(25))


def test_batches_sharing_a_client_group_form_one_ordered_chain() -> None:
    # GIVEN 30 items: "acme" items at 0 and 25 (batches 0 and 2), the rest in default groups
    items = [invoice(i) for i in range(30)]
    items[0]["group"] = "acme"
    items[25]["group"] = "acme"
    # WHEN chained
    chains = chain_batches(plan_batches(prepare(items)))
    # THEN batches 0 and 2 are one chain, in order; batch 1 may go in parallel
    firsts = sorted([b[0].index for b in chain] for chain in chains)
    assert firsts == [[0, 20], [10]]
