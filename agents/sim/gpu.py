"""A simulated cluster of N nodes x G GPUs, behind the same interface as the NVML collector.

It stands in for GPUs this machine lacks. It is seeded and deterministic (the same seed and
ticks give the same samples), and behaviours can be injected to make a known fault, such as
a GPU that idles while its peers are busy, so detectors can be tested against ground truth.

It fills the same fields as :class:`hpcinsight.agents.gpu_nvml.NvmlGpuCollector` on a healthy H100 board
without MIG: clocks, power limit, throttle reasons (``idle`` when idle, otherwise none unless
the power cap is reached), zero error counters, PCIe/NVLink rates of a data-parallel job, and
GPM activity derived from utilisation (SMs are busy for part of each "utilised" interval). The
extra fields draw from a second random stream, so ``gpu_util`` and the fields that existed
before them are the same for a seed as they always were.

Hardware faults (:class:`InjectedFault`: thermal or power throttling, an uncorrectable ECC error,
a pending row remap, clocks stuck low, a slow GPU) are applied *over* the healthy sample: the
healthy values are drawn as always and then replaced, and what a fault needs at random comes from
a third stream per GPU. So a fault changes only its GPU during its window, and every other GPU,
and that GPU outside the window, gives exactly the samples of a run without it (tests and
detector baselines rely on the seeded stream).
"""

from __future__ import annotations

import math
import random
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from hpcinsight.agents.base import Collector
from hpcinsight.agents.registry import PYTHON_ONLY, check, collector_kind
from hpcinsight.agents.sim.workload import Workload
from hpcinsight.schemas.catalog import GPU_PROCESSES, GPU_SAMPLES_RAW, GPU_XID
from hpcinsight.schemas.events import GpuProcess, GpuSample, XidEvent

GIB = 1024**3
SM_CLOCK_MAX_MHZ = 1980.0
MEM_CLOCK_MHZ = 2619.0  # HBM3 runs at a fixed clock
IDLE_REASON = 0x001  # NVML clock-event bits, as hpcinsight.agents.gpu_nvml decodes them
SW_POWER_CAP_REASON = 0x004
HW_THERMAL_REASON = 0x040
REASON_NAMES = ((IDLE_REASON, "idle"), (SW_POWER_CAP_REASON, "sw_power_cap"), (HW_THERMAL_REASON, "hw_thermal"))


def gpu_uuid(seed: int, node: str, index: int) -> str:
    """The UUID of simulated GPU ``index`` of ``node`` in a cluster of seed ``seed`` (stable across runs)."""
    return f"GPU-{uuid.uuid5(uuid.NAMESPACE_OID, f'hpcinsight-sim/{seed}/{node}/{index}')}"


def _span(option: str, text: str, start: str | None, end: str | None) -> tuple[float, float]:
    """START and END seconds of an injection option (absent: from the start, to the end of the run)."""
    start_s = float(start) if start else 0.0
    end_s = float(end) if end else math.inf
    if end_s <= start_s:
        raise ValueError(f"{option} {text!r}: END must be after START")
    return start_s, end_s


class _OnOneGpu:
    """What an injection on one GPU for a time span shares: whether it is on now."""

    node: int
    gpu: int
    start_s: float
    end_s: float

    def active(self, node: int, gpu: int, t_s: float) -> bool:
        return node == self.node and gpu == self.gpu and self.start_s <= t_s < self.end_s


@dataclass(frozen=True)
class IdleGpu(_OnOneGpu):
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
        return cls(int(m.group(1)), int(m.group(2)), *_span("--idle", text, m.group(3), m.group(4)))


FAULT_KINDS = ("thermal", "power", "ecc", "remap", "clock", "slow")


