"""The stand-in vendor API against the real server on free ports: rate limit (on a stepped clock),
idempotency keys, auth, validation, the failure, down and outage knobs, counters, the admin
client, and the server run alone as a process."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from sluice.settings import PROJECT_ROOT, SettingsError, load_settings
from sluice_tools.local.processes import free_port
from sluice_tools.local.vendor_api import VendorApi, VendorSettings
from sluice_tools.local.vendor_client import VendorAdminError, VendorClient
from tests.helpers import SteppedClock, eventually

pytestmark = pytest.mark.functional

TOKEN = "test-token"
PHONE = "+4915112345678"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: dict[str, Any]

    @property
    def code(self) -> str:
        return str(self.body.get("error", {}).get("code", ""))


def send(base_url: str, vendor: str, key: str | None = None, body: Any = None, *, token: str | None = TOKEN,
         timeout_s: float = 10, connection: http.client.HTTPConnection | None = None) -> Answer:
    """One POST /vendors/{vendor}/messages, as a vendor-calling task makes it."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if key is not None:
        headers["Idempotency-Key"] = key
    payload = json.dumps({"to": PHONE, "text": "hello"} if body is None else body).encode()
    parts = urlsplit(base_url)
    conn = connection or http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout_s)
    try:
        conn.request("POST", f"/vendors/{vendor}/messages", body=payload, headers=headers)
        reply = conn.getresponse()
        return Answer(reply.status, {k.lower(): v for k, v in reply.getheaders()}, json.loads(reply.read()))
    finally:
        if connection is None:
            conn.close()


def key() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()


@pytest.fixture
def api(clock: SteppedClock) -> Iterator[VendorApi]:
    """Vendor "a" at 4 requests/s with a burst of 2, vendor "b" generous; time moves only when
    the test moves ``clock``."""
    server = VendorApi({"a": VendorSettings(token=TOKEN, rate_per_s=4, burst=2),
                        "b": VendorSettings(token=TOKEN, rate_per_s=1000, burst=1000)}, clock=clock, seed=7)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def admin(api: VendorApi) -> VendorClient:
    return VendorClient(api.url)


def test_below_the_rate_every_request_is_taken(api: VendorApi, admin: VendorClient, clock: SteppedClock) -> None:
    # GIVEN vendor a allowing 4 requests/s
    # WHEN 20 requests come at exactly 4 per second (one each quarter second)
    answers = []
    for i in range(20):
        clock.now = i * 0.25
        answers.append(send(api.url, "a", key()))
    # THEN every one is taken, and the per-second counts show 4 a second
    assert [a.status for a in answers] == [201] * 20
    counters = admin.counters("a")
    assert counters.throttled == 0 and counters.effects_applied == 20
    assert counters.accepted_per_second == {0: 4, 1: 4, 2: 4, 3: 4, 4: 4}
    assert counters.peak_accepted_per_s == 4


def test_above_the_rate_429_with_retry_after_until_a_token_is_back(
        api: VendorApi, admin: VendorClient, clock: SteppedClock) -> None:
    # GIVEN vendor a at 4 requests/s with a burst of 2
    # WHEN 6 requests come at the same instant
    answers = [send(api.url, "a", key()) for _ in range(6)]
    # THEN the burst is taken and the rest are 429 with whole-second Retry-After and the exact wait
    assert [a.status for a in answers] == [201, 201, 429, 429, 429, 429]
    throttled = answers[2]
    assert throttled.code == "rate_limited"
    assert throttled.headers["retry-after"] == "1"
    assert throttled.headers["x-ratelimit-reset-after"] == "0.250"
    assert throttled.body["error"]["retry_after_s"] == 0.25
    # WHEN a quarter second passes THEN one more is taken, and the next is throttled again
    clock.now = 0.25
    assert [send(api.url, "a", key()).status for _ in range(2)] == [201, 429]
    counters = admin.counters("a")
    assert (counters.requests, counters.throttled, counters.effects_applied) == (8, 5, 3)
    assert counters.requests_per_second == {0: 8} and counters.accepted_per_second == {0: 3}
    assert counters.peak_requests_per_s == 8


