"""Ids an item maps to: dedup id and group id are derived, stable and within SQS limits."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.envelope import Envelope, dedup_id, default_key, group_id, shard_of

pytestmark = pytest.mark.unit

keys = st.text(min_size=1, max_size=256)
tasks = st.from_regex(r"[a-z][a-z0-9_.]{0,30}", fullmatch=True)


@given(task=tasks, key=keys)
def test_dedup_id_is_stable_hex_within_sqs_limit(task: str, key: str) -> None:
    # GIVEN any task and key / WHEN the dedup id is derived twice
    first, second = dedup_id(task, key), dedup_id(task, key)
    # THEN it is the same 64-hex string (SQS allows up to 128 chars)
    assert first == second
    assert re.fullmatch(r"[0-9a-f]{64}", first)


@given(task=tasks, key=keys, other=keys)
def test_dedup_id_differs_for_different_keys(task: str, key: str, other: str) -> None:
    # GIVEN two different keys of one task / THEN their dedup ids differ
    if key != other:
        assert dedup_id(task, key) != dedup_id(task, other)


@given(key=keys, groups=st.integers(min_value=1, max_value=1000))
def test_shard_is_in_range_and_stable(key: str, groups: int) -> None:
    # GIVEN a key and a shard count / WHEN sharded twice
    shard = shard_of(key, groups)
    # THEN the shard is within range and does not change
    assert 0 <= shard < groups
    assert shard_of(key, groups) == shard


@given(task=tasks, key=keys, groups=st.integers(min_value=1, max_value=64))
def test_group_id_defaults_to_task_shard(task: str, key: str, groups: int) -> None:
    # GIVEN no client group / WHEN the group id is derived
    gid = group_id(task, key, None, groups)
    # THEN it is task:<shard> with the key's shard
    assert gid == f"{task}:{shard_of(key, groups)}"


@given(group=st.from_regex(r"[A-Za-z0-9_-]{1,128}", fullmatch=True))
def test_client_group_is_kept(group: str) -> None:
    # GIVEN a client group / THEN it is the MessageGroupId as given
    assert group_id("t", "k", group, 16) == group


def test_default_key_ignores_payload_key_order() -> None:
    # GIVEN the same payload spelled with keys in a different order
    # WHEN default keys are derived / THEN they are equal (canonical JSON)
    assert default_key("t", {"a": 1, "b": 2}) == default_key("t", {"b": 2, "a": 1})
    assert default_key("t", {"a": 1}) != default_key("t", {"a": 2})


def test_envelope_round_trips_through_its_body() -> None:
    # GIVEN an envelope / WHEN written and parsed back / THEN nothing is lost
    env = Envelope.new("invoice.record", "K-1", {"customer": "acme"}, trace_id="tr")
    assert Envelope.from_body(env.to_body()) == env
