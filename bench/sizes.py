"""How big each scenario runs: the full benchmark, and a smoke run that only proves the harness works."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    import_repeats: int  # P6: fresh interpreters per module
    burst: int  # P1-P4: items enqueued at once, then drained
    cap: int  # drain.max_parallel (and the worker's reserved concurrency)
    component_rounds: int  # P2: SQS receive+delete rounds measured alone
    enqueue_items: int  # P5
    enqueue_max_tps: int  # P5: the configured cap, set below what the endpoint takes
    probe_interval_s: float  # P7: one probe query every this many seconds
    idle_probes: int  # P7: probes against the idle database
    drain_timeout_s: int  # consumer budget in the bench stack
    deadline_s: float  # how long a drain may take before the run gives up
    unbound_burst: int  # P3/P8: the burst drained with the rate cap out of the way, fixed and adaptive
    slow_burst: int  # P8: the burst drained through a slowdown, fixed and adaptive
    slow_lead_s: float  # P8: seconds into the drain the outside load starts
    slow_s: float  # P8: how long it lasts
    load_processes: int  # P8: processes writing the outside load
    slow_drain_timeout_s: int  # P8: the slowdown consumers' budget (a report, with its limit, per drain)
    lane_a_items: int  # L1: lane A's backlog behind its slow vendor
    lane_a_poison: int  # L1: of which poison (dead-lettered)
    lane_b_items: int  # L1: lane B items timed, alone and with lane A loaded
    lane_b_interval_s: float  # L1: one lane B item sent every this many seconds


FULL = Sizes(
    import_repeats=5,
    burst=3000,
    cap=4,
    component_rounds=300,
    enqueue_items=3000,
    enqueue_max_tps=50,
    probe_interval_s=0.02,
    idle_probes=200,
    drain_timeout_s=15,
    deadline_s=180,
    unbound_burst=3000,
    slow_burst=4000,
    slow_lead_s=4,
    slow_s=10,
    load_processes=4,
    slow_drain_timeout_s=10,
    lane_a_items=400,
    lane_a_poison=40,
    lane_b_items=30,
    lane_b_interval_s=0.25,
)

SMOKE = Sizes(
    import_repeats=1,
    burst=60,
    cap=2,
    component_rounds=10,
    enqueue_items=40,
    enqueue_max_tps=20,
    probe_interval_s=0.02,
    idle_probes=20,
    drain_timeout_s=12,
    deadline_s=60,
    unbound_burst=60,
    slow_burst=150,
    slow_lead_s=0.1,
    slow_s=1,
    load_processes=2,
    slow_drain_timeout_s=10,
    lane_a_items=60,
    lane_a_poison=5,
    lane_b_items=4,
    lane_b_interval_s=0.2,
)
