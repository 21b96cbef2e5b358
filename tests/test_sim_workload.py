"""The sim cluster with a workload: several jobs with phases, per-rank steps, job faults, the scheduler's view.

The seeded-stream guarantees of ``hpcinsight.agents.sim.gpu`` hold with a workload too: the same scenario gives
the same samples, and a fault changes nothing but its own GPU, node or job during its window.
"""

from __future__ import annotations

import statistics
import threading
from pathlib import Path
from typing import Any

from hpcinsight.agents.base import Collector
from hpcinsight.agents.delivery import Delivery
from hpcinsight.agents.runner import run_agent
from hpcinsight.agents.sim.scheduler import hostlist
from hpcinsight.harness.scenario import Scenario, parse
from hpcinsight.schemas.catalog import IB_SAMPLES_RAW
from hpcinsight.schemas.events import GpuSample, SchedulerEvent, StepMetric

T0 = 1_700_000_000_000
BASE = """
seed: 4
duration_s: 400
cluster: {nodes: 4, gpus_per_node: 8, ib_ports: 2}
jobs:
  - {id: a, nodes: 0-1, profile: {base: training, warmup_s: 30, checkpoint_every_s: 200, checkpoint_s: 30}}
  - {id: b, nodes: 2-3, profile: training}
"""


def run(sc: Scenario, seconds: int) -> dict[str, list[list[Any]]]:
    """Every collector's records, tick by tick, keyed by collector type."""
    out: dict[str, list[list[Any]]] = {}
    collectors = sc.collectors()
    for k in range(seconds):
        for c in collectors:
            out.setdefault(type(c).__name__, []).append(c.sample(T0 + k * 1000))
    return out


def with_faults(faults: str) -> Scenario:
    return parse(BASE + "faults:\n" + faults, default_name="wl")


def test_same_scenario_same_records() -> None:
    sc = parse(BASE, default_name="wl")
    assert run(sc, 120) == run(sc, 120)


