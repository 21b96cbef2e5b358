"""Simulated InfiniBand ports for the sim cluster, behind the same interface as ``ib_sysfs``.

Each simulated node has ``ports`` HCAs (``mlx5_0`` ...), port 1, ACTIVE at the configured
rate, carrying the all-reduce traffic of a data-parallel job: steady throughput with noise,
no errors. It emits the records ``IbSysfsCollector`` would, from the second tick on (the
first tick of a port has no previous counters, so no rates), so the pipeline downstream
cannot tell the two apart.

Fabric faults (:class:`IbFault`) are applied over the healthy values: every port's healthy
draws are taken as always and then changed, and what a fault needs at random comes from a
separate stream. A run with faults is therefore the healthy run everywhere else, sample for
sample (detector baselines and tests rely on the seeded stream).

With a :class:`hpcinsight.agents.sim.workload.Workload` a node's traffic follows the job on it: its profile's
load, scaled by the phase (lower in warm-up and evaluation, near nothing while the job writes a
checkpoint or hangs), and a node no job holds is all but silent. The draws are the same; only
their scale changes.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Any

from hpcinsight.agents.base import Collector
from hpcinsight.agents.registry import PYTHON_ONLY, check, collector_kind
from hpcinsight.agents.sim.workload import IB_PHASE_LOAD, Workload
from hpcinsight.schemas.catalog import IB_SAMPLES_RAW
from hpcinsight.schemas.events import IbSample

#: share of its healthy throughput a degraded node's ports still carry
DEGRADED_SHARE = 0.2
#: the rate a slow (trained-down) port reports
SLOW_RATE_GBPS = 100.0


@dataclass(frozen=True)
class IbFault:
    """A fabric fault of node ``node``, in seconds since start.

    ``degrade``: from ``start_s`` to ``end_s`` every port of the node carries about a fifth of its
    healthy traffic, waits to transmit for most of the time (``xmit_wait_per_s`` in the millions,
    hundreds of times a healthy port's) and counts a few symbol errors per interval: a bad cable,
    transceiver or switch port that the link's error recovery keeps alive but slow.
    ``slow``: from ``start_s`` to ``end_s`` every port of the node has trained down to 100 Gb/s (a
    link at a quarter of its width, or an HCA in a slot of too few PCIe lanes): it reports that rate,
    carries at most 80% of it and waits to transmit for much of the time, with no error counted.
    ``flap``: HCA ``port`` (``mlx5_<port>``) goes down and comes back once at ``start_s``: the first
    interval ending at or after it counts one ``link_downed`` and one ``link_error_recovery``.
    """

    kind: str
    node: int
    start_s: float
    end_s: float = math.inf
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> IbFault:
        """``degrade:NODE@START-END`` or ``flap:NODE:PORT@SECONDS``, e.g. ``degrade:2@60-120``, ``flap:1:3@45``."""
        text = text.strip()
        if m := re.fullmatch(r"degrade:(\d+)@(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?|inf)", text):
            start, end = float(m.group(2)), float(m.group(3))
            if end <= start:
                raise ValueError(f"--ib-fault {text!r}: END must be after START")
            return cls("degrade", int(m.group(1)), start, end)
        if m := re.fullmatch(r"flap:(\d+):(\d+)@(\d+(?:\.\d+)?)", text):
            return cls("flap", int(m.group(1)), float(m.group(3)), port=int(m.group(2)))
        raise ValueError(f"--ib-fault expects degrade:NODE@START-END or flap:NODE:PORT@SECONDS, got {text!r}")


@dataclass(frozen=True)
class SimIbConfig:
    """``[agent.collectors.ib_sim]``: the sim cluster's InfiniBand ports (the same ``nodes`` and
    ``seed`` as its ``gpu_sim`` table), with fabric faults as the flag's specs (``faults = ["degrade:2@60-120"]``)."""

    nodes: int = 4
    ports: int = 8
    seed: int = 0
    rate_gbps: float = 400.0
    node_prefix: str = "sim-node-"
    load: float = 0.45  # mean share of the link rate in use
    faults: tuple[IbFault, ...] = ()
    #: jobs with phases on node sets; None: every node carries one job's steady traffic (Python callers only)
    workload: Workload | None = field(default=None, metadata=PYTHON_ONLY)

    def __post_init__(self) -> None:
        check(self.nodes >= 1, "nodes", "must be >= 1")
        check(self.ports >= 1, "ports", "must be >= 1")
        check(math.isfinite(self.rate_gbps) and self.rate_gbps > 0, "rate_gbps", "must be a positive number")
        check(0 <= self.load <= 1, "load", "must be between 0 and 1 (a share of the link rate)")
        for f in self.faults:
            if f.node >= self.nodes or (f.port is not None and f.port >= self.ports):
                where = f"node {f.node}" + ("" if f.port is None else f" port {f.port}")
                raise ValueError(f"IB {f.kind} fault on {where} is outside the {self.nodes}x{self.ports}-port cluster")