@dataclass(frozen=True)
class InjectedFault(_OnOneGpu):
    """A hardware fault of GPU ``gpu`` of node ``node`` from ``start_s`` to ``end_s`` (seconds since start).

    ``thermal``: hw_thermal throttling, 88-92 °C, SM clock about 70% of its maximum, while busy.
    ``power``: at the power limit with sw_power_cap, SM clock about 85% of its maximum, while busy.
    ``ecc``: one uncorrectable ECC error at ``start_s``; the volatile count keeps it afterwards
    (NVML's counters only reset with the driver), so ``end_s`` does not apply.
    ``remap``: ``remapped_rows_pending`` during the window (a GPU reset clears it at ``end_s``).
    ``clock``: SM clock about 45% of its maximum while busy with no throttle reason (clocks locked
    low by a previous ``nvidia-smi -lgc``).
    ``slow``: utilisation 40-50% while its peers run at 80-95% (a degraded GPU holding back a
    data-parallel job); power, temperature and activity follow the lower utilisation.
    """

    kind: str
    node: int
    gpu: int
    start_s: float = 0.0
    end_s: float = math.inf

    @classmethod
    def parse(cls, text: str) -> InjectedFault:
        """``KIND:NODE:GPU[@START[-END]]`` (seconds; no END: to the end of the run), e.g. ``thermal:0:3@30-90``, ``ecc:1:0@45``."""
        m = re.fullmatch(r"([a-z]+):(\d+):(\d+)(?:@(\d+(?:\.\d+)?)(?:-(\d+(?:\.\d+)?|inf))?)?", text.strip())
        if not m:
            raise ValueError(f"--fault expects KIND:NODE:GPU[@START[-END]], got {text!r}")
        if m.group(1) not in FAULT_KINDS:
            raise ValueError(f"--fault {text!r}: unknown kind {m.group(1)!r}; known: {', '.join(FAULT_KINDS)}")
        return cls(m.group(1), int(m.group(2)), int(m.group(3)), *_span("--fault", text, m.group(4), m.group(5)))


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
    faults: tuple[InjectedFault, ...] = ()
    #: jobs with phases on node sets (``hpcinsight.agents.sim.workload``); None: one job on every GPU, ``job_id``
    workload: Workload | None = None
    #: the idle spells by GPU: read for every GPU at every tick, where a scan of a spell a node costs 1,280 checks a GPU at 10,240 GPUs
    _idle_by_gpu: dict[tuple[int, int], tuple[IdleGpu, ...]] = field(init=False, repr=False, compare=False)

    def idle_now(self, node: int, gpu: int, t_s: float) -> bool:
        """GPU ``gpu`` of node ``node`` is in one of its idle spells at ``t_s``."""
        return any(b.start_s <= t_s < b.end_s for b in self._idle_by_gpu.get((node, gpu), ()))

    def __post_init__(self) -> None:
        by_gpu: dict[tuple[int, int], tuple[IdleGpu, ...]] = {}
        for b in self.idle:
            by_gpu[(b.node, b.gpu)] = (*by_gpu.get((b.node, b.gpu), ()), b)
        object.__setattr__(self, "_idle_by_gpu", by_gpu)
        if self.workload is not None:
            self.workload.check(self.nodes, self.gpus_per_node)
        if not 1 <= self.gpus_per_node <= 16:
            raise ValueError("gpus_per_node must be 1..16")
        if self.nodes < 1:
            raise ValueError("nodes must be at least 1")
        for b in self.idle:
            if b.node >= self.nodes or b.gpu >= self.gpus_per_node:
                raise ValueError(f"idle GPU {b.node}:{b.gpu} is outside the {self.nodes}x{self.gpus_per_node} cluster")
        for f in self.faults:
            if f.node >= self.nodes or f.gpu >= self.gpus_per_node:
                raise ValueError(
                    f"{f.kind} fault on GPU {f.node}:{f.gpu} is outside the {self.nodes}x{self.gpus_per_node} cluster"
                )