def test_retry_after_rounds_a_long_wait_up_to_whole_seconds(
        api: VendorApi, admin: VendorClient, clock: SteppedClock) -> None:
    # GIVEN a vendor at one request every 2.5 s, its only token spent
    admin.put("slow", VendorSettings(token=TOKEN, rate_per_s=0.4, burst=1))
    assert send(api.url, "slow", key()).status == 201
    # WHEN the next request comes at once, and again a second later
    first = send(api.url, "slow", key())
    clock.now = 1.0
    second = send(api.url, "slow", key())
    # THEN Retry-After is the wait rounded up: 3 s, then 2 s (the exact 2.5 and 1.5 beside it)
    def waits(answer: Answer) -> tuple[int, str, str]:
        return answer.status, answer.headers["retry-after"], answer.headers["x-ratelimit-reset-after"]

    assert (waits(first), waits(second)) == ((429, "3", "2.500"), (429, "2", "1.500"))


def test_a_repeated_key_replays_the_stored_response_without_a_second_effect(
        api: VendorApi, admin: VendorClient) -> None:
    # GIVEN a message taken under key K
    k = key()
    first = send(api.url, "b", k)
    assert first.status == 201 and "idempotent-replayed" not in first.headers
    # WHEN the same request comes again, twice (a redelivered item calls again with its key)
    again = [send(api.url, "b", k) for _ in range(2)]
    # THEN each gets the stored response, marked as a replay, and the effect stays applied once
    for answer in again:
        assert (answer.status, answer.body) == (201, first.body)
        assert answer.headers["idempotent-replayed"] == "true"
    counters = admin.counters("b")
    assert (counters.effects_applied, counters.replays, counters.distinct_keys, counters.requests) == (1, 2, 1, 3)
    assert [(m.key, m.id, m.to) for m in admin.messages("b")] == [(k, first.body["id"], PHONE)]


def test_the_same_key_with_another_body_is_422_and_applies_nothing(api: VendorApi, admin: VendorClient) -> None:
    # GIVEN a message taken under key K
    k = key()
    assert send(api.url, "b", k, {"to": PHONE, "text": "first"}).status == 201
    # WHEN K comes with another text
    answer = send(api.url, "b", k, {"to": PHONE, "text": "second"})
    # THEN 422 says the key was reused, and only the first message exists
    assert (answer.status, answer.code) == (422, "idempotency_key_reused")
    assert [m.text for m in admin.messages("b")] == ["first"]
    assert admin.counters("b").replays == 0


def test_requests_rejected_before_the_effect_do_not_consume_the_key(
        api: VendorApi, admin: VendorClient, clock: SteppedClock) -> None:
    # GIVEN vendor a's burst spent, and keys for a throttled, a failed and an invalid request
    send(api.url, "a", key())
    send(api.url, "a", key())
    throttled_key, failed_key, invalid_key = key(), key(), key()
    # WHEN each is rejected: 429 (above the rate), 503 (injected failure), 422 (bad recipient)
    assert send(api.url, "a", throttled_key).status == 429
    admin.update("b", failure_rate=1.0)
    assert send(api.url, "b", failed_key).status == 503
    admin.update("b", failure_rate=0.0)
    assert send(api.url, "b", invalid_key, {"to": "not-a-number", "text": "x"}).status == 422
    # THEN a retry with each key is a first request: taken, not replayed, one effect each
    clock.now = 1.0
    retries = [send(api.url, "a", throttled_key), send(api.url, "b", failed_key), send(api.url, "b", invalid_key)]
    assert [(r.status, "idempotent-replayed" in r.headers) for r in retries] == [(201, False)] * 3
    assert {m.key for m in admin.messages("a")} >= {throttled_key}
    assert {m.key for m in admin.messages("b")} == {failed_key, invalid_key}
    assert admin.counters("b").replays == 0


def test_a_wrong_or_missing_token_is_401(api: VendorApi, admin: VendorClient) -> None:
    # WHEN a request carries another token, or none
    wrong = send(api.url, "b", key(), token="other")
    missing = send(api.url, "b", key(), token=None)
    # THEN both are 401 with a Bearer challenge, and nothing is applied
    for answer in (wrong, missing):
        assert (answer.status, answer.code) == (401, "unauthorized")
        assert answer.headers["www-authenticate"].startswith("Bearer")
    counters = admin.counters("b")
    assert (counters.client_errors, counters.effects_applied, counters.distinct_keys) == (2, 0, 0)


