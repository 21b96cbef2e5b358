"""FGD's "typical" workload: the task shapes expected to arrive, with their frequencies.

As the FGD authors set it up: every pod of the workload counts, CPU-only pods included; pods
are grouped by (CPU, per-GPU share, GPU count, GPU model spec); shapes are taken most popular
first (ties: the larger shape first) until they cover 95% of the pods, and their frequencies
are renormalised over the shapes kept. The cut-off drops the long tail of one-off shapes that
would otherwise cost time without moving the expected fragmentation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hpcinsight.whatif.model import Job

POPULARITY_THRESHOLD = 95  # percent of pods the typical shapes must cover


@dataclass(frozen=True, slots=True)
class Typical:
    """Typical shapes as arrays: CPU (as scored), per-GPU share, GPU count, spec, frequency."""

    cpu: np.ndarray
    milli: np.ndarray
    num: np.ndarray
    spec: tuple[str, ...]
    freq: np.ndarray

    def __len__(self) -> int:
        return len(self.freq)


def typical_shapes(jobs: Sequence[Job], threshold: int = POPULARITY_THRESHOLD) -> Typical:
    counts: Counter[tuple[int, int, int, str]] = Counter()
    for job in jobs:
        counts[(job.score_cpu, job.gpu_milli if job.num_gpu else 0, job.num_gpu, job.gpu_spec)] += 1
    total = sum(counts.values())
    if total == 0:
        return Typical(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), (), np.zeros(0))
    # most popular first; equally popular: the larger (cpu, share, count, spec) first
    ranked = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
    kept: list[tuple[tuple[int, int, int, str], int]] = []
    covered = 0
    for shape, count in ranked:
        if covered >= threshold * total / 100.0:
            break
        kept.append((shape, count))
        covered += count
    freq = np.array([c / total for _, c in kept], dtype=np.float64)
    if len(kept) < len(ranked):
        freq = freq / (covered / total)
    return Typical(
        cpu=np.array([s[0] for s, _ in kept], dtype=np.int64),
        milli=np.array([s[1] for s, _ in kept], dtype=np.int64),
        num=np.array([s[2] for s, _ in kept], dtype=np.int64),
        spec=tuple(s[3] for s, _ in kept),
        freq=freq,
    )
