"""An agent sends nothing the worker would refuse: a reading out of its schema's range is sent as
unknown, and costs neither the node's other GPUs nor the rest of its own sample."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from hpcinsight.agents.base import Collector
from hpcinsight.agents.delivery import Delivery
from hpcinsight.agents.fit import FitStats, fitted
from hpcinsight.agents.runner import AgentStats, agent_metric_families, run_agent
from hpcinsight.deploy.local.kafka import free_ports
from hpcinsight.schemas.catalog import GPU_SAMPLES, GPU_SAMPLES_RAW, IB_SAMPLES_RAW
from hpcinsight.schemas.columns import REAL_LIMIT
from hpcinsight.schemas.events import Event, GpuSample, IbSample
from hpcinsight.streams.processor import SampleProcessor

T0 = 1_764_000_000_000  # a fixed past hour: the worker refuses only samples from the future


def _gpu(i: int, **readings: object) -> GpuSample:
    usual: dict[str, object] = {"gpu_util": 50.0, "power_w": 300.0, "temperature_c": 60.0}
    return GpuSample("n0", i, f"GPU-{i}", T0, **{**usual, **readings})  # type: ignore[arg-type]


#: one GPU of the node glitching in three readings: past Watts', Celsius' and Real's limits
GLITCH = {"power_w": 4_294_967.295, "temperature_c": 511.0, "nvlink_tx_bytes_per_s": 2 * REAL_LIMIT}


class _Node(Collector[None]):
    """Stands in for the NVML collector (no GPU here): what it returns is the interface."""

    topic = GPU_SAMPLES_RAW

    def __init__(self, records: Sequence[Event]) -> None:
        super().__init__(None)
        self.records = records

    def sample(self, now_ms: int) -> Sequence[Event]:
        return self.records


class _Recorded(Delivery):
    """The real delivery (no broker: everything waits in its spool), noting what it was handed."""

    def __init__(self, spool: Path) -> None:
        super().__init__({"bootstrap.servers": f"127.0.0.1:{free_ports(1)[0]}", "log_level": 0}, spool, window=5)
        self.handed: list[tuple[str, bytes]] = []

    def send(self, topic: str, key: str | bytes, value: bytes) -> None:
        self.handed.append((topic, value))
        super().send(topic, key, value)


def test_a_glitching_reading_is_sent_as_unknown_and_the_node_s_message_is_accepted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the check the worker leaves the glitching GPU's record out, its good readings with
    it; with it, the worker takes every GPU, the glitching one with those three readings unknown
    and the rest of it kept."""
    records = [_gpu(0), _gpu(1, **GLITCH), _gpu(2)]
    raw = GPU_SAMPLES_RAW.codec.encode(records)
    worker = SampleProcessor()
    refused = worker.handle("gpu.samples.raw", 0, 0, b"n0", raw)
    assert "dead.letters" in [o.topic.name for o in refused]  # the premise: one reading costs its GPU's record
    taken = [s for o in refused if o.topic is GPU_SAMPLES for s in GPU_SAMPLES.codec.decode(o.value)]
    assert [s.gpu_index for s in taken] == [0, 2]

    delivery = _Recorded(tmp_path / "spool")
    stats = AgentStats()
    try:
        with caplog.at_level(logging.WARNING, logger="hpcinsight.agents.fit"):
            run_agent([_Node(records)], delivery, "t.", ticks=2, speed=1000.0, stop=threading.Event(), stats=stats, node="n0")
    finally:
        delivery.close(drain_timeout=0.1)
    sent = [value for topic, value in delivery.handed if topic == GPU_SAMPLES_RAW.full_name("t.")]
    assert len(sent) == 2 and sent[0] == sent[1]
    got = GPU_SAMPLES_RAW.codec.decode(sent[0])
    assert got[0] == records[0] and got[2] == records[2]
    assert all(getattr(got[1], name) is None for name in GLITCH)
    assert got[1].gpu_util == 50.0 and got[1].gpu_uuid == "GPU-1"
    outputs = SampleProcessor().handle("gpu.samples.raw", 0, 0, b"n0", sent[0])
    assert "dead.letters" not in [o.topic.name for o in outputs]
    assert stats.fit.values_nulled == 6 and stats.fit.records_left_out == 0  # three a tick
    assert stats.by_topic[GPU_SAMPLES_RAW.name] == [2, 6]
    warnings = [r.getMessage() for r in caplog.records if r.name == "hpcinsight.agents.fit"]
    assert len(warnings) == 3, warnings  # once per field, not every tick
    assert any("power_w of n0 GPU-1 is 4294967.295" in w for w in warnings)
    families = {f.name: f for f in agent_metric_families(stats, delivery)}
    assert families["hpcinsight_agent_values_out_of_range"].samples[0].value == 6