def test_a_request_without_an_idempotency_key_is_400(api: VendorApi, admin: VendorClient) -> None:
    # WHEN a request carries no Idempotency-Key, or one longer than 255 characters
    answers = [send(api.url, "b", None), send(api.url, "b", "k" * 256)]
    # THEN both are 400 naming the header, and nothing is applied
    for answer in answers:
        assert (answer.status, answer.code) == (400, "idempotency_key_required")
        assert "Idempotency-Key" in answer.body["error"]["message"]
    assert admin.counters("b").effects_applied == 0


@pytest.mark.parametrize(("body", "status", "code", "reason"), [
    ({"to": "12345", "text": "hi"}, 422, "invalid_recipient", "E.164"),
    ({"to": "+0123456789", "text": "hi"}, 422, "invalid_recipient", "E.164"),
    ({"text": "hi"}, 422, "invalid_parameter", "'to'"),
    ({"to": PHONE, "text": ""}, 422, "invalid_parameter", "'text'"),
    ({"to": PHONE, "text": "x" * 1601}, 422, "invalid_parameter", "'text'"),
    ([PHONE, "hi"], 400, "invalid_json", "JSON object"),
])
def test_an_invalid_message_is_rejected_with_its_reason(
        api: VendorApi, admin: VendorClient, body: Any, status: int, code: str, reason: str) -> None:
    # WHEN a message has a bad recipient, a missing or bad field, or is not an object
    answer = send(api.url, "b", key(), body)
    # THEN it is rejected with a reason the caller can put beside a dead-lettered item
    assert (answer.status, answer.code) == (status, code)
    assert reason in answer.body["error"]["message"]
    assert admin.counters("b").effects_applied == 0


def test_the_content_filter_refuses_texts_with_a_blocked_phrase_and_takes_the_rest(
        api: VendorApi, admin: VendorClient) -> None:
    # GIVEN vendor b blocking texts that hold " JPY "
    admin.update("b", blocked_phrases=[" JPY "])
    blocked_key = key()
    # WHEN a text with the phrase and one without are sent, and the blocked one again with its key
    blocked = send(api.url, "b", blocked_key, {"to": PHONE, "text": "invoice 7: 120000 JPY (acme)"})
    taken = send(api.url, "b", key(), {"to": PHONE, "text": "invoice 8: 120000 EUR (acme)"})
    again = send(api.url, "b", blocked_key, {"to": PHONE, "text": "invoice 7: 120000 JPY (acme)"})
    # THEN the blocked one is a 422 naming the phrase, every time (nothing was stored for its key),
    # and only the other one is an effect
    assert (blocked.status, blocked.code) == (422, "content_blocked")
    assert "' JPY '" in blocked.body["error"]["message"]
    assert (again.status, again.code) == (422, "content_blocked")
    assert taken.status == 201
    assert [m.text for m in admin.messages("b")] == ["invoice 8: 120000 EUR (acme)"]
    # AND an empty phrase (it would block everything) is refused as a setting
    with pytest.raises(VendorAdminError, match="blocked_phrases"):
        admin._call("PUT", "/_admin/vendors/b", {**admin.get("b").settings.model_dump(), "blocked_phrases": [""]})


def test_the_failure_knob_answers_503_with_retry_after_or_500(api: VendorApi, admin: VendorClient) -> None:
    # GIVEN every request failing with 503 and a 3 s Retry-After
    admin.update("b", failure_rate=1.0, failure_status=503, retry_after_s=3)
    answer = send(api.url, "b", key())
    # THEN the failure says when to come back
    assert (answer.status, answer.headers["retry-after"]) == (503, "3")
    # WHEN failures are 500s instead THEN there is no Retry-After
    admin.update("b", failure_status=500)
    answer = send(api.url, "b", key())
    assert answer.status == 500 and "retry-after" not in answer.headers
    # WHEN half the requests fail THEN some of 40 fail and some are taken, and the counters agree
    admin.update("b", failure_rate=0.5, failure_status=503)
    statuses = [send(api.url, "b", key()).status for _ in range(40)]
    assert set(statuses) == {201, 503}
    counters = admin.counters("b")
    assert counters.server_errors == 2 + statuses.count(503)
    assert counters.effects_applied == statuses.count(201)


def test_a_slow_vendor_applies_the_effect_even_when_the_caller_gave_up(api: VendorApi, admin: VendorClient) -> None:
    # GIVEN a vendor that takes a second per request
    admin.update("b", latency_ms=1000, jitter_ms=10)
    k = key()
    # WHEN the caller times out long before that
    with pytest.raises(TimeoutError):
        send(api.url, "b", k, timeout_s=0.2)
    # THEN the vendor still applies the message once, and the caller's retry with the key replays it
    eventually(lambda: admin.counters("b").effects_applied == 1, 10, "the slow request applied")
    admin.update("b", latency_ms=0, jitter_ms=0)
    retry = send(api.url, "b", k)
    assert (retry.status, retry.headers["idempotent-replayed"]) == (201, "true")
    assert admin.counters("b").effects_applied == 1


