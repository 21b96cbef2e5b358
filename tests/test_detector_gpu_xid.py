"""XID faults: decoded, every repeat counted, one incident per GPU and code, resolved when quiet."""

from __future__ import annotations

from hpcinsight.schemas.events import GpuQuantiles, XidEvent
from hpcinsight.streams.detectors import discover
from hpcinsight.streams.detectors.gpu_xid import GpuXidConfig, GpuXidDetector

T0 = 1_764_000_000_000


def xid(ts_s: float, code: int, gpu: str = "GPU-a", seq: int = 1) -> XidEvent:
    return XidEvent("n0", 2, gpu, T0 + int(ts_s * 1000), code, seq)


def window(end_s: float, gpu: str = "GPU-a") -> GpuQuantiles:
    end = T0 + int(end_s * 1000)
    return GpuQuantiles("n0", 2, gpu, "gpu_util", "10s", end - 10_000, end, 10, 80, 85, 90, 84)


def test_fires_once_counts_repeats_and_resolves_after_quiet() -> None:
    det = GpuXidDetector(GpuXidConfig(quiet_s=60))
    fired = det.observe(xid(0, 79)) + det.observe(xid(1, 79, seq=2)) + det.observe(xid(2, 79, seq=3))
    assert [a.state for a in fired] == ["firing"]
    firing = fired[0]
    assert firing.severity == "critical" and "fallen off the bus" in firing.message and "drain" in firing.message
    assert firing.evidence["xid"] == 79 and firing.evidence["drain"] == 1.0
    assert det.observe(window(30)) == []  # not quiet long enough yet
    (resolved,) = det.observe(window(70))
    assert resolved.state == "resolved" and resolved.id == firing.id and resolved.evidence["count"] == 3
    assert det.observe(window(200)) == []


def test_codes_and_gpus_are_separate_incidents_and_application_errors_are_warnings() -> None:
    det = GpuXidDetector()
    a = det.observe(xid(0, 13))
    b = det.observe(xid(0, 48))
    c = det.observe(xid(0, 13, gpu="GPU-b"))
    assert len({x.id for x in a + b + c}) == 3
    assert a[0].severity == "warning" and b[0].severity == "critical"
    assert det.observe(window(5, gpu="GPU-b")) == []


def test_open_incidents_come_back_after_a_restart() -> None:
    first = GpuXidDetector(GpuXidConfig(quiet_s=60))
    (firing,) = first.observe(xid(0, 95))
    second = GpuXidDetector(GpuXidConfig(quiet_s=60))
    second.restore([firing])
    assert second.observe(xid(10, 95)) == []  # a repeat, not a new incident
    (resolved,) = second.observe(window(80))
    assert resolved.id == firing.id


def test_common_codes_are_decoded_with_the_action_nvidia_recommends() -> None:
    from hpcinsight.streams.detectors.gpu_xid import XIDS

    assert {13, 31, 43, 45, 48, 61, 62, 63, 64, 74, 79, 92, 94, 95} <= set(XIDS)
    drain = {code for code, m in XIDS.items() if m.drain}
    assert {48, 61, 62, 64, 74, 79, 95, 119, 120}.issubset(drain)
    assert not drain & {8, 13, 31, 43, 45, 63, 92, 94}  # application errors and recorded repairs
    det = GpuXidDetector()
    (remap,) = det.observe(xid(0, 63))
    assert remap.severity == "warning" and "reset the GPU when its job ends" in remap.message
    (contained,) = det.observe(xid(0, 94))
    assert "restart the affected job" in contained.message
    (unknown,) = det.observe(xid(0, 4242))
    assert "unlisted XID" in unknown.message and unknown.severity == "warning"


def test_discovered() -> None:
    assert GpuXidDetector in discover()
