"""Fit-based policies: best fit, and Kubernetes NodeResourcesFit's MostAllocated/LeastAllocated."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from hpcinsight.whatif.model import MAX_SPEC_CPU, MAX_SPEC_GPU
from hpcinsight.whatif.policies.base import MAX_SCORE, Policy
from hpcinsight.whatif.state import ClusterState, Shape


class BestFitPolicy(Policy):
    """The node left with the least free CPU and GPU (each scaled by the largest node, half weight).

    Raw score ``trunc(100 * (1 - ((cpu_free - cpu)/128000 + (gpu_free - gpu)/8000) / 2))``,
    then min-max normalised over the feasible nodes, as the FGD authors' BestFit plugin does.
    """

    name: ClassVar[str] = "bestfit"
    summary: ClassVar[str] = "least CPU and GPU left after placing (normalised)"
    normalize: ClassVar[bool] = True

    def score(self, state: ClusterState, shape: Shape, idx: np.ndarray) -> np.ndarray:
        cpu_free = state.cpu_left[idx].astype(np.float64)
        gpu_free = state.gpu_left[idx].sum(axis=1).astype(np.float64)
        waste = (cpu_free - shape.score_cpu) / MAX_SPEC_CPU * 0.5
        waste = waste + (gpu_free - shape.total_milli) / MAX_SPEC_GPU * 0.5
        return ((1.0 - waste) * MAX_SCORE).astype(np.int64)


class _Allocated(Policy):
    """Kubernetes NodeResourcesFit strategies over CPU, memory and GPU (weight 1 each).

    Per resource the share that would be requested after placing, in integer percent, averaged
    over the resources the node has (a node without GPUs is scored on CPU and memory only).
    """

    most: ClassVar[bool] = True
    uses_memory: ClassVar[bool] = True

    def score(self, state: ClusterState, shape: Shape, idx: np.ndarray) -> np.ndarray:
        parts = []
        for cap, free, req in (
            (state.cpu_cap[idx], state.cpu_left[idx], shape.cpu),
            (state.mem_cap[idx], state.mem_left[idx], shape.mem),
            (state.gpu_cap_milli[idx], state.gpu_left[idx].sum(axis=1), shape.total_milli),
        ):
            requested = cap - free + req
            safe = np.maximum(cap, 1)
            if self.most:
                part = np.where(requested > cap, 0, requested * MAX_SCORE // safe)
            else:
                part = np.where(requested > cap, 0, (cap - requested) * MAX_SCORE // safe)
            parts.append(np.where(cap > 0, part, 0))
        weights = 2 + (state.gpu_cap_milli[idx] > 0)
        return (parts[0] + parts[1] + parts[2]) // weights


class MostAllocatedPolicy(_Allocated):
    name: ClassVar[str] = "mostallocated"
    summary: ClassVar[str] = "the busiest node that fits (Kubernetes MostAllocated; NSML's choice)"
    most: ClassVar[bool] = True


class LeastAllocatedPolicy(_Allocated):
    name: ClassVar[str] = "leastallocated"
    summary: ClassVar[str] = "the emptiest node that fits (Kubernetes LeastAllocated, the default)"
    most: ClassVar[bool] = False