def test_a_down_vendor_answers_503_to_everything(api: VendorApi, admin: VendorClient) -> None:
    # GIVEN vendor a switched down
    admin.update("a", down=True, retry_after_s=2)
    # WHEN requests come, even without a token or a key THEN each is 503 with Retry-After
    for answer in (send(api.url, "a", key()), send(api.url, "a", None, token=None)):
        assert (answer.status, answer.code, answer.headers["retry-after"]) == (503, "unavailable", "2")
    # AND the other vendor is not affected
    assert send(api.url, "b", key()).status == 201
    # WHEN it is switched back up THEN it takes messages again
    admin.update("a", down=False)
    assert send(api.url, "a", key()).status == 201


def test_an_outage_refuses_connections_until_it_ends(api: VendorApi, admin: VendorClient) -> None:
    # GIVEN a keep-alive connection to vendor a's own port that has sent one message
    own = urlsplit(api.vendor_url("a"))
    kept = http.client.HTTPConnection(own.hostname or "", own.port, timeout=5)
    assert send(api.vendor_url("a"), "a", key(), connection=kept).status == 201
    try:
        # WHEN vendor a goes off the network
        state = admin.outage("a", refuse_s=3600)
        assert not state.listening and state.refuse_remaining_s > 3500
        # THEN a new connection to its port is refused, and the open one is cut
        with pytest.raises(ConnectionRefusedError):
            send(api.vendor_url("a"), "a", key())
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            send(api.vendor_url("a"), "a", key(), connection=kept)
        # AND on the shared port its requests get no answer, while vendor b's are taken
        with pytest.raises(http.client.RemoteDisconnected):
            send(api.url, "a", key())
        assert send(api.vendor_url("b"), "b", key()).status == 201
        assert send(api.url, "b", key()).status == 201
    finally:
        kept.close()
    # WHEN the outage ends THEN vendor a takes messages on the same port again
    assert admin.outage("a").listening
    assert send(api.vendor_url("a"), "a", key()).status == 201
    assert admin.get("a").url == api.vendor_url("a")
    assert admin.counters("a").effects_applied == 2


def refused_or_status(url: str, vendor: str) -> str:
    try:
        return str(send(url, vendor, key()).status)
    except ConnectionRefusedError:
        return "refused"


def test_an_outage_moves_from_refused_to_503s_to_healthy(api: VendorApi, admin: VendorClient) -> None:
    # GIVEN vendor a refusing connections for a moment, then down until told otherwise
    admin.outage("a", refuse_s=0.3, down_s=3600)
    assert refused_or_status(api.vendor_url("a"), "a") == "refused"
    # WHEN the refusal ends THEN it listens again but answers 503
    eventually(lambda: refused_or_status(api.vendor_url("a"), "a") == "503", 10, "vendor a answering 503")
    assert admin.get("a").down_remaining_s > 3500
    # WHEN a short down phase is set THEN it heals by itself
    admin.outage("a", refuse_s=0, down_s=0.3)
    eventually(lambda: refused_or_status(api.vendor_url("a"), "a") == "201", 10, "vendor a healthy")


def test_counters_add_up_and_reset_restores_the_first_settings(
        api: VendorApi, admin: VendorClient, clock: SteppedClock) -> None:
    # GIVEN one of each outcome at vendor a: taken, replayed, throttled, unauthorized, invalid
    k = key()
    send(api.url, "a", k)
    send(api.url, "a", k)
    send(api.url, "a", key())
    send(api.url, "a", key(), token="wrong")
    clock.now = 5.0
    send(api.url, "a", key(), {"to": "x", "text": "y"})
    # THEN every counter says so
    c = admin.counters("a")
    assert (c.requests, c.throttled, c.server_errors, c.client_errors) == (5, 1, 0, 2)
    assert (c.distinct_keys, c.replays, c.effects_applied) == (3, 1, 1)
    assert c.statuses == {201: 2, 429: 1, 401: 1, 422: 1}
    assert c.requests_per_second == {0: 4, 5: 1} and c.accepted_per_second == {0: 2, 5: 1}
    # WHEN settings change and a vendor is added, then the server is reset
    admin.update("a", rate_per_s=1, burst=1)
    admin.put("extra", VendorSettings(token=TOKEN))
    assert admin.reset() == ["a", "b"]
    # THEN the first vendors are back with their first settings and nothing counted, the added one gone
    vendors = admin.vendors()
    assert sorted(vendors) == ["a", "b"]
    assert vendors["a"].settings == VendorSettings(token=TOKEN, rate_per_s=4, burst=2)
    assert vendors["a"].counters.requests == 0 and admin.messages("a") == []
    # AND a key seen before the reset is a first request again
    assert "idempotent-replayed" not in send(api.url, "a", k).headers


