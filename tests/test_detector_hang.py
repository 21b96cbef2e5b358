"""A hang needs both signals: idle GPUs and no steps; either one alone is not a hang."""

from __future__ import annotations

from hpcinsight.schemas.events import GpuQuantiles, StepMetric
from hpcinsight.streams.detectors import discover
from hpcinsight.streams.detectors.hang import HangConfig, HangDetector
from hpcinsight.streams.jobs import JobGpuWindow

T0 = 1_764_000_000_000


def q(end_s: int, p95: float, gpu: int, job: str | None = "job-1") -> GpuQuantiles:
    end = T0 + end_s * 1000
    return GpuQuantiles("n0", gpu, f"GPU-{gpu}", "gpu_util", "60s", end - 60_000, end, 60, p95, p95, p95, p95, job_id=job)


def step(ts_s: int, n: int, rank: int = 0) -> StepMetric:
    return StepMetric("job-1", rank, 2, n, T0 + ts_s * 1000, 0.5)


def run(det: HangDetector, events) -> list:
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
    one_gpu_busy = run(
        HangDetector(), [step(0, 1)] + [q(t, 1.0 if g == 0 else 80.0, g) for t in range(60, 600, 30) for g in range(2)]
    )
    no_step_client = run(HangDetector(), [q(t, 0.0, g, job="batch-job") for t in range(60, 600, 30) for g in range(2)])
    assert busy_but_silent == idle_but_stepping == one_gpu_busy == no_step_client == []


def test_discovered() -> None:
    assert HangDetector in discover()


def jw(end_s: int, metric: str, value: float, gpus: int = 2) -> JobGpuWindow:
    end = T0 + end_s * 1000
    return JobGpuWindow(
        "job-1",
        metric,
        "60s",
        end - 60_000,
        end,
        "mean",
        {f"GPU-{g}": value for g in range(gpus)},
        {f"GPU-{g}": "n0" for g in range(gpus)},
    )


def spinning_job(hang_at: int, until: int, sm: float, power: float, nvlink: float) -> list:
    """Steps every 10 s until ``hang_at``; GPUs at 100% utilisation throughout; work metrics healthy, then as given."""
    events: list = []
    for t in range(0, until, 10):
        if t < hang_at:
            events.append(step(t, t // 10))
        hung = t >= hang_at + 20
        if t >= 60 and t % 30 == 0:
            events += [q(t, 100.0, g) for g in range(2)]
            events += [
                jw(t, "sm_active_pct", sm if hung else 80.0),
                jw(t, "power_w", power if hung else 620.0),
                jw(t, "nvlink_bytes_per_s", nvlink if hung else 3e11),
            ]
    return events


def test_a_hang_that_spins_at_full_utilisation_is_found() -> None:
    """NCCL kernels polling: every GPU at 100% utilisation, no step, SM activity, power and NVLink flat low."""
    det = HangDetector(HangConfig(steps_silent_s=120))
    raised = run(det, spinning_job(300, 600, sm=9.0, power=140.0, nvlink=2e6))
    assert [a.state for a in raised] == ["firing"]
    firing = raised[0]
    assert firing.evidence["spinning"] == 1.0 and firing.evidence["max_gpu_p95"] == 100.0
    assert firing.evidence["sm_active_pct_ratio"] < 0.2 and "spin" in firing.message
    assert firing.ts - T0 <= (290 + 120 + 60) * 1000  # within a window of the silence threshold
    assert [a.state for a in det.observe(step(610, 31))] == ["resolved"]


def test_a_long_slow_step_at_full_work_is_not_a_hang() -> None:
    """Steps silent (one very long step, e.g. a big evaluation inside the step) but the GPUs compute: no hang."""
    det = HangDetector(HangConfig(steps_silent_s=120))
    assert run(det, spinning_job(300, 600, sm=78.0, power=600.0, nvlink=2.5e11)) == []


def test_a_hang_open_before_a_restart_is_taken_back_and_a_step_resolves_it() -> None:
    first = HangDetector(HangConfig(steps_silent_s=120))
    (firing,) = run(first, [step(0, 1), step(10, 2)] + [q(t, 1.0, g) for t in range(60, 300, 30) for g in range(2)])
    second = HangDetector(HangConfig(steps_silent_s=120))  # the restarted worker: no steps seen, only the record
    second.restore([firing])
    assert run(second, [q(t, 1.0, g) for t in range(300, 600, 30) for g in range(2)]) == []  # no second page
    resolved = second.observe(step(620, 3))
    assert [(a.state, a.id, a.started_at) for a in resolved] == [("resolved", firing.id, firing.started_at)]