class SimIbCollector(Collector[SimIbConfig]):
    topic = IB_SAMPLES_RAW

    def __init__(self, config: SimIbConfig) -> None:
        super().__init__(config)
        self._rng = random.Random(f"ib/{config.seed}")
        self._fault_rng = random.Random(f"ib/{config.seed}/fault")
        self._start_ms: int | None = None
        self._last_ms: int | None = None
        self._flaps = sorted((f for f in config.faults if f.kind == "flap"), key=lambda f: f.start_s)

    def sample(self, now_ms: int) -> list[IbSample]:
        cfg, rng = self.config, self._rng
        if self._start_ms is None:
            self._start_ms = now_ms
        t_s = (now_ms - self._start_ms) / 1000.0
        if cfg.workload is not None and cfg.workload.over(t_s):
            return []
        interval = None if self._last_ms is None else (now_ms - self._last_ms) / 1000.0
        self._last_ms = now_ms
        degraded = {f.node for f in cfg.faults if f.kind == "degrade" and f.start_s <= t_s < f.end_s}
        slow = {f.node for f in cfg.faults if f.kind == "slow" and f.start_s <= t_s < f.end_s}
        flapped = self._due_flaps(t_s) if interval else set()
        out = []
        for n in range(cfg.nodes):
            scale = 1.0 if cfg.workload is None else self._load(cfg.workload, n, t_s) / cfg.load
            for p in range(cfg.ports):
                common = {
                    "node": f"{cfg.node_prefix}{n:02d}",
                    "device": f"mlx5_{p}",
                    "port": 1,
                    "ts": now_ms,
                    "state": "ACTIVE",
                    "phys_state": "LinkUp",
                    "rate_gbps": cfg.rate_gbps,
                }
                if interval is None or interval <= 0:
                    out.append(IbSample(**common))
                    continue
                line = cfg.rate_gbps * 1e9 / 8
                tx = max(0.0, rng.gauss(cfg.load, 0.05)) * line
                rx = max(0.0, rng.gauss(cfg.load, 0.05)) * line
                wait = round(abs(rng.gauss(0, 200)))
                tx, rx = tx * scale, rx * scale
                symbol_errors = recoveries = downed = 0
                if n in degraded:  # after the healthy draws, so the seeded stream is unchanged
                    tx, rx = tx * DEGRADED_SHARE, rx * DEGRADED_SHARE
                    wait = round(self._fault_rng.uniform(5e6, 2e7))
                    symbol_errors = self._fault_rng.randint(1, 4)
                if n in slow:
                    common["rate_gbps"] = SLOW_RATE_GBPS
                    cap = 0.8 * SLOW_RATE_GBPS * 1e9 / 8
                    tx, rx = min(tx, cap * self._fault_rng.uniform(0.9, 1.0)), min(rx, cap * self._fault_rng.uniform(0.9, 1.0))
                    wait = round(self._fault_rng.uniform(2e6, 8e6))
                if (n, p) in flapped:
                    downed, recoveries = 1, 1
                out.append(
                    IbSample(
                        **common,
                        interval_s=interval,
                        xmit_bytes_per_s=round(tx),
                        rcv_bytes_per_s=round(rx),
                        xmit_packets_per_s=round(tx / 4096),
                        rcv_packets_per_s=round(rx / 4096),
                        xmit_wait_per_s=wait,
                        symbol_errors=symbol_errors,
                        link_downed=downed,
                        link_error_recovery=recoveries,
                        rcv_errors=0,
                        rcv_remote_physical_errors=0,
                        xmit_discards=0,
                        local_link_integrity_errors=0,
                        excessive_buffer_overrun_errors=0,
                    )
                )
        return out

    @staticmethod
    def _load(workload: Workload, node: int, t_s: float) -> float:
        """Mean share of the link rate a node's jobs use at ``t_s``."""
        load = 0.001  # management traffic of a node no job holds
        for job in workload.jobs_on_node(node, t_s):
            share = job.profile.ib_load * IB_PHASE_LOAD[job.profile.phase(t_s - job.start_s)]
            if any(f.kind == "hang" for f in workload.faults_of(job, t_s)):
                share = 0.001
            load = max(load, share)
        return load

    def _due_flaps(self, t_s: float) -> set[tuple[int, int]]:
        """(node, port) of the flaps that fell due by ``t_s``, each returned once."""
        due: set[tuple[int, int]] = set()
        while self._flaps and self._flaps[0].start_s <= t_s:
            f = self._flaps.pop(0)
            due.add((f.node, f.port or 0))
        return due


@collector_kind("ib_sim", SimIbConfig)
def ib_sim(config: SimIbConfig) -> list[Collector[Any]]:
    return [SimIbCollector(config)]
