"""The sim collector is seeded, injects its idle GPU, and speaks the collector interface."""

from __future__ import annotations

import pytest

from agents.base import Collector
from agents.gpu_sim import IdleGpu, SimConfig, SimGpuCollector
from schemas.events import GpuSample

T0 = 1_764_000_000_000


def run(config: SimConfig, ticks: int) -> list[GpuSample]:
    with SimGpuCollector(config) as sim:
        return [s for k in range(ticks) for s in sim.sample(T0 + k * 1000)]


def test_same_seed_same_samples_and_every_gpu_each_tick() -> None:
    cfg = SimConfig(nodes=3, gpus_per_node=4, seed=7)
    a, b = run(cfg, 20), run(cfg, 20)
    assert a == b and len(a) == 3 * 4 * 20
    assert isinstance(SimGpuCollector(cfg), Collector)
    assert len({s.gpu_uuid for s in a}) == 12
    assert run(SimConfig(nodes=3, gpus_per_node=4, seed=8), 20) != a


def test_idle_gpu_idles_only_in_its_interval() -> None:
    cfg = SimConfig(nodes=2, gpus_per_node=2, idle=(IdleGpu.parse("1:0@5-15"),))
    samples = run(cfg, 30)
    idle = [s for s in samples if s.node == "sim-node-01" and s.gpu_index == 0]
    inside = [s.gpu_util for s in idle if T0 + 5000 <= s.ts < T0 + 15000]
    outside = [s.gpu_util for s in idle if not T0 + 5000 <= s.ts < T0 + 15000]
    peers = [s.gpu_util for s in samples if (s.node, s.gpu_index) != ("sim-node-01", 0)]
    assert max(inside) <= 2.0 and min(outside) > 20.0 and sorted(peers)[len(peers) // 20] > 30.0


@pytest.mark.parametrize("text", ["1", "a:b", "1:2@9-3", "1:2@"])
def test_bad_idle_specs_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        IdleGpu.parse(text)


def test_idle_gpu_outside_the_cluster_is_rejected() -> None:
    with pytest.raises(ValueError, match="outside"):
        SimConfig(nodes=2, gpus_per_node=8, idle=(IdleGpu(2, 0),))


def _filled(sample: GpuSample) -> set[str]:
    return {f for f in sample.__struct_fields__ if getattr(sample, f) not in (None, [])}


def test_sim_fills_the_same_fields_as_the_nvml_collector_on_an_h100() -> None:
    from agents.gpu_nvml import NvmlConfig, NvmlGpuCollector
    from tests.fake_nvml import FakeNvml, h100

    nvml = FakeNvml([h100("GPU-h")])
    with NvmlGpuCollector(NvmlConfig(node="n", job_id="j"), nvml=nvml) as real:
        real.sample(T0)
        nvml.now_us += 1_000_000
        (board,) = real.sample(T0 + 1000)  # the second tick: GPM and NVLink rates exist
    sims = run(SimConfig(nodes=1, gpus_per_node=2), 5)
    assert all(_filled(s) == _filled(board) for s in sims)


def test_sim_extra_fields_are_plausible_and_valid_on_the_wire() -> None:
    from schemas.catalog import GPU_SAMPLES_RAW

    cfg = SimConfig(nodes=2, gpus_per_node=2, idle=(IdleGpu.parse("0:1"),))
    samples = run(cfg, 30)
    assert GPU_SAMPLES_RAW.codec.decode(GPU_SAMPLES_RAW.codec.encode(samples)) == samples
    for s in samples:
        assert s.sm_active_pct is not None and s.gpu_util is not None and s.sm_active_pct <= s.gpu_util
        assert s.power_w is not None and s.power_limit_w is not None and s.power_w <= s.power_limit_w
        idle = (s.node, s.gpu_index) == ("sim-node-00", 1)
        assert (s.throttle == ["idle"]) == idle and s.throttle_reasons == (1 if idle else 0)
        assert (s.nvlink_tx_bytes_per_s or 0) > 1e11 or idle


def test_extra_fields_do_not_change_the_seeded_utilisation() -> None:
    # the values the detectors and their tests rely on are what they were before the new fields
    (s,) = run(SimConfig(nodes=1, gpus_per_node=1, seed=3), 1)
    import random

    rng = random.Random("3/0/0")
    base = rng.uniform(82.0, 94.0)
    rng.random()  # the stall draw
    assert s.gpu_util == round(min(100.0, max(0.0, rng.gauss(base, 4.0))), 1)


def test_sim_processes_and_injected_xids() -> None:
    from agents.gpu_sim import InjectedXid, SimProcessCollector, SimXidCollector

    gpus = SimGpuCollector(SimConfig(nodes=2, gpus_per_node=4, idle=(IdleGpu(1, 0),)))
    procs = SimProcessCollector(gpus)
    xids = SimXidCollector(gpus, (InjectedXid.parse("0:2@3:79"), InjectedXid.parse("1:1@3:13x3")))
    seen = []
    for k in range(6):
        samples = gpus.sample(T0 + k * 1000)
        p = procs.sample(T0 + k * 1000)
        assert len(p) == 7 and {x.gpu_uuid for x in p} < {s.gpu_uuid for s in samples}  # the idle GPU runs nothing
        seen += xids.sample(T0 + k * 1000)
    assert [(x.node, x.gpu_index, x.xid) for x in seen] == [("sim-node-00", 2, 79)] + [("sim-node-01", 1, 13)] * 3
    assert len({x.seq for x in seen}) == 4 and all(x.ts == T0 + 3000 for x in seen)
    with pytest.raises(ValueError):
        InjectedXid.parse("0:2:79")
