"""A hang needs both signals: idle GPUs and no steps; either one alone is not a hang."""

from __future__ import annotations

from schemas.events import GpuQuantiles, StepMetric
from streams.detectors import discover
from streams.detectors.hang import HangConfig, HangDetector

T0 = 1_764_000_000_000


def q(end_s: int, p95: float, gpu: int, job: str | None = "job-1") -> GpuQuantiles:
    end = T0 + end_s * 1000
    return GpuQuantiles("n0", gpu, f"GPU-{gpu}", "gpu_util", "60s", end - 60_000, end, 60, p95, p95, p95, p95, job_id=job)


def step(ts_s: int, n: int, rank: int = 0) -> StepMetric:
    return StepMetric("job-1", rank, 2, n, T0 + ts_s * 1000, 0.5)


def run(det: HangDetector, events) -> list:  # type: ignore[no-untyped-def]
    return [a for e in events for a in det.observe(e)]


def test_idle_gpus_and_silent_ranks_fire_then_a_step_resolves() -> None:
    det = HangDetector(HangConfig(steps_silent_s=120))
    events = [step(0, 1), step(10, 2)]
    events += [q(t, 1.0, g) for t in range(60, 300, 30) for g in range(2)]
    raised = run(det, events)
    assert [a.state for a in raised] == ["firing"]
    assert raised[0].subject == "job-1" and raised[0].evidence["last_step"] == 2 and raised[0].severity == "critical"
    assert raised[0].evidence["silent_s"] >= 120
    resolved = det.observe(step(400, 3))
    assert [a.state for a in resolved] == ["resolved"] and resolved[0].id == raised[0].id


def test_one_signal_alone_is_not_a_hang() -> None:
    busy_but_silent = run(HangDetector(), [step(0, 1)] + [q(t, 90.0, g) for t in range(60, 600, 30) for g in range(2)])
    idle_but_stepping = run(HangDetector(), [e for t in range(60, 600, 30) for e in (step(t, t), q(t, 1.0, 0), q(t, 1.0, 1))])
    one_gpu_busy = run(HangDetector(), [step(0, 1)] + [q(t, 1.0 if g == 0 else 80.0, g) for t in range(60, 600, 30) for g in range(2)])
    no_step_client = run(HangDetector(), [q(t, 0.0, g, job="batch-job") for t in range(60, 600, 30) for g in range(2)])
    assert busy_but_silent == idle_but_stepping == one_gpu_busy == no_step_client == []


def test_discovered() -> None:
    assert HangDetector in discover()
