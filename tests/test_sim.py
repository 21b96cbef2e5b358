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
