"""Fuzzing the enqueuer: whatever a client sends, a clear 4xx or a whole enqueue, never a 5xx.

Generated requests (valid bursts, valid bursts with one item broken, duplicate keys, garbage
JSON, bytes that are not JSON, oversized bodies, too many items) go through the enqueuer's
HTTP path in-process (the HTTP API event -> handler -> sluice.enqueue -> a real SQS server,
fauxqs). After every request the queue is read back: its depth must grow by exactly the
number of new items the reply says were accepted (0 for any 4xx) - a partial enqueue would
show as a mismatch. Every reply must match docs/openapi.yaml for its status.

`make test` runs a few hundred requests; `make chaos` sets SLUICE_FUZZ_EXAMPLES=10000.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_schema_validator import OAS31Validator

from sluice import aws
from sluice.envelope import MAX_GROUP_LENGTH, MAX_KEY_LENGTH, dedup_id, default_key
from sluice_tools.chaos.queues import ChaosQueues, make_queues
from sluice_tools.local.fauxqs import FauxqsServer
from tests.fixtures.events import http_api_event

pytestmark = pytest.mark.functional

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
EXAMPLES = int(os.environ.get("SLUICE_FUZZ_EXAMPLES", "300"))
# Small limits so the 413 paths are reached by cheap requests.
MAX_ITEMS = 40
MAX_BODY_BYTES = 16384
CURRENCIES = ["AUD", "CAD", "CHF", "CZK", "DKK", "EUR", "GBP", "JPY", "NOK", "PLN", "SEK", "USD"]
GROUP_ALPHABET = string.ascii_letters + string.digits + "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


# ---- the documents replies are checked against -------------------------------------------------

def load_openapi() -> dict[str, Any]:
    return yaml.safe_load(OPENAPI.read_text())


def response_validators(doc: dict[str, Any]) -> dict[int, OAS31Validator]:
    """One validator per documented status of POST /jobs, resolving #/components refs."""
    validators: dict[int, OAS31Validator] = {}
    for status, response in doc["paths"]["/jobs"]["post"]["responses"].items():
        # The components ride along so "#/components/schemas/..." resolves inside the schema.
        schema = {**response["content"]["application/json"]["schema"], "components": doc["components"]}
        validators[int(status)] = OAS31Validator(schema)
    return validators


# ---- request generators --------------------------------------------------------------------------

invoice_payloads = st.fixed_dictionaries(
    {"customer": st.text(min_size=1, max_size=20), "amount_cents": st.integers(1, 10**11),
     "currency": st.sampled_from(CURRENCIES)},
    optional={"description": st.none() | st.text(max_size=40)},
)
keys = st.text(alphabet=st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]),
               min_size=1, max_size=40)
groups = st.text(alphabet=GROUP_ALPHABET, min_size=1, max_size=12)
valid_items = st.fixed_dictionaries(
    {"task": st.just("invoice.record"), "payload": invoice_payloads},
    optional={"key": keys, "group": groups},
)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
any_json = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)

# Ways to break one item; each must cost the whole request a 400.
BREAKERS: dict[str, Any] = {
    "unknown task": lambda item, v: {**item, "task": "no.such." + str(v)},
    "missing task": lambda item, v: {k: x for k, x in item.items() if k != "task"},
    "task not a string": lambda item, v: {**item, "task": v if not isinstance(v, str) else 7},
    "missing payload": lambda item, v: {k: x for k, x in item.items() if k != "payload"},
    "payload not an object": lambda item, v: {**item, "payload": [v]},
    "bad currency": lambda item, v: {**item, "payload": {**item["payload"], "currency": "eur"}},
    "zero amount": lambda item, v: {**item, "payload": {**item["payload"], "amount_cents": 0}},
    "amount as string": lambda item, v: {**item, "payload": {**item["payload"], "amount_cents": "12"}},
    "extra payload field": lambda item, v: {**item, "payload": {**item["payload"], "x": v}},
    "extra item field": lambda item, v: {**item, "priority": v},
    "key too long": lambda item, v: {**item, "key": "k" * (MAX_KEY_LENGTH + 1)},
    "empty key": lambda item, v: {**item, "key": ""},
    "key not a string": lambda item, v: {**item, "key": 12},
    "key not printable": lambda item, v: {**item, "key": "a\nb"},
    "group too long": lambda item, v: {**item, "group": "g" * (MAX_GROUP_LENGTH + 1)},
    "group with a space": lambda item, v: {**item, "group": "a b"},
    "group not ascii": lambda item, v: {**item, "group": "grüppe"},
    "item not an object": lambda item, v: [item],
}


