"""Outlier GPUs among their job's peers: quiet on healthy noise, firing on the odd one out."""

from __future__ import annotations

import random

from schemas.events import GpuQuantiles
from streams.detectors import discover
from streams.detectors.gpu_outlier import GpuOutlierConfig, GpuOutlierDetector

T0 = 1_764_000_000_000
GPUS = 16


def windows(n: int, value_of, metric: str = "gpu_util", job: str = "job-1"):  # type: ignore[no-untyped-def]
    for w in range(n):
        end = T0 + (w + 1) * 10_000
        for g in range(GPUS):
            v = value_of(w, g)
            yield GpuQuantiles(f"n{g // 8}", g % 8, f"GPU-{g}", metric, "10s", end - 10_000, end, 10, v - 2, v, v + 3, v, job_id=job)


def run(det: GpuOutlierDetector, events) -> list:  # type: ignore[no-untyped-def]
    return [a for e in events for a in det.observe(e)]


def test_healthy_noisy_peers_raise_nothing() -> None:
    rng = random.Random(3)
    base = [rng.uniform(82, 94) for _ in range(GPUS)]
    noisy = windows(200, lambda w, g: min(100.0, base[g] + rng.gauss(0, 4) - (25 if rng.random() < 0.03 else 0)))
    assert run(GpuOutlierDetector(), noisy) == []
    assert run(GpuOutlierDetector(), windows(50, lambda w, g: 1980.0, metric="sm_clock_mhz")) == []  # MAD 0: the floor holds


def test_a_throttled_gpu_fires_then_resolves_with_evidence() -> None:
    rng = random.Random(4)
    slow = lambda w, g: 60.0 if (g == 5 and 10 <= w < 30) else 88 + rng.gauss(0, 2)  # noqa: E731
    raised = run(GpuOutlierDetector(GpuOutlierConfig(fire_after=3, resolve_after=2)), windows(50, slow))
    assert [(a.state, a.subject) for a in raised] == [("firing", "GPU-5"), ("resolved", "GPU-5")]
    firing, resolved = raised
    assert firing.id == resolved.id and firing.started_at == T0 + 10 * 10_000
    assert firing.evidence["robust_z"] < -5 and firing.evidence["peers"] == GPUS and firing.node == "n0"
    assert "gpu_util 60.0 is out of line" in firing.message


def test_small_jobs_and_unattributed_gpus_are_not_judged() -> None:
    det = GpuOutlierDetector(GpuOutlierConfig(min_peers=4))
    two = [GpuQuantiles("n0", g, f"GPU-{g}", "gpu_util", "10s", T0 + w * 10_000, T0 + (w + 1) * 10_000, 10, 1, v, 1, 1, job_id="small")
           for w in range(10) for g, v in ((0, 90.0), (1, 5.0))]
    assert run(det, two) == []
    orphan = GpuQuantiles("n0", 0, "GPU-x", "gpu_util", "10s", T0, T0 + 10_000, 10, 1, 1, 1, 1)
    assert det.observe(orphan) == []


def test_restart_keeps_the_incident_id() -> None:
    slow = lambda w, g: 30.0 if g == 2 else 90.0  # noqa: E731
    first = GpuOutlierDetector()
    (firing,) = run(first, windows(10, slow))
    second = GpuOutlierDetector()
    second.restore([firing])
    assert run(second, windows(10, slow)) == []  # still open: not fired again
    recovered = run(second, windows(5, lambda w, g: 90.0))
    assert [a.state for a in recovered] == ["resolved"] and recovered[0].id == firing.id


def test_discovered() -> None:
    assert GpuOutlierDetector in discover()