def test_the_admin_api_names_what_is_wrong(api: VendorApi, admin: VendorClient) -> None:
    # WHEN settings are bad, the vendor is unknown, or the vendor's name is bad
    # THEN each error says which
    with pytest.raises(VendorAdminError, match="rate_per_s"):
        admin._call("PUT", "/_admin/vendors/a", {"token": TOKEN, "rate_per_s": -1})
    with pytest.raises(VendorAdminError, match="token"):
        admin._call("PUT", "/_admin/vendors/a", {"rate_per_s": 3})
    with pytest.raises(VendorAdminError, match="404 no vendor named 'nobody'"):
        admin.get("nobody")
    with pytest.raises(VendorAdminError, match="vendor name"):
        admin.put("Bad_Name", VendorSettings(token=TOKEN))
    with pytest.raises(VendorAdminError, match="refuse_s"):
        admin._call("POST", "/_admin/vendors/a/outage", {"refuse_s": "soon"})
    # AND a new vendor gets a port of its own that takes messages
    created = admin.put("c", VendorSettings(token=TOKEN))
    assert created.url not in (api.url, api.vendor_url("a"))
    assert send(created.url, "c", key()).status == 201
    # AND a vendor's own port serves only that vendor
    assert send(api.vendor_url("a"), "b", key()).status == 404


def test_run_alone_it_serves_the_configured_vendors_on_the_given_port() -> None:
    # GIVEN `python -m sluice_tools.local.vendor_api --port N --token T`
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sluice_tools.local.vendor_api", "--port", str(port),
                             "--token", TOKEN], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())
        # THEN it listens on 127.0.0.1:N with the vendors of config/local.yml, taking the token
        assert started["url"] == f"http://127.0.0.1:{port}"
        configured = load_settings("local").local.vendors
        vendors = VendorClient(started["url"]).vendors()
        assert sorted(vendors) == sorted(configured)
        for name, vendor in vendors.items():
            assert vendor.settings.rate_per_s == configured[name].rate_per_s
            assert started["vendors"][f"SLUICE_VENDOR_URL_{name.upper()}"] == vendor.url
        assert send(started["url"], next(iter(vendors)), key()).status == 201
        # WHEN it is sent SIGTERM THEN it exits cleanly
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_run_alone_on_a_taken_port_it_says_so() -> None:
    # GIVEN a port something listens on
    with VendorApi({}) as other:
        taken = urlsplit(other.url).port
        # WHEN the server is asked for it THEN it exits 2 naming the port, without a traceback
        done = subprocess.run([sys.executable, "-m", "sluice_tools.local.vendor_api", "--port", str(taken)],
                              cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and f"port {taken}" in done.stderr and "Traceback" not in done.stderr


def test_config_vendors_get_a_default_burst_and_checked_names(tmp_path: Path) -> None:
    # GIVEN local.vendors entries without a burst, and one with a bad name
    base = (PROJECT_ROOT / "config" / "local.yml").read_text().split("\n  vendors:")[0]
    (tmp_path / "local.yml").write_text(base + "\n  vendors:\n    fast: {rate_per_s: 30}\n"
                                        "    slow: {rate_per_s: 0.5}\n")
    (tmp_path / "bad.yml").write_text(base + "\n  vendors:\n    Bad_Name: {rate_per_s: 5}\n")
    # WHEN read THEN the burst is one second's worth (at least 1), and the bad name is refused with a reason
    vendors = load_settings("local", tmp_path).local.vendors
    assert (vendors["fast"].burst, vendors["slow"].burst) == (30, 1)
    with pytest.raises(SettingsError, match="vendor name 'Bad_Name'"):
        load_settings("bad", tmp_path)
