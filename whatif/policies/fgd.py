"""FGD: fragmentation gradient descent (Weng et al., "Beware of Fragmentation", USENIX ATC'23).

A node's fragmentation is the GPU capacity, in thousandths, that the typical workload is
expected not to be able to use there: for each typical task shape, weighted by how often it
arrives, the node's free GPU share that shape could not use (all of it when the shape does
not fit the node at all, or needs no GPU; only the GPUs with less free than its per-GPU
share when it does fit). FGD places a job where it increases this expected fragmentation
least: score ``trunc(100 * sigmoid((F_before - F_after) / 1000))``; a shared-GPU job also
picks, on its node, the GPU that scores best.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from hpcinsight.whatif.model import MILLI
from hpcinsight.whatif.policies.base import MAX_SCORE, Policy
from hpcinsight.whatif.state import ClusterState, Shape
from hpcinsight.whatif.typical import Typical


def fragmentation(cpu_left: np.ndarray, gpu_left: np.ndarray, access: np.ndarray, typical: Typical) -> np.ndarray:
    """Expected fragmented GPU milli of states (``cpu_left[m]``, ``gpu_left[m, g]``).

    ``access[m, t]`` says whether typical shape ``t`` may use state ``m``'s GPU model. All
    typical shapes are measured at once (one array pass, not one per shape: a week of events
    calls this some 50,000 times on a few nodes each, where per-call overhead was the cost), and
    the weighted terms are summed by a running sum in the shapes' fixed order, so equal states
    always give bit-equal results (a placement that changes nothing scores exactly 50).
    """
    total = gpu_left.sum(axis=-1)
    if len(typical) == 0:
        return np.zeros(total.shape, dtype=np.float64)
    milli = typical.milli
    left = gpu_left[..., None, :]  # [..., 1, g]
    fits = left >= milli[:, None]  # [..., t, g]
    ok = (fits.sum(axis=-1) >= typical.num) & (cpu_left[..., None] >= typical.cpu) & access
    small = np.where(fits, 0, left).sum(axis=-1)  # [..., t]: free share the shape cannot use
    whole = total[..., None]
    frag = np.where(milli == 0, whole, np.where(ok, small, whole))
    return np.cumsum(typical.freq * frag, axis=-1)[..., -1]


def _fragmentation_by_shape(cpu_left: np.ndarray, gpu_left: np.ndarray, access: np.ndarray, typical: Typical) -> np.ndarray:
    """The same figure, one typical shape at a time: the definition, kept as the reference the
    tests hold :func:`fragmentation` to."""
    total = gpu_left.sum(axis=-1)
    out = np.zeros(total.shape, dtype=np.float64)
    for t in range(len(typical)):
        milli = int(typical.milli[t])
        if milli == 0:
            frag = total
        else:
            fits = gpu_left >= milli
            ok = (fits.sum(axis=-1) >= typical.num[t]) & (cpu_left >= typical.cpu[t]) & access[..., t]
            frag = np.where(ok, np.where(fits, 0, gpu_left).sum(axis=-1), total)
        out = out + typical.freq[t] * frag
    return out


INCREMENTAL_FROM = 64  # nodes scored at once from which the incremental form is the cheaper


def _sigmoid_score(delta: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-delta / 1000)) * MAX_SCORE).astype(np.int64)


class FgdPolicy(Policy):
    name: ClassVar[str] = "fgd"
    summary: ClassVar[str] = "least growth of expected GPU fragmentation (FGD, ATC'23)"

    def __init__(self, typical: Typical) -> None:
        self.typical = typical
        self._access: dict[int, np.ndarray] = {}
        self._before: tuple[int, np.ndarray, np.ndarray] | None = None  # (state id, F per node, its stamp)
        # shared-GPU shapes: each scored node's best GPU and the node's stamp then, so the GPU
        # choice after a node wins reuses the scoring instead of measuring the node again
        self._best_gpu: dict[tuple[int, Shape], tuple[np.ndarray, np.ndarray]] = {}

    def _fragmentation_now(self, state: ClusterState, idx: np.ndarray, acc: np.ndarray) -> np.ndarray:
        """Each node's fragmentation as it stands, kept per node until the node changes (every
        job shape scores against the same "before")."""
        if self._before is None or self._before[0] != id(state):
            self._before = (id(state), np.zeros(len(state)), np.full(len(state), -1, dtype=np.int64))
        _, frag, stamp = self._before
        stale = stamp[idx] != state.stamp[idx]
        if stale.any():
            todo = idx[stale]
            frag[todo] = fragmentation(state.cpu_left[todo], state.gpu_left[todo], acc[stale], self.typical)
            stamp[todo] = state.stamp[todo]
        return frag[idx]

    def _typical_access(self, state: ClusterState, idx: np.ndarray) -> np.ndarray:
        key = id(state)
        got = self._access.get(key)
        if got is None:
            cols = [state.access(spec) for spec in self.typical.spec]
            got = np.stack(cols, axis=1) if cols else np.zeros((len(state), 0), dtype=bool)
            self._access = {key: got}
        return got[idx]

    def _after(self, state: ClusterState, shape: Shape, idx: np.ndarray) -> np.ndarray:
        """GPU shares after placing a job that takes whole GPUs (or none) on each node."""
        left = state.gpu_left[idx].copy()
        if shape.wants_gpu:
            # whole GPUs: the first fully free ones in device order
            free = left >= MILLI
            order = np.cumsum(free, axis=1)
            take = free & (order <= shape.num_gpu)
            left[take] -= shape.milli
        return left

    def _share_scores(self, state: ClusterState, shape: Shape, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per node and GPU, the score of putting the share there (-1 where it does not fit)."""
        if len(idx) >= INCREMENTAL_FROM:
            return self._share_scores_incremental(state, shape, idx)
        return self._share_scores_direct(state, shape, idx)

    def _share_scores_direct(self, state: ClusterState, shape: Shape, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every candidate state built and measured: fewest numpy calls, best for a few nodes."""
        left = state.gpu_left[idx]
        width = left.shape[1]
        acc = self._typical_access(state, idx)
        before = self._fragmentation_now(state, idx, acc)
        cand = np.repeat(left[:, None, :], width, axis=1)  # [m, g_choice, g]
        cand = np.where(np.eye(width, dtype=bool)[None, :, :], cand - shape.milli, cand)
        cpu_after = np.repeat((state.cpu_left[idx] - shape.score_cpu)[:, None], width, axis=1)
        after = fragmentation(cpu_after, cand, np.repeat(acc[:, None, :], width, axis=1), self.typical)
        scores = _sigmoid_score(before[:, None] - after)
        return np.where(left >= shape.milli, scores, -1), before

    def _share_scores_incremental(self, state: ClusterState, shape: Shape, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The same scores for many nodes at once.

        A share changes one GPU, so each typical shape's terms after placing it on GPU ``g``
        (GPUs that fit the shape, the free share on those that do not, the total) follow from
        the terms before by correcting GPU ``g`` alone: one pass over (node, GPU, shape) instead
        of recomputing every candidate state. The terms are integers, so the result is the same
        as recomputing.
        """
        left = state.gpu_left[idx]
        cpu = state.cpu_left[idx]
        acc = self._typical_access(state, idx)
        before = self._fragmentation_now(state, idx, acc)
        typ = self.typical
        new = left - shape.milli  # [m, g]: GPU g's free share once the job takes it
        total_after = left.sum(axis=1) - shape.milli
        cpu_ok = (cpu - shape.score_cpu)[:, None] >= typ.cpu[None, :]  # [m, t]
        after = np.zeros(left.shape, dtype=np.float64)
        for t in range(len(typ)):
            milli = int(typ.milli[t])
            if milli == 0:
                frag = np.broadcast_to(total_after[:, None], left.shape)
            else:
                fits = left >= milli
                fits_after = fits.sum(axis=1)[:, None] - fits + (new >= milli)
                small = np.where(fits, 0, left).sum(axis=1)[:, None]
                small_after = small - np.where(fits, 0, left) + np.where(new >= milli, 0, new)
                ok = (fits_after >= typ.num[t]) & (cpu_ok[:, t] & acc[:, t])[:, None]
                frag = np.where(ok, small_after, total_after[:, None])
            after = after + typ.freq[t] * frag
        scores = _sigmoid_score(before[:, None] - after)
        scores = np.where(left >= shape.milli, scores, -1)
        return scores, before

    def score(self, state: ClusterState, shape: Shape, idx: np.ndarray) -> np.ndarray:
        if len(idx) == 0:
            return np.zeros(0, dtype=np.int64)
        if shape.share:
            scores, _ = self._share_scores(state, shape, idx)
            best, stamp = self._best_gpu_memo(state, shape)
            best[idx] = np.argmax(scores, axis=1)
            stamp[idx] = state.stamp[idx]
            return scores.max(axis=1)
        acc = self._typical_access(state, idx)
        before = self._fragmentation_now(state, idx, acc)
        after = fragmentation(state.cpu_left[idx] - shape.score_cpu, self._after(state, shape, idx), acc, self.typical)
        return _sigmoid_score(before - after)

    def _best_gpu_memo(self, state: ClusterState, shape: Shape) -> tuple[np.ndarray, np.ndarray]:
        key = (id(state), shape)
        got = self._best_gpu.get(key)
        if got is None:
            if self._best_gpu and next(iter(self._best_gpu))[0] != id(state):
                self._best_gpu.clear()  # another run's state: its memo is of no use
            got = self._best_gpu[key] = (np.zeros(len(state), dtype=np.int64), np.full(len(state), -1, dtype=np.int64))
        return got

    def gpus(self, state: ClusterState, shape: Shape, node: int) -> list[int]:
        if shape.share:
            best, stamp = self._best_gpu_memo(state, shape)
            if stamp[node] == state.stamp[node]:
                return [int(best[node])]
            scores, _ = self._share_scores(state, shape, np.array([node]))
            return [int(np.argmax(scores[0]))]
        return state.best_fit_gpus(shape, node)
