"""Sliding windows give numpy's quantiles over exactly the samples in [end - size, end)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from streams.windows import SlidingQuantiles, WindowSpec

T0 = 1_764_000_000_000


def feed(spec: WindowSpec, samples: list[tuple[int, float]]):
    series = SlidingQuantiles(spec)
    out = []
    for ts, v in samples:
        out.extend(series.add(ts, v))
    return series, out


def test_quantiles_equal_numpy_over_each_window() -> None:
    rng = random.Random(1)
    samples = [(T0 + k * 1000 + rng.randint(0, 900), rng.uniform(0, 100)) for k in range(600)]
    spec = WindowSpec(60_000, 10_000)
    _, out = feed(spec, samples)
    assert len(out) >= 50
    for w in out:
        assert w.end_ms - w.start_ms == spec.size_ms and w.end_ms % spec.hop_ms == 0
        ref = np.array([v for t, v in samples if w.start_ms <= t < w.end_ms])
        assert w.count == ref.size
        assert [w.p25, w.p50, w.p95] == pytest.approx(list(np.percentile(ref, [25, 50, 95])), abs=1e-9)
        assert w.mean == pytest.approx(ref.mean())


def test_no_partial_first_window_and_gaps_do_not_emit_empty_windows() -> None:
    spec = WindowSpec(10_000, 5_000)
    samples = [(T0 + 2_000 + k * 1000, 50.0) for k in range(30)]
    samples += [(T0 + 500_000 + k * 1000, 10.0) for k in range(30)]  # a long gap
    _, out = feed(spec, samples)
    first_ts = samples[0][0]
    assert all(w.count > 0 for w in out)
    assert min(w.start_ms for w in out) >= first_ts
    assert not [w for w in out if T0 + 40_000 < w.end_ms < T0 + 500_000]


def test_null_values_are_skipped_and_late_samples_counted() -> None:
    spec = WindowSpec(10_000, 5_000)
    series = SlidingQuantiles(spec)
    for k in range(30):
        series.add(T0 + k * 1000, None if k % 2 else 80.0)
    series.add(T0 + 1000, 1.0)  # far in the past
    assert series.late == 1


def test_window_size_must_be_a_multiple_of_hop() -> None:
    with pytest.raises(ValueError):
        WindowSpec(10_000, 3_000)
