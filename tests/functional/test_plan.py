"""`sluice plan` against a case computed by hand (no services needed).

The hand computation, for config/dev.yml (cap 4, batch 10, 256 MB everywhere, rate(1 minute),
consumer timeout 60 s with a 5 s margin, long poll 1 s, max_rate 200, 100 items per enqueue
request) at 1,000,000 items/day, 50 ms/item, 1% dead-lettered:

* full batches (fill 1): a worker call carries 10 items and deletes them in ceil(10/10) = 1
  DeleteMessageBatch.
* one slot: 10 items per 500 ms = 20 items/s; 4 slots = 80 items/s, below max_rate 200, FIFO
  receives (300/s x 10 = 3,000 items/s) and deletes (300/s x 10 = 3,000 items/s): the cap
  binds. 1e6 / 80 = 12,500 s of draining.
  A consumer drains 55 s of each 60 s tick: duty 11/12, wall time 13,636.36 s.
* needed cap for 24 h: ceil(1e6 / (86,400 * 11/12 * 20)) = ceil(0.631) = 1.
* Lambda requests: 10,000 enqueuer + 1,440 ticks + 100,000 worker calls = 111,440.
* SQS: 100,000 SendMessageBatch + (100,000 + 1,440) receives + 100,000 worker calls x 1
  DeleteMessageBatch + 10,000 DLQ sends = 311,440.
* GB-s: worker 1e6 * 0.05 s * 0.25 GB = 12,500; consumer (12,500 s + idle ticks
  (1,440 - ceil(12,500/55) = 1,212) * 1 s) * 0.25 = 3,428; enqueuer 10,000 * 0.2 s * 0.25 = 500.
* USD: 111,440 * 0.20e-6 = 0.022288; 16,428 * 0.0000166667 = 0.27380055;
  311,440 * 0.50e-6 = 0.15572; 10,000 * 1e-6 = 0.01; total 0.46180855 per day and per
  million items (the day holds exactly a million).
* limits: receives 80/10 = 8 calls/s, deletes 80/10 = 8 calls/s, each of 300/s.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sluice_tools.cli import app
from sluice_tools.ops.plan import PlanError, PlanInputs, make_plan

pytestmark = pytest.mark.functional

HAND = {
    "drain_rate": 80.0,
    "drain_time_s": 12_500.0,
    "wall_time_s": 12_500 * 12 / 11,
    "needed_cap": 1,
    "lambda_requests": 111_440,
    "sqs": {"send_message_batch": 100_000, "receive_message": 101_440, "delete_message_batch": 100_000,
            "dlq_send_message": 10_000},
    "gb_seconds": {"worker": 12_500.0, "consumer": 3_428.0, "enqueuer": 500.0},
    "usd_total": 0.022288 + 16_428 * 0.0000166667 + 0.15572 + 0.01,
}


def test_plan_matches_the_hand_computed_case() -> None:
    # GIVEN the inputs of the hand computation in this module's docstring
    inputs = PlanInputs(items_per_day=1_000_000, worker_ms=50, dead_letter_rate=0.01)
    # WHEN the plan is made
    plan = make_plan(inputs)
    # THEN every number matches the hand computation
    assert plan.drain_rate == pytest.approx(HAND["drain_rate"])
    assert plan.drain_bound_by == "worker slots (cap)"
    assert plan.drain_time_s == pytest.approx(HAND["drain_time_s"])
    assert plan.wall_time_s == pytest.approx(HAND["wall_time_s"])
    assert plan.needed_cap == HAND["needed_cap"]
    assert plan.lambda_requests == HAND["lambda_requests"]
    assert plan.sqs_requests == HAND["sqs"]
    assert plan.gb_seconds == pytest.approx(HAND["gb_seconds"])
    assert plan.total_usd_per_day == pytest.approx(HAND["usd_total"])
    assert plan.usd_per_million_items == pytest.approx(HAND["usd_total"])
    assert plan.total_usd_per_day == pytest.approx(0.46180855)
    # AND a DeleteMessageBatch per worker call: 8 calls/s, like the receives
    limits = {x.name: x for x in plan.limits}
    assert limits["FIFO delete TPS"].used == pytest.approx(8.0)
    assert limits["FIFO receive TPS"].used == pytest.approx(8.0)
    # AND nothing is broken; the volume limit nearest its end is the drain window (13,636 s of 86,400)
    assert not [x.name for x in plan.limits if x.broken]
    assert plan.breaks_first.name == "drain within window"


def test_cli_plan_json_uses_the_stage_settings_and_gives_the_same_numbers() -> None:
    # GIVEN config/dev.yml, whose settings are the hand case's defaults
    runner = CliRunner()
    # WHEN `sluice plan --json` runs
    result = runner.invoke(app, ["plan", "--items-per-day", "1000000", "--worker-ms", "50",
                                 "--dead-letter-rate", "0.01", "--stage", "dev", "--json"])
    # THEN it succeeds with the hand-computed numbers and names the price table's date and region
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["drain"]["needed_cap"] == 1
    assert body["requests_per_day"]["sqs_total"] == sum(HAND["sqs"].values())
    assert body["usd_per_million_items"] == pytest.approx(HAND["usd_total"])
    assert body["prices"]["region"] == "us-east-1" and body["prices"]["read_on"]
    # AND --fill reaches the model: half-full worker calls, twice the calls and deletes
    half = runner.invoke(app, ["plan", "--items-per-day", "1000000", "--worker-ms", "50", "--fill", "0.5",
                               "--stage", "dev", "--json"])
    assert half.exit_code == 0, half.output
    assert json.loads(half.stdout)["requests_per_day"]["sqs"]["delete_message_batch"] == 200_000


def test_half_full_worker_calls_double_the_calls_and_the_deletes() -> None:
    # GIVEN the hand case, but a worker call carries half a batch (--fill 0.5), none dead-lettered
    inputs = PlanInputs(items_per_day=1_000_000, worker_ms=50, fill=0.5)
    # WHEN the plan is made
    plan = make_plan(inputs)
    # THEN by hand: 5 items per call, 250 ms per call, still 20 items/s a slot, 80 with 4 slots;
    # 1e6 / 5 = 200,000 worker calls, each ceil(5/10) = 1 DeleteMessageBatch;
    # Lambda requests 10,000 + 1,440 + 200,000 = 211,440;
    # SQS 100,000 + 101,440 + 200,000 + 0 = 401,440; deletes 80 / 5 = 16 calls/s
    assert plan.drain_rate == pytest.approx(80.0)
    assert plan.worker_invocations == 200_000
    assert plan.sqs_requests["delete_message_batch"] == 200_000
    assert plan.lambda_requests == 211_440
    assert plan.total_sqs_requests == 401_440
    assert {x.name: x for x in plan.limits}["FIFO delete TPS"].used == pytest.approx(16.0)


def test_full_worker_calls_delete_ten_per_call_so_deletes_do_not_bind_at_300_items_per_s() -> None:
    # GIVEN 40 slots of 10 ms items and max_rate out of the way: slots could do 4,000 items/s
    inputs = PlanInputs(items_per_day=100_000_000, worker_ms=10, cap=40, reserved_concurrency=40,
                        max_rate=10_000)
    # WHEN the plan is made
    plan = make_plan(inputs)
    # THEN by hand: receives and deletes both allow 300 calls/s x 10 = 3,000 items/s (a tie; the
    # receive is named), below the slots' 4,000; 100 M items take 1e8 / (3,000 x 11/12) = 36,364 s,
    # inside a day; cap ceil(1e8 / (86,400 x 11/12 x 100 items/s a slot)) = ceil(12.63) = 13
    assert plan.drain_rate == pytest.approx(3_000)
    assert plan.drain_bound_by == "FIFO receive TPS"
    assert plan.wall_time_s == pytest.approx(1e8 / 2_750)
    assert plan.needed_cap == 13
    # AND deletes run at 3,000 / 10 = 300 calls/s: at the limit, not past it
    deletes = {x.name: x for x in plan.limits}["FIFO delete TPS"]
    assert deletes.used == pytest.approx(300)
    assert not deletes.broken
    assert not [x.name for x in plan.limits if x.broken]


def test_one_message_per_worker_call_makes_deletes_bind_at_300_items_per_s() -> None:
    # GIVEN the same 40 fast slots, but every worker call carries one message (batch 10, --fill 0.1)
    inputs = PlanInputs(items_per_day=100_000_000, worker_ms=10, fill=0.1, cap=40,
                        reserved_concurrency=40, max_rate=10_000)
    # WHEN the plan is made
    plan = make_plan(inputs)
    # THEN by hand: one DeleteMessageBatch per item, so 300 calls/s = 300 items/s binds (slots
    # 40 x 1 item per 10 ms = 4,000, receives 3,000); a day drains 300 x 11/12 x 86,400 =
    # 23.76 M < 100 M at any cap, and that is what breaks first
    assert plan.drain_bound_by == "FIFO delete TPS"
    assert plan.drain_rate == pytest.approx(300)
    assert plan.worker_invocations == 100_000_000
    assert plan.needed_cap is None
    assert plan.breaks_first.name == "drain within window"
    assert plan.breaks_first.broken


def test_cap_above_reserved_concurrency_is_flagged_as_broken() -> None:
    # GIVEN a cap of 8 while the worker may only run 4 at once
    plan = make_plan(PlanInputs(items_per_day=1000, worker_ms=10, cap=8, reserved_concurrency=4))
    # THEN the setting is reported as broken before any volume-driven limit
    assert plan.breaks_first.name == "worker reserved concurrency"
    assert plan.breaks_first.broken


def test_bad_inputs_are_refused_with_the_reason() -> None:
    # GIVEN inputs out of range
    # WHEN a plan is asked for / THEN a PlanError names each bad option
    with pytest.raises(PlanError, match="--batch-size"):
        make_plan(PlanInputs(items_per_day=10, worker_ms=5, batch_size=101))
    # AND the CLI turns it into a one-line usage error, exit code 2, no traceback
    result = CliRunner().invoke(app, ["plan", "--items-per-day", "0", "--worker-ms", "5", "--stage", "dev"])
    assert result.exit_code == 2
    assert "--items-per-day must be at least 1" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("flags", "reason"), [
    (["--fifo-tps", "0"], "--fifo-tps must be at least 1"),
    (["--account-concurrency", "0"], "--account-concurrency must be at least 1"),
    (["--db-max-connections", "-1"], "--db-max-connections must be at least 1"),
    (["--invoke-overhead-ms", "-50"], "--invoke-overhead-ms must be at least 0"),
    (["--fill", "0"], "--fill must be within 0..1"),
    (["--fill", "0.05"], "batch x fill >= 1"),
    (["--fill", "nan"], "--fill must be a finite number"),
])
def test_limits_and_overhead_out_of_range_are_usage_errors(flags: list[str], reason: str) -> None:
    # GIVEN a limit of zero (a division by zero, or an "inf%" verdict) or a negative latency
    # WHEN the plan is asked for
    result = CliRunner().invoke(app, ["plan", "--items-per-day", "10", "--worker-ms", "5", *flags,
                                      "--stage", "dev"])
    # THEN it is a one-line usage error naming the flag, exit 2, no traceback
    assert result.exit_code == 2, result.output
    assert reason in result.output
    assert "Traceback" not in result.output


def test_plan_per_lane_and_for_the_account() -> None:
    # GIVEN config/lanes.yml: invoices-flow cap 6 (rate 10), ledger cap 4 (rate 200), vendor-a cap 8
    # (rate 25), vendor-b cap 2 (rate 5), one consumer each: the lanes reserve 6+1 + 4+1 + 8+1 + 2+1 +
    # migrate 1 = 25 of 1,000 - 100 reservable
    # WHEN plan is asked without --lane, at 100,000 items/day per lane and 50 ms/item
    result = CliRunner().invoke(app, ["plan", "--items-per-day", "100000", "--worker-ms", "50",
                                      "--stage", "lanes", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    # THEN each lane is planned on its own settings, bound by its own limit
    lanes = {x["lane"]: x for x in body["lanes"]}
    assert list(lanes) == ["invoices-flow", "ledger", "vendor-a", "vendor-b"]
    assert [lanes[n]["inputs"]["cap"] for n in lanes] == [6, 4, 8, 2]
    # ledger: 4 slots x 20 items/s = 80 < 200; vendor-a: 8 x 20 = 160 > its rate 25; vendor-b: 2 x 20 = 40 > 5
    assert lanes["ledger"]["drain"]["bound_by"] == "worker slots (cap)"
    assert lanes["ledger"]["drain"]["rate_items_per_s"] == pytest.approx(80)
    assert lanes["vendor-a"]["drain"]["bound_by"] == "drain.max_rate"
    assert lanes["vendor-b"]["drain"]["rate_items_per_s"] == pytest.approx(5)
    # AND the account's line adds up every lane's reservation
    assert body["account"] == {"reserved": 25, "reservable": 900, "account_concurrency": 1000, "broken": False,
                               "ratio": pytest.approx(25 / 900)}
    # WHEN the account is too small for the lanes THEN the account line says so
    small = json.loads(CliRunner().invoke(app, ["plan", "--items-per-day", "1000", "--worker-ms", "5",
                                                "--account-concurrency", "110", "--stage", "lanes",
                                                "--json"]).stdout)
    assert small["account"]["broken"] is True and small["account"]["reservable"] == 10
    # WHEN one lane is asked for THEN its whole plan, on its settings
    one = CliRunner().invoke(app, ["plan", "--items-per-day", "100000", "--worker-ms", "50", "--lane", "vendor-b",
                                   "--stage", "lanes", "--json"])
    assert one.exit_code == 0 and json.loads(one.stdout)["lane"] == "vendor-b"
    assert json.loads(one.stdout)["inputs"]["max_rate"] == 5
    # AND the text output has one line per lane and the account's
    text = CliRunner().invoke(app, ["plan", "--items-per-day", "100000", "--worker-ms", "50", "--stage", "lanes"])
    assert text.exit_code == 0 and "account: the lanes reserve 25" in text.output
    assert all(name in text.output for name in lanes)
    # WHEN a lane the stage does not have is named THEN one line and exit 2
    bad = CliRunner().invoke(app, ["plan", "--items-per-day", "1", "--worker-ms", "5", "--lane", "nope",
                                   "--stage", "lanes"])
    assert bad.exit_code == 2 and "no lane 'nope'" in bad.output and bad.output.strip().count("\n") == 0
