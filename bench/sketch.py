"""Quantile sketch error and memory against exact quantiles.

For a since-start view of one GPU over 10 days at 1 Hz (864,000 values) the KLL sketch is
compared with keeping every value (float32) and asking numpy: the figure is the sketch's
size, its worst rank error on p25/p50/p95, and the time to answer after each batch of 60
new values, where the exact baseline must re-sort everything it kept.
"""

from __future__ import annotations

import time

import numpy as np

from streams.sketches import QuantileSketch

N, BATCH = 864_000, 60
RANKS = (0.25, 0.5, 0.95)


def bench_sketch(repeats: int) -> dict[str, float]:
    values = np.clip(np.random.default_rng(7).normal(80, 15, N), 0, 100).astype(np.float32)
    sketch = QuantileSketch()
    start = time.perf_counter()
    for i in range(0, N, BATCH * 100):  # updates in minute batches, answering each time
        for j in range(i, min(N, i + BATCH * 100), BATCH):
            sketch.update(values[j:j + BATCH])
        sketch.quantiles(RANKS)
    ours = time.perf_counter() - start
    answers = N // (BATCH * 100)
    start = time.perf_counter()
    for i in range(1, answers + 1):  # the exact baseline answers as often, over all values so far
        np.percentile(values[: i * BATCH * 100], [25, 50, 95])
    base = time.perf_counter() - start
    exact = np.sort(values)
    errors = []
    for q, r in zip(sketch.quantiles(RANKS) or [], RANKS):  # a value's true rank is an interval where values tie
        lo, hi = np.searchsorted(exact, q, side="left") / N, np.searchsorted(exact, q, side="right") / N
        errors.append(0.0 if lo <= r <= hi else min(abs(lo - r), abs(hi - r)))
    return {
        "sketch_bytes": float(len(sketch.to_bytes())), "baseline_sketch_bytes": float(values.nbytes),
        "max_rank_error": float(max(errors)), "seconds": ours, "baseline_seconds": base, "time_ratio": base / ours,
        "ratio": values.nbytes / len(sketch.to_bytes()),
    }


if __name__ == "__main__":
    print(bench_sketch(1))
