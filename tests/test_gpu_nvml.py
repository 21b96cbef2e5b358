"""The NVML collector: unsupported readings are null, a failing GPU does not stop the others."""

from __future__ import annotations

import pytest

from agents.base import Collector
from agents.gpu_nvml import NvmlConfig, NvmlGpuCollector
from tests.fake_nvml import FakeGpu, FakeNvml

NOW = 1_764_000_000_000


def test_reads_every_gpu_with_units_converted() -> None:
    nvml = FakeNvml([FakeGpu("GPU-a"), FakeGpu("GPU-b", util=3, power_mw=61_500)])
    with NvmlGpuCollector(NvmlConfig(node="node-7", job_id="j1"), nvml=nvml) as collector:
        assert isinstance(collector, Collector)
        a, b = collector.sample(NOW)
    assert (a.node, a.gpu_index, a.gpu_uuid, a.ts, a.job_id) == ("node-7", 0, "GPU-a", NOW, "j1")
    assert a.gpu_util == 80.0 and a.mem_total_bytes == 80 * 2**30 and a.power_w == 450.0 and a.sm_clock_mhz == 1980.0
    assert b.gpu_util == 3.0 and b.power_w == 61.5
    assert not nvml.initialised  # close() shut NVML down


def test_unsupported_fields_are_null_not_errors() -> None:
    # e.g. a MIG instance reports no utilisation, some boards no power reading
    nvml = FakeNvml([FakeGpu("MIG-1", util=None, power_mw=None, sm_mhz=None)])
    (s,) = NvmlGpuCollector(NvmlConfig(node="n"), nvml=nvml).sample(NOW)
    assert s.gpu_util is None and s.power_w is None and s.sm_clock_mhz is None
    assert s.temperature_c == 61.0 and s.mem_used_bytes == 40 * 2**30


def test_a_lost_gpu_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNvml([FakeGpu("GPU-a"), FakeGpu("GPU-lost", lost=True), FakeGpu("GPU-c")])
    collector = NvmlGpuCollector(NvmlConfig(node="n"), nvml=nvml)
    first = collector.sample(NOW)
    second = collector.sample(NOW + 1000)
    assert [s.gpu_uuid for s in first] == ["GPU-a", "GPU-lost", "GPU-c"]
    lost = first[1]
    assert lost.gpu_util is None and lost.power_w is None and lost.temperature_c is None
    assert first[2].gpu_util == 80.0 and second[2].gpu_util == 80.0
    # logged once per GPU and field, not every tick
    assert sum("GPU 1: reading utilization failed" in r.message for r in caplog.records) == 1


def test_without_a_driver_the_real_library_gives_a_clear_error() -> None:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:  # pragma: no cover - only on GPU machines
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    with pytest.raises(RuntimeError, match="NVML is not available on this node .* use --backend sim"):
        NvmlGpuCollector(NvmlConfig(node="n"))
