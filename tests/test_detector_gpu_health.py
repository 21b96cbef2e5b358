"""GPU hardware health from raw samples: each fault fires once and resolves under its id; noise stays quiet."""

from __future__ import annotations

import random
from typing import Any

import pytest

from hpcinsight.schemas.events import Anomaly, GpuSample
from hpcinsight.streams.detectors import discover
from hpcinsight.streams.detectors.gpu_health import GpuHealthConfig, GpuHealthDetector

T0 = 1_764_000_000_000
MAX_MHZ = 1980.0
BITS = {
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sw_thermal": 0x20,
    "hw_thermal": 0x40,
    "hw_power_brake": 0x80,
    "applications_clocks": 0x2,
    "idle": 0x1,
}


def sample(t: float, gpu: str = "GPU-a", reasons: tuple[str, ...] = (), **kw: Any) -> GpuSample:
    """A healthy busy H100-like sample at second ``t``, with ``kw`` overriding any field."""
    fields: dict[str, Any] = dict(
        gpu_util=90.0,
        sm_clock_mhz=1900.0,
        sm_clock_max_mhz=MAX_MHZ,
        temperature_c=65.0,
        power_w=600.0,
        power_limit_w=700.0,
        throttle_reasons=sum(BITS[r] for r in reasons),
        throttle=list(reasons),
        ecc_uncorrected_volatile=0,
        ecc_corrected_volatile=3,
        remapped_rows_pending=False,
        remapped_rows_failure=False,
        job_id="job-1",
    )
    fields.update(kw)
    return GpuSample("n0", 3, gpu, T0 + int(t * 1000), **fields)


def run(det: GpuHealthDetector, samples) -> list[Anomaly]:
    return [a for s in samples for a in det.observe(s)]


def states(raised: list[Anomaly]) -> list[tuple[str, str]]:
    return [(a.state, a.subject.split("/", 1)[1]) for a in raised]


def test_uncorrectable_ecc_fires_once_then_resolves_after_quiet() -> None:
    det = GpuHealthDetector(GpuHealthConfig(ecc_quiet_s=600))
    counts = [0] * 10 + [2] * 10 + [5] * 10 + [5] * 700  # two increases, then quiet
    raised = run(det, (sample(t, ecc_uncorrected_volatile=c) for t, c in enumerate(counts)))
    assert states(raised) == [("firing", "ecc_uncorrectable"), ("resolved", "ecc_uncorrectable")]
    firing, resolved = raised
    assert firing.severity == "critical" and firing.subject == "GPU-a/ecc_uncorrectable" and firing.subject_type == "gpu"
    assert firing.ts == T0 + 10_000 and firing.evidence["ecc_uncorrected_new"] == 2
    assert firing.evidence["ecc_uncorrected_total"] == 2
    assert "drain the GPU" in firing.message and firing.job_id == "job-1" and firing.node == "n0"
    assert resolved.id == firing.id and resolved.ts == T0 + 620_000  # quiet counted from the last increase (t=20)
    assert resolved.evidence["ecc_uncorrected_new"] == 5


def test_ecc_count_going_down_is_a_reset_not_an_error() -> None:
    det = GpuHealthDetector()
    counts = [7] * 5 + [0] * 5 + [0] * 5  # driver reload zeroes the volatile counter
    assert run(det, (sample(t, ecc_uncorrected_volatile=c) for t, c in enumerate(counts))) == []
    (firing,) = det.observe(sample(20, ecc_uncorrected_volatile=1))  # but a rise from the new baseline counts
    assert firing.evidence["ecc_uncorrected_previous"] == 0


def test_late_or_duplicate_sample_does_not_invent_an_increase() -> None:
    det = GpuHealthDetector()
    assert run(det, [sample(0, ecc_uncorrected_volatile=3), sample(2, ecc_uncorrected_volatile=3)]) == []
    assert det.observe(sample(1, ecc_uncorrected_volatile=0)) == []  # late, older than what we have
    assert det.observe(sample(2, ecc_uncorrected_volatile=3)) == []  # redelivered duplicate
    assert det.observe(sample(3, ecc_uncorrected_volatile=3)) == []  # no false "increase" from 0 to 3


