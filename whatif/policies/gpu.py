"""GPU-aware heuristics from the FGD paper's baselines: dot product, GPU packing, GPU clustering."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from hpcinsight.whatif.model import MAX_SPEC_CPU, MAX_SPEC_GPU, MILLI
from hpcinsight.whatif.policies.base import MAX_SCORE, Policy
from hpcinsight.whatif.state import ClusterState, Shape


class DotProductPolicy(Policy):
    """Tetris's alignment: prefer the node whose free (CPU, GPU) vector the job aligns with least.

    Both vectors are scaled by the largest node (128 CPUs, 8 GPUs); the score is
    ``trunc(100 * (1 - dot / 2))``, so a node with little left (a small dot product) wins.
    """

    name: ClassVar[str] = "dotprod"
    summary: ClassVar[str] = "Tetris dot product of free and requested (CPU, GPU)"

    def score(self, state: ClusterState, shape: Shape, idx: np.ndarray) -> np.ndarray:
        node_cpu = state.cpu_left[idx] / MAX_SPEC_CPU
        node_gpu = state.gpu_left[idx].sum(axis=1) / MAX_SPEC_GPU
        dot = node_cpu * (shape.score_cpu / MAX_SPEC_CPU) + node_gpu * (shape.total_milli / MAX_SPEC_GPU)
        return (MAX_SCORE * (1 - dot / 2)).astype(np.int64)


class GpuPackingPolicy(Policy):
    """Fill partly used GPUs first, then free GPUs on used nodes, then idle nodes (fewest GPUs first).

    Scores, high to low: a share that fits on used GPUs ``max(100 - sum(free% of used GPUs)/10, 50)``;
    needing fully free GPUs on a used node ``max(50 - free GPUs taken, 33)``; an idle node
    ``max(33 - its GPUs, its GPUs)``. A job without GPUs scores 0 everywhere.
    """

    name: ClassVar[str] = "gpupacking"
    summary: ClassVar[str] = "used GPUs, then used nodes, then the smallest idle node"

    def score(self, state: ClusterState, shape: Shape, idx: np.ndarray) -> np.ndarray:
        if not shape.wants_gpu:
            return np.zeros(len(idx), dtype=np.int64)
        left = state.gpu_left[idx]
        ngpu = state.ngpu[idx]
        full_free = (left == MILLI).sum(axis=1)
        idle_node = np.maximum(MAX_SCORE // 3 - full_free, full_free)
        # the GPUs the job would take: the ones with the least left that still fit
        fits = np.where(left >= shape.milli, left, MILLI + 1)
        picked = np.sort(fits, axis=1)[:, : shape.num_gpu]
        take_free = (picked == MILLI).sum(axis=1)
        used_node_free = np.maximum(MAX_SCORE // 2 - take_free, MAX_SCORE // 3)
        pct = np.where(picked <= MILLI, picked * 100 // MILLI, 0).sum(axis=1)
        shared = np.maximum(MAX_SCORE - pct // 10, MAX_SCORE // 2)
        return np.where(full_free == ngpu, idle_node, np.where(take_free > 0, used_node_free, shared)).astype(np.int64)


class GpuClusteringPolicy(Policy):
    """Keep jobs of one GPU kind (shared, 1, 2, 4, 8 GPUs) together on nodes.

    Base ``25 * (8000 - free GPU milli) // 8000``, plus 75 on a node that runs only this kind,
    50 on one that runs it among others, 25 on a node running no GPU job, 0 otherwise.
    """

    name: ClassVar[str] = "gpuclustering"
    summary: ClassVar[str] = "jobs of the same GPU kind on the same nodes"

    def score(self, state: ClusterState, shape: Shape, idx: np.ndarray) -> np.ndarray:
        if not shape.wants_gpu:
            return np.zeros(len(idx), dtype=np.int64)
        base = (MAX_SCORE // 4) * (MAX_SPEC_GPU - state.gpu_left[idx].sum(axis=1)) // MAX_SPEC_GPU
        bonus = np.empty(len(idx), dtype=np.int64)
        for k, n in enumerate(idx):
            tags = state.affinity[int(n)]
            if tags.get(shape.affinity, 0) > 0:
                bonus[k] = 75 if len(tags) == 1 else 50
            else:
                bonus[k] = 25 if not tags else 0
        return base + bonus
