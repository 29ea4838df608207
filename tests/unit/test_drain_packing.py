"""How received messages are packed into worker batches."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.aws import ReceivedMessage
from sluice.contract import DrainReport
from sluice.drain import pack_batches

pytestmark = pytest.mark.unit


def message(n: int, group: str) -> ReceivedMessage:
    return ReceivedMessage(message_id=f"m{n}", receipt_handle=f"r{n}", body="{}", group_id=group,
                           receive_count=1, sent_timestamp_ms=0, attributes={}, message_attributes={})


def assert_groups_kept_whole(msgs: list[ReceivedMessage], batches: list[list[ReceivedMessage]],
                             batch_size: int) -> None:
    """Every message in exactly one batch; each group's run in one batch, in receive order; no
    batch above batch_size unless it is one group's run alone."""
    assert sorted(m.message_id for b in batches for m in b) == sorted(m.message_id for m in msgs)
    for g in {m.group_id for m in msgs}:
        holding = [b for b in batches if any(m.group_id == g for m in b)]
        assert len(holding) == 1
        assert [m.message_id for m in holding[0] if m.group_id == g] == [m.message_id for m in msgs
                                                                           if m.group_id == g]
    for b in batches:
        assert len(b) <= batch_size or len({m.group_id for m in b}) == 1


def test_groups_share_a_batch_up_to_its_size() -> None:
    # GIVEN 3 messages of group a, 4 of b, 5 of c, batch size 8
    msgs = [message(i, g) for i, g in enumerate("aaabbbbccccc")]
    # WHEN packed / THEN a+b share one batch, c has its own; no group is split
    batches = pack_batches(msgs, 8)
    assert [[m.group_id for m in b] for b in batches] == [list("aaabbbb"), list("ccccc")]


@given(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=10), st.integers(min_value=1, max_value=10))
def test_no_group_is_split_order_kept_and_nothing_lost(groups: list[str], batch_size: int) -> None:
    # GIVEN any receive of up to 10 messages / WHEN packed
    msgs = [message(i, g) for i, g in enumerate(groups)]
    batches = pack_batches(msgs, batch_size)
    # THEN every message is in one batch, each group whole and in receive order, batches within size
    assert_groups_kept_whole(msgs, batches, batch_size)


def test_report_is_json_ready() -> None:
    report = DrainReport(received=3, stopped_because="queue_empty")
    assert report.to_dict()["received"] == 3
    assert report.to_dict()["stopped_because"] == "queue_empty"


def test_a_receive_is_spread_over_the_free_slots() -> None:
    # GIVEN 10 messages of 10 groups (fauxqs hands out one per group), batch size 10, 4 free slots
    msgs = [message(i, f"g{i}") for i in range(10)]
    # WHEN packed for the free slots / THEN four workers get 3 + 3 + 3 + 1, not one worker all 10
    assert [len(b) for b in pack_batches(msgs, 10, free_slots=4)] == [3, 3, 3, 1]
    # AND with one free slot, that slot takes a full batch
    assert [len(b) for b in pack_batches(msgs, 10, free_slots=1)] == [10]


def test_spreading_grows_the_target_until_runs_fit_the_slots() -> None:
    # GIVEN runs of 2, 2, 2, 2, 2 (10 messages) and 4 free slots: at a target of 3 every run
    # would be a batch of its own, 5 batches for 4 slots
    msgs = [message(i, f"g{i // 2}") for i in range(10)]
    # WHEN packed / THEN the target grows to 4: 2+2, 2+2, 2 fit the slots
    batches = pack_batches(msgs, 10, free_slots=4)
    assert [len(b) for b in batches] == [4, 4, 2]


@given(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=10), st.integers(min_value=1, max_value=10),
       st.integers(min_value=1, max_value=8))
def test_spread_packing_keeps_groups_whole_and_fits_the_slots(groups: list[str], batch_size: int,
                                                              free: int) -> None:
    # GIVEN any receive of up to 10 messages / WHEN packed for ``free`` slots
    msgs = [message(i, g) for i, g in enumerate(groups)]
    batches = pack_batches(msgs, batch_size, free_slots=free)
    # THEN nothing is lost, each group lives in one batch in receive order, batches within size
    assert_groups_kept_whole(msgs, batches, batch_size)
    # AND the batches fit the free slots whenever full-size batches would
    if len(pack_batches(msgs, batch_size)) <= free:
        assert len(batches) <= free