def test_row_remap_pending_and_failure_are_separate_incidents() -> None:
    det = GpuHealthDetector()
    seq = [
        sample(0),
        sample(1, remapped_rows_pending=True),
        sample(2, remapped_rows_pending=True),
        sample(3, remapped_rows_pending=True, remapped_rows_failure=True),
        sample(4, remapped_rows_failure=True),
        sample(5),
    ]
    raised = run(det, seq)
    assert states(raised) == [
        ("firing", "row_remap_pending"),
        ("firing", "row_remap_failure"),
        ("resolved", "row_remap_pending"),
        ("resolved", "row_remap_failure"),
    ]
    pending, failure = raised[0], raised[1]
    assert pending.severity == "warning" and "reset" in pending.message and pending.evidence["remapped_rows_pending"] == 1
    assert failure.severity == "critical" and "replace the GPU" in failure.message
    assert pending.id != failure.id and raised[2].id == pending.id and raised[3].id == failure.id


@pytest.mark.parametrize(
    ("fault", "condition"),
    [
        ({"remapped_rows_failure": True}, "row_remap_failure"),
        ({"remapped_rows_pending": True}, "row_remap_pending"),
        ({"retired_pages_pending": True}, "row_remap_pending"),
        ({"ecc_uncorrected_volatile": 2}, "ecc_uncorrectable"),
    ],
)
def test_each_memory_fault_alone_on_a_healthy_gpu_fires(fault: dict[str, Any], condition: str) -> None:
    """Healthy memory is the detector's fast path: a sample with only this fault must leave it."""
    det = GpuHealthDetector()
    raised = run(det, [sample(t) for t in range(30)] + [sample(30, **fault)])
    assert states(raised) == [("firing", condition)]


def test_retired_pages_pending_counts_on_older_gpus() -> None:
    det = GpuHealthDetector()
    old = dict(remapped_rows_pending=None, remapped_rows_failure=None)
    raised = run(det, [sample(0, retired_pages_pending=True, **old), sample(1, retired_pages_pending=False, **old)])
    assert states(raised) == [("firing", "row_remap_pending"), ("resolved", "row_remap_pending")]
    assert "pages retired" in raised[0].message


def test_thermal_throttle_fires_once_per_episode_and_resolves_with_hysteresis() -> None:
    det = GpuHealthDetector(GpuHealthConfig(throttle_window_s=60, throttle_share=0.5, throttle_quiet_s=0))
    rng = random.Random(5)
    seq = [sample(t) for t in range(0, 60)]
    seq += [
        sample(t, reasons=("hw_thermal",) if rng.random() < 0.8 else (), temperature_c=92.0, sm_clock_mhz=1300.0)
        for t in range(60, 240)
    ]
    seq += [sample(t) for t in range(240, 400)]
    raised = run(det, seq)
    assert states(raised) == [("firing", "thermal_throttle"), ("resolved", "thermal_throttle")]
    firing, resolved = raised
    assert firing.severity == "warning" and firing.evidence["share"] > 0.5 and firing.evidence["temperature_c"] == 92
    assert firing.evidence["hw_thermal_share"] == firing.evidence["share"] and "cooling" in firing.message
    assert T0 + 60_000 <= firing.started_at < firing.ts
    assert resolved.id == firing.id and resolved.evidence["share"] < 0.25
    # hysteresis: the share fell through 0.5 well before the resolve, which needed it below 0.25
    assert resolved.ts > T0 + 240_000 + 30_000


