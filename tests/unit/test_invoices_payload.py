"""The invoice task's payload schema, through the task registry (as the enqueuer and worker use it)."""

from __future__ import annotations

from typing import Any

import pytest

from sluice.tasks import PayloadError, get_task, load_tasks

pytestmark = pytest.mark.unit

GOOD: dict[str, Any] = {"customer": "acme", "amount_cents": 1250, "currency": "EUR"}


def test_the_invoice_task_is_registered_by_loading_tasks() -> None:
    # GIVEN the task modules / WHEN loaded / THEN invoice.record is there with its schema
    assert "invoice.record" in load_tasks()


@pytest.mark.parametrize(
    "payload",
    [GOOD, {**GOOD, "description": "x" * 500}, {**GOOD, "amount_cents": 10**12 - 1, "currency": "JPY"},
     {**GOOD, "customer": "c" * 64}],
)
def test_valid_payloads_pass(payload: dict[str, Any]) -> None:
    # GIVEN a payload within every bound / WHEN parsed / THEN its values come through unchanged
    parsed = get_task("invoice.record").parse(payload)
    assert parsed.model_dump(exclude_none=True) == payload


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({**GOOD, "customer": ""}, "customer"),
        ({**GOOD, "customer": "c" * 65}, "customer"),
        ({**GOOD, "amount_cents": 0}, "amount_cents"),
        ({**GOOD, "amount_cents": 10**12}, "amount_cents"),
        ({**GOOD, "amount_cents": "1250"}, "amount_cents"),
        ({**GOOD, "amount_cents": 12.5}, "amount_cents"),
        ({**GOOD, "amount_cents": True}, "amount_cents"),
        ({**GOOD, "currency": "eur"}, "currency"),
        ({**GOOD, "currency": "XYZ"}, "currency"),
        ({**GOOD, "description": "x" * 501}, "description"),
        ({**GOOD, "surprise": 1}, "surprise"),
        ({"customer": "acme"}, "amount_cents"),
        ("not an object", "payload"),
    ],
)
def test_invalid_payloads_are_refused_naming_the_field(payload: Any, field: str) -> None:
    # GIVEN a payload breaking one rule / WHEN parsed / THEN PayloadError names the field
    with pytest.raises(PayloadError) as caught:
        get_task("invoice.record").parse(payload)
    assert field in str(caught.value)
