"""A real-HTTP sample of the enqueue fuzz: generated requests through the local stack's HTTP API.

The same generators as test_fuzz_enqueue, but over a socket into the running stack (HTTP API
-> Lambda service -> enqueuer process -> fauxqs), with the schedule draining behind it. At
the end every item a 202 accepted is accounted for exactly once: applied (ledger row) or,
for an unknown customer, dead-lettered.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from test_fuzz_enqueue import OPENAPI, expected_ids, load_openapi, requests_, response_validators

from sluice_tools.chaos.runner import ChaosRun

pytestmark = pytest.mark.functional

EXAMPLES = max(60, int(os.environ.get("SLUICE_FUZZ_EXAMPLES", "300")) // 50)


def post(url: str, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_real_http_sample(tmp_path: Path) -> None:
    validators = response_validators(load_openapi())
    accepted: set[str] = set()
    statuses: dict[int, int] = {}
    # One lane: the fuzz counts every item it sent in that lane's queue and DLQ.
    with ChaosRun("fuzz over HTTP", tmp_path, lanes=False) as run:
        assert run.stack is not None and run.stack.api is not None
        api = run.stack.api.url.rstrip("/")
        # GIVEN the running stack serves the published document
        with urllib.request.urlopen(api + "/openapi.yaml", timeout=10) as reply:
            assert reply.read().decode() == OPENAPI.read_text()

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(body=requests_)
        def one_request(body: bytes) -> None:
            # WHEN a generated body is POSTed over HTTP
            status, reply = post(api + "/jobs", body)
            statuses[status] = statuses.get(status, 0) + 1
            # THEN never a 5xx, always the documented shape, and a reason on every 4xx
            assert status < 500, (status, reply)
            validators[status].validate(reply)
            if status >= 400:
                assert reply["error"].strip()
            else:
                accepted.update(expected_ids(body, reply))

        one_request()
        # AND once drained, each accepted item was applied once or dead-lettered with a reason
        run.settle()
        with run.db() as conn, conn.cursor() as cur:
            cur.execute("SELECT dedup_id FROM processed_messages")
            applied = {r[0] for r in cur.fetchall()}
        dead = run.dead_letters()
        assert all(attrs.get("sluice_error") for attrs in dead.values())
        assert len(applied) + len(dead) == len(accepted), (len(applied), len(dead), len(accepted), statuses)
        assert applied <= accepted
        assert statuses.get(202, 0) > 0 and statuses.get(400, 0) > 0