def test_throttling_that_cycles_with_the_cooling_is_one_incident() -> None:
    """A room whose cooling cycles (2 min hot, 3 min cool, three times): one incident counting its episodes,
    resolved once the cycle stops for the quiet time, not a page per cycle."""
    det = GpuHealthDetector(GpuHealthConfig(throttle_quiet_s=300))
    hot = lambda t: (t % 300) < 120 and t < 900
    raised = run(
        det,
        [sample(t, reasons=("hw_thermal",) if hot(t) else (), temperature_c=91.0 if hot(t) else 70.0) for t in range(0, 1500)],
    )
    assert states(raised) == [("firing", "thermal_throttle"), ("resolved", "thermal_throttle")]
    assert raised[1].evidence["episodes"] == 3 and raised[1].ts >= T0 + (720 + 300) * 1000
    eager = run(
        GpuHealthDetector(GpuHealthConfig(throttle_quiet_s=0)),
        [sample(t, reasons=("hw_thermal",) if hot(t) else ()) for t in range(0, 1500)],
    )
    assert len([a for a in eager if a.state == "firing"]) == 3  # without the quiet time: one page per cycle


def test_power_cap_under_load_is_info_and_a_power_brake_is_a_warning() -> None:
    capped = run(GpuHealthDetector(), [sample(t, reasons=("sw_power_cap",), power_w=699.0) for t in range(120)])
    braked = run(GpuHealthDetector(), [sample(t, reasons=("hw_power_brake", "hw_slowdown")) for t in range(120)])
    assert states(capped) == [("firing", "power_throttle")] and capped[0].severity == "info"
    assert capped[0].evidence["power_w"] == 699 and "power budget" in capped[0].message
    assert states(braked) == [("firing", "power_throttle")] and braked[0].severity == "warning"
    assert "power brake" in braked[0].message


def test_clock_stuck_low_without_a_reason_fires_and_recovers() -> None:
    det = GpuHealthDetector(GpuHealthConfig(clock_low_s=60))
    seq = [sample(t) for t in range(30)]
    seq += [sample(t, sm_clock_mhz=700.0, reasons=("applications_clocks",)) for t in range(30, 150)]
    seq += [sample(t) for t in range(150, 260)]
    raised = run(det, seq)
    assert states(raised) == [("firing", "clock_stuck_low"), ("resolved", "clock_stuck_low")]
    firing, resolved = raised
    assert firing.ts == T0 + 90_000 and firing.started_at == T0 + 30_000 and firing.severity == "warning"
    assert abs(firing.evidence["clock_ratio"] - 700 / MAX_MHZ) < 1e-9 and "applications_clocks" in firing.message
    assert resolved.id == firing.id and resolved.ts == T0 + 210_000


def test_low_clocks_explained_by_power_cap_are_not_stuck_clocks() -> None:
    raised = run(GpuHealthDetector(), [sample(t, sm_clock_mhz=900.0, reasons=("sw_power_cap",)) for t in range(200)])
    assert states(raised) == [("firing", "power_throttle")]