def test_a_gpu_fault_changes_only_its_gpu_during_its_window() -> None:
    healthy = run(parse(BASE, default_name="wl"), 200)["SimGpuCollector"]
    faulty = run(
        with_faults(
            "  - {kind: slow, node: 1, gpu: 2, onset_s: 60, end_s: 120}\n"
            "  - {kind: idle, node: 3, gpu: 0, onset_s: 80, end_s: 100}\n"
        ),
        200,
    )["SimGpuCollector"]
    changed = {
        (s.node, s.gpu_index, (s.ts - T0) // 1000)
        for tick_h, tick_f in zip(healthy, faulty)
        for s, h in zip(tick_f, tick_h)
        if s != h
    }
    assert changed and all((n, g) in {("wl-node-01", 2), ("wl-node-03", 0)} for n, g, _ in changed)
    assert {t for n, g, t in changed if n == "wl-node-01"} <= set(range(60, 120))
    assert {t for n, g, t in changed if n == "wl-node-03"} == set(range(80, 100))


def test_job_faults_change_only_their_job() -> None:
    healthy = run(parse(BASE, default_name="wl"), 260)
    faulty = run(
        with_faults(
            "  - {kind: hang, job: b, onset_s: 150, end_s: 210}\n"
            "  - {kind: straggler, job: a, rank: 3, factor: 1.5, onset_s: 100, end_s: 200}\n"
        ),
        260,
    )
    for tick_h, tick_f in zip(healthy["SimGpuCollector"], faulty["SimGpuCollector"]):
        for h, f in zip(tick_h, tick_f):
            t = (f.ts - T0) / 1000
            if h != f:
                assert f.job_id == "wl.b" and 150 <= t < 210 and f.gpu_util <= 2.0
    steps_h = [m for tick in healthy["SimStepCollector"] for m in tick]
    steps_f = [m for tick in faulty["SimStepCollector"] for m in tick]
    assert [m for m in steps_h if m.job_id == "wl.a" and (m.ts - T0) / 1000 < 100] == [
        m for m in steps_f if m.job_id == "wl.a" and (m.ts - T0) / 1000 < 100
    ]
    hung = [m for m in steps_f if m.job_id == "wl.b" and 151 <= (m.ts - T0) / 1000 < 210]
    assert hung == []  # nothing completes while the job hangs ...
    assert any(m.job_id == "wl.b" and (m.ts - T0) / 1000 >= 211 for m in steps_f)  # ... and it moves on after
    slow = [m.duration_s for m in steps_f if m.job_id == "wl.a" and m.rank == 3 and 110 <= (m.ts - T0) / 1000 < 195]
    others = [m.duration_s for m in steps_f if m.job_id == "wl.a" and m.rank != 3 and 110 <= (m.ts - T0) / 1000 < 195]
    assert 1.4 < statistics.median(slow) / statistics.median(others) < 1.6


def test_phases_move_a_job_as_one_and_its_steps_and_fabric_pause() -> None:
    records = run(parse(BASE, default_name="wl"), 300)
    # job a: warm-up 30 s, then checkpoints in the last 30 s of every 200 s: [200, 230) after its warm-up
    at = {k: {s.gpu_uuid: s for s in tick} for k, tick in enumerate(records["SimGpuCollector"])}
    a_util = lambda k: [s.gpu_util for s in at[k].values() if s.job_id == "wl.a"]
    b_util = lambda k: [s.gpu_util for s in at[k].values() if s.job_id == "wl.b"]
    assert statistics.mean(a_util(10)) < 50 and statistics.mean(a_util(100)) > 75
    assert max(a_util(215)) <= 2.0 and statistics.mean(b_util(215)) > 75  # a checkpoints, b does not
    steps = [m for tick in records["SimStepCollector"] for m in tick if m.job_id == "wl.a"]
    assert not [m for m in steps if 201 <= (m.ts - T0) / 1000 < 230]
    assert {m.world_size for m in steps} == {16} and {m.rank for m in steps} == set(range(16))
    assert {(m.rank, m.node, m.local_rank) for m in steps if m.rank in (0, 9)} == {(0, "wl-node-00", 0), (9, "wl-node-01", 1)}
    ib = {k: tick for k, tick in enumerate(records["SimIbCollector"])}
    node0 = lambda k: sum(s.xmit_bytes_per_s for s in ib[k] if s.node == "wl-node-00")
    assert node0(215) < 0.1 * node0(150)


def test_ib_degrade_slows_the_job_steps() -> None:
    records = run(with_faults("  - {kind: ib_degrade, node: 3, onset_s: 150, end_s: 250}\n"), 300)
    steps = [m for tick in records["SimStepCollector"] for m in tick if m.job_id == "wl.b"]
    before = statistics.median(m.duration_s for m in steps if 100 <= (m.ts - T0) / 1000 < 150)
    during = statistics.median(m.duration_s for m in steps if 160 <= (m.ts - T0) / 1000 < 250)
    assert 1.5 < during / before < 1.7


def test_free_gpus_idle_and_the_scheduler_reports_jobs_as_they_come_and_go() -> None:
    sc = parse(
        """
seed: 1
duration_s: 100
cluster: {nodes: 3, gpus_per_node: 4, ib_ports: 1}
jobs:
  - {id: one, nodes: [0, 2], end_s: 50}
  - {id: part, nodes: 1, gpus: [1, 3], start_s: 20}
""",
        default_name="sched",
    )
    records = run(sc, 101)
    events = [(k, e) for k, tick in enumerate(records["SimSchedulerCollector"]) for e in tick if isinstance(e, SchedulerEvent)]
    assert [(k, e.kind, e.job_id) for k, e in events] == [
        (0, "submitted", "sched.one"),
        (0, "scheduled", "sched.one"),
        (0, "started", "sched.one"),
        (20, "submitted", "sched.part"),
        (20, "scheduled", "sched.part"),
        (20, "started", "sched.part"),
        (50, "finished", "sched.one"),
        (100, "finished", "sched.part"),
    ]
    placed = {e.job_id: (e.node, e.gpu_ids) for _, e in events if e.kind == "scheduled"}
    assert placed == {
        "sched.one": ("sched-node-[00,02]", []),
        "sched.part": ("sched-node-01", [sc.gpu_uuid(1, 1), sc.gpu_uuid(1, 3)]),
    }
    tick30: list[GpuSample] = records["SimGpuCollector"][30]
    jobs = {(s.node, s.gpu_index): s.job_id for s in tick30}
    assert jobs[("sched-node-01", 1)] == "sched.part" and jobs[("sched-node-01", 0)] is None
    assert all(s.gpu_util <= 2 for s in tick30 if s.job_id is None)
    assert records["SimGpuCollector"][100] == [] and records["SimIbCollector"][100] == []  # the scenario is over


def test_hostlist_with_gaps() -> None:
    sc = parse("duration_s: 10\ncluster: {nodes: 12}\n", default_name="h")
    config = sc.sim_config()
    assert hostlist(config) == "h-node-[00-11]"
    assert hostlist(config, [0, 1, 2, 5, 7, 8, 11]) == "h-node-[00-02,05,07-08,11]"
    assert hostlist(config, [4]) == "h-node-04"


class _Slow(Collector[None]):
    """A collector slower than the sim clock's period."""

    topic = IB_SAMPLES_RAW

    def sample(self, now_ms: int) -> list[Any]:
        self.seen.append(now_ms)
        threading.Event().wait(0.02)
        return []

    seen: list[int] = []


def test_a_sim_clock_from_a_given_start_that_catches_up_rather_than_skips(tmp_path: Path) -> None:
    slow = _Slow(None)
    slow.seen = []
    # no broker on purpose (the clock is under test); log_level 0 keeps librdkafka from logging its refusals
    delivery = Delivery({"bootstrap.servers": "127.0.0.1:9", "log_level": 0}, tmp_path / "spool")
    try:
        stats = run_agent([slow], delivery, "t.", interval_s=1.0, ticks=20, speed=1000.0, start_ms=T0, catch_up=True, node="n")
    finally:
        delivery.close(drain_timeout=0.1)
    assert not delivery._thread.is_alive()  # closed with the broker away: its sender ends too, not polling on
    assert stats.skipped_ticks == 0 and slow.seen == [T0 + k * 1000 for k in range(20)]


def test_step_records_are_step_metrics() -> None:
    records = run(parse(BASE, default_name="wl"), 60)
    assert all(isinstance(m, StepMetric) for tick in records["SimStepCollector"] for m in tick)
