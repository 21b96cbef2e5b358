"""The simulated IB ports look like the sysfs collector's records."""

from __future__ import annotations

import pytest

from hpcinsight.agents.base import Collector
from hpcinsight.agents.sim.ib import IbFault, SimIbCollector, SimIbConfig
from hpcinsight.schemas.catalog import IB_SAMPLES_RAW
from hpcinsight.schemas.events import IbSample

T0 = 1_764_000_000_000


def test_first_tick_has_no_rates_then_every_port_has_plausible_ones() -> None:
    sim = SimIbCollector(SimIbConfig(nodes=2, ports=8))
    assert isinstance(sim, Collector) and sim.topic is IB_SAMPLES_RAW
    first = sim.sample(T0)
    assert len(first) == 16 and all(s.xmit_bytes_per_s is None and s.state == "ACTIVE" for s in first)
    second = sim.sample(T0 + 1000)
    line = 400e9 / 8
    assert all(0 < s.xmit_bytes_per_s < line and s.interval_s == 1.0 and s.symbol_errors == 0 for s in second)
    assert IB_SAMPLES_RAW.codec.decode(IB_SAMPLES_RAW.codec.encode(second)) == second
    assert {(s.node, s.device) for s in second} == {(f"sim-node-0{n}", f"mlx5_{p}") for n in range(2) for p in range(8)}


def _run(config: SimIbConfig, ticks: int) -> list[IbSample]:
    sim = SimIbCollector(config)
    return [s for k in range(ticks) for s in sim.sample(T0 + k * 1000)]


def test_faults_leave_every_other_port_and_tick_as_they_were() -> None:
    # the seeded stream (and the detector baselines built on it) goes on unchanged around a fault
    faults = (IbFault.parse("degrade:1@5-10"), IbFault.parse("flap:0:3@7"))
    healthy = _run(SimIbConfig(nodes=3, ports=4, seed=2), 20)
    faulty = _run(SimIbConfig(nodes=3, ports=4, seed=2, faults=faults), 20)
    changed = {(h.node, h.device, (h.ts - T0) // 1000) for h, f in zip(healthy, faulty, strict=True) if h != f}
    assert changed == {("sim-node-01", f"mlx5_{p}", t) for p in range(4) for t in range(5, 10)} | {("sim-node-00", "mlx5_3", 7)}


def test_a_degraded_node_carries_a_fifth_waits_and_errs() -> None:
    healthy = _run(SimIbConfig(nodes=2, ports=8), 30)
    faulty = _run(SimIbConfig(nodes=2, ports=8, faults=(IbFault.parse("degrade:1@10-20"),)), 30)
    assert IB_SAMPLES_RAW.codec.decode(IB_SAMPLES_RAW.codec.encode(faulty)) == faulty
    for h, f in zip(healthy, faulty, strict=True):
        inside = f.node == "sim-node-01" and T0 + 10_000 <= f.ts < T0 + 20_000
        if not inside:
            assert f == h
            continue
        assert f.xmit_bytes_per_s == pytest.approx(0.2 * h.xmit_bytes_per_s, abs=1) and f.rcv_bytes_per_s == pytest.approx(
            0.2 * h.rcv_bytes_per_s, abs=1
        )
        assert f.xmit_wait_per_s >= 1e6 and 1 <= f.symbol_errors <= 4
        assert f.state == "ACTIVE" and f.link_downed == 0
    healthy_waits = sorted(s.xmit_wait_per_s for s in healthy if s.xmit_wait_per_s is not None)
    assert healthy_waits[len(healthy_waits) // 2] < 1e3  # a degraded port waits thousands of times more


def test_a_flap_counts_once_in_the_interval_it_falls_in() -> None:
    # at 0 s (the first tick, no previous counters) it lands in the first interval, at 2.5 s in the one ending at 3 s
    faults = (IbFault.parse("flap:1:2@2.5"), IbFault.parse("flap:0:0@0"))
    samples = _run(SimIbConfig(nodes=2, ports=4, faults=faults), 10)
    downed = [(s.node, s.device, (s.ts - T0) // 1000) for s in samples if s.link_downed]
    assert downed == [("sim-node-00", "mlx5_0", 1), ("sim-node-01", "mlx5_2", 3)]
    assert all(s.link_error_recovery == s.link_downed for s in samples if s.interval_s is not None)


@pytest.mark.parametrize("text", ["degrade:1", "degrade:1@5-5", "flap:1@5", "flap:1:2@", "cut:1@1-2", "degrade:1:2@1-2"])
def test_bad_ib_fault_specs_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        IbFault.parse(text)


def test_ib_fault_specs_and_cluster_bounds() -> None:
    assert IbFault.parse("degrade:2@60-inf") == IbFault("degrade", 2, 60.0)
    assert IbFault.parse("flap:1:3@45") == IbFault("flap", 1, 45.0, port=3)
    with pytest.raises(ValueError, match="outside"):
        SimIbConfig(nodes=2, ports=8, faults=(IbFault.parse("flap:1:8@5"),))
    with pytest.raises(ValueError, match="outside"):
        SimIbConfig(nodes=2, faults=(IbFault.parse("degrade:2@5-9"),))
