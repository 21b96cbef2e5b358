"""A job slowed by its fabric: a node whose traffic collapsed, an erring, waiting or flapping port.

Scenarios are synthetic per-second ticks of a 4-node job (2 ports a node) with jittered traffic
and per-rank steps; each fault fires once with the right subject and evidence and resolves under
the same id, while noise, job-wide phases and IB findings that do not slow the job stay quiet.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

from hpcinsight.schemas.events import Anomaly, Event, IbSample, StepMetric
from hpcinsight.streams.detectors import discover
from hpcinsight.streams.detectors.slow_interconnect import SlowInterconnectConfig, SlowInterconnectDetector

T0 = 1_764_000_000_000
NODES = ("n0", "n1", "n2", "n3")
PORTS = (("mlx5_0", 1), ("mlx5_1", 1))
LINE = 10e9  # bytes/s each way per port when healthy

Traffic = Callable[[int, str, str], float]  # (t, node, device) -> fraction of LINE
PortValue = Callable[[int, str, str], Any]


def ib(t: int, node: str, device: str, *, job: str | None = "job-1", frac: float = 1.0, **kw: Any) -> IbSample:
    fields: dict[str, Any] = dict(
        interval_s=1.0,
        state="ACTIVE",
        rate_gbps=400.0,
        xmit_bytes_per_s=LINE * frac,
        rcv_bytes_per_s=LINE * frac,
        xmit_wait_per_s=1e4,
        symbol_errors=0,
        link_downed=0,
        link_error_recovery=0,
        rcv_errors=0,
        local_link_integrity_errors=0,
        job_id=job,
    )
    fields.update(kw)
    return IbSample(node, device, 1, T0 + t * 1000, **fields)


def scenario(
    seconds: int,
    *,
    traffic: Traffic = lambda t, n, d: 1.0,
    step: Callable[[int], float] | None = lambda t: 1.0,
    port: Callable[[int, str, str], dict[str, Any]] = lambda t, n, d: {},
    job: str = "job-1",
    seed: int = 0,
    start: int = 0,
) -> Iterator[Event]:
    """Per second: every port of every node, then one step of each of the 8 ranks."""
    rng = random.Random(seed)
    for t in range(start, start + seconds):
        for node in NODES:
            for device, _ in PORTS:
                frac = traffic(t, node, device) * rng.uniform(0.9, 1.1)
                extra = {"xmit_wait_per_s": rng.uniform(5e3, 2e4), **port(t, node, device)}
                yield ib(t, node, device, job=job, frac=frac, **extra)
        if step is not None:
            for rank in range(8):
                yield StepMetric(job, rank, 8, t, T0 + t * 1000, step(t) * rng.uniform(0.95, 1.05), node=NODES[rank // 2])


def run(det: SlowInterconnectDetector, events) -> list[Anomaly]:
    return [a for e in events for a in det.observe(e)]


def summary(raised: list[Anomaly]) -> list[tuple[str, str, str]]:
    return [(a.state, a.subject_type, a.subject) for a in raised]


def during(a: int, b: int, inside: Any, outside: Any) -> Callable[[int], Any]:
    return lambda t: inside if a <= t < b else outside


def test_a_node_whose_traffic_collapses_while_steps_slow_fires_then_resolves() -> None:
    slow = during(300, 420, 1.5, 1.0)
    raised = run(
        SlowInterconnectDetector(), scenario(600, traffic=lambda t, n, d: 0.3 if n == "n2" and 300 <= t < 420 else 1.0, step=slow)
    )
    assert summary(raised) == [("firing", "node", "n2"), ("resolved", "node", "n2")]
    firing, resolved = raised
    e = firing.evidence
    assert firing.severity == "warning" and firing.job_id == "job-1" and firing.node == "n2"
    assert 38e9 < e["baseline_bytes_per_s"] < 42e9 and 10e9 < e["current_bytes_per_s"] < 14e9
    assert 38e9 < e["peer_median_bytes_per_s"] < 42e9 and e["peers"] == 3
    assert e["ratio_to_baseline"] < 0.5 and e["ratio_to_peers"] < 0.5
    assert e["steps_reported"] == 1 and 1.4 < e["step_time_ratio"] < 1.6 and 0.95 < e["step_baseline_s"] < 1.05
    assert T0 + 300_000 <= firing.started_at <= T0 + 320_000 and firing.ts - firing.started_at >= 30_000
    assert "node n2 in job job-1" in firing.message and "1.5" in firing.message
    assert resolved.id == firing.id and T0 + 480_000 <= resolved.ts <= T0 + 495_000


def test_an_erring_port_is_named_as_the_link() -> None:
    def errs(t: int, n: str, d: str) -> dict[str, Any]:
        return {"symbol_errors": 4, "link_error_recovery": 1} if (n, d) == ("n1", "mlx5_1") and 300 <= t < 420 else {}

    raised = run(SlowInterconnectDetector(), scenario(600, port=errs, step=during(300, 420, 1.3, 1.0)))
    assert summary(raised) == [("firing", "link", "n1/mlx5_1/1"), ("resolved", "link", "n1/mlx5_1/1")]
    firing, resolved = raised
    assert firing.severity == "warning" and firing.evidence["symbol_errors"] >= 30 and firing.evidence["link_error_recovery"] >= 7
    assert firing.evidence["error_rate_per_s"] >= 4 and firing.evidence["rate_gbps"] == 400
    assert "cable" in firing.message and "symbol_errors" in firing.message
    assert resolved.id == firing.id


def test_a_port_waiting_far_more_than_its_peers_is_named() -> None:
    wait = lambda t, n, d: {"xmit_wait_per_s": 5e7} if (n, d) == ("n0", "mlx5_0") and t >= 300 else {}
    raised = run(SlowInterconnectDetector(), scenario(400, port=wait, step=during(300, 999, 1.4, 1.0)))
    assert summary(raised) == [("firing", "link", "n0/mlx5_0/1")]
    e = raised[0].evidence
    assert e["xmit_wait_per_s"] == 5e7 and e["peer_xmit_wait_per_s"] < 3e4 and "transmit waits" in raised[0].message


def test_a_flapping_link_is_critical_even_when_steps_do_not_slow() -> None:
    flap = lambda t, n, d: {"link_downed": 1} if (n, d) == ("n3", "mlx5_0") and t in (300, 340) else {}
    raised = run(SlowInterconnectDetector(SlowInterconnectConfig(flap_window_s=300)), scenario(800, port=flap))
    assert summary(raised) == [("firing", "link", "n3/mlx5_0/1"), ("resolved", "link", "n3/mlx5_0/1")]
    firing, resolved = raised
    assert firing.severity == "critical" and firing.ts == T0 + 330_000 and firing.evidence["link_downed"] == 1
    assert "flapping" in firing.message and resolved.evidence["link_downed"] == 0
    assert resolved.ts == T0 + 700_000 and resolved.id == firing.id  # last flap at 340 ages out at 640, + 60 s


def test_ib_findings_that_do_not_slow_the_steps_are_not_raised() -> None:
    drop = lambda t, n, d: 0.3 if n == "n2" and t >= 300 else 1.0
    errs = lambda t, n, d: {"symbol_errors": 5} if n == "n1" and t >= 300 else {}
    assert run(SlowInterconnectDetector(), scenario(600, traffic=drop, port=errs)) == []


def test_a_job_without_step_metrics_is_judged_on_ib_alone_and_says_so() -> None:
    raised = run(
        SlowInterconnectDetector(), scenario(400, traffic=lambda t, n, d: 0.2 if n == "n0" and t >= 300 else 1.0, step=None)
    )
    assert summary(raised) == [("firing", "node", "n0")]
    assert raised[0].evidence["steps_reported"] == 0 and "step_time_ratio" not in raised[0].evidence
    assert "judged on InfiniBand evidence alone" in raised[0].message


def test_healthy_noisy_jobs_with_dips_phases_and_stray_errors_raise_nothing() -> None:
    rng = random.Random(7)

    def traffic(t: int, n: str, d: str) -> float:
        if 400 <= t < 460:
            return 0.15  # checkpoint: the whole job's traffic drops at once
        if n == "n1" and 300 <= t < 305:
            return 0.05  # a momentary dip on one node
        return rng.uniform(0.7, 1.3)

    def port(t: int, n: str, d: str) -> dict[str, Any]:
        return {"symbol_errors": 1} if rng.random() < 0.0005 else {}  # a stray error now and then

    slow_phase = during(400, 460, 1.6, 1.0)  # the checkpoint slows the steps too
    events = list(scenario(900, traffic=traffic, port=port, step=slow_phase, seed=3))
    events += [ib(t, "n9", "mlx5_0", job=None, frac=0.01) for t in range(900)]  # unattributed: ignored
    assert run(SlowInterconnectDetector(), events) == []


def test_restore_takes_back_open_incidents_so_they_never_fire_twice() -> None:
    drop = lambda t, n, d: 0.3 if n == "n2" and 300 <= t < 700 else 1.0
    slow = during(300, 700, 1.5, 1.0)
    first = SlowInterconnectDetector()
    (firing,) = run(first, scenario(500, traffic=drop, step=slow))
    second = SlowInterconnectDetector()
    second.restore([firing])
    # the restart forgot every window; the fault goes on, then ends
    after = run(second, scenario(400, traffic=drop, step=slow, start=500, seed=1))
    assert summary(after) == [("resolved", "node", "n2")] and after[0].id == firing.id


def test_a_node_that_moves_to_another_job_closes_its_incidents() -> None:
    det = SlowInterconnectDetector()
    (firing,) = run(det, scenario(400, traffic=lambda t, n, d: 0.2 if n == "n0" and t >= 300 else 1.0, step=None))
    moved = det.observe(ib(400, "n0", "mlx5_0", job="job-2"))
    assert summary(moved) == [("resolved", "node", "n0")] and moved[0].id == firing.id and moved[0].job_id == "job-1"


def test_null_malformed_and_late_samples_do_not_raise() -> None:
    det = SlowInterconnectDetector()
    bare = [IbSample(n, "mlx5_0", 1, T0 + t * 1000, job_id="job-1") for t in range(400) for n in NODES]
    reset = [
        ib(
            t,
            "n0",
            "mlx5_1",
            counters_reset=True,
            xmit_bytes_per_s=None,
            rcv_bytes_per_s=None,
            symbol_errors=None,
            link_downed=None,
            xmit_wait_per_s=None,
        )
        for t in range(400)
    ]
    steps = [StepMetric("job-1", 0, 1, t, T0 + t * 1000, 0.0) for t in range(400)]
    late = [ib(t, "n0", "mlx5_0", symbol_errors=50) for t in range(10)]  # older than what was seen
    assert run(det, bare + reset + steps + late) == []


def test_missing_samples_are_not_a_drop_and_an_outage_restarts_the_count() -> None:
    # mlx5_1 carries three quarters of n0's traffic; its sample is lost two ticks out of three
    uneven = lambda t, n, d: (1.5 if d == "mlx5_1" else 0.5) if n == "n0" else 1.0

    def lost(e: Event) -> bool:
        return (
            isinstance(e, IbSample) and (e.node, e.device) == ("n0", "mlx5_1") and e.ts > T0 + 300_000 and e.ts // 1000 % 3 != 0
        )

    lossy = [e for e in scenario(500, traffic=uneven, step=during(300, 999, 1.5, 1.0)) if not lost(e)]
    assert run(SlowInterconnectDetector(), lossy) == []
    # a real drop of n0: 25 s, then 60 s without any sample from n0, then 25 s more: never 30 s in a row
    drop = lambda t, n, d: 0.2 if n == "n0" and t >= 300 else 1.0
    gap = [
        e
        for e in scenario(410, traffic=drop, step=during(300, 999, 1.5, 1.0))
        if not (isinstance(e, IbSample) and e.node == "n0" and T0 + 325_000 <= e.ts < T0 + 385_000)
    ]
    assert run(SlowInterconnectDetector(), gap) == []


def test_redelivered_samples_are_counted_once() -> None:
    every_other = lambda t, n, d: {"symbol_errors": 1} if (n, d) == ("n2", "mlx5_0") and t % 2 == 0 else {}
    events = [e for e in scenario(400, port=every_other, step=None) for _ in range(2)]  # at-least-once delivery
    assert run(SlowInterconnectDetector(SlowInterconnectConfig(errors_per_s=1.0)), events) == []  # 0.5/s, not 1/s


def test_memory_of_finished_jobs_is_released() -> None:
    det = SlowInterconnectDetector(SlowInterconnectConfig(forget_after_s=60))
    for j in range(20):
        run(det, scenario(5, job=f"job-{j}", start=j * 10))
    run(det, scenario(1, job="job-last", start=400))
    assert set(det._jobs) == {"job-last"} and set(det._job_of) == set(NODES)


def test_discovered() -> None:
    assert SlowInterconnectDetector in discover()
