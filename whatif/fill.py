"""Fill mode: the FGD authors' experiment for traces without times.

Per seed: pods are sorted by name and shuffled; the workload is inflated with pods drawn at
random from the trace (with repetition) until its GPU demand would pass ``inflate`` times the
cluster's GPUs; nodes get a seed-dependent fixed order that breaks score ties. Pods then
arrive one by one and never leave. After each arrival the run records the GPU demand arrived
so far and the GPUs allocated; :func:`curve` turns that into the allocation ratio at each
percent of arrived demand (0-130), the way their analysis scripts bin it: every arrival whose
demand rounds to that percent, averaged (the neighbouring percents when none does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from hpcinsight.whatif.engine import Placer
from hpcinsight.whatif.model import Job, Node
from hpcinsight.whatif.policies import make_policy
from hpcinsight.whatif.profiles import profile_filter
from hpcinsight.whatif.state import ClusterState, Shape

DEFAULT_INFLATE = 1.3


@dataclass
class FillRun:
    """One policy, one seed: the per-arrival record and what could not be placed."""

    policy: str
    seed: int
    total_gpus: int
    arrived_milli: np.ndarray  # after each arrival
    allocated_milli: np.ndarray
    failed: int
    failed_gpu_milli: int
    pods: int
    final_state: ClusterState

    def curve(self, top: int = 130) -> dict[int, float]:
        return curve(self.arrived_milli, self.allocated_milli, self.total_gpus, top)


def workload(
    jobs: Sequence[Job], nodes: Sequence[Node], seed: int, inflate: float = DEFAULT_INFLATE
) -> tuple[list[Job], np.ndarray]:
    """The seed's arrival order (shuffled, inflated) and node tie-break ranks."""
    rng = np.random.default_rng(seed)
    by_name = sorted(jobs, key=lambda j: j.name)
    order = [by_name[i] for i in rng.permutation(len(by_name))]
    capacity = sum(n.gpus for n in nodes) * 1000
    target = inflate * capacity
    demand = sum(j.total_gpu_milli for j in order)
    if inflate > 0 and demand < target and jobs:
        k = 0
        while True:
            pick = jobs[int(rng.integers(len(jobs)))]
            # their stopping rule compares the next pod's per-GPU share, not its total
            if demand + pick.gpu_milli > target:
                break
            order.append(Job(**{**_fields(pick), "name": f"{pick.name}-tuned-{k}"}))
            demand += pick.total_gpu_milli
            k += 1
    elif inflate > 0 and demand > target:
        while demand > target and order:
            drop = order.pop(int(rng.integers(len(order))))
            demand -= drop.total_gpu_milli
    ranks = rng.permutation(len(nodes))
    return order, ranks


def _fields(job: Job) -> dict:
    return {f: getattr(job, f) for f in job.__slots__}


def run_fill(
    jobs: Sequence[Job],
    nodes: Sequence[Node],
    policy: str,
    seed: int,
    inflate: float = DEFAULT_INFLATE,
    tick: Callable[[], None] | None = None,
) -> FillRun:
    order, ranks = workload(jobs, nodes, seed, inflate)
    state = ClusterState(nodes)
    rng = np.random.default_rng([seed, 1])
    placer = Placer(state, make_policy(policy, jobs, rng), ranks, rng, allowed=profile_filter(policy, state))
    arrived = np.zeros(len(order), dtype=np.int64)
    allocated = np.zeros(len(order), dtype=np.int64)
    shapes: dict[tuple, Shape] = {}
    demand = used = failed = failed_milli = 0
    for i, job in enumerate(order):
        shape = shapes.get(job.shape())
        if shape is None:
            shape = shapes[job.shape()] = Shape.of(job)
        demand += shape.total_milli
        if placer.place(shape) is None:
            failed += 1
            failed_milli += shape.total_milli
        else:
            used += shape.total_milli
        arrived[i] = demand
        allocated[i] = used
        if tick is not None and i % 256 == 0:
            tick()
    return FillRun(policy, seed, state.total_gpus, arrived, allocated, failed, failed_milli, len(order), state)


def curve(arrived: np.ndarray, allocated: np.ndarray, total_gpus: int, top: int = 130) -> dict[int, float]:
    """Allocation ratio (percent, 2 decimals) at each arrived-demand percent 0..top."""
    if total_gpus <= 0 or len(arrived) == 0:
        return {}
    arr_pct = np.round(arrived / total_gpus / 10, 0)
    alloc_pct = np.round(allocated / total_gpus / 10, 2)
    out: dict[int, float] = {}
    for level in range(top + 1):
        sel = alloc_pct[arr_pct == level]
        if len(sel) == 0:
            sel = alloc_pct[(arr_pct >= level - 1) & (arr_pct <= level + 1)]
            if len(sel) == 0:
                continue
        out[level] = round(float(sel.mean()), 2)
    return out
