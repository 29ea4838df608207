"""A stand-in for a third party's HTTP API: the target of tasks that call a vendor (SMS, email).

Several named vendors in one server on 127.0.0.1, each with its own settings, rate limit,
idempotency store and counters. The local stack runs it inside the stack process (like the HTTP API)
and writes its address to ``.sluice/local.env``; run it alone with
``python -m sluice_tools.local.vendor_api --port N``.

Sending (a vendor's public API)
    ``POST /vendors/{vendor}/messages`` with ``{"to": "+4915112345678", "text": "..."}``,
    ``Authorization: Bearer <token>`` and ``Idempotency-Key: <key>``. ``201`` with
    ``{"id", "status": "accepted", "to", "text"}`` once the message is taken. Every error body is
    ``{"error": {"code": str, "message": str}}``. Checked in this order (the first that applies
    answers):

    * the vendor is down: ``503`` + ``Retry-After`` (for every request);
    * wrong or missing token: ``401``; no ``Idempotency-Key`` (or one over 255 characters): ``400``;
    * above the vendor's rate (token bucket: ``rate_per_s``, ``burst``): ``429`` + ``Retry-After``;
    * the failure knob: a ``failure_rate`` share of the requests left answers ``failure_status``
      (``503`` + ``Retry-After``, or ``500``), after the latency;
    * a body that is not a JSON object: ``400``; ``to`` or ``text`` missing or not strings, ``to``
      not a phone number in E.164 form (``+`` and 7 to 15 digits), ``text`` empty or over 1,600
      characters: ``422`` with the reason (a permanent error for the caller);
    * the content filter, as carriers filter messages: a ``text`` holding one of the vendor's
      ``blocked_phrases`` is ``422`` ``content_blocked`` naming the phrase (permanent too);
    * the key, as Stripe keeps idempotency keys: the first accepted request with a key applies the
      effect once and its response is stored; a repeat with the same key and the same body gets
      that response again with ``Idempotent-Replayed: true`` and no second effect; the same key
      with another body is ``422``. A request answered 429, 5xx or 4xx before this step stores
      nothing, so its retry with the same key is a first request.

    ``Retry-After`` is whole seconds, as Twilio and Stripe send it (RFC 9110 delay-seconds): on a
    429 the wait for the next token rounded up, at least 1; on a 503 the vendor's ``retry_after_s``.
    A 429 also carries the exact wait as ``X-RateLimit-Reset-After`` (fractional seconds, the name
    Discord uses) and as ``retry_after_s`` in its error body.

Knobs per vendor (``VendorSettings``; ``PUT /_admin/vendors/{vendor}`` creates or replaces them)
    ``token``, ``rate_per_s``, ``burst`` (default one second's worth), ``latency_ms`` plus a uniform
    ``jitter_ms`` (slept by every request past the rate limit), ``failure_rate`` (0..1),
    ``failure_status`` (503 or 500), ``retry_after_s`` (on 503s), ``down`` (503 for everything),
    ``blocked_phrases`` (the content filter; none by default).
    ``POST /_admin/vendors/{vendor}/outage`` ``{"refuse_s": R, "down_s": D}`` takes the vendor off
    the network: for R seconds its connections are refused, then for D seconds it answers 503,
    then it is healthy again; ``{}`` (both 0) ends an outage at once.

    Connection refused needs a listener of its own: every vendor is also served on a port of its
    own (``url`` in its admin state; ``SLUICE_VENDOR_URL_<NAME>`` in local.env), with the same
    path. While refusing, that port is closed (a connect gets ECONNREFUSED) and its open
    connections are shut down; the shared port, which cannot refuse for one vendor alone, closes
    that vendor's requests without an answer. Other vendors are untouched either way.

Counters per vendor (``VendorCounters``; ``GET /_admin/vendors/{vendor}``)
    ``requests`` (every POST to its messages route, counted once answered), ``throttled`` (429s), ``server_errors``
    (5xx), ``client_errors`` (4xx other than 429), ``statuses`` (per status code),
    ``distinct_keys`` (idempotency keys seen on authenticated requests), ``replays`` (answered from
    a stored response), ``effects_applied`` (messages taken, once per key),
    ``requests_per_second`` and ``accepted_per_second`` (per whole second of the server's clock, at
    arrival: every request, and those the rate limit let through; the peak of the first against
    ``rate_per_s`` says whether a caller kept to the rate). ``GET .../messages`` lists the messages
    taken. ``GET /_admin/vendors`` is every vendor's state; ``POST /_admin/reset`` puts the server
    back as it started (settings, counters, keys, outages; vendors added since are removed).

The admin API is on the shared port only. ``VendorClient`` (sluice_tools/local/vendor_client.py)
is its typed client. The clock the rate limit and the per-second counts read is injectable, so
tests step time instead of waiting; outages run on real time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import re
import secrets
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from sluice.ratelimit import TokenBucket
from sluice.settings import LocalVendorSettings, SettingsError, load_settings
from sluice_tools.local.http_api import BadChunkedBodyError, BodyTooLargeError, read_chunked
from sluice_tools.local.http_reply import json_reply, send_reply
from sluice_tools.local.processes import LOOPBACK, LocalServiceError, choose_port
from sluice_tools.local.runtime_api import LoopbackHTTPServer

RECIPIENT = re.compile(r"^\+[1-9][0-9]{6,14}$")
MAX_TEXT_CHARS = 1600  # Twilio's limit for one message body
MAX_KEY_CHARS = 255  # Stripe's limit for an idempotency key
MAX_BODY_BYTES = 64 * 1024
# Per-second counts kept: an hour is more than a demo, bench or chaos run needs.
MAX_SECONDS_KEPT = 3600
MESSAGES_PATH = re.compile(r"^/vendors/([^/]+)/messages$")
ADMIN_VENDOR_PATH = re.compile(r"^/_admin/vendors/([^/]+)(/outage|/messages)?$")
VENDOR_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
# How often a listener's accept loop checks for a stop: closing a port for an outage waits this long.
_POLL_S = 0.05


class VendorApiError(ValueError):
    """An admin request the server cannot take (bad settings, unknown vendor); says which and why."""


class VendorSettings(LocalVendorSettings):
    """Everything one vendor of the server does: the config's rate and knobs, plus the token it
    accepts and the switches a test or the chaos suite flips."""

    token: str = Field(min_length=1, max_length=512)
    failure_status: Literal[500, 503] = 503
    retry_after_s: int = Field(1, ge=0, le=3600)
    down: bool = False
    # Texts holding any of these are refused (422): how a test or the demo makes one vendor turn
    # down particular messages for good while it takes the rest.
    blocked_phrases: tuple[Annotated[str, Field(min_length=1, max_length=200)], ...] = Field((), max_length=100)


@dataclass(frozen=True)
class VendorCounters:
    requests: int = 0
    throttled: int = 0
    server_errors: int = 0
    client_errors: int = 0
    distinct_keys: int = 0
    replays: int = 0
    effects_applied: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    requests_per_second: dict[int, int] = field(default_factory=dict)
    accepted_per_second: dict[int, int] = field(default_factory=dict)

    @property
    def peak_requests_per_s(self) -> int:
        return max(self.requests_per_second.values(), default=0)

    @property
    def peak_accepted_per_s(self) -> int:
        return max(self.accepted_per_second.values(), default=0)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the per-code and per-second maps get string keys."""
        data = asdict(self)
        for name in ("statuses", "requests_per_second", "accepted_per_second"):
            data[name] = {str(k): v for k, v in data[name].items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VendorCounters:
        def per(name: str) -> dict[int, int]:
            return {int(k): int(v) for k, v in data.get(name, {}).items()}

        def count(name: str) -> int:
            return int(data.get(name, 0))

        return cls(requests=count("requests"), throttled=count("throttled"), server_errors=count("server_errors"),
                   client_errors=count("client_errors"), distinct_keys=count("distinct_keys"),
                   replays=count("replays"), effects_applied=count("effects_applied"), statuses=per("statuses"),
                   requests_per_second=per("requests_per_second"), accepted_per_second=per("accepted_per_second"))


@dataclass(frozen=True)
class DeliveredMessage:
    """One effect applied: a message the vendor took, under the key that first carried it."""

    id: str
    key: str
    to: str
    text: str


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def error_reply(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                **extra: Any) -> Reply:
    return Reply(status, {"error": {"code": code, "message": message, **extra}}, headers or {})


def _fingerprint(body: Mapping[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def _validate_message(raw: bytes) -> tuple[dict[str, Any], Reply | None]:
    """The request body as a JSON object, or the 400/422 that says why it cannot be one."""
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        return {}, error_reply(400, "invalid_json", "the body is not JSON")
    if not isinstance(body, dict):
        return {}, error_reply(400, "invalid_json", 'the body must be a JSON object {"to": ..., "text": ...}')
    for name in ("to", "text"):
        if not isinstance(body.get(name), str):
            return body, error_reply(422, "invalid_parameter", f"'{name}' is required and must be a string",
                                     param=name)
    if not RECIPIENT.match(body["to"]):
        return body, error_reply(422, "invalid_recipient",
                                 f"'to' {body['to'][:40]!r} is not a phone number in E.164 form "
                                 "(+ and 7 to 15 digits)", param="to")
    if not body["text"] or len(body["text"]) > MAX_TEXT_CHARS:
        return body, error_reply(422, "invalid_parameter",
                                 f"'text' must hold 1 to {MAX_TEXT_CHARS} characters", param="text")
    return body, None


def _content_filter(settings: VendorSettings, text: str) -> Reply | None:
    """The 422 for a text holding one of the vendor's blocked phrases, or None."""
    phrase = next((p for p in settings.blocked_phrases if p in text), None)
    if phrase is None:
        return None
    return error_reply(422, "content_blocked", f"'text' holds the blocked phrase {phrase!r}", param="text")


def _count_second(counts: dict[int, int], second: int) -> None:
    counts[second] = counts.get(second, 0) + 1
    while len(counts) > MAX_SECONDS_KEPT:
        del counts[next(iter(counts))]


class Vendor:
    """One vendor's settings, rate limit, idempotency store, counters and outage (thread-safe)."""

    def __init__(self, name: str, settings: VendorSettings, *, clock: Callable[[], float],
                 rng: random.Random) -> None:
        self.name = name
        self._clock = clock
        self._rng = rng
        self._lock = threading.RLock()  # _record runs with and without it held
        self.listener: Listener | None = None
        self._outage_timer: threading.Timer | None = None
        self._outage_generation = 0
        self.reset(settings)

    def reset(self, settings: VendorSettings) -> None:
        """New settings and a fresh start: empty counters, no stored keys, no outage."""
        with self._lock:
            self._replace_settings(settings)
            self._statuses: dict[int, int] = {}
            self._requests_per_second: dict[int, int] = {}
            self._accepted_per_second: dict[int, int] = {}
            self._keys_seen: set[str] = set()
            self._replays = 0
            self._results: dict[str, tuple[str, Reply]] = {}  # key -> (body fingerprint, stored reply)
            self._messages: list[DeliveredMessage] = []
            self._down_until = 0.0
        self.outage(0, 0)

    def replace(self, settings: VendorSettings) -> None:
        """New settings (a full rate-limit bucket); counters and stored keys stay."""
        with self._lock:
            self._replace_settings(settings)

    def _replace_settings(self, settings: VendorSettings) -> None:
        self.settings = settings
        self._bucket = TokenBucket(settings.rate_per_s, settings.burst, clock=self._clock)

    # -- outages -------------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return self.listener is None or self.listener.is_open

    def outage(self, refuse_s: float, down_s: float) -> None:
        """Refuse connections for ``refuse_s``, then answer 503 for ``down_s``, then heal; both 0
        ends the current outage now. Held under the lock, so requests wait while the port closes
        (one accept-loop poll) and an earlier outage's timer cannot reopen it under a later one."""
        with self._lock:
            self._outage_generation += 1
            if self._outage_timer is not None:
                self._outage_timer.cancel()
                self._outage_timer = None
            now = time.monotonic()
            self._refuse_until = now + refuse_s
            self._down_until = now + refuse_s + down_s
            if self.listener is None:
                return
            if refuse_s <= 0:
                self.listener.open()
                return
            self.listener.close()
            self._outage_timer = threading.Timer(refuse_s, self._end_refusal, args=(self._outage_generation,))
            self._outage_timer.daemon = True
            self._outage_timer.start()

    def _end_refusal(self, generation: int) -> None:
        with self._lock:
            if generation != self._outage_generation or self.listener is None:
                return  # a later outage (or its end) took over
            with contextlib.suppress(LocalServiceError):  # port taken meanwhile: `listen_error` says so
                self.listener.open()

    def stop(self) -> None:
        with self._lock:
            self._outage_generation += 1
            if self._outage_timer is not None:
                self._outage_timer.cancel()
                self._outage_timer = None
            if self.listener is not None:
                self.listener.close()

    # -- the messages route --------------------------------------------------------------------

    def send(self, authorization: str, key: str, raw: bytes) -> Reply:
        """Answer one ``POST /vendors/{name}/messages`` (sleeps the latency outside the lock)."""
        with self._lock:
            settings = self.settings
            second = math.floor(self._clock())
            _count_second(self._requests_per_second, second)
            down_for = self._down_until - time.monotonic()
            early = self._admit(settings, authorization, key, down_for)
            if early is not None:
                return self._record(early)
            _count_second(self._accepted_per_second, second)
            fails = self._rng.random() < settings.failure_rate
            latency_s = (settings.latency_ms + self._rng.uniform(0, settings.jitter_ms)) / 1000
        if latency_s > 0:
            # The vendor is busy with the request; a caller that gives up meanwhile does not undo it.
            time.sleep(latency_s)
        if fails:
            return self._record(self._failure(settings))
        body, invalid = _validate_message(raw)
        if invalid is None:
            invalid = _content_filter(settings, body["text"])
        if invalid is not None:
            return self._record(invalid)
        with self._lock:
            return self._record(self._apply_once(key, body))

    def _admit(self, settings: VendorSettings, authorization: str, key: str, down_for: float) -> Reply | None:
        """The answer for a request that goes no further (down, auth, key, rate), or None."""
        if settings.down or down_for > 0:
            return error_reply(503, "unavailable", f"vendor {self.name} is down",
                               {"Retry-After": str(settings.retry_after_s)})
        if authorization != f"Bearer {settings.token}":
            return error_reply(401, "unauthorized", "missing or wrong bearer token",
                               {"WWW-Authenticate": 'Bearer realm="vendor"'})
        if not key or len(key) > MAX_KEY_CHARS:
            return error_reply(400, "idempotency_key_required",
                               f"send an Idempotency-Key header of 1 to {MAX_KEY_CHARS} characters")
        self._keys_seen.add(key)
        if not self._bucket.try_acquire():
            wait_s = max(0.0, (1 - self._bucket.available) / settings.rate_per_s)
            return error_reply(
                429, "rate_limited", f"above {settings.rate_per_s:g} requests/s: retry after {wait_s:.3f} s",
                {"Retry-After": str(max(1, math.ceil(wait_s))), "X-RateLimit-Reset-After": f"{wait_s:.3f}"},
                retry_after_s=round(wait_s, 3))
        return None

    @staticmethod
    def _failure(settings: VendorSettings) -> Reply:
        if settings.failure_status == 503:
            return error_reply(503, "unavailable", "temporarily unavailable (injected failure)",
                               {"Retry-After": str(settings.retry_after_s)})
        return error_reply(500, "internal_error", "internal error (injected failure)")

    def _apply_once(self, key: str, body: dict[str, Any]) -> Reply:
        """The effect for a new key, the stored reply for a repeat, 422 for a key reused with
        another body. Called under the lock: two requests with one key apply it once."""
        fingerprint = _fingerprint(body)
        stored = self._results.get(key)
        if stored is not None:
            if stored[0] != fingerprint:
                return error_reply(422, "idempotency_key_reused",
                                   "this Idempotency-Key was used with another request body")
            self._replays += 1
            return Reply(stored[1].status, stored[1].body, {**stored[1].headers, "Idempotent-Replayed": "true"})
        message = DeliveredMessage(id=f"msg_{uuid.uuid4().hex[:24]}", key=key, to=body["to"], text=body["text"])
        self._messages.append(message)
        reply = Reply(201, {"id": message.id, "status": "accepted", "to": message.to, "text": message.text})
        self._results[key] = (fingerprint, reply)
        return reply

    def _record(self, reply: Reply) -> Reply:
        with self._lock:
            self._statuses[reply.status] = self._statuses.get(reply.status, 0) + 1
        return reply

    # -- reading it ----------------------------------------------------------------------------

    def counters(self) -> VendorCounters:
        with self._lock:
            statuses = dict(self._statuses)
            return VendorCounters(
                requests=sum(statuses.values()),
                throttled=statuses.get(429, 0),
                server_errors=sum(n for s, n in statuses.items() if s >= 500),
                client_errors=sum(n for s, n in statuses.items() if 400 <= s < 500 and s != 429),
                distinct_keys=len(self._keys_seen),
                replays=self._replays,
                effects_applied=len(self._messages),
                statuses=statuses,
                requests_per_second=dict(self._requests_per_second),
                accepted_per_second=dict(self._accepted_per_second),
            )

    def messages(self) -> list[DeliveredMessage]:
        with self._lock:
            return list(self._messages)

    def state(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            refuse_left = max(0.0, self._refuse_until - now)
            down_left = max(0.0, self._down_until - now - refuse_left)
            settings = self.settings.model_dump()
        return {
            "name": self.name,
            "url": self.listener.url if self.listener is not None else "",
            "listening": self.listening,
            "listen_error": self.listener.error if self.listener is not None else "",
            "outage": {"refuse_s": round(refuse_left, 3), "down_s": round(down_left, 3)},
            "settings": settings,
            "counters": self.counters().as_dict(),
        }


class UnknownVendorError(VendorApiError):
    """No vendor of that name (404)."""


def settings_problem(exc: ValidationError) -> str:
    """A pydantic error as one line: ``field: reason; ...``."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors())


def parse_settings(data: Any) -> VendorSettings:
    if not isinstance(data, Mapping):
        raise VendorApiError("vendor settings must be a JSON object")
    try:
        return VendorSettings.model_validate(data)
    except ValidationError as exc:
        raise VendorApiError(f"bad vendor settings: {settings_problem(exc)}") from None


def configured_vendors(vendors: Mapping[str, LocalVendorSettings], token: str) -> dict[str, VendorSettings]:
    """The server's vendors from ``local.vendors`` of a config, all accepting ``token``."""
    return {name: VendorSettings(**config.model_dump(), token=token) for name, config in vendors.items()}


def vendor_url_env_name(name: str) -> str:
    """The local.env key of one vendor's own URL: ``SLUICE_VENDOR_URL_<NAME>`` (``-`` as ``_``)."""
    return "SLUICE_VENDOR_URL_" + name.upper().replace("-", "_")


class _Server(LoopbackHTTPServer):
    """One listening port: the shared one (``vendor`` None: every vendor and the admin API) or a
    vendor's own. It tracks its open connections so an outage can cut them."""

    def __init__(self, address: tuple[str, int], api: VendorApi, vendor: str | None) -> None:
        self.api = api
        self.vendor = vendor
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class Listener:
    """A port that can stop listening (connects are refused, open connections cut) and listen
    again on the same port."""

    def __init__(self, api: VendorApi, vendor: str | None, port: int = 0) -> None:
        self.api = api
        self.vendor = vendor
        self.port = port
        self.error = ""
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def open(self) -> None:
        with self._lock:
            if self._server is not None:
                return
            try:
                server = _Server((LOOPBACK, self.port), self.api, self.vendor)
            except OSError as exc:
                self.error = f"cannot listen on {LOOPBACK}:{self.port}: {exc}"
                raise LocalServiceError(self.error) from exc
            self.error = ""
            self.port = int(server.server_address[1])
            self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": _POLL_S},
                                            name=f"vendor-api-{self.vendor or 'shared'}", daemon=True)
            self._server = server
            self._thread.start()

    def close(self) -> None:
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
            if server is None:
                return
            server.shutdown()
            server.server_close()  # from here a connect is refused
            server.drop_connections()
            if thread is not None:
                thread.join(timeout=5)


class VendorApi:
    """The server: a shared port (``url``: every vendor and ``/_admin``) and a port per vendor
    (``vendor_url``). ``clock`` drives the rate limits and the per-second counts; ``seed`` makes
    the failure and jitter draws repeatable."""

    def __init__(self, vendors: Mapping[str, VendorSettings], *, port: int | None = None,
                 clock: Callable[[], float] = time.time, seed: int | None = None) -> None:
        for name in vendors:
            if not VENDOR_NAME.match(name):
                raise VendorApiError(f"vendor name {name!r} must be 1-32 lower-case letters, digits or '-'")
        self.initial = dict(vendors)
        self.requested_port = port
        self.clock = clock
        self.seed = seed
        self._vendors: dict[str, Vendor] = {}
        self._lock = threading.Lock()
        self._shared: Listener | None = None

    @property
    def url(self) -> str:
        if self._shared is None:
            raise LocalServiceError("the vendor API is not started")
        return self._shared.url

    def vendor_url(self, name: str) -> str:
        vendor = self.vendor(name)
        if vendor is None or vendor.listener is None:
            raise UnknownVendorError(f"no vendor named {name!r}")
        return vendor.listener.url

    def env(self) -> dict[str, str]:
        """What local.env says about this server: the shared URL and each vendor's own."""
        with self._lock:
            names = sorted(self._vendors)
        return {"SLUICE_VENDOR_URL": self.url, **{vendor_url_env_name(n): self.vendor_url(n) for n in names}}

    def start(self) -> str:
        port = choose_port(self.requested_port, "the vendor API") if self.requested_port else 0
        self._shared = Listener(self, None, port)
        try:
            self._shared.open()
            for name, settings in self.initial.items():
                self._add(name, settings)
        except LocalServiceError:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        with self._lock:
            vendors, self._vendors = list(self._vendors.values()), {}
        for vendor in vendors:
            vendor.stop()
        if self._shared is not None:
            self._shared.close()

    def _rng(self, name: str) -> random.Random:
        return random.Random(f"{self.seed}:{name}") if self.seed is not None else random.Random()

    def _add(self, name: str, settings: VendorSettings) -> Vendor:
        vendor = Vendor(name, settings, clock=self.clock, rng=self._rng(name))
        vendor.listener = Listener(self, name)
        vendor.listener.open()
        with self._lock:
            self._vendors[name] = vendor
        return vendor

    def vendor(self, name: str) -> Vendor | None:
        with self._lock:
            return self._vendors.get(name)

    def _known(self, name: str) -> Vendor:
        vendor = self.vendor(name)
        if vendor is None:
            raise UnknownVendorError(f"no vendor named {name!r} (PUT /_admin/vendors/{name} makes one)")
        return vendor

    def put(self, name: str, settings: VendorSettings) -> tuple[bool, Vendor]:
        """Create the vendor, or replace its settings (its counters and keys stay); True if created."""
        if not VENDOR_NAME.match(name):
            raise VendorApiError(f"vendor name {name!r} must be 1-32 lower-case letters, digits or '-'")
        vendor = self.vendor(name)
        if vendor is not None:
            vendor.replace(settings)
            return False, vendor
        return True, self._add(name, settings)

    def outage(self, name: str, refuse_s: float, down_s: float) -> Vendor:
        vendor = self._known(name)
        vendor.outage(refuse_s, down_s)
        return vendor

    def reset(self) -> list[str]:
        """Back to how the server started: its first vendors with their first settings, nothing counted."""
        with self._lock:
            extra = [v for n, v in self._vendors.items() if n not in self.initial]
            for vendor in extra:
                del self._vendors[vendor.name]
        for vendor in extra:
            vendor.stop()
        for name, settings in self.initial.items():
            existing = self.vendor(name)
            if existing is None:
                self._add(name, settings)
            else:
                existing.reset(settings)
        return sorted(self.initial)

    def states(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            vendors = list(self._vendors.values())
        return {v.name: v.state() for v in sorted(vendors, key=lambda v: v.name)}

    def __enter__(self) -> VendorApi:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _outage_seconds(data: Any) -> tuple[float, float]:
    if not isinstance(data, Mapping):
        raise VendorApiError('an outage is a JSON object {"refuse_s": seconds, "down_s": seconds}')
    values = []
    for name in ("refuse_s", "down_s"):
        value = data.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 86400:
            raise VendorApiError(f"{name} must be a number of seconds from 0 to 86400, got {value!r}")
        values.append(float(value))
    unknown = sorted(set(data) - {"refuse_s", "down_s"})
    if unknown:
        raise VendorApiError(f"unknown outage field(s) {', '.join(unknown)}: use refuse_s and down_s")
    return values[0], values[1]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Quiet: the counters say what happened."""

    def _handle(self) -> None:
        body = self._read_body()
        if body is None:
            return
        path = self.path.split("?", 1)[0]
        messages = MESSAGES_PATH.match(path)
        if messages and self.server.vendor in (None, messages.group(1)):
            self._messages(messages.group(1), body)
        elif self.server.vendor is None and path.startswith("/_admin/"):
            try:
                self._admin(path, body)
            except UnknownVendorError as exc:
                self._send(error_reply(404, "not_found", str(exc)))
            except VendorApiError as exc:
                self._send(error_reply(400, "bad_request", str(exc)))
        else:
            self._send(error_reply(404, "not_found", f"no route for {self.command} {path}"))

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle  # noqa: N815

    def _read_body(self) -> bytes | None:
        """The request body, or None once a 400/413 has been sent for it."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            try:
                return read_chunked(self.rfile, MAX_BODY_BYTES)
            except (BodyTooLargeError, BadChunkedBodyError) as exc:
                self.close_connection = True
                too_large = isinstance(exc, BodyTooLargeError)
                self._send(error_reply(413 if too_large else 400, "bad_body",
                                       f"body over {MAX_BODY_BYTES} bytes" if too_large else str(exc)))
                return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True  # the body is not read
            self._send(error_reply(413 if length > 0 else 400, "bad_body",
                                   f"Content-Length must be 0 to {MAX_BODY_BYTES}"))
            return None
        return self.rfile.read(length) if length else b""

    def _messages(self, name: str, body: bytes) -> None:
        vendor = self.server.api.vendor(name)
        if vendor is None:
            self._send(error_reply(404, "not_found", f"no vendor named {name!r}"))
            return
        if not vendor.listening:
            # Refusing connections: the shared port cannot refuse for one vendor, so it hangs up.
            self.close_connection = True
            return
        if self.command != "POST":
            self._send(error_reply(405, "method_not_allowed", "messages are sent with POST"))
            return
        self._send(vendor.send(self.headers.get("Authorization", ""), self.headers.get("Idempotency-Key", ""), body))

    def _admin(self, path: str, body: bytes) -> None:
        api, method = self.server.api, self.command
        if path == "/_admin/reset" and method == "POST":
            self._send(Reply(200, {"vendors": api.reset()}))
            return
        if path == "/_admin/vendors" and method == "GET":
            self._send(Reply(200, {"vendors": api.states()}))
            return
        match = ADMIN_VENDOR_PATH.match(path)
        if match is None:
            raise UnknownVendorError(f"no route for {method} {path}")
        name, part = match.group(1), match.group(2)
        if part is None and method == "GET":
            self._send(Reply(200, api._known(name).state()))
        elif part is None and method == "PUT":
            created, vendor = api.put(name, parse_settings(self._json(body)))
            self._send(Reply(201 if created else 200, vendor.state()))
        elif part == "/outage" and method == "POST":
            refuse_s, down_s = _outage_seconds(self._json(body) if body else {})
            self._send(Reply(200, api.outage(name, refuse_s, down_s).state()))
        elif part == "/messages" and method == "GET":
            self._send(Reply(200, {"messages": [asdict(m) for m in api._known(name).messages()]}))
        else:
            self._send(error_reply(405, "method_not_allowed", f"{method} is not served on {path}"))

    @staticmethod
    def _json(body: bytes) -> Any:
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise VendorApiError("the body is not JSON") from None

    def _send(self, reply: Reply) -> None:
        with contextlib.suppress(OSError):  # the caller hung up (or an outage cut it): nothing to tell it
            send_reply(self, reply.status, *json_reply(reply.body, reply.headers))


# -- running it alone --------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sluice_tools.local.vendor_api",
        description="Serve the stand-in vendor API on 127.0.0.1 (vendors from local.vendors of a config).")
    parser.add_argument("--port", type=int, default=0, help="the shared port (default: a free one)")
    parser.add_argument("--stage", default="local", help="config/<stage>.yml to read local.vendors from")
    parser.add_argument("--token", default="", help="the bearer token every vendor accepts (default: a new one)")
    args = parser.parse_args(argv)
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # Blocked before any server thread starts (threads inherit the mask), so only sigwait sees them.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        settings = load_settings(args.stage)
        token = args.token or secrets.token_urlsafe(24)
        api = VendorApi(configured_vendors(settings.local.vendors, token), port=args.port or None)
        api.start()
    except (SettingsError, VendorApiError, LocalServiceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        print(json.dumps({"url": api.url, "token": token, "vendors": api.env()}), flush=True)
        signal.sigwait(stop_signals)
    finally:
        api.stop()
    return 0

if __name__ == "__main__":
    sys.exit(main())