@dataclass(frozen=True)
class SimClusterConfig:
    """The simulated cluster, as each sim collector's config table names it (``scheduler_sim``,
    ``step_sim``; ``gpu_sim`` adds its injections): the same ``nodes``, ``gpus`` and ``seed`` in
    each table describe one cluster."""

    nodes: int = 4
    gpus: int = 8  # per node
    seed: int = 0
    node_prefix: str = "sim-node-"
    job_id: str | None = "sim-job-0"  # the one job on every GPU when there is no workload
    #: jobs with phases on node sets (a scenario's); Python callers only
    workload: Workload | None = field(default=None, metadata=PYTHON_ONLY)

    def __post_init__(self) -> None:
        check(self.nodes >= 1, "nodes", "must be >= 1")
        check(1 <= self.gpus <= 16, "gpus", "must be between 1 and 16")
        check(
            bool(self.node_prefix) and not any(c in self.node_prefix for c in "[], "),
            "node_prefix",
            "must be a non-empty name without '[', ']', ',' or spaces (it appears in host lists)",
        )

    def sim(self) -> SimConfig:
        return SimConfig(
            nodes=self.nodes,
            gpus_per_node=self.gpus,
            seed=self.seed,
            node_prefix=self.node_prefix,
            job_id=self.job_id,
            workload=self.workload,
        )


