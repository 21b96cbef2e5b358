"""Simulated InfiniBand ports for the sim cluster, behind the same interface as ``ib_sysfs``.

Each simulated node has ``ports`` HCAs (``mlx5_0`` ...), port 1, ACTIVE at the configured
rate, carrying the all-reduce traffic of a data-parallel job: steady throughput with noise,
no errors. It emits the records ``IbSysfsCollector`` would, from the second tick on (the
first tick of a port has no previous counters, so no rates), so the pipeline downstream
cannot tell the two apart.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from agents.base import Collector
from schemas.catalog import IB_SAMPLES_RAW
from schemas.events import IbSample


@dataclass(frozen=True)
class SimIbConfig:
    nodes: int = 4
    ports: int = 8
    seed: int = 0
    rate_gbps: float = 400.0
    node_prefix: str = "sim-node-"
    load: float = 0.45  # mean share of the link rate in use


class SimIbCollector(Collector[SimIbConfig]):
    topic = IB_SAMPLES_RAW

    def __init__(self, config: SimIbConfig) -> None:
        super().__init__(config)
        self._rng = random.Random(f"ib/{config.seed}")
        self._last_ms: int | None = None

    def sample(self, now_ms: int) -> list[IbSample]:
        cfg, rng = self.config, self._rng
        interval = None if self._last_ms is None else (now_ms - self._last_ms) / 1000.0
        self._last_ms = now_ms
        out = []
        for n in range(cfg.nodes):
            for p in range(cfg.ports):
                common = {"node": f"{cfg.node_prefix}{n:02d}", "device": f"mlx5_{p}", "port": 1, "ts": now_ms,
                          "state": "ACTIVE", "phys_state": "LinkUp", "rate_gbps": cfg.rate_gbps}
                if interval is None or interval <= 0:
                    out.append(IbSample(**common))
                    continue
                line = cfg.rate_gbps * 1e9 / 8
                tx = max(0.0, rng.gauss(cfg.load, 0.05)) * line
                rx = max(0.0, rng.gauss(cfg.load, 0.05)) * line
                out.append(IbSample(
                    **common, interval_s=interval, xmit_bytes_per_s=round(tx), rcv_bytes_per_s=round(rx),
                    xmit_packets_per_s=round(tx / 4096), rcv_packets_per_s=round(rx / 4096),
                    xmit_wait_per_s=round(abs(rng.gauss(0, 200))), symbol_errors=0, link_downed=0,
                    link_error_recovery=0, rcv_errors=0, rcv_remote_physical_errors=0, xmit_discards=0,
                    local_link_integrity_errors=0, excessive_buffer_overrun_errors=0,
                ))
        return out
