"""The simulated IB ports look like the sysfs collector's records."""

from __future__ import annotations

from agents.base import Collector
from agents.ib_sim import SimIbCollector, SimIbConfig
from schemas.catalog import IB_SAMPLES_RAW

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
