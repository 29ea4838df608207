"""The demo's lanes and burst, without a stack: the lanes pass the config checks, and the burst
puts the flow's invoices (and only those) in the flow lane, with the refused ones large and in the
currency the accounting stand-in is made to refuse."""

from __future__ import annotations

import pytest

from sluice.settings import load_settings
from sluice_tools.demo import (
    FLOW_CUSTOMERS,
    LARGE_CENTS,
    REFUSED_CURRENCY,
    demo_settings,
    make_burst,
)
from worker.tasks.invoices import KNOWN_CURRENCIES

pytestmark = pytest.mark.unit


def test_the_demo_lanes_pass_the_config_checks_with_the_flow_lane_first() -> None:
    # GIVEN the local settings with the demo's lanes, the first worker lane's cap set to 6
    settings = demo_settings(load_settings("local"), 6, True)
    # THEN no check fails (no lane shadows another) and the flow lane, first, takes its customers' invoices
    assert settings.problems(["invoice.record", "notify.send", "accounting.post"]) == []
    lanes = settings.resolved_lanes()
    assert [lane.name for lane in lanes] == ["invoices-flow", "ledger", "vendor-a", "vendor-b"]
    assert lanes[0].flow is not None and dict(lanes[0].match) == {"payload.customer": FLOW_CUSTOMERS}
    # AND --cap went to the ledger lane, not to the flow lane
    assert (lanes[1].drain.max_parallel, lanes[1].worker.reserved_concurrency) == (6, 6)
    assert lanes[0].drain.max_parallel == lanes[0].worker.reserved_concurrency != 6


def test_the_burst_routes_the_flow_invoices_alone_to_the_flow_lane() -> None:
    # GIVEN the demo's lanes
    lanes = demo_settings(load_settings("local"), None, True).resolved_lanes()
    flow_lane, ledger = lanes[0], lanes[1]
    # WHEN a burst holds 300 other invoices and 60 flow invoices, 5 of them refused, 4 sent twice
    burst = make_burst(300, 3, 0, 100, seed=7, flow=60, flow_refused=5, flow_duplicates=4,
                       flow_customers=FLOW_CUSTOMERS)
    # THEN exactly the flow's invoices route to the flow lane, the other invoices to the ledger lane
    assert burst.keys_in(flow_lane, lanes) == burst.flow_keys and len(burst.flow_keys) == 60
    assert burst.keys_in(ledger, lanes) == burst.valid_keys | burst.poison_keys
    # AND each refused one is large and in the refused currency, which no other invoice uses and
    # invoice.record takes (so SaveInvoice saves it before PostToAccounting is refused)
    assert len(burst.flow_refused_keys) == 5 and burst.flow_refused_keys <= burst.flow_large_keys
    for key, item in burst.items.items():
        refused = key in burst.flow_refused_keys
        assert (item["payload"]["currency"] == REFUSED_CURRENCY) == refused
        if refused:
            assert item["payload"]["amount_cents"] >= LARGE_CENTS
    assert REFUSED_CURRENCY in KNOWN_CURRENCIES
    # AND the large ones are those IsLarge sends to accounting; some flow invoices are small
    assert burst.flow_large_keys == {k for k in burst.flow_keys
                                     if burst.items[k]["payload"]["amount_cents"] >= LARGE_CENTS}
    assert burst.flow_keys - burst.flow_large_keys
    # AND the 4 flow keys sent twice go in requests after the first pass
    repeated = {x["key"] for request in burst.requests[burst.first_pass:] for x in request}
    assert len(repeated & burst.flow_keys) == 4

