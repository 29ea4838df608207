"""Lanes: config, routing at enqueue, and the checks `sluice config check` makes (DESIGN.md s. 11)."""

from __future__ import annotations

from typing import Any

import pytest

from sluice.enqueue import EnqueueRequestError, prepare_items
from sluice.lanes import LaneRoute, route, routes_from_env, why_unroutable
from sluice.settings import Settings, SettingsError
from sluice.tasks import load_tasks

pytestmark = pytest.mark.unit

load_tasks(("worker.tasks.invoices", "worker.tasks.notify"))
TASKS = {"invoice.record", "notify.send"}


def settings(lanes: dict[str, Any], **extra: Any) -> Settings:
    base: dict[str, Any] = {
        "queue": {"name": "q", "visibility_s": 180},
        "drain": {"timeout_s": 60, "safety_margin_ms": 5000, "max_parallel": 4, "consumers": 1},
        "worker": {"timeout_s": 30, "reserved_concurrency": 4},
        "database": {"url": "mysql://u@h/db"},
        "tasks": [{"module": "worker.tasks.invoices"}, {"module": "worker.tasks.notify"}],
        "lanes": lanes,
    }
    return Settings(stage="t", **{**base, **extra})


THREE = {
    "ledger": {"tasks": ["invoice.record"], "drain": {"max_parallel": 4, "max_rate": 200}},
    "vendor-a": {"tasks": ["notify.send"], "match": {"payload.vendor": "a"},
                 "drain": {"max_parallel": 8, "max_rate": 25}, "worker": {"reserved_concurrency": 8}},
    "vendor-b": {"tasks": ["notify.send"], "match": {"payload.vendor": ["b", "b2"]},
                 "drain": {"max_parallel": 2, "max_rate": 5}, "worker": {"reserved_concurrency": 2}},
}


def routes(s: Settings) -> list[LaneRoute]:
    return routes_from_env(s.lanes_env({lane.name: f"https://sqs/{lane.name}" for lane in s.resolved_lanes()}))


def notification(vendor: Any, key: str = "N-1") -> dict[str, Any]:
    return {"task": "notify.send", "key": key, "payload": {"vendor": vendor, "to": "+4915112345678", "text": "hi"}}


def invoice(key: str = "I-1") -> dict[str, Any]:
    return {"task": "invoice.record", "key": key, "payload": {"customer": "acme", "amount_cents": 1, "currency": "EUR"}}


def test_a_config_without_lanes_is_one_lane_carrying_every_task() -> None:
    # GIVEN today's config (no lanes) / THEN one implicit lane with today's names and sections
    s = settings({})
    [lane] = s.resolved_lanes()
    assert (lane.name, lane.implicit, lane.tasks, lane.queue.name) == ("default", True, None, "q")
    assert lane.function_key("worker") == "worker"
    assert s.lanes_env({}) == "" and s.problems(TASKS) == []


def test_each_lane_overrides_its_sections_and_gets_its_own_queue() -> None:
    # GIVEN three lanes with overrides / WHEN resolved
    ledger, a, b = settings(THREE).resolved_lanes()
    # THEN each has its own queue and its own cap and rate; what it does not override is the base's
    assert [x.queue.fifo_name for x in (ledger, a, b)] == ["q-ledger.fifo", "q-vendor-a.fifo", "q-vendor-b.fifo"]
    assert (a.drain.max_parallel, a.drain.max_rate, a.worker.reserved_concurrency) == (8, 25, 8)
    assert (b.drain.timeout_s, b.queue.visibility_s) == (60, 180)
    assert a.function_key("consumer") == "consumer-vendor-a"
    assert settings(THREE).problems(TASKS) == []


def test_items_go_to_the_first_lane_whose_tasks_and_match_fit() -> None:
    r = routes(settings(THREE))
    assert route(r, "invoice.record", invoice()["payload"]).name == "ledger"  # type: ignore[union-attr]
    assert route(r, "notify.send", notification("a")["payload"]).name == "vendor-a"  # type: ignore[union-attr]
    assert route(r, "notify.send", notification("b2")["payload"]).name == "vendor-b"  # type: ignore[union-attr]
    # exact values: no lane takes vendor c, nor True for 1, nor a payload without the field
    assert route(r, "notify.send", notification("c")["payload"]) is None
    assert route(r, "notify.send", {"to": "+1"}) is None
    nested = LaneRoute("n", None, {"payload.meta.tier": (1,)}, "u")
    assert nested.takes("x", {"meta": {"tier": 1}}) and not nested.takes("x", {"meta": {"tier": True}})