@dataclass(frozen=True)
class GpuSimConfig(SimClusterConfig):
    """``[agent.collectors.gpu_sim]``: the cluster's GPUs, with the behaviours injected into them
    (the flags' spec strings: ``idle = ["1:3@0-40"]``, ``faults = ["thermal:0:3@30-90"]``,
    ``xids = ["0:5@30:79"]``)."""

    idle: tuple[IdleGpu, ...] = ()
    faults: tuple[InjectedFault, ...] = ()
    xids: tuple[InjectedXid, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        for b in self.idle:
            check(
                b.node < self.nodes and b.gpu < self.gpus,
                "idle",
                f"GPU {b.node}:{b.gpu} is outside the {self.nodes}x{self.gpus} cluster",
            )
        for f in self.faults:
            check(
                f.node < self.nodes and f.gpu < self.gpus,
                "faults",
                f"{f.kind} fault on GPU {f.node}:{f.gpu} is outside the {self.nodes}x{self.gpus} cluster",
            )
        for x in self.xids:
            check(
                x.node < self.nodes and x.gpu < self.gpus,
                "xids",
                f"XID on GPU {x.node}:{x.gpu} is outside the {self.nodes}x{self.gpus} cluster",
            )

    def sim(self) -> SimConfig:
        return SimConfig(
            nodes=self.nodes,
            gpus_per_node=self.gpus,
            seed=self.seed,
            idle=self.idle,
            node_prefix=self.node_prefix,
            job_id=self.job_id,
            faults=self.faults,
            workload=self.workload,
        )


@dataclass
class _GpuState:
    node: str
    index: int
    uuid: str
    rng: random.Random
    base_util: float
    dip_left: int = 0
    extra: random.Random = field(default_factory=random.Random)  # draws of the fields added later
    fault: random.Random = field(default_factory=random.Random)  # draws of injected faults only


class SimGpuCollector(Collector[SimConfig]):
    """Every GPU of the simulated cluster runs one data-parallel job with noise and data-loading dips."""

    topic = GPU_SAMPLES_RAW

    def __init__(self, config: SimConfig) -> None:
        super().__init__(config)
        self._start_ms: int | None = None
        self.last: list[GpuSample] = []  # the latest tick, for the process view of the same GPUs
        self._gpus: list[tuple[int, _GpuState]] = []
        for n in range(config.nodes):
            node = f"{config.node_prefix}{n:02d}"
            for g in range(config.gpus_per_node):
                rng = random.Random(f"{config.seed}/{n}/{g}")
                state = _GpuState(node, g, gpu_uuid(config.seed, node, g), rng, base_util=rng.uniform(82.0, 94.0))
                state.extra = random.Random(f"{config.seed}/{n}/{g}/extra")
                state.fault = random.Random(f"{config.seed}/{n}/{g}/fault")
                self._gpus.append((n, state))

    @property
    def start_ms(self) -> int | None:
        return self._start_ms

    def gpu(self, node: int, index: int) -> _GpuState:
        return next(g for n, g in self._gpus if n == node and g.index == index)

    def sample(self, now_ms: int) -> list[GpuSample]:
        if self._start_ms is None:
            self._start_ms = now_ms
        t_s = (now_ms - self._start_ms) / 1000.0
        workload = self.config.workload
        if workload is None:
            self.last = [self._read(n, gpu, now_ms, t_s) for n, gpu in self._gpus]
        else:
            self.last = (
                [] if workload.over(t_s) else [self._read_workload(workload, n, gpu, now_ms, t_s) for n, gpu in self._gpus]
            )
        return self.last

    def _read(self, n: int, gpu: _GpuState, now_ms: int, t_s: float) -> GpuSample:
        rng, cfg = gpu.rng, self.config
        faults = [f.kind for f in cfg.faults if f.active(n, gpu.index, t_s)] if cfg.faults else []
        if cfg.idle_now(n, gpu.index, t_s):
            util = rng.uniform(0.0, 2.0)
        else:
            if gpu.dip_left == 0 and rng.random() < 0.03:  # a data-loading stall now and then
                gpu.dip_left = rng.randint(1, 3)
            if gpu.dip_left:
                gpu.dip_left -= 1
                util = rng.uniform(35.0, 60.0)
            else:
                util = min(100.0, max(0.0, rng.gauss(gpu.base_util, 4.0)))
        util = float(round(util))  # NVML reports utilisation as a whole percentage
        if "slow" in faults and util >= 5:  # drawn after the healthy value: the seeded stream goes on unchanged
            util = float(round(gpu.fault.uniform(40.0, 50.0)))
        mem_used = int(cfg.memory_total_bytes * (0.05 if util < 5 else rng.uniform(0.70, 0.78)))
        power = round(min(cfg.power_limit_w, 90.0 + 5.6 * util + rng.gauss(0, 8.0)), 1)
        temperature = round(32.0 + 0.38 * util + rng.gauss(0, 0.8), 1)
        busy = util >= 5
        x = gpu.extra
        # GPM: the SMs are active for part of each interval gpu_util counts as busy; occupancy,
        # tensor-core and DRAM activity follow. (A "busy but not computing" GPU would lower
        # `computing` while keeping util high.)
        computing = x.uniform(0.72, 0.9)
        mem_ratio = x.uniform(0.35, 0.55)
        links = (
            x.uniform(1.0e9, 3.0e9) if busy else x.uniform(0.0, 2.0e6),
            x.uniform(1.5e9, 4.0e9) if busy else x.uniform(0.0, 2.0e6),
            x.uniform(1.2e11, 1.8e11) if busy else x.uniform(0.0, 1.0e6),
            x.uniform(1.2e11, 1.8e11) if busy else x.uniform(0.0, 1.0e6),
        )
        gpm = (x.uniform(0.35, 0.5), x.uniform(0.5, 0.65), x.uniform(0.9, 1.1))
        return self._sample(
            n, gpu, now_ms, t_s, faults, cfg.job_id, util, mem_used, power, temperature, computing, mem_ratio, links, gpm
        )

    def _read_workload(self, workload: Workload, n: int, gpu: _GpuState, now_ms: int, t_s: float) -> GpuSample:
        """One sample of a GPU of a cluster running ``workload``: its job's phase, or idle if none holds it.

        Every draw of the healthy stream is taken at every tick whatever the job, phase or fault, so a
        GPU's samples depend on its seed and its own job only, and a fault changes nothing but its
        own GPU (or job) during its window; what a fault needs at random comes from the fault stream.
        """
        rng, x, cfg = gpu.rng, gpu.extra, self.config
        noise, dip_roll, dip_len, dip_depth = rng.gauss(0.0, 1.0), rng.random(), rng.randint(1, 3), rng.uniform(0.4, 0.68)
        idle_util, mem_share, power_noise, temp_noise = (
            rng.uniform(0.0, 2.0),
            rng.uniform(0.70, 0.78),
            rng.gauss(0, 8.0),
            rng.gauss(0, 0.8),
        )
        computing, mem_ratio = x.uniform(0.72, 0.9), x.uniform(0.35, 0.55)
        link_draws = [x.random() for _ in range(4)]
        gpm = (x.uniform(0.35, 0.5), x.uniform(0.5, 0.65), x.uniform(0.9, 1.1))
        job = workload.job_on(n, gpu.index, t_s)
        util = idle_util
        spin = False
        if job is not None:
            p = job.profile
            phase = p.phase(t_s - job.start_s)
            mean = p.level(phase) * gpu.base_util / 88.0  # each GPU a little above or below its job's level
            if phase == "checkpoint":
                util = idle_util * p.checkpoint_util
            elif phase != "warmup" and (gpu.dip_left or dip_roll < p.dip_rate):  # a data-loading stall
                gpu.dip_left = gpu.dip_left or dip_len
                gpu.dip_left -= 1
                util = mean * dip_depth
            else:
                util = mean + noise * p.noise
            if workload.node_models and phase != "checkpoint":  # the faster generation waits for the slower at every collective
                slowest = max(workload.step_factor(m) for m in job.nodes)
                util *= workload.step_factor(n) / slowest
            for f in workload.faults_of(job, t_s):
                if f.kind == "underuse":
                    util *= f.util / max(p.util, 1.0)
                elif f.kind == "slow_node" and f.node == n:  # waiting for data (or for a noisy neighbour) part of each step
                    util /= gpu.fault.uniform(f.factor, f.factor_hi or f.factor)
                elif f.kind == "restart" or (f.kind == "scale" and workload.dropped(job, n, gpu.index, t_s)):
                    util = gpu.fault.uniform(0.0, 2.0)  # processes gone: restarting, or a rank the job scaled away
                elif f.kind == "hang" and f.spin:  # polling kernels: always "a kernel running"
                    util, spin = gpu.fault.uniform(99.0, 100.0), True
                elif f.kind == "hang":
                    util = gpu.fault.uniform(0.0, 2.0)
        else:
            gpu.dip_left = 0
        faults = [f.kind for f in cfg.faults if f.active(n, gpu.index, t_s)] if cfg.faults else []
        if cfg.idle_now(n, gpu.index, t_s):
            util = gpu.fault.uniform(0.0, 2.0)
        if "slow" in faults and util >= 5:
            util *= gpu.fault.uniform(0.45, 0.57)  # 40-50% where its peers run at 88%
        util = float(round(min(100.0, max(0.0, util))))  # a whole percentage, as NVML reports it
        busy = util >= 5
        mem_used = int(cfg.memory_total_bytes * (mem_share if busy else 0.05))
        power = round(min(cfg.power_limit_w, 90.0 + 5.6 * util + power_noise), 1)
        temperature = round(32.0 + 0.38 * util + temp_noise, 1)
        spans = (
            ((1.0e9, 3.0e9), (1.5e9, 4.0e9), (1.2e11, 1.8e11), (1.2e11, 1.8e11))
            if busy
            else ((0.0, 2.0e6), (0.0, 2.0e6), (0.0, 1.0e6), (0.0, 1.0e6))
        )
        if spin:  # a few SMs spin on a flag: no data moves, no tensor work, power near idle, memory still held
            spans = ((0.0, 2.0e6), (0.0, 2.0e6), (0.0, 1.0e6), (0.0, 1.0e6))
            computing, mem_ratio, gpm = gpu.fault.uniform(0.04, 0.12), 0.02, (gpm[0], 0.0, gpm[2])
            power = round(gpu.fault.uniform(110.0, 150.0) + power_noise / 4, 1)
            temperature = round(32.0 + 0.38 * 20 + temp_noise, 1)
        links = tuple(lo + u * (hi - lo) for u, (lo, hi) in zip(link_draws, spans))
        return self._sample(
            n,
            gpu,
            now_ms,
            t_s,
            faults,
            job.job_id if job else None,
            util,
            mem_used,
            power,
            temperature,
            computing,
            mem_ratio,
            links,
            gpm,
        )

    def _sample(
        self,
        n: int,
        gpu: _GpuState,
        now_ms: int,
        t_s: float,
        faults: list[str],
        job_id: str | None,
        util: float,
        mem_used: int,
        power: float,
        temperature: float,
        computing: float,
        mem_ratio: float,
        links: tuple[float, float, float, float],
        gpm: tuple[float, float, float],
    ) -> GpuSample:
        """The sample of a GPU at ``util`` with its faults' clocks, reasons and counters."""
        cfg = self.config
        busy = util >= 5
        sm_active = util * computing
        mem_util = util * mem_ratio
        sm_clock, fault_reasons = (SM_CLOCK_MAX_MHZ if busy else 345.0), 0
        if busy and faults:
            sm_clock, power, temperature, fault_reasons = self._throttle_faults(gpu, faults, sm_clock, power, temperature)
        reasons = (0 if busy else IDLE_REASON) | (SW_POWER_CAP_REASON if power >= 0.98 * cfg.power_limit_w else 0) | fault_reasons
        occupancy, tensor, dram = gpm
        return GpuSample(
            node=gpu.node,
            gpu_index=gpu.index,
            gpu_uuid=gpu.uuid,
            ts=now_ms,
            gpu_util=util,
            mem_used_bytes=mem_used,
            mem_total_bytes=cfg.memory_total_bytes,
            power_w=max(0.0, power),
            temperature_c=temperature,
            sm_clock_mhz=sm_clock,
            job_id=job_id,
            mem_util_pct=round(mem_util, 1),
            power_limit_w=cfg.power_limit_w,
            mem_clock_mhz=MEM_CLOCK_MHZ,
            sm_clock_max_mhz=SM_CLOCK_MAX_MHZ,
            mem_clock_max_mhz=MEM_CLOCK_MHZ,
            throttle_reasons=reasons,
            throttle=[name for bit, name in REASON_NAMES if reasons & bit],
            ecc_corrected_volatile=0,
            ecc_uncorrected_volatile=self._ecc_errors(n, gpu.index, t_s),
            remapped_rows_pending="remap" in faults,
            remapped_rows_failure=False,
            pcie_tx_bytes_per_s=float(round(links[0])),
            pcie_rx_bytes_per_s=float(round(links[1])),
            nvlink_tx_bytes_per_s=float(round(links[2])),
            nvlink_rx_bytes_per_s=float(round(links[3])),
            nvlink_errors=0,
            sm_active_pct=round(sm_active, 1),
            sm_occupancy_pct=round(sm_active * occupancy, 1),
            tensor_active_pct=round(sm_active * tensor, 1),
            dram_bw_util_pct=round(min(100.0, mem_util * dram), 1),
        )

    def _throttle_faults(
        self, gpu: _GpuState, faults: list[str], sm_clock: float, power: float, temperature: float
    ) -> tuple[float, float, float, int]:
        """A busy GPU's clock, power, temperature and extra clock-event bits under its active faults.

        The values are what a real board reports in each case: the hardware thermal slowdown
        holds the clock near 70% at 88-92 °C; the power cap holds the board at its limit with the
        clock near 85%; clocks locked low stay at one fixed value with no reason reported.
        """
        r, limit, reasons = gpu.fault, self.config.power_limit_w, 0
        if "thermal" in faults:
            reasons |= HW_THERMAL_REASON
            temperature = round(r.uniform(88.0, 92.0), 1)
            sm_clock = min(sm_clock, float(round(SM_CLOCK_MAX_MHZ * r.uniform(0.66, 0.74))))
        if "power" in faults:
            reasons |= SW_POWER_CAP_REASON
            power = round(limit * r.uniform(0.985, 1.0), 1)
            sm_clock = min(sm_clock, float(round(SM_CLOCK_MAX_MHZ * r.uniform(0.82, 0.88))))
        if "clock" in faults:
            sm_clock = min(sm_clock, float(round(SM_CLOCK_MAX_MHZ * 0.45)))
        return sm_clock, power, temperature, reasons

    def _ecc_errors(self, node: int, gpu: int, t_s: float) -> int:
        """The volatile uncorrected ECC count: one per ``ecc`` fault begun so far (it never goes down)."""
        return sum(1 for f in self.config.faults if f.kind == "ecc" and f.node == node and f.gpu == gpu and f.start_s <= t_s)


@dataclass(frozen=True)
class InjectedXid:
    """GPU ``gpu`` of node ``node`` reports XID ``xid`` ``count`` times at ``at_s`` seconds since start."""

    node: int
    gpu: int
    at_s: float
    xid: int
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> InjectedXid:
        """``NODE:GPU@SECONDS:XID`` or ``...:XIDxCOUNT``, e.g. ``0:5@30:79`` or ``0:5@30:13x3``."""
        m = re.fullmatch(r"(\d+):(\d+)@(\d+(?:\.\d+)?):(\d+)(?:x(\d+))?", text.strip())
        if not m:
            raise ValueError(f"--xid expects NODE:GPU@SECONDS:XID[xCOUNT], got {text!r}")
        return cls(int(m.group(1)), int(m.group(2)), float(m.group(3)), int(m.group(4)), int(m.group(5) or 1))


class SimProcessCollector(Collector[SimConfig]):
    """One training process per busy simulated GPU, attributed to the sim job, like NVML's process list."""

    topic = GPU_PROCESSES

    def __init__(self, gpus: SimGpuCollector) -> None:
        super().__init__(gpus.config)
        self._gpus = gpus

    def sample(self, now_ms: int) -> list[GpuProcess]:
        out = []
        for s in self._gpus.last:
            if s.gpu_util is None or s.gpu_util < 5:
                continue
            node_no = int(s.node.rsplit("-", 1)[1]) if s.node.rsplit("-", 1)[-1].isdigit() else 0
            out.append(
                GpuProcess(
                    node=s.node,
                    gpu_index=s.gpu_index,
                    gpu_uuid=s.gpu_uuid,
                    ts=now_ms,
                    pid=10_000 + node_no * 16 + s.gpu_index,
                    process_name="python",
                    used_memory_bytes=s.mem_used_bytes,
                    sm_util_pct=s.gpu_util,
                    slurm_job_id=s.job_id,
                )
            )
        return out


class SimXidCollector(Collector[SimConfig]):
    """XID errors injected into the simulated cluster, one record per occurrence."""

    topic = GPU_XID

    def __init__(self, gpus: SimGpuCollector, xids: tuple[InjectedXid, ...]) -> None:
        super().__init__(gpus.config)
        self._gpus, self._pending = gpus, sorted(xids, key=lambda x: x.at_s)
        self._seq = 0

    def sample(self, now_ms: int) -> list[XidEvent]:
        start = self._gpus.start_ms if self._gpus.start_ms is not None else now_ms
        out = []
        while self._pending and start + self._pending[0].at_s * 1000 <= now_ms:
            x = self._pending.pop(0)
            gpu = self._gpus.gpu(x.node, x.gpu)
            for _ in range(x.count):
                self._seq += 1
                out.append(XidEvent(node=gpu.node, gpu_index=gpu.index, gpu_uuid=gpu.uuid, ts=now_ms, xid=x.xid, seq=self._seq))
        return out


@collector_kind("gpu_sim", GpuSimConfig)
def gpu_sim(config: GpuSimConfig) -> list[Collector[Any]]:
    """The same three views of the GPUs as ``gpu_nvml``: samples, processes, XID events."""
    gpus = SimGpuCollector(config.sim())
    return [gpus, SimProcessCollector(gpus), SimXidCollector(gpus, config.xids)]
