"""Per-rank training steps of the sim cluster's jobs, as the training-step client would report them.

For every job of the workload whose profile has a ``step_s``, each rank (one per GPU, numbered
node by node, GPU by GPU) reports every step it completes as a :class:`StepMetric` on the same
topic as :class:`hpcinsight.agents.steps.StepRecorder` (``step.metrics.raw``, keyed by job), stamped with the
sim clock. The job is data-parallel: a step starts when the previous one ended on every rank and
ends when its slowest rank is done; each rank reports its own time (compute plus its share of the
collectives), about ``step_s`` with ``step_noise`` relative noise, 30% longer in the warm-up. No
step runs during an evaluation phase or a checkpoint pause (the next starts when it is over).

Faults are applied over the healthy draws (taken for every rank at every step, whatever the
faults), with what they need at random from a separate stream: a ``straggler`` rank's time is
multiplied by its factor, ``imbalance`` multiplies every rank's time by its own draw around 1, a
``hang`` stops the steps until it ends, and a degraded InfiniBand link on one of the job's nodes
makes every rank's step :data:`hpcinsight.agents.sim.workload.IB_DEGRADED_STEP_FACTOR` times longer. A rank
on an older GPU model takes :data:`hpcinsight.agents.sim.workload.MODEL_STEP_FACTOR` times as long (a job
across two generations runs in two speed groups); ``slow_node`` slows the ranks of one node by a
fresh draw each step (data-loader stalls, a noisy neighbour); ``restart`` stops every rank for its
span (the job is restarted), then resumes from its last checkpoint (the step numbers go back
:data:`hpcinsight.agents.sim.workload.RESTART_ROLLBACK_STEPS`) with warm-up steps; ``scale`` keeps only the
first ``ranks`` ranks from its onset (an elastic job shrinking inside its allocation), with the new world size.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from hpcinsight.agents.base import Collector
from hpcinsight.agents.registry import check, collector_kind
from hpcinsight.agents.sim.gpu import SimClusterConfig, SimConfig
from hpcinsight.agents.sim.scheduler import node_names
from hpcinsight.agents.sim.workload import IB_DEGRADED_STEP_FACTOR, RESTART_ROLLBACK_STEPS, SimJob, Workload
from hpcinsight.schemas.catalog import STEP_METRICS_RAW
from hpcinsight.schemas.events import StepMetric

WARMUP_STEP_FACTOR = 1.3


@dataclass
class _Pending:
    step: int
    end_s: float
    durations: list[float]


@dataclass
class _JobSteps:
    rng: random.Random
    fault: random.Random
    next_start_s: float
    step: int = 0
    pending: _Pending | None = None
    ranks: list[tuple[str, int]] = field(default_factory=list)  # (node name, GPU index) of each rank
    rank_nodes: list[int] = field(default_factory=list)  # node index of each rank
    restarted: set[float] = field(default_factory=set)  # onsets of the restarts already replayed
    warm_until: int = -1  # steps up to this one are warm-up steps again (after a restart)


class SimStepCollector(Collector[SimConfig]):
    """The training steps of the workload's jobs, each rank's step reported once it has ended."""

    topic = STEP_METRICS_RAW

    def __init__(self, config: SimConfig) -> None:
        if config.workload is None:
            raise ValueError("simulated training steps need a workload (jobs with a step time)")
        super().__init__(config)
        self._workload: Workload = config.workload
        self._start_ms: int | None = None
        names = node_names(config)
        self._jobs: dict[str, _JobSteps] = {}
        for job in self._workload.jobs:
            if job.profile.step_s is None:
                continue
            state = _JobSteps(
                random.Random(f"{config.seed}/steps/{job.job_id}"),
                random.Random(f"{config.seed}/steps/{job.job_id}/fault"),
                job.start_s,
            )
            placed = Workload.placement(job, config.gpus_per_node)
            state.ranks = [(names[n], g) for n, g in placed]
            state.rank_nodes = [n for n, _ in placed]
            self._jobs[job.job_id] = state

    def sample(self, now_ms: int) -> list[StepMetric]:
        if self._start_ms is None:
            self._start_ms = now_ms
        t_s = (now_ms - self._start_ms) / 1000.0
        out: list[StepMetric] = []
        for job in self._workload.jobs:
            state = self._jobs.get(job.job_id)
            if state is not None:
                out += self._advance(job, state, min(t_s, job.end_s, self._workload.duration_s))
        return out

    def _advance(self, job: SimJob, state: _JobSteps, until_s: float) -> list[StepMetric]:
        """Every step of ``job`` that ends by ``until_s``, as records of its ranks."""
        out: list[StepMetric] = []
        while True:
            if state.pending is None:
                state.pending = self._start_step(job, state, until_s)
                if state.pending is None:
                    return out
            pending = state.pending
            if pending.end_s > until_s:
                return out
            ts = self._start_ms + round(pending.end_s * 1000)
            world = len(pending.durations)
            out += [
                StepMetric(job.job_id, rank, world, pending.step, ts, round(d, 6), node=node, local_rank=gpu)
                for rank, ((node, gpu), d) in enumerate(zip(state.ranks, pending.durations))
            ]
            state.pending, state.next_start_s, state.step = None, pending.end_s, pending.step + 1

    def _start_step(self, job: SimJob, state: _JobSteps, until_s: float) -> _Pending | None:
        """The next step, once its start (after pauses and hangs) is before ``until_s``; None before."""
        profile, wl = job.profile, self._workload
        start = state.next_start_s
        while start < until_s:
            phase = profile.phase(start - job.start_s)
            if phase in ("eval", "checkpoint"):  # no training step until the pause is over
                start = job.start_s + profile.phase_end(start - job.start_s)
                continue
            hang = next((f for f in wl.faults_of(job, start) if f.kind in ("hang", "restart")), None)
            if hang is not None:  # the collective never completes while the hang lasts (or the job restarts)
                start = min(hang.end_s, until_s)
                continue
            break
        state.next_start_s = start
        if start >= until_s:
            return None
        assert profile.step_s is not None
        for f in wl.faults:  # a restart that ended: resume from the last checkpoint, warming up again
            if f.job_id == job.job_id and f.kind == "restart" and f.end_s <= start and f.start_s not in state.restarted:
                state.restarted.add(f.start_s)
                state.step = max(0, state.step - RESTART_ROLLBACK_STEPS)
                state.warm_until = state.step + 10
        warm = phase == "warmup" or state.step <= state.warm_until
        base = profile.step_s * (WARMUP_STEP_FACTOR if warm else 1.0)
        if wl.ib_slowed(job, start):
            base *= IB_DEGRADED_STEP_FACTOR
        durations = [
            base * max(0.5, 1.0 + state.rng.gauss(0.0, profile.step_noise)) * wl.step_factor(n) for n in state.rank_nodes
        ]
        for f in wl.faults_of(job, start):
            if f.kind == "straggler" and f.rank is not None:  # with factor_hi: a fresh draw each step (a noisy neighbour)
                durations[f.rank] *= state.fault.uniform(f.factor, f.factor_hi) if f.factor_hi else f.factor
            elif f.kind == "imbalance":
                durations = [d * max(0.3, 1.0 + state.fault.gauss(0.0, f.cov)) for d in durations]
            elif f.kind == "slow_node":
                durations = [
                    d * state.fault.uniform(f.factor, f.factor_hi or f.factor) if n == f.node else d
                    for d, n in zip(durations, state.rank_nodes)
                ]
            elif f.kind == "scale" and f.ranks is not None:
                durations = durations[: f.ranks]
        return _Pending(state.step, start + max(durations), durations)


@collector_kind("step_sim", SimClusterConfig)
def step_sim(config: SimClusterConfig) -> list[Collector[Any]]:
    """The workload's training steps: only a scenario's jobs have them (``agent --scenario``)."""
    check(config.workload is not None, "workload", "simulated training steps need a workload: run a scenario (agent --scenario)")
    return [SimStepCollector(config.sim())]
