"""The sim collector is seeded, injects its idle GPU, and speaks the collector interface."""

from __future__ import annotations

import math

import msgspec
import pytest

from hpcinsight.agents.base import Collector
from hpcinsight.agents.sim.gpu import IdleGpu, SimConfig, SimGpuCollector
from hpcinsight.schemas.events import GpuSample

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
    from hpcinsight.agents.gpu_nvml import NvmlConfig, NvmlGpuCollector
    from tests.fake_nvml import FakeNvml, h100

    nvml = FakeNvml([h100("GPU-h")])
    with NvmlGpuCollector(NvmlConfig(node="n", job_id="j"), nvml=nvml) as real:
        real.sample(T0)
        nvml.now_us += 1_000_000
        (board,) = real.sample(T0 + 1000)  # the second tick: GPM and NVLink rates exist
    sims = run(SimConfig(nodes=1, gpus_per_node=2), 5)
    assert all(_filled(s) == _filled(board) for s in sims)


def test_sim_extra_fields_are_plausible_and_valid_on_the_wire() -> None:
    from hpcinsight.schemas.catalog import GPU_SAMPLES_RAW

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
    assert s.gpu_util == round(min(100.0, max(0.0, rng.gauss(base, 4.0))))  # a whole percentage, as NVML reports it


def test_sim_processes_and_injected_xids() -> None:
    from hpcinsight.agents.sim.gpu import InjectedXid, SimProcessCollector, SimXidCollector

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


FAULTS = ("thermal:0:1@5-15", "power:0:2@5-15", "ecc:1:0@8", "remap:1:1@5-15", "clock:1:2@5-15", "slow:1:3@5-15")


def _faulted(ticks: int = 25) -> tuple[list[GpuSample], list[GpuSample]]:
    """The same cluster without and with the faults above, tick for tick."""
    from hpcinsight.agents.sim.gpu import InjectedFault

    healthy = run(SimConfig(nodes=2, gpus_per_node=4, seed=5), ticks)
    faulty = run(SimConfig(nodes=2, gpus_per_node=4, seed=5, faults=tuple(InjectedFault.parse(f) for f in FAULTS)), ticks)
    return healthy, faulty


def _at(samples: list[GpuSample], node: int, gpu: int, inside: bool) -> list[GpuSample]:
    return [
        s
        for s in samples
        if (s.node, s.gpu_index) == (f"sim-node-{node:02d}", gpu) and (T0 + 5000 <= s.ts < T0 + 15000) == inside
    ]


def test_faults_change_only_their_gpu_in_their_window() -> None:
    # the seeded stream the other tests and the detectors' baselines rely on goes on unchanged
    healthy, faulty = _faulted()
    changed = {(h.node, h.gpu_index, (h.ts - T0) // 1000) for h, f in zip(healthy, faulty, strict=True) if h != f}
    faulted = {
        ("sim-node-00", 1),
        ("sim-node-00", 2),
        ("sim-node-01", 0),
        ("sim-node-01", 1),
        ("sim-node-01", 2),
        ("sim-node-01", 3),
    }
    assert {(n, g) for n, g, _ in changed} == faulted
    # only the ECC count outlives its window: a volatile counter never goes down
    assert {t for n, g, t in changed if (n, g) != ("sim-node-01", 0)} == set(range(5, 15))
    for h, f in zip(healthy, faulty, strict=True):
        if (f.node, f.gpu_index) == ("sim-node-01", 0):
            assert msgspec.structs.replace(f, ecc_uncorrected_volatile=0) == h


def test_each_fault_looks_like_its_nvml_reading() -> None:
    from hpcinsight.schemas.catalog import GPU_SAMPLES_RAW

    _, faulty = _faulted()
    assert GPU_SAMPLES_RAW.codec.decode(GPU_SAMPLES_RAW.codec.encode(faulty)) == faulty
    for s in _at(faulty, 0, 1, inside=True):  # thermal: hw_thermal (NVML bit 0x40), hot, clock ~70%
        assert s.throttle == ["hw_thermal"] and s.throttle_reasons == 0x40 and 88 <= s.temperature_c <= 92
        assert 0.65 <= s.sm_clock_mhz / s.sm_clock_max_mhz <= 0.75
    for s in _at(faulty, 0, 2, inside=True):  # power: at the limit with sw_power_cap (0x04), clock ~85%
        assert s.throttle == ["sw_power_cap"] and s.throttle_reasons == 0x04
        assert 0.98 * s.power_limit_w <= s.power_w <= s.power_limit_w and 0.8 <= s.sm_clock_mhz / s.sm_clock_max_mhz <= 0.9
    ecc = [(s.ts - T0, s.ecc_uncorrected_volatile) for s in _at(faulty, 1, 0, True) + _at(faulty, 1, 0, False)]
    assert all(count == (1 if t >= 8000 else 0) for t, count in ecc)
    assert all(
        s.remapped_rows_pending == (T0 + 5000 <= s.ts < T0 + 15000) for s in _at(faulty, 1, 1, True) + _at(faulty, 1, 1, False)
    )
    for s in _at(faulty, 1, 2, inside=True):  # clock: ~45% with no reason at all
        assert (
            s.throttle == [] and s.throttle_reasons == 0 and s.sm_clock_mhz / s.sm_clock_max_mhz == pytest.approx(0.45, abs=0.01)
        )
    slow = [s.gpu_util for s in _at(faulty, 1, 3, inside=True)]
    assert all(40 <= u <= 50 for u in slow)
    peers = [s.gpu_util for s in faulty if s.node == "sim-node-00" and s.gpu_index in (0, 3)]
    assert sorted(peers)[len(peers) // 10] > 60  # out of line with its peers
    for node, gpu in ((0, 1), (0, 2), (1, 2)):  # outside their windows: healthy boards at full clock, no reason
        assert all(s.throttle == [] and s.sm_clock_mhz == s.sm_clock_max_mhz for s in _at(faulty, node, gpu, inside=False))


def test_an_idle_gpu_does_not_throttle_or_run_slow() -> None:
    from hpcinsight.agents.sim.gpu import InjectedFault

    faults = tuple(InjectedFault.parse(f"{k}:0:0@0-10") for k in ("thermal", "power", "clock", "slow"))
    samples = run(SimConfig(nodes=1, gpus_per_node=2, idle=(IdleGpu.parse("0:0@0-10"),), faults=faults), 10)
    assert all(s.throttle == ["idle"] and s.gpu_util <= 2 and s.sm_clock_mhz == 345.0 for s in samples if s.gpu_index == 0)


@pytest.mark.parametrize("text", ["thermal:0", "hot:0:1@1-2", "ecc:0:1@5-5", "thermal:0:1@", "0:1@1-2"])
def test_bad_fault_specs_are_rejected(text: str) -> None:
    from hpcinsight.agents.sim.gpu import InjectedFault

    with pytest.raises(ValueError):
        InjectedFault.parse(text)


def test_fault_spec_and_cluster_bounds() -> None:
    from hpcinsight.agents.sim.gpu import InjectedFault

    assert InjectedFault.parse("clock:3:7@30-90.5") == InjectedFault("clock", 3, 7, 30.0, 90.5)
    assert InjectedFault.parse(" ecc:0:1 ") == InjectedFault("ecc", 0, 1, 0.0, math.inf)
    assert InjectedFault.parse("ecc:0:1@45") == InjectedFault("ecc", 0, 1, 45.0, math.inf)
    with pytest.raises(ValueError, match="outside"):
        SimConfig(nodes=2, gpus_per_node=8, faults=(InjectedFault("slow", 1, 8),))