def test_healthy_noisy_gpus_raise_nothing() -> None:
    rng = random.Random(11)
    seq: list[GpuSample] = []
    for t in range(0, 1800):
        busy = (t // 300) % 3 != 2  # idle every third 5-minute stretch
        brief_throttle = t % 240 < 12  # 12 s of thermal throttling every 4 minutes
        if busy:
            reasons: tuple[str, ...] = ("sw_thermal",) if brief_throttle else ("sw_power_cap",) if rng.random() < 0.2 else ()
            seq.append(
                sample(
                    t,
                    gpu_util=rng.uniform(55, 100),
                    sm_clock_mhz=rng.uniform(0.85, 1.0) * MAX_MHZ,
                    temperature_c=rng.gauss(70, 3),
                    reasons=reasons,
                    ecc_corrected_volatile=t // 100,
                )
            )
        else:  # an idle GPU sits at low clocks with the idle and sw_power_cap bits: meaningless
            seq.append(sample(t, gpu_util=rng.uniform(0, 3), sm_clock_mhz=345.0, reasons=("idle", "sw_power_cap"), job_id=None))
    # a momentary clock dip with no reason, far shorter than clock_low_s
    seq = [sample(s.ts / 1000 - T0 / 1000, sm_clock_mhz=600.0) if 100 <= (s.ts - T0) // 1000 < 120 else s for s in seq]
    assert run(GpuHealthDetector(), seq) == []


def test_null_and_missing_fields_skip_their_condition_without_raising() -> None:
    nothing = [GpuSample("n0", 0, "GPU-n", T0 + t * 1000) for t in range(300)]
    mig = [
        GpuSample("n0", 64, "MIG-x", T0 + t * 1000, gpu_util=90.0, mem_used_bytes=1, parent_gpu_uuid="GPU-n") for t in range(300)
    ]
    partial = [
        sample(
            t,
            throttle_reasons=None,
            throttle=[],
            sm_clock_max_mhz=None,
            ecc_uncorrected_volatile=None,
            remapped_rows_pending=None,
            remapped_rows_failure=None,
            sm_clock_mhz=100.0,
        )
        for t in range(300)
    ]
    zero_max = [sample(t, sm_clock_max_mhz=0.0, sm_clock_mhz=100.0, gpu="GPU-z") for t in range(300)]
    assert run(GpuHealthDetector(), nothing + mig + partial + zero_max) == []


def test_restore_takes_back_open_incidents_so_they_never_fire_twice() -> None:
    first = GpuHealthDetector(GpuHealthConfig(ecc_quiet_s=600))
    fired = run(
        first,
        [sample(0, ecc_uncorrected_volatile=0), sample(1, ecc_uncorrected_volatile=4)]
        + [sample(t, reasons=("hw_thermal",)) for t in range(2, 100)],
    )
    assert states(fired) == [("firing", "ecc_uncorrectable"), ("firing", "thermal_throttle")]
    second = GpuHealthDetector(GpuHealthConfig(ecc_quiet_s=600))
    second.restore(fired)
    # after the restart: the count went up again while we were down, and it is still hot
    again = run(second, [sample(t, ecc_uncorrected_volatile=6, reasons=("hw_thermal",)) for t in range(200, 300)])
    assert again == []
    later = run(second, [sample(t, ecc_uncorrected_volatile=6) for t in range(300, 900)])
    assert states(later) == [("resolved", "thermal_throttle"), ("resolved", "ecc_uncorrectable")]
    assert {a.id for a in later} == {a.id for a in fired}
    assert later[1].evidence["ecc_uncorrected_new"] == 6  # 4 before the restart, 2 seen after it


def test_restore_ignores_incidents_it_does_not_own() -> None:
    det = GpuHealthDetector()
    foreign = Anomaly(
        "x", "gpu_health", "warning", "firing", "gpu", "GPU-a/something_else", T0, T0, T0, T0, "m", {}, gpu_uuid="GPU-a"
    )
    no_gpu = Anomaly("y", "gpu_health", "warning", "firing", "node", "n0", T0, T0, T0, T0, "m", {})
    det.restore([foreign, no_gpu])
    assert run(det, [sample(t) for t in range(10)]) == []


def test_memory_is_bounded() -> None:
    det = GpuHealthDetector(GpuHealthConfig(forget_after_s=60, max_window_samples=50))
    for t in range(0, 30):
        det.observe(sample(t, gpu=f"MIG-{t}"))
    burst = [
        GpuSample("n0", 3, "GPU-burst", T0 + 40_000 + i, gpu_util=90.0, throttle_reasons=0, throttle=[]) for i in range(500)
    ]  # 500 samples within one second
    run(det, burst)
    assert len(det._gpus["GPU-burst"].window) == 50
    det.observe(sample(200, gpu="GPU-late"))
    assert set(det._gpus) == {"GPU-late"}


def test_discovered() -> None:
    assert GpuHealthDetector in discover()
