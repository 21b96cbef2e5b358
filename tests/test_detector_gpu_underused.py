"""The under-used GPU detector fires once, then resolves once, with one stable id."""

from __future__ import annotations

from hpcinsight.schemas.events import GpuQuantiles
from hpcinsight.streams.detectors import discover
from hpcinsight.streams.detectors.gpu_underused import GpuUnderusedConfig, GpuUnderusedDetector

T0 = 1_764_000_000_000


def q(end_s: int, p95: float, gpu: str = "GPU-a", job: str | None = "job-1") -> GpuQuantiles:
    end = T0 + end_s * 1000
    return GpuQuantiles("n0", 0, gpu, "gpu_util", "20s", end - 20_000, end, 20, p95 / 2, p95 / 1.5, p95, p95 / 2, job_id=job)


def test_fires_then_resolves_with_a_stable_id() -> None:
    det = GpuUnderusedDetector(GpuUnderusedConfig(threshold_pct=10.0, fire_after=2, resolve_after=1, quiet_s=0))
    p95s = [80, 5, 3, 2, 4, 70, 75]
    raised = [a for i, p in enumerate(p95s) for a in det.observe(q(10 * (i + 2), p))]
    assert [a.state for a in raised] == ["firing", "resolved"]
    firing, resolved = raised
    assert firing.id == resolved.id
    assert firing.started_at == T0 + 10_000  # start of the first low window
    assert firing.ts == T0 + 40_000  # the second low window completed the evidence
    assert firing.evidence["p95_pct"] == 3 and resolved.evidence["p95_pct"] == 70
    assert firing.evidence["gpu_index"] == 0  # which GPU of the node: the alert's `gpu` label
    assert firing.subject == "GPU-a" and firing.node == "n0" and "idle" in firing.message


def test_a_new_incident_gets_a_new_id_and_gpus_are_independent() -> None:
    det = GpuUnderusedDetector(GpuUnderusedConfig(resolve_after=1, quiet_s=0))
    seq = [(20, 1), (30, 90), (40, 1)]
    ids = [a.id for end, p in seq for a in det.observe(q(end, p)) if a.state == "firing"]
    assert len(ids) == 2 and ids[0] != ids[1]
    assert det.observe(q(50, 95, gpu="GPU-b")) == []


def test_load_crossing_the_threshold_back_and_forth_is_one_idle_spell() -> None:
    """Diurnal serving load dipping under the threshold between bursts: one incident, not one per dip
    (hysteresis, quiet time, re-fires folded); it resolves once busy for the quiet time."""
    det = GpuUnderusedDetector(GpuUnderusedConfig(threshold_pct=10.0, resolve_pct=20.0, resolve_after=3, quiet_s=120))
    pattern = [2, 3, 25, 30, 1, 12, 15, 4, 2, 40, 2, 1] * 3  # bursts, and load hovering between the thresholds
    out = [a for i, p in enumerate(pattern) for a in det.observe(q(10 * (i + 2), p))]
    assert [a.state for a in out] == ["firing"]
    end = 10 * (len(pattern) + 2)
    busy = [a for i in range(14) for a in det.observe(q(end + 10 * i, 60))]
    assert [a.state for a in busy] == ["resolved"] and busy[0].id == out[0].id
    assert busy[0].ts >= q(end, 1).window_end + 110_000  # not before the quiet time since the last idle window
    assert busy[0].evidence["episodes"] >= 3  # the dips it folded


def test_other_metrics_are_ignored() -> None:
    det = GpuUnderusedDetector()
    power = GpuQuantiles("n0", 0, "GPU-a", "power_w", "20s", T0, T0 + 20_000, 20, 1, 1, 1, 1)
    assert det.observe(power) == []


def test_discovered() -> None:
    assert GpuUnderusedDetector in discover()


def test_a_free_gpu_is_not_underused_and_release_resolves() -> None:
    """Idle is what a GPU no job holds should be; an incident ends when the job lets the GPU go."""
    det = GpuUnderusedDetector(GpuUnderusedConfig(threshold_pct=10.0, fire_after=2, resolve_after=3))
    assert [a for i in range(5) for a in det.observe(q(10 * (i + 2), 1.0, job=None))] == []
    held = [a for i in range(5, 8) for a in det.observe(q(10 * (i + 2), 1.0))]
    assert [a.state for a in held] == ["firing"]
    released = det.observe(q(100, 1.0, job=None))  # still idle, but free now: resolved at once
    assert [a.state for a in released] == ["resolved"] and released[0].id == held[0].id
    assert "released" in released[0].message


def test_an_idle_spell_open_before_a_restart_is_taken_back_and_resolves_once() -> None:
    first = GpuUnderusedDetector(GpuUnderusedConfig(fire_after=2, resolve_after=2, quiet_s=60))
    (firing,) = [a for i in range(4) for a in first.observe(q(10 * (i + 2), 2.0))]
    second = GpuUnderusedDetector(GpuUnderusedConfig(fire_after=2, resolve_after=2, quiet_s=60))
    second.restore([firing])
    assert [a for i in range(4, 8) for a in second.observe(q(10 * (i + 2), 2.0))] == []  # still the same spell
    busy = [a for i in range(8, 20) for a in second.observe(q(10 * (i + 2), 80.0))]
    assert [(a.state, a.id, a.started_at) for a in busy] == [("resolved", firing.id, firing.started_at)]
    assert busy[0].ts >= q(90, 2.0).window_end + 60_000  # after the quiet time since the last idle window
