"""A simulated cluster of N nodes x G GPUs, behind the same interface as the NVML collector.

It stands in for GPUs this machine lacks. It is seeded and deterministic (the same seed and
ticks give the same samples), and behaviours can be injected to make a known fault, such as
a GPU that idles while its peers are busy, so detectors can be tested against ground truth.
"""

from __future__ import annotations

import math
import random
import re
import uuid
from dataclasses import dataclass, field

from agents.base import Collector
from schemas.catalog import GPU_SAMPLES_RAW
from schemas.events import GpuSample

GIB = 1024**3


@dataclass(frozen=True)
class IdleGpu:
    """GPU ``gpu`` of node ``node`` sits near 0% from ``start_s`` to ``end_s`` (seconds since start)."""

    node: int
    gpu: int
    start_s: float = 0.0
    end_s: float = math.inf

    @classmethod
    def parse(cls, text: str) -> IdleGpu:
        """``NODE:GPU`` or ``NODE:GPU@START-END`` (seconds), e.g. ``1:3@0-40``."""
        m = re.fullmatch(r"(\d+):(\d+)(?:@(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?|inf))?", text.strip())
        if not m:
            raise ValueError(f"--idle expects NODE:GPU[@START-END], got {text!r}")
        start = float(m.group(3)) if m.group(3) else 0.0
        end = float(m.group(4)) if m.group(4) else math.inf
        if end <= start:
            raise ValueError(f"--idle {text!r}: END must be after START")
        return cls(int(m.group(1)), int(m.group(2)), start, end)

    def active(self, node: int, gpu: int, t_s: float) -> bool:
        return node == self.node and gpu == self.gpu and self.start_s <= t_s < self.end_s


@dataclass(frozen=True)
class SimConfig:
    nodes: int = 4
    gpus_per_node: int = 8
    seed: int = 0
    idle: tuple[IdleGpu, ...] = ()
    node_prefix: str = "sim-node-"
    job_id: str | None = "sim-job-0"
    memory_total_bytes: int = 80 * GIB
    power_limit_w: float = 700.0

    def __post_init__(self) -> None:
        if not 1 <= self.gpus_per_node <= 16:
            raise ValueError("gpus_per_node must be 1..16")
        if self.nodes < 1:
            raise ValueError("nodes must be at least 1")
        for b in self.idle:
            if b.node >= self.nodes or b.gpu >= self.gpus_per_node:
                raise ValueError(f"idle GPU {b.node}:{b.gpu} is outside the {self.nodes}x{self.gpus_per_node} cluster")


@dataclass
class _GpuState:
    node: str
    index: int
    uuid: str
    rng: random.Random
    base_util: float
    dip_left: int = 0


class SimGpuCollector(Collector[SimConfig]):
    """Every GPU of the simulated cluster runs one data-parallel job with noise and data-loading dips."""

    topic = GPU_SAMPLES_RAW

    def __init__(self, config: SimConfig) -> None:
        super().__init__(config)
        self._start_ms: int | None = None
        self._gpus: list[tuple[int, _GpuState]] = []
        for n in range(config.nodes):
            node = f"{config.node_prefix}{n:02d}"
            for g in range(config.gpus_per_node):
                rng = random.Random(f"{config.seed}/{n}/{g}")
                gid = uuid.uuid5(uuid.NAMESPACE_OID, f"hpcinsight-sim/{config.seed}/{node}/{g}")
                self._gpus.append((n, _GpuState(node, g, f"GPU-{gid}", rng, base_util=rng.uniform(82.0, 94.0))))

    def sample(self, now_ms: int) -> list[GpuSample]:
        if self._start_ms is None:
            self._start_ms = now_ms
        t_s = (now_ms - self._start_ms) / 1000.0
        return [self._read(n, gpu, now_ms, t_s) for n, gpu in self._gpus]

    def _read(self, n: int, gpu: _GpuState, now_ms: int, t_s: float) -> GpuSample:
        rng, cfg = gpu.rng, self.config
        if any(b.active(n, gpu.index, t_s) for b in cfg.idle):
            util = rng.uniform(0.0, 2.0)
        else:
            if gpu.dip_left == 0 and rng.random() < 0.03:  # a data-loading stall now and then
                gpu.dip_left = rng.randint(1, 3)
            if gpu.dip_left:
                gpu.dip_left -= 1
                util = rng.uniform(35.0, 60.0)
            else:
                util = min(100.0, max(0.0, rng.gauss(gpu.base_util, 4.0)))
        util = round(util, 1)
        mem_used = int(cfg.memory_total_bytes * (0.05 if util < 5 else rng.uniform(0.70, 0.78)))
        power = round(min(cfg.power_limit_w, 90.0 + 5.6 * util + rng.gauss(0, 8.0)), 1)
        return GpuSample(
            node=gpu.node,
            gpu_index=gpu.index,
            gpu_uuid=gpu.uuid,
            ts=now_ms,
            gpu_util=util,
            mem_used_bytes=mem_used,
            mem_total_bytes=cfg.memory_total_bytes,
            power_w=max(0.0, power),
            temperature_c=round(32.0 + 0.38 * util + rng.gauss(0, 0.8), 1),
            sm_clock_mhz=1980.0 if util >= 5 else 345.0,
            job_id=cfg.job_id,
        )
