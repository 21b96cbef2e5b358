"""FGD's fragmentation measure for the live cluster (Weng et al., "Beware of Fragmentation", ATC'23).

"Stranded GPUs" (free GPUs on partly used nodes) says nothing about whether the jobs that
actually arrive could use them. FGD's measure does: a node's fragmentation is the GPU capacity
(thousandths of a GPU) the *typical* workload is expected not to be able to use there. For each
typical task shape, weighted by how often it arrives, it is the node's free GPU capacity that
shape could not use: all of it when the shape does not fit the node at all (too few GPUs with
enough free share, too little CPU, another GPU model) or needs no GPU; only the GPUs with less
free than its per-GPU share when it fits. The cluster's figure is the sum over nodes.

The typical workload is learned from the task shapes of recent scheduler events, as the FGD
authors define it (and ``whatif/typical.py`` does for the simulator): every job counts, CPU-only
ones included; shapes are (CPU milli as scored, per-GPU share, GPU count, GPU model spec); the
most popular are kept, ties larger shape first, until they cover 95% of the jobs, and their
frequencies renormalised over those kept. The window is the last ``window`` jobs seen, so the
measure follows a changing workload without unbounded memory.

Kept apart from the simulator on purpose (components never import each other); a test checks
that both give the same figure on the same state and shapes.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

MILLI = 1000  # one whole GPU in thousandths
DEFAULT_CPU_REQUEST = 100  # Kubernetes scores a pod asking no CPU as asking 100m
POPULARITY_THRESHOLD = 95  # percent of jobs the typical shapes must cover
NO_CPU_LIMIT = np.iinfo(np.int64).max // 4  # a node whose CPUs the inventory does not say

ShapeKey = tuple[int, int, int, str]  # (cpu milli as scored, per-GPU milli, GPU count, GPU model spec)


def task_shape(gpus: float | None, cpus: float | None, gpu_model: str | None) -> ShapeKey:
    """A job's shape from its request: ``gpus`` < 1 is one GPU shared at that share; a whole
    count is that many whole GPUs; a non-whole count above one spreads evenly over ``ceil`` GPUs."""
    cpu = round((cpus or 0.0) * MILLI)
    cpu = cpu if cpu > 0 else DEFAULT_CPU_REQUEST
    g = max(0.0, gpus or 0.0)
    if g <= 0:
        return (cpu, 0, 0, gpu_model or "")
    num = max(1, math.ceil(g - 1e-9))
    return (cpu, round(g * MILLI / num), num, gpu_model or "")


def accepts(spec: str, model: str | None) -> bool:
    """Whether a job asking for ``spec`` ('|'-separated models, empty = any) may use a ``model`` GPU."""
    wanted = [m for m in spec.split("|") if m]
    return not wanted or (bool(model) and model in wanted)


@dataclass(frozen=True, slots=True)
class Typical:
    """The typical shapes, most popular first, with their frequencies (summing to one)."""

    shapes: tuple[ShapeKey, ...]
    freq: tuple[float, ...]


class ShapeWindow:
    """The shapes of the last ``window`` jobs seen, and the typical workload they make."""

    def __init__(self, window: int = 10_000, threshold: int = POPULARITY_THRESHOLD) -> None:
        if window < 1:
            raise ValueError("the shape window must hold at least one job")
        self.threshold = threshold
        self._recent: deque[ShapeKey] = deque(maxlen=window)
        self._counts: Counter[ShapeKey] = Counter()
        self._typical: Typical | None = None

    def add(self, shape: ShapeKey) -> None:
        if len(self._recent) == self._recent.maxlen:
            old = self._recent[0]
            self._counts[old] -= 1
            if not self._counts[old]:
                del self._counts[old]
        self._recent.append(shape)
        self._counts[shape] += 1
        self._typical = None

    def typical(self) -> Typical:
        if self._typical is None:
            self._typical = typical_of(self._counts, self.threshold)
        return self._typical


def typical_of(counts: Counter[ShapeKey], threshold: int = POPULARITY_THRESHOLD) -> Typical:
    """Most popular first (ties: the larger shape first) until ``threshold`` percent are covered."""
    total = sum(counts.values())
    if total == 0:
        return Typical((), ())
    ranked = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
    kept: list[tuple[ShapeKey, int]] = []
    covered = 0
    for shape, count in ranked:
        if covered >= threshold * total / 100.0:
            break
        kept.append((shape, count))
        covered += count
    freq = [c / total for _, c in kept]
    if len(kept) < len(ranked):
        freq = [f / (covered / total) for f in freq]
    return Typical(tuple(s for s, _ in kept), tuple(freq))


def access_matrix(models: list[str | None], typical: Typical, cache: dict[str, np.ndarray]) -> np.ndarray:
    """``[node, shape]``: whether each typical shape may use each node's GPU model (``cache`` per spec,
    valid while the node list stays the same)."""
    cols = []
    for _cpu, _milli, _num, spec in typical.shapes:
        col = cache.get(spec)
        if col is None:
            col = cache[spec] = np.array([accepts(spec, m) for m in models], dtype=bool)
        cols.append(col)
    return np.stack(cols, axis=1) if cols else np.zeros((len(models), 0), dtype=bool)


def fragmentation(gpu_left: np.ndarray, cpu_left: np.ndarray, access: np.ndarray, typical: Typical) -> np.ndarray:
    """Expected fragmented GPU milli of each node (``gpu_left[n, g]`` free milli per GPU, zero-padded;
    ``access[n, t]`` from :func:`access_matrix`).

    The terms are summed in the typical shapes' order, as the simulator does, so the two agree bit for bit.
    """
    total = gpu_left.sum(axis=1)
    out = np.zeros(len(total), dtype=np.float64)
    for t, ((cpu, milli, num, _spec), freq) in enumerate(zip(typical.shapes, typical.freq, strict=True)):
        if milli == 0:
            frag = total
        else:
            fits = gpu_left >= milli
            ok = (fits.sum(axis=1) >= num) & (cpu_left >= cpu) & access[:, t]
            frag = np.where(ok, np.where(fits, 0, gpu_left).sum(axis=1), total)
        out = out + freq * frag
    return out