def test_one_request_fans_out_over_lanes_and_says_each_items_lane() -> None:
    # GIVEN one inbound request holding items for three lanes
    items = [invoice(), notification("a"), notification("b", "N-2")]
    # WHEN prepared / THEN each item carries its lane, in request order
    prepared = prepare_items({"items": items}, max_items=10, lanes=routes(settings(THREE)))
    assert [p.lane for p in prepared] == ["ledger", "vendor-a", "vendor-b"]


def test_an_item_no_lane_takes_is_a_400_naming_it_and_why_and_nothing_is_prepared() -> None:
    # GIVEN a request with good items for two lanes and one item for a vendor no lane serves
    items = [invoice(), notification("a"), notification("zz", "N-3")]
    # WHEN prepared / THEN the whole request is refused, naming the item and the lanes it missed
    with pytest.raises(EnqueueRequestError) as refused:
        prepare_items({"items": items}, max_items=10, lanes=routes(settings(THREE)))
    assert refused.value.status == 400
    [error] = refused.value.errors
    assert error["index"] == 2
    assert "no lane takes this 'notify.send' item" in error["reason"]
    assert "vendor-a (payload.vendor = 'a')" in error["reason"]
    assert "vendor-b (payload.vendor in ['b', 'b2'])" in error["reason"]
    assert why_unroutable(routes(settings({"x": {"tasks": ["invoice.record"]}})), "notify.send").startswith(
        "no lane carries task 'notify.send'")


@pytest.mark.parametrize(
    ("lanes", "reason"),
    [
        ({"ledger": {"tasks": ["invoice.record"]}}, "no lane carries task(s) notify.send"),
        ({**THREE, "extra": {"tasks": ["sms.send"]}}, "lanes.extra names task(s) no configured module registers"),
        ({"all": {"tasks": ["notify.send", "invoice.record"]}, "late": {"tasks": ["notify.send"],
                                                                        "match": {"payload.vendor": "a"}}},
         "lanes.late is unreachable: lanes.all comes first"),
        ({**THREE, "dup-a": {"tasks": ["notify.send"], "match": {"payload.vendor": "a"}}},
         "lanes.dup-a is unreachable: lanes.vendor-a comes first"),
        ({**THREE, "slow": {"tasks": ["invoice.record"], "match": {"payload.customer": "x"},
                            "worker": {"timeout_s": 58}}},
         "lanes.slow: worker.timeout_s (58) plus drain.safety_margin_ms"),
        ({**THREE, "odd": {"tasks": ["invoice.record"], "drain": {"max_parallel": 0}}},
         "lanes.odd: drain.max_parallel"),
    ],
    ids=["orphan-task", "unknown-task", "shadowed", "shadowed-by-equal-match", "lane-timeouts", "bad-override"],
)
def test_config_check_rejects_bad_lanes(lanes: dict[str, Any], reason: str) -> None:
    assert any(reason in p for p in settings(lanes).problems(TASKS)), settings(lanes).problems(TASKS)


def test_a_narrower_earlier_lane_does_not_shadow_a_broader_later_one() -> None:
    lanes = {"vip": {"tasks": ["notify.send"], "match": {"payload.vendor": "a", "payload.to": "+1"}},
             "rest": {"tasks": ["notify.send", "invoice.record"]}}
    assert settings(lanes).problems(TASKS) == []


def test_caps_and_consumers_above_the_account_are_refused() -> None:
    # GIVEN lanes reserving 4+1, 8+1 and 2+1 (plus migrate 1) = 18 in an account of 110 (10 reservable)
    problems = settings(THREE, account_concurrency=110).problems(TASKS)
    assert any("the lanes reserve 18 concurrent executions" in p and "leaves 10 reservable" in p for p in problems)
    assert settings(THREE, account_concurrency=200).problems(TASKS) == []


def test_a_bad_lane_name_is_refused() -> None:
    with pytest.raises(ValueError, match="lane name 'Vendor_A'"):
        settings({"Vendor_A": {"tasks": ["notify.send"]}})
    with pytest.raises(ValueError, match="match key 'vendor' must name a payload field"):
        settings({"a": {"tasks": ["notify.send"], "match": {"vendor": "a"}}})


def test_picking_a_lane_by_name() -> None:
    s = settings(THREE)
    assert s.lane("vendor-b").drain.max_rate == 5
    with pytest.raises(SettingsError, match="pick one with --lane"):
        s.lane(None)
    with pytest.raises(SettingsError, match="no lane 'nope'"):
        s.lane("nope")
    assert settings({}).lane(None).name == "default"
