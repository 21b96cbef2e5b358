"""Quantile sketch error and memory against exact quantiles.

For a since-start view of one GPU over 10 days at 1 Hz (864,000 values) the KLL sketch is
compared with keeping every value (float32) and asking numpy: the figure is the sketch's
size, its worst rank error on p25/p50/p95, and the time to answer after each batch of 60
new values, where the exact baseline must re-sort everything it kept.
"""

from __future__ import annotations

import time

import numpy as np

from hpcinsight.streams.sketches import QuantileSketch

N, BATCH = 864_000, 60
RANKS = (0.25, 0.5, 0.95)


def bench_sketch(repeats: int) -> dict[str, float]:
    values = np.clip(np.random.default_rng(7).normal(80, 15, N), 0, 100).astype(np.float32)
    sketch = QuantileSketch()
    start = time.perf_counter()
    for i in range(0, N, BATCH * 100):  # updates in minute batches, answering each time
        for j in range(i, min(N, i + BATCH * 100), BATCH):
            sketch.update(values[j : j + BATCH])
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
        "sketch_bytes": float(len(sketch.to_bytes())),
        "baseline_sketch_bytes": float(values.nbytes),
        "max_rank_error": float(max(errors)),
        "seconds": ours,
        "baseline_seconds": base,
        "time_ratio": base / ours,
        "ratio": values.nbytes / len(sketch.to_bytes()),
    }


if __name__ == "__main__":
    print(bench_sketch(1))


def bench_windows(repeats: int) -> dict[str, float]:
    """The sliding windows (1m/10s, 5m/1m, 1h/15m) of one GPU over 3 h at 1 Hz: the most bytes of
    sketch any window holds at once, against keeping the hour's values (float32), and the worst rank
    error of any emitted window against numpy over the same values."""
    from hpcinsight.streams.rolling import SINCE_START, RollingConfig, RollingSeries

    n, t0 = 3 * 3600, 1_700_000_000_000
    rng = np.random.default_rng(11)
    values = np.clip(rng.normal(70, 20, n), 0, 100).astype(np.float32)
    values[rng.random(n) < 0.1] = 0.0
    ts = t0 + np.arange(n) * 1000
    series = RollingSeries(RollingConfig())
    held: dict[str, int] = {}
    worst = 0.0
    for t, v in zip(ts.tolist(), values.tolist()):
        for c in series.add(int(t), float(v), "job"):
            if c.window == SINCE_START:
                continue
            window = np.sort(values[(ts >= c.start_ms) & (ts < c.end_ms)])
            for q, r in ((c.p25, 0.25), (c.p50, 0.5), (c.p95, 0.95)):
                lo = np.searchsorted(window, np.float32(q), "left") / window.size
                hi = np.searchsorted(window, np.float32(q), "right") / window.size
                worst = max(worst, 0.0 if lo <= r <= hi else min(abs(lo - r), abs(hi - r)))
        if t % 60_000 == 0:
            for label, size in series.window_memory_bytes().items():
                held[label] = max(held.get(label, 0), size)
    exact_hour = 3600 * 4
    return {
        "sketch_bytes": float(held["1h"]),
        "baseline_sketch_bytes": float(exact_hour),
        "ratio": exact_hour / held["1h"],
        "bytes_1m": float(held["1m"]),
        "bytes_5m": float(held["5m"]),
        "max_rank_error": worst,
    }
