"""Outlier GPUs and nodes among their job's peers: quiet on healthy noise, firing on the odd one out."""

from __future__ import annotations

import random
import statistics

import msgspec

from hpcinsight.streams.detectors import discover
from hpcinsight.streams.detectors.gpu_outlier import GpuOutlierConfig, GpuOutlierDetector
from hpcinsight.streams.jobs import JobGpuWindow

T0 = 1_764_000_000_000
GPUS = 32  # 4 nodes x 8


def windows(n: int, value_of, metric: str = "gpu_util", job: str = "job-1", gpus: int = GPUS, first: int = 0):
    for w in range(first, first + n):
        end = T0 + (w + 1) * 10_000
        p50 = {f"GPU-{g}": value_of(w, g) for g in range(gpus)}
        yield JobGpuWindow(
            job_id=job,
            metric=metric,
            window="10s",
            window_start=end - 10_000,
            window_end=end,
            statistic="p50",
            value=p50,
            node={f"GPU-{g}": f"n{g // 8}" for g in range(gpus)},
        )


def run(det: GpuOutlierDetector, events) -> list:
    return [a for e in events for a in det.observe(e)]


def test_healthy_noisy_peers_raise_nothing() -> None:
    rng = random.Random(3)
    base = [rng.uniform(82, 94) for _ in range(GPUS)]
    # a data-loading stall of a few seconds pulls a window's median down by some points, not 25
    noisy = windows(200, lambda w, g: min(100.0, base[g] + rng.gauss(0, 4) - (10 if rng.random() < 0.05 else 0)), gpus=16)
    assert run(GpuOutlierDetector(), noisy) == []
    # four nodes whose GPUs differ a little, with noise: no node stands out
    steady = windows(200, lambda w, g: min(100.0, base[g % 16] + rng.gauss(0, 4)))
    assert run(GpuOutlierDetector(), steady) == []
    assert run(GpuOutlierDetector(), windows(50, lambda w, g: 1980.0, metric="sm_clock_mhz")) == []  # MAD 0: the floor holds


def test_a_throttled_gpu_fires_then_resolves_with_evidence() -> None:
    rng = random.Random(4)
    slow = lambda w, g: 60.0 if (g == 5 and 10 <= w < 30) else 88 + rng.gauss(0, 2)
    raised = run(GpuOutlierDetector(GpuOutlierConfig(fire_after=3, resolve_after=2)), windows(50, slow))
    assert [(a.state, a.subject_type, a.subject) for a in raised] == [("firing", "gpu", "GPU-5"), ("resolved", "gpu", "GPU-5")]
    firing, resolved = raised
    assert firing.id == resolved.id and firing.started_at == T0 + 10 * 10_000
    assert firing.evidence["robust_z"] < -5 and firing.evidence["peers"] == GPUS and firing.node == "n0"
    assert firing.gpu_uuid == "GPU-5" and firing.job_id == "job-1"
    assert "median gpu_util 60 over 10s is out of line" in firing.message