def test_a_clean_message_goes_out_as_encoded() -> None:
    records = [_gpu(0), _gpu(1)]
    stats = FitStats()
    assert fitted(GPU_SAMPLES_RAW, records, stats) == (GPU_SAMPLES_RAW.codec.encode(records), 2)
    assert stats == FitStats()


def test_a_record_that_cannot_be_fitted_is_left_out_alone() -> None:
    """A required field out of range (a GPU index past UInt8) has no unknown: that record is left
    out, counted and logged; the others go."""
    stats = FitStats()
    bad = GpuSample("n0", 300, "GPU-x", T0)
    value, sent = fitted(GPU_SAMPLES_RAW, [_gpu(0), bad, _gpu(2)], stats)
    assert value is not None and sent == 2
    assert [s.gpu_index for s in GPU_SAMPLES_RAW.codec.decode(value)] == [0, 2]
    assert stats.records_left_out == 1 and stats.values_nulled == 0
    assert fitted(GPU_SAMPLES_RAW, [bad], stats) == (None, 0)


def test_a_map_drops_only_its_entry_past_the_limit_and_a_label_too_long_is_unknown() -> None:
    stats = FitStats()
    sample = IbSample("n0", "mlx5_0", 1, T0, state="x" * 300, hw_counters={"ok": 1.0, "jumped": 2 * REAL_LIMIT})
    value, sent = fitted(IB_SAMPLES_RAW, [sample], stats)
    assert value is not None and sent == 1
    [got] = IB_SAMPLES_RAW.codec.decode(value)
    assert got.hw_counters == {"ok": 1.0} and got.state is None and got.device == "mlx5_0"
    assert stats.values_nulled == 2


def test_the_nvml_collector_s_glitch_reaches_the_worker_as_unknown(tmp_path: Path) -> None:
    """The real NVML collector (over the fake library: no GPU here) reading a power of 0xFFFFFFFF
    mW and 511 °C on one GPU: the node's message decodes, and the GPU's other readings arrive."""
    from hpcinsight.agents.gpu_nvml import NvmlConfig, NvmlGpuCollector
    from tests.fake_nvml import FakeGpu, FakeNvml

    nvml = FakeNvml([FakeGpu("GPU-a"), FakeGpu("GPU-b", power_mw=0xFFFFFFFF, temp_c=511), FakeGpu("GPU-c")])
    delivery = _Recorded(tmp_path / "spool")
    stats = AgentStats()
    try:
        with NvmlGpuCollector(NvmlConfig(node="n0"), nvml=nvml) as collector:
            run_agent([collector], delivery, "t.", ticks=1, speed=1000.0, stop=threading.Event(), stats=stats, node="n0")
    finally:
        delivery.close(drain_timeout=0.1)
    [raw] = [value for topic, value in delivery.handed if topic == GPU_SAMPLES_RAW.full_name("t.")]
    a, b, c = GPU_SAMPLES_RAW.codec.decode(raw)
    assert (b.gpu_uuid, b.power_w, b.temperature_c) == ("GPU-b", None, None)
    assert b.gpu_util == 80.0 and b.power_limit_w == 700.0 and b.sm_clock_mhz == 1980.0
    assert a.power_w == c.power_w == 450.0 and a.temperature_c == 61.0
    assert stats.fit.values_nulled == 2
