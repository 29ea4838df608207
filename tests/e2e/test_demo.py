"""`make demo` at a tiny size: the real command, as a subprocess, on a scratch database."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pymysql
import pytest

from sluice.settings import PROJECT_ROOT

pytestmark = pytest.mark.e2e


def test_demo_smoke_run_exits_0_with_invariants_from_the_database(tmp_path: Path) -> None:
    # GIVEN a scratch database and a state directory of the test's own
    name = f"sluice_demo_{uuid.uuid4().hex[:10]}"
    summary = tmp_path / "summary.json"
    try:
        # WHEN the demo runs its four lanes with 200 invoices (3 poison), 60 notifications for
        # vendor a and 12 for vendor b (2 of each refused by the vendor), 4 keys sent twice, and 40
        # invoices through the invoice flow (2 of them large ones accounting refuses, 2 sent twice)
        done = subprocess.run(
            [sys.executable, "-m", "sluice_tools.demo", "--items", "200", "--poison", "3", "--duplicates", "4",
             "--notifications", "60", "--notify-poison", "2",
             "--flow-items", "40", "--flow-refused", "2", "--flow-duplicates", "2",
             "--request-size", "50", "--timeout", "120", "--database-url", f"mysql://root@127.0.0.1:3306/{name}",
             "--local-dir", str(tmp_path / "stack"), "--json-out", str(summary)],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=240)
        # THEN it exits 0, and its summary (read from the database and the queues) holds the invariants
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        # AND off a terminal the summary starts on a line of its own, not after the live frame
        assert any(line.strip().startswith("sluice demo summary") for line in done.stdout.splitlines())
        facts = json.loads(summary.read_text())
        posts = facts["accounting_posts"]
        assert (facts["invoices"], facts["notifications"]) == (197 + 40, 68)
        assert facts["ledger_rows"] == 197 + 40 + 68 + posts  # a ledger row per invoice, delivery and post
        assert facts["dead_lettered"] == 7 + 2 and facts["duplicates"] == 0 and facts["lost"] == 0
        # AND each lane applied what was routed to it, from its own queue, under its own cap (the
        # flow lane: executions that succeeded, running executions under its cap)
        lanes = facts["lanes"]
        assert {lane_name: (lane["applied"], lane["dead_lettered"]) for lane_name, lane in lanes.items()} == {
            "invoices-flow": (38, 2), "ledger": (197, 3), "vendor-a": (58, 2), "vendor-b": (10, 2)}
        assert all(1 <= lane["peak_workers"] <= lane["cap"] for lane in lanes.values())
        # AND each vendor applied one effect per delivered message, whatever it was sent
        for vendor_lane in ("vendor-a", "vendor-b"):
            seen = lanes[vendor_lane]["vendor_facts"]
            assert seen["effects"] == seen["distinct_effect_keys"] == lanes[vendor_lane]["applied"]
        # AND the flow ran one execution per invoice (the 2 sent twice too), as Step Functions lists
        # them: the refused ones failed at PostToAccounting, after SaveInvoice had saved them, and
        # reached the DLQ with that state and the vendor's reason
        flow = lanes["invoices-flow"]["flow"]
        assert (flow["accepted"], flow["executions"], flow["succeeded"], flow["failed"], flow["running"]) == (
            40, 40, 38, 2, 0)
        assert flow["failed_states"] == {"PostToAccounting": 2} and flow["saved"] == flow["saved_distinct"] == 40
        assert all(x["reason"].startswith("state PostToAccounting: sluice.PermanentTaskError")
                   and "JPY" in x["reason"] for x in flow["dead_letters"]), flow["dead_letters"]
        # AND accounting took one post per large invoice that succeeded, and SNS one notification per success
        assert posts >= 1 and flow["large_succeeded"] == flow["accounting_posts"] == posts
        assert flow["accounting"]["effects"] == flow["accounting"]["distinct_effect_keys"] == posts
        assert flow["notifications"] == flow["notified_keys"] == 38
        assert 1 <= flow["peak_running"] <= flow["cap"] == 10
        assert all(facts["checks"].values())
        # AND the run-wide worker figures are the first worker lane's (ledger), not the flow's
        assert facts["peak_workers"] is not None and 1 <= facts["peak_workers"] <= facts["cap"] == 4
        # AND the database agrees: 237 invoices of this run, none twice, each applied once (a second
        # application keeps one row but bumps its apply_count, so the sum would exceed the count)
        conn = pymysql.connect(host="127.0.0.1", user="root", database=name)
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*), COUNT(DISTINCT item_key), SUM(apply_count) FROM invoices "
                        "WHERE item_key LIKE %s", (f"DEMO-{facts['run']}-%",))
            rows, keys, applications = cur.fetchone()
            cur.execute("SELECT COUNT(*), SUM(apply_count) FROM accounting_posts WHERE item_key LIKE %s",
                        (f"DEMO-{facts['run']}-%",))
            post_rows, post_applications = cur.fetchone()
        conn.close()
        assert (rows, keys) == (237, 237)
        assert int(applications) == rows
        assert int(post_rows) == int(post_applications) == posts
        # AND it stopped the stack it started: no state file is left behind
        assert not (tmp_path / "stack" / "stack.json").exists()
    finally:
        conn = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


def test_demo_with_a_malformed_database_url_is_one_line_and_exit_3(tmp_path: Path) -> None:
    # GIVEN a database URL whose port is not a number
    # WHEN the demo runs with it
    done = subprocess.run(
        [sys.executable, "-m", "sluice_tools.demo", "--items", "10", "--database-url", "mysql://root@127.0.0.1:x/db",
         "--local-dir", str(tmp_path / "stack")],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    # THEN it exits 3 with the reason, no traceback, and nothing left running
    assert done.returncode == 3, done.stdout + done.stderr
    assert "the port is not a number" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "stack" / "stack.json").exists()