@st.composite
def broken_requests(draw: st.DrawFn) -> dict[str, Any]:
    items = draw(st.lists(valid_items, min_size=1, max_size=8))
    index = draw(st.integers(0, len(items) - 1))
    breaker = BREAKERS[draw(st.sampled_from(sorted(BREAKERS)))]
    items[index] = breaker(items[index], draw(json_scalars))
    return {"items": items}


@st.composite
def duplicate_key_requests(draw: st.DrawFn) -> dict[str, Any]:
    item = draw(valid_items)
    twin = {**draw(valid_items), "key": item.get("key") or default_key(item["task"], item["payload"])}
    return {"items": [item, twin] if draw(st.booleans()) else [twin, item]}


def body_of(value: Any) -> bytes:
    return json.dumps(value).encode()


requests_ = st.one_of(
    # Valid bursts (the most common case, and the only one that may grow the queue).
    st.lists(valid_items, min_size=1, max_size=25).map(lambda items: body_of({"items": items})),
    broken_requests().map(body_of),
    duplicate_key_requests().map(body_of),
    # Shapes that are JSON but not a request.
    any_json.map(body_of),
    st.fixed_dictionaries({"items": any_json}).map(body_of),
    st.fixed_dictionaries({"items": st.lists(valid_items, min_size=1, max_size=2)},
                          optional={"extra": json_scalars}).map(body_of),
    st.just(body_of({"items": []})),
    # Too many items, too many bytes.
    st.integers(MAX_ITEMS + 1, MAX_ITEMS + 5).map(
        lambda n: body_of({"items": [{"task": "invoice.record", "payload": {}}] * n})),
    st.integers(MAX_BODY_BYTES + 1, MAX_BODY_BYTES + 100).map(lambda n: b'{"items": ["' + b"x" * n + b'"]}'),
    # Not JSON at all.
    st.binary(max_size=200),
    st.text(max_size=60).map(lambda s: ("{" + s).encode()),
    st.just(b""),
)


def http_event(body: bytes, *, as_base64: bool) -> dict[str, Any]:
    """AWS's HTTP API sample event as a POST /jobs carrying these bytes, as API Gateway passes them."""
    if as_base64:
        return http_api_event(body, base64_body=True)
    return http_api_event(body.decode("utf-8", errors="surrogateescape"))


# ---- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fauxqs_url() -> Iterator[str]:
    server = FauxqsServer()
    yield server.start()
    server.stop()


@dataclass
class Ledger:
    """What the replies say is in the queue: the dedup ids of every accepted item."""

    accepted: set[str] = field(default_factory=set)
    statuses: dict[int, int] = field(default_factory=dict)


