"""Random and first fit: the two policies that look at nothing but feasibility."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from hpcinsight.whatif.policies.base import Policy
from hpcinsight.whatif.state import ClusterState, Shape


class RandomPolicy(Policy):
    """Any feasible node, uniformly; a shared GPU likewise among those that fit."""

    name: ClassVar[str] = "random"
    summary: ClassVar[str] = "a feasible node at random (the talk's baseline)"
    cached: ClassVar[bool] = True

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def choose(self, cand: np.ndarray, scores: np.ndarray, rank: np.ndarray, rng: np.random.Generator) -> int:
        return int(cand[int(self.rng.integers(len(cand)))])

    def gpus(self, state: ClusterState, shape: Shape, node: int) -> list[int]:
        if shape.share:
            fit = np.flatnonzero(state.gpu_left[node] >= shape.milli)
            return [int(fit[int(self.rng.integers(len(fit)))])]
        return state.best_fit_gpus(shape, node)


class FirstFitPolicy(Policy):
    """The first feasible node in the run's fixed node order."""

    name: ClassVar[str] = "firstfit"
    summary: ClassVar[str] = "the first feasible node in the fixed node order"