def test_a_slow_node_is_named_as_a_node() -> None:
    rng = random.Random(5)
    slow_node = lambda w, g: (55.0 + rng.gauss(0, 1)) if (g // 8 == 2 and 5 <= w < 20) else 88 + rng.gauss(0, 2)
    raised = run(GpuOutlierDetector(), windows(30, slow_node))
    nodes = [(a.state, a.subject) for a in raised if a.subject_type == "node"]
    assert nodes == [("firing", "n2"), ("resolved", "n2")]
    firing = next(a for a in raised if a.subject_type == "node")
    assert firing.evidence["gpus_on_node"] == 8 and firing.evidence["peers"] == 4 and firing.gpu_uuid is None
    # 8 of 32 GPUs are the node's: each is also out of line with the job (alerting inhibits them under the node)
    assert {a.subject for a in raised if a.subject_type == "gpu"} == {f"GPU-{g}" for g in range(16, 24)}


def test_small_jobs_are_not_judged() -> None:
    det = GpuOutlierDetector(GpuOutlierConfig(min_peers=4, min_nodes=3))
    two = windows(10, lambda w, g: 90.0 if g == 0 else 5.0, gpus=2)
    assert run(det, two) == []


def test_restart_keeps_the_incident_id() -> None:
    slow = lambda w, g: 30.0 if g == 2 else 90.0
    first = GpuOutlierDetector()
    (firing,) = run(first, windows(10, slow))
    second = GpuOutlierDetector()
    second.restore([firing])
    assert run(second, windows(10, slow, first=10)) == []  # still open: not fired again
    recovered = run(second, windows(6, lambda w, g: 90.0, first=20))
    assert [a.state for a in recovered] == ["resolved"] and recovered[0].id == firing.id


def test_only_the_shortest_window_is_judged() -> None:
    det = GpuOutlierDetector()
    slow = lambda w, g: 30.0 if g == 2 else 90.0
    assert len(run(det, windows(5, slow))) == 1
    long_window = JobGpuWindow(
        job_id="job-1",
        metric="gpu_util",
        window="1m",
        window_start=T0,
        window_end=T0 + 60_000,
        statistic="p50",
        value={f"GPU-{g}": (30.0 if g == 7 else 90.0) for g in range(GPUS)},
        node={f"GPU-{g}": f"n{g // 8}" for g in range(GPUS)},
    )
    assert run(det, [long_window] * 3) == []


def test_discovered() -> None:
    assert GpuOutlierDetector in discover()


def test_interconnect_throughput_outliers_from_window_means() -> None:
    rng = random.Random(6)

    def pcie(w: int, g: int) -> float:
        return 2e7 if (g == 9 and 3 <= w < 10) else rng.uniform(4.5e9, 5.0e9)

    events = [
        JobGpuWindow(
            job_id="job-1",
            metric="pcie_bytes_per_s",
            window="10s",
            window_start=e.window_start,
            window_end=e.window_end,
            statistic="mean",
            value=e.value,
            node=e.node,
        )
        for e in windows(15, pcie)
    ]
    raised = run(GpuOutlierDetector(), events)
    assert [(a.state, a.subject) for a in raised] == [("firing", "GPU-9"), ("resolved", "GPU-9")]
    assert "mean pcie_bytes_per_s 2e+07" in raised[0].message


def test_one_incident_per_gpu_however_many_metrics_are_out_of_line() -> None:
    rng = random.Random(8)
    idle = lambda metric, busy, lazy: lambda w, g: lazy if (g == 4 and 3 <= w < 9) else busy + rng.gauss(0, busy / 50)
    det = GpuOutlierDetector()
    raised = []
    for w_util, w_power, w_pcie in zip(
        windows(14, idle("gpu_util", 88.0, 1.0)),
        windows(14, idle("power_w", 600.0, 90.0), metric="power_w"),
        windows(14, idle("pcie", 4.7e9, 1e6), metric="pcie_bytes_per_s"),
    ):
        raised += det.observe(w_util) + det.observe(w_power) + det.observe(w_pcie)
    assert [(a.state, a.subject) for a in raised] == [("firing", "GPU-4"), ("resolved", "GPU-4")]
    assert raised[0].id == raised[1].id
    assert {"z_gpu_util", "z_power_w", "z_pcie_bytes_per_s"} <= set(raised[1].evidence)
    assert "back in line" in raised[1].message and "on every metric" in raised[1].message


def test_a_job_wide_checkpoint_pause_splitting_the_window_is_not_an_outlier_but_a_slow_gpu_still_is() -> None:
    # one-second samples, busy ~88%; at 300 s the whole job pauses 30 s for a checkpoint (~5%), each
    # GPU up to six seconds apart; GPU 11 runs at half speed from 480 s. Judged: 1 min windows every 10 s
    rng = random.Random(9)
    offset = {g: rng.randint(-6, 6) for g in range(GPUS)}
    series = {
        g: [
            rng.uniform(2, 8)
            if 300 + offset[g] <= t < 330 + offset[g]
            else (88.0 + rng.gauss(0, 2)) * (0.5 if g == 11 and t >= 480 else 1)
            for t in range(720)
        ]
        for g in range(GPUS)
    }
    events = []
    for end in range(60, 721, 10):
        values = {f"GPU-{g}": series[g][end - 60 : end] for g in range(GPUS)}
        events.append(
            JobGpuWindow(
                job_id="job-1",
                metric="gpu_util",
                window="1m",
                window_start=T0 + (end - 60) * 1000,
                window_end=T0 + end * 1000,
                statistic="p50",
                value={u: statistics.median(v) for u, v in values.items()},
                node={f"GPU-{g}": f"n{g // 8}" for g in range(GPUS)},
                mean={u: statistics.fmean(v) for u, v in values.items()},
            )
        )
    # judged on the medians alone, GPUs doing the same work sit many deviations apart around the pause
    # (firing on one window: the pause splits two windows, 30 s apart)
    eager = GpuOutlierConfig(fire_after=1)
    before_slow = [msgspec.structs.replace(e, mean=None) for e in events if e.window_end <= T0 + 480_000]
    assert len({a.subject for a in run(GpuOutlierDetector(eager), before_slow)}) > 5
    raised = run(GpuOutlierDetector(eager), events)
    assert [(a.state, a.subject) for a in raised] == [("firing", "GPU-11")]
    evidence = raised[0].evidence
    assert evidence["robust_z"] == max(evidence["robust_z_median"], evidence["robust_z_mean"]) < -5  # the nearer to zero


def test_replicas_of_a_service_under_uneven_bursty_load_are_not_outliers() -> None:
    """Serving replicas idle between bursts of requests (the GenAI trace's shape): a busy replica among idle
    ones is no fault. Only jobs whose GPUs work in lockstep are judged."""
    rng = random.Random(10)
    bursty = lambda w, g: rng.uniform(40, 95) if rng.random() < 0.15 else rng.uniform(0, 3)
    assert run(GpuOutlierDetector(), windows(300, bursty, gpus=8)) == []
    # the same detector still finds a slow GPU of a job in lockstep
    slow = lambda w, g: 45.0 if (g == 1 and w >= 20) else 88 + rng.gauss(0, 2)
    assert [a.subject for a in run(GpuOutlierDetector(), windows(40, slow, gpus=8))] == ["GPU-1"]


def test_a_few_percent_apart_is_not_out_of_line_however_tight_the_peers() -> None:
    """NVLink window means agreeing within 1%: one GPU 4% above them is many deviations out, but no outlier."""
    rng = random.Random(11)
    link = lambda w, g: (3.12e11 if g == 3 else 3.0e11) + rng.gauss(0, 5e8)
    events = [
        JobGpuWindow(
            job_id="job-1",
            metric="nvlink_bytes_per_s",
            window="10s",
            window_start=e.window_start,
            window_end=e.window_end,
            statistic="mean",
            value=e.value,
            node=e.node,
        )
        for e in windows(20, link)
    ]
    assert run(GpuOutlierDetector(), events) == []