@pytest.fixture(scope="module")
def enqueuer_on_fauxqs(fauxqs_url: str) -> Iterator[tuple[Any, ChaosQueues]]:
    queues = make_queues(fauxqs_url)
    env = {"SLUICE_QUEUE_URL": queues.url, "SLUICE_DLQ_URL": queues.dlq_url,
           "SLUICE_ENQUEUER_MAX_ITEMS": str(MAX_ITEMS), "SLUICE_ENQUEUER_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
           "AWS_ENDPOINT_URL_SQS": fauxqs_url, "POWERTOOLS_LOG_LEVEL": "WARNING"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    aws.reset_clients()
    from enqueuer import handler

    handler.reset()
    yield handler, queues
    handler.reset()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    aws.reset_clients()


def visible(queues: ChaosQueues) -> int:
    return queues.depth()[0]


# ---- tests ---------------------------------------------------------------------------------------

def test_openapi_document_is_valid_and_matches_the_code() -> None:
    # GIVEN the published document and the enqueuer's own limits
    from openapi_spec_validator import validate

    from sluice.enqueue import _GROUP_CHARS
    from sluice.settings import EnqueuerSettings
    from worker.tasks.invoices import KNOWN_CURRENCIES, InvoicePayload

    doc = load_openapi()
    # WHEN it is validated as OpenAPI 3.1
    validate(doc)
    schemas = doc["components"]["schemas"]
    item = schemas["WorkItem"]["properties"]
    # THEN its limits are the code's limits
    assert schemas["EnqueueRequest"]["properties"]["items"]["maxItems"] == EnqueuerSettings().max_items
    assert item["key"]["maxLength"] == MAX_KEY_LENGTH
    assert item["group"]["maxLength"] == MAX_GROUP_LENGTH
    # and its group pattern accepts exactly what the code accepts, character by character
    import re

    doc_group = re.compile(item["group"]["pattern"])
    for code in range(0x20, 0x250):
        ch = chr(code)
        assert bool(doc_group.match(ch)) == bool(_GROUP_CHARS.match(ch)), repr(ch)
    invoice = schemas["InvoicePayload"]
    assert set(invoice["properties"]["currency"]["enum"]) == set(KNOWN_CURRENCIES)
    assert set(invoice["required"]) == {n for n, f in InvoicePayload.model_fields.items() if f.is_required()}
    assert set(invoice["properties"]) == set(InvoicePayload.model_fields)


def test_documented_example_is_accepted(enqueuer_on_fauxqs: tuple[Any, ChaosQueues]) -> None:
    # GIVEN the request example of the document
    handler, queues = enqueuer_on_fauxqs
    doc = load_openapi()
    example = doc["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["example"]
    example["items"][0]["key"] = "fuzz-example-" + os.urandom(4).hex()
    # WHEN it is posted
    status, body = post(handler, body_of(example), as_base64=False)
    # THEN it is a documented 202
    assert status == 202, body
    response_validators(doc)[202].validate(body)


def post(handler: Any, body: bytes, *, as_base64: bool) -> tuple[int, Any]:
    from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

    reply = handler.handle_http(APIGatewayProxyEventV2(http_event(body, as_base64=as_base64)))
    return reply["statusCode"], json.loads(reply["body"])


def expected_ids(body: bytes, reply: dict[str, Any]) -> set[str]:
    """Dedup ids of the items a 2xx reply says went in (task from the request, key from the reply)."""
    items = json.loads(body)["items"]
    return {dedup_id(items[i]["task"], row["key"])
            for i, row in enumerate(reply["items"]) if "message_id" in row}


def test_fuzzed_requests_never_5xx_never_partial(enqueuer_on_fauxqs: tuple[Any, ChaosQueues],
                                                 summary_lines: list[str]) -> None:
    handler, queues = enqueuer_on_fauxqs
    validators = response_validators(load_openapi())
    ledger = Ledger(accepted=set())
    start_depth = visible(queues)

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(body=requests_, as_base64=st.booleans())
    def one_request(body: bytes, as_base64: bool) -> None:
        # GIVEN a generated request body (sent as text or base64, as API Gateway may)
        if not as_base64:
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                as_base64 = True
        # WHEN it is posted to /jobs
        status, reply = post(handler, body, as_base64=as_base64)
        ledger.statuses[status] = ledger.statuses.get(status, 0) + 1
        # THEN never a 5xx; the reply is what the document says for its status
        assert status < 500, (status, reply)
        assert status in validators, (status, reply)
        validators[status].validate(reply)
        if status >= 400:
            # every 4xx carries its reason, and each bad item is named with one
            assert isinstance(reply.get("error"), str) and reply["error"].strip()
            assert all(e["reason"].strip() for e in reply.get("errors", []))
        else:
            assert status == 202, (status, reply)
            ledger.accepted |= expected_ids(body, reply)
        # and the queue holds exactly the accepted items: nothing partial, nothing extra
        assert visible(queues) - start_depth == len(ledger.accepted)

    one_request()
    summary_lines.append(f"fuzz: {sum(ledger.statuses.values())} requests, statuses "
                         f"{sorted(ledger.statuses.items())}, {len(ledger.accepted)} distinct items enqueued, "
                         "0 responses 5xx, 0 partial enqueues")
    # Every example asked for was sent (make chaos promises 10,000), and the generator reached
    # both sides: accepted bursts and every rejection class.
    assert sum(ledger.statuses.values()) >= EXAMPLES
    assert ledger.statuses.get(202, 0) > 0
    assert ledger.statuses.get(400, 0) > 0
    assert ledger.statuses.get(413, 0) > 0
