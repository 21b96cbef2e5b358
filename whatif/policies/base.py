"""One interface for every placement policy, as Scheduler Framework score plugins compose.

A policy gives each feasible node an integer score (0-100, higher is better; integers because
the framework's scores are, and truncating before normalising changes which node wins), may
ask for the scores to be min-max normalised over the feasible nodes, and chooses the GPUs on
the node it won. The engine keeps the node choice itself: highest score, ties to the node
first in the run's fixed node order (a seed-dependent permutation, as the FGD authors'
simulator names its nodes), never at random.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from hpcinsight.whatif.state import ClusterState, Shape

MAX_SCORE = 100


class Policy:
    """The base: every feasible node scores the same; subclasses override :meth:`score`."""

    name: ClassVar[str] = "base"
    summary: ClassVar[str] = ""
    normalize: ClassVar[bool] = False  # min-max normalise the integer scores over feasible nodes
    cached: ClassVar[bool] = True  # a node's score depends only on its state and the job shape
    uses_memory: ClassVar[bool] = False  # whether the score weighs memory (else jobs differing only in it share scores)

    def score(self, state: ClusterState, shape: Shape, idx: np.ndarray) -> np.ndarray:
        """Integer scores of the feasible nodes ``idx`` for one job of ``shape``."""
        return np.zeros(len(idx), dtype=np.int64)

    def gpus(self, state: ClusterState, shape: Shape, node: int) -> list[int]:
        """Which GPUs of the chosen node the job gets (default: tightest share, first free)."""
        return state.best_fit_gpus(shape, node)

    def choose(self, cand: np.ndarray, scores: np.ndarray, rank: np.ndarray, rng: np.random.Generator) -> int:
        """The winning node among candidates: best score, ties to the lowest rank."""
        key = scores * (len(rank) + 1) - rank[cand]
        return int(cand[int(np.argmax(key))])


def normalize_scores(scores: np.ndarray) -> np.ndarray:
    """The framework's min-max normalisation in integer arithmetic (all equal: all 0)."""
    if len(scores) == 0:
        return scores
    lo, hi = int(scores.min()), int(scores.max())
    if hi == lo:
        return np.zeros_like(scores)
    return (scores - lo) * MAX_SCORE // (hi - lo)
