"""What the simulated cluster runs: jobs on sets of nodes, each with phases, and the faults of jobs.

Without a workload the sim cluster runs one data-parallel job over every GPU (``hpcinsight.agents.sim.gpu``'s
original behaviour, which existing tests and detector baselines rely on). A :class:`Workload`
instead places several jobs, each on its own GPUs for its own span of time, and gives each a
:class:`Profile`: a warm-up (compilation, data loading), a steady training phase, periodic
evaluation phases, periodic checkpoint pauses (every GPU of the job near 0% for a few tens of
seconds, steps stopped, the fabric quiet), data-loading stalls on single GPUs now and then, and
per-rank training steps. GPUs that no job holds idle.

Every phase is a function of the job's age, the same on all of its GPUs (a job moves as one),
so phases are realistic noise that must raise nothing: a checkpoint pause is not a hang, an
evaluation phase is not a slow fabric.

Job faults (:class:`JobFault`) are applied over the healthy values, like the GPU and IB faults:
``straggler`` (one rank's steps take ``factor`` x longer), ``imbalance`` (every rank's steps jitter
by ``cov`` with no single culprit), ``hang`` (no step and every GPU of the job near 0%, a
collective that never completes; with ``spin`` the GPUs instead sit at 100% utilisation doing no
work, as NCCL's polling kernels keep them) and ``underuse`` (the job's utilisation scaled down to ``util``%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

Phase = Literal["warmup", "steady", "eval", "checkpoint"]
#: the share of its steady IB traffic a job's node carries in each phase
IB_PHASE_LOAD: dict[str, float] = {"warmup": 0.5, "steady": 1.0, "eval": 0.3, "checkpoint": 0.05}
#: how much longer a job's steps take while one of its nodes has a degraded InfiniBand link
#: (its all-reduce runs at the pace of the slowest link)
IB_DEGRADED_STEP_FACTOR = 1.6
JOB_FAULT_KINDS = ("straggler", "imbalance", "hang", "underuse", "slow_node", "restart", "scale")
#: step time of a data-parallel rank on each GPU model, relative to an H100 (bf16 training throughput: an
#: A100 does about half an H100's work per second, a V100 about a fifth to a quarter)
MODEL_STEP_FACTOR: dict[str, float] = {"H100-SXM": 1.0, "H100": 1.0, "H200": 0.9, "A100": 1.9, "A100-SXM": 1.9, "V100": 4.0}
#: the steps a restarted job replays (it resumes from its last checkpoint)
RESTART_ROLLBACK_STEPS = 50


@dataclass(frozen=True)
class Profile:
    """How a job uses its GPUs over its life (utilisation in %, times in seconds of the job's age)."""

    util: float = 88.0  # steady-phase mean utilisation; each GPU sits a little above or below it
    noise: float = 4.0  # standard deviation of a sample around its GPU's mean
    dip_rate: float = 0.03  # chance per sample that a data-loading stall starts on a GPU
    warmup_s: float = 0.0
    warmup_util: float = 40.0
    eval_every_s: float = 0.0  # 0: no evaluation phases
    eval_s: float = 0.0
    eval_util: float = 55.0
    checkpoint_every_s: float = 0.0  # 0: no checkpoint pauses
    checkpoint_s: float = 0.0
    checkpoint_util: float = 1.0  # mean utilisation during a checkpoint pause (drawn in 0..2x)
    step_s: float | None = None  # mean training step time; None: the job reports no steps
    step_noise: float = 0.02  # relative standard deviation of a rank's step time
    ib_load: float = 0.45  # mean share of the link rate in use in the steady phase

    def __post_init__(self) -> None:
        for name in ("util", "warmup_util", "eval_util", "checkpoint_util"):
            if not 0 <= getattr(self, name) <= 100:
                raise ValueError(f"profile {name} must be a utilisation in 0..100, got {getattr(self, name)}")
        for name in (
            "noise",
            "dip_rate",
            "warmup_s",
            "eval_every_s",
            "eval_s",
            "checkpoint_every_s",
            "checkpoint_s",
            "step_noise",
            "ib_load",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"profile {name} must not be negative")
        if self.eval_every_s and self.eval_s >= self.eval_every_s:
            raise ValueError("profile eval_s must be shorter than eval_every_s")
        if self.checkpoint_every_s and self.checkpoint_s >= self.checkpoint_every_s:
            raise ValueError("profile checkpoint_s must be shorter than checkpoint_every_s")
        if self.step_s is not None and self.step_s <= 0:
            raise ValueError("profile step_s must be positive")

    def phase(self, age_s: float) -> Phase:
        """The phase at ``age_s`` seconds into the job: checkpoints and evaluations close their periods."""
        if age_s < self.warmup_s:
            return "warmup"
        t = age_s - self.warmup_s
        if self.checkpoint_every_s and t % self.checkpoint_every_s >= self.checkpoint_every_s - self.checkpoint_s:
            return "checkpoint"
        if self.eval_every_s and t % self.eval_every_s >= self.eval_every_s - self.eval_s:
            return "eval"
        return "steady"

    def level(self, phase: Phase) -> float:
        return {"warmup": self.warmup_util, "steady": self.util, "eval": self.eval_util, "checkpoint": self.checkpoint_util}[
            phase
        ]

    def phase_end(self, age_s: float) -> float:
        """The job age at which the phase holding at ``age_s`` ends (a step waits for it)."""
        if age_s < self.warmup_s:
            return self.warmup_s
        t = age_s - self.warmup_s
        ends = []
        for every in (self.checkpoint_every_s, self.eval_every_s):
            if every:
                ends.append(self.warmup_s + (t // every + 1) * every)
        return min(ends) if ends else math.inf


@dataclass(frozen=True)
class SimJob:
    """A job on GPUs ``gpus`` of nodes ``nodes`` (indices; ``gpus`` empty: all of them) from ``start_s`` to ``end_s``.

    A job on several nodes holds them whole; only a job on one node may hold some of its GPUs.
    Ranks are numbered over its GPUs in order: node by node, GPU by GPU.
    """

    job_id: str
    nodes: tuple[int, ...]
    gpus: tuple[int, ...] = ()
    start_s: float = 0.0
    end_s: float = math.inf
    user: str = "alice"
    team: str = "llm"
    priority: str = "high"
    profile: Profile = field(default_factory=Profile)

    def __post_init__(self) -> None:
        if not self.job_id or any(c in self.job_id for c in " /"):
            raise ValueError(f"job id {self.job_id!r} must be non-empty without spaces or '/'")
        if not self.nodes or len(set(self.nodes)) != len(self.nodes):
            raise ValueError(f"job {self.job_id}: nodes must be a non-empty list without repeats")
        if self.gpus and len(self.nodes) != 1:
            raise ValueError(f"job {self.job_id}: only a job on one node may hold part of it (gpus)")
        if self.end_s <= self.start_s:
            raise ValueError(f"job {self.job_id}: end must be after start")

    def runs(self, t_s: float) -> bool:
        return self.start_s <= t_s < self.end_s


@dataclass(frozen=True)
class JobFault:
    """A fault of job ``job_id`` from ``start_s`` to ``end_s`` (seconds since the scenario started).

        ``straggler``: rank ``rank``'s steps take ``factor`` x as long (a slow host, a throttled data
        loader) and the job waits for it at every collective. ``imbalance``: every rank's step time is
        multiplied by its own draw around 1 with standard deviation ``cov`` at every step (uneven data,
        noisy neighbours on several nodes): the job is imbalanced with no single culprit. ``hang``: no
        rank completes a step and every GPU of the job sits near 0% (with ``spin``: at 100% utilisation while its
    SMs, tensor cores, power and links show no work, NCCL kernels polling for a peer that never answers). ``underuse``: the job's GPUs run at
        ``util``% of what they would (scaled from its profile's level), a job holding GPUs it barely uses.
    """

    kind: str
    job_id: str
    start_s: float = 0.0
    end_s: float = math.inf
    rank: int | None = None
    factor: float = 1.4
    cov: float = 0.25
    util: float = 15.0
    #: hang: the collective's kernels keep polling (utilisation 100%, SM activity, power and links flat low)
    spin: bool = False
    #: slow_node: the node (index in the cluster) whose ranks are slowed, each step by a draw in factor..factor_hi
    node: int | None = None
    factor_hi: float | None = None
    #: scale: the world size from the onset (the first ranks stay; the others' GPUs, still allocated, idle)
    ranks: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in JOB_FAULT_KINDS:
            raise ValueError(f"unknown job fault {self.kind!r}; known: {', '.join(JOB_FAULT_KINDS)}")
        if self.end_s <= self.start_s:
            raise ValueError(f"{self.kind} fault of job {self.job_id}: end must be after start")
        if self.kind == "straggler" and (self.rank is None or self.rank < 0 or self.factor <= 1):
            raise ValueError(f"straggler fault of job {self.job_id} needs a rank and a factor above 1")
        if self.kind == "imbalance" and self.cov <= 0:
            raise ValueError(f"imbalance fault of job {self.job_id} needs a cov above 0")
        if self.kind == "underuse" and not 0 <= self.util <= 100:
            raise ValueError(f"underuse fault of job {self.job_id} needs util in 0..100")
        if self.kind == "slow_node" and (self.node is None or self.factor <= 1 or (self.factor_hi or self.factor) < self.factor):
            raise ValueError(
                f"slow_node fault of job {self.job_id} needs a node and a factor above 1 (factor_hi at least factor)"
            )
        if self.kind == "scale" and (self.ranks is None or self.ranks < 1):
            raise ValueError(f"scale fault of job {self.job_id} needs the new world size (ranks)")

    def active(self, t_s: float) -> bool:
        return self.start_s <= t_s < self.end_s


@dataclass(frozen=True)
class Workload:
    """Jobs on the sim cluster and their faults; ``duration_s``: after it, nothing is reported any more."""

    jobs: tuple[SimJob, ...] = ()
    faults: tuple[JobFault, ...] = ()
    duration_s: float = math.inf
    #: nodes whose InfiniBand is degraded, (node, start_s, end_s): their jobs' steps slow down
    ib_degraded: tuple[tuple[int, float, float], ...] = ()
    #: GPU model of each node (empty: every node the default model); a job across models steps at each one's pace
    node_models: tuple[str, ...] = ()
    #: GPUs per node of the cluster (ranks of jobs holding whole nodes)
    gpus_per_node: int = 8

    def __post_init__(self) -> None:
        ids = [j.job_id for j in self.jobs]
        if len(set(ids)) != len(ids):
            raise ValueError("job ids must be unique")
        for f in self.faults:
            job = next((j for j in self.jobs if j.job_id == f.job_id), None)
            if job is None:
                raise ValueError(f"{f.kind} fault names job {f.job_id!r}, which is not in the workload")

    def check(self, nodes: int, gpus_per_node: int) -> None:
        """Raise ValueError if a job falls outside the cluster or two jobs share a GPU at the same time."""
        held: dict[tuple[int, int], list[SimJob]] = {}
        for job in self.jobs:
            for n in job.nodes:
                if n >= nodes:
                    raise ValueError(f"job {job.job_id} is placed on node {n}, outside the {nodes}-node cluster")
            for g in job.gpus:
                if g >= gpus_per_node:
                    raise ValueError(f"job {job.job_id} holds GPU {g}, outside a node of {gpus_per_node} GPUs")
            for key in self.placement(job, gpus_per_node):
                for other in held.get(key, []):
                    if job.start_s < other.end_s and other.start_s < job.end_s:
                        raise ValueError(f"jobs {other.job_id} and {job.job_id} both hold GPU {key[1]} of node {key[0]} at once")
                held.setdefault(key, []).append(job)
        for f in self.faults:
            job = next(j for j in self.jobs if j.job_id == f.job_id)
            if f.rank is not None and f.rank >= self.world_size(job, gpus_per_node):
                raise ValueError(
                    f"{f.kind} fault: job {f.job_id} has {self.world_size(job, gpus_per_node)} ranks, no rank {f.rank}"
                )

    @staticmethod
    def placement(job: SimJob, gpus_per_node: int) -> list[tuple[int, int]]:
        """(node, GPU) of every rank of ``job``, in rank order."""
        gpus = job.gpus or tuple(range(gpus_per_node))
        return [(n, g) for n in job.nodes for g in gpus]

    @classmethod
    def world_size(cls, job: SimJob, gpus_per_node: int) -> int:
        return len(job.nodes) * (len(job.gpus) or gpus_per_node)

    def job_on(self, node: int, gpu: int, t_s: float) -> SimJob | None:
        for job in self.jobs:
            if job.runs(t_s) and node in job.nodes and (not job.gpus or gpu in job.gpus):
                return job
        return None

    def dropped(self, job: SimJob, node: int, gpu: int, t_s: float) -> bool:
        """Whether the GPU's rank left the job when it scaled down (the allocation keeps the GPU: it idles)."""
        scaled = next((f for f in self.faults_of(job, t_s) if f.kind == "scale"), None)
        return scaled is not None and self.rank_of(job, node, gpu) >= (scaled.ranks or 0)

    def rank_of(self, job: SimJob, node: int, gpu: int) -> int:
        gpus = job.gpus or tuple(range(self.gpus_per_node))
        return job.nodes.index(node) * len(gpus) + gpus.index(gpu)

    def step_factor(self, node: int) -> float:
        """How much longer a rank's step takes on ``node``'s GPU model than on the default one."""
        if not self.node_models:
            return 1.0
        return MODEL_STEP_FACTOR.get(self.node_models[node], 1.0)

    def jobs_on_node(self, node: int, t_s: float) -> list[SimJob]:
        return [j for j in self.jobs if j.runs(t_s) and node in j.nodes]

    def faults_of(self, job: SimJob, t_s: float) -> list[JobFault]:
        return [f for f in self.faults if f.job_id == job.job_id and f.active(t_s)]

    def ib_slowed(self, job: SimJob, t_s: float) -> bool:
        """Whether one of the job's nodes has a degraded InfiniBand link at ``t_s``."""
        return any(n in job.nodes and start <= t_s < end for n, start, end in self.ib_degraded)

    def over(self, t_s: float) -> bool:
        return t_s >= self.duration_s
