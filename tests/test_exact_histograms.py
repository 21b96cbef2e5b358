"""Whole-percentage metrics (NVML's utilisation) keep exact counts: exact quantiles in every window,
the same answers KLL gives where KLL is exact, and a clean hand-over to KLL when a value does not fit."""

from __future__ import annotations

import numpy as np
import pytest

from hpcinsight.schemas.events import GpuSketch
from hpcinsight.streams.jobs import JobMerger, JobStageConfig
from hpcinsight.streams.rolling import SINCE_START, Closed, RollingConfig, RollingSeries
from hpcinsight.streams.sketches import IntHistogram, QuantileSketch, RawValues, load_sketch, merge_sketches

T0 = 1_700_000_000_000
RANKS = (0.0, 0.01, 0.25, 0.5, 0.95, 0.999, 1.0)


def exact_quantile(values: np.ndarray, rank: float) -> float:
    """The order statistic KLL's default (exclusive) rule picks: the value at index floor(rank * n)."""
    ordered = np.sort(values.astype(np.float32))
    return float(ordered[min(int(np.floor(rank * ordered.size)), ordered.size - 1)])


def util_series(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = np.clip(np.rint(rng.normal(70, 20, n)), 0, 100)
    values[rng.random(n) < 0.1] = 0  # data-loading dips: ties at 0
    return values.astype(np.float32)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 60, 300, 400])
def test_histogram_gives_what_kll_gives_while_kll_is_exact(n: int) -> None:
    for seed in range(20):
        values = util_series(n, seed)
        histogram, kll = IntHistogram(), QuantileSketch()
        histogram.update(values)
        kll.update(values)
        assert histogram.quantiles(RANKS) == kll.quantiles(RANKS)


@pytest.mark.parametrize("n", [3_600, 86_400])
def test_histogram_is_exact_where_kll_is_not(n: int) -> None:
    values = util_series(n, 3)
    histogram = IntHistogram()
    histogram.update(values)
    assert histogram.quantiles(RANKS) == [exact_quantile(values, r) for r in RANKS]
    assert histogram.count == n


def test_fits_only_whole_percentages() -> None:
    assert IntHistogram.fits(np.array([0, 1, 100], dtype=np.float32))
    assert IntHistogram.fits(np.array([], dtype=np.float32))
    for bad in ([0.5], [101], [-1], [np.nan], [np.inf], [3, 99.5]):
        assert not IntHistogram.fits(np.array(bad, dtype=np.float32)), bad
        assert IntHistogram.counts_if_fit(np.array(bad, dtype=np.float32)) is None, bad
    counts = IntHistogram.counts_if_fit(np.array([0, 100, 100], dtype=np.float32))
    assert counts is not None and counts[0] == 1 and counts[100] == 2 and counts.sum() == 3


def test_bytes_round_trip_and_are_told_from_kll() -> None:
    histogram = IntHistogram()
    histogram.update(util_series(500, 1))
    back = load_sketch(histogram.to_bytes())
    assert isinstance(back, IntHistogram) and (back.counts == histogram.counts).all()
    kll = QuantileSketch()
    kll.update(np.arange(1000, dtype=np.float32) / 7)
    assert isinstance(load_sketch(kll.to_bytes()), QuantileSketch)
    with pytest.raises(ValueError):
        IntHistogram.from_bytes(histogram.to_bytes()[:-1])


def test_mixed_merge_turns_to_kll_and_keeps_every_value() -> None:
    a, b = IntHistogram(), QuantileSketch()
    a.update(util_series(200, 1))
    b.update(np.linspace(0, 100, 300, dtype=np.float32))
    merged = merge_sketches([a, b])
    assert isinstance(merged, QuantileSketch) and merged.count == 500
    both = merge_sketches([a, a])
    assert isinstance(both, IntHistogram) and both.count == 400


def feed(series: RollingSeries, ts: np.ndarray, vals: np.ndarray) -> list[Closed]:
    out: list[Closed] = []
    for t, v in zip(ts.tolist(), vals.tolist()):
        out.extend(series.add(int(t), float(v), "j1"))
    return out


def test_every_window_of_a_utilisation_series_is_exact() -> None:
    n = 2 * 3600
    ts = T0 + 123 + np.arange(n) * 1000
    vals = util_series(n, 7)
    closed = feed(RollingSeries(RollingConfig()), ts, vals)
    seen = set()
    for c in closed:
        start = c.start_ms if c.window != SINCE_START else T0 - 10**9
        exact = vals[(ts >= start) & (ts < c.end_ms)]
        assert c.count == exact.size
        assert [c.p25, c.p50, c.p95] == [exact_quantile(exact, r) for r in (0.25, 0.5, 0.95)], (c.window, c.end_ms)
        assert isinstance(load_sketch(c.sketch), IntHistogram)
        seen.add(c.window)
    assert seen == {"1m", "5m", "1h", SINCE_START}


def test_a_fractional_value_hands_the_series_to_raw_values_and_kll_for_good() -> None:
    ts = T0 + np.arange(600) * 1000
    vals = util_series(600, 2)
    vals[300] = 42.5  # one value counts cannot hold
    series = RollingSeries(RollingConfig())
    closed = feed(series, ts, vals)
    before = [c for c in closed if c.end_ms <= ts[300] and c.window == "1m"]
    after = [c for c in closed if c.end_ms > ts[300] + 10_000]
    assert before and all(isinstance(load_sketch(c.sketch), IntHistogram) for c in before)
    kinds = {c.window: type(load_sketch(c.sketch)) for c in after}  # the values themselves up to KLL's k, KLL beyond
    assert kinds == {"1m": RawValues, "5m": RawValues, SINCE_START: QuantileSketch}, kinds
    assert all(isinstance(load_sketch(c.sketch), RawValues) == (c.count <= RawValues.LIMIT) for c in after)
    for c in after:  # still right: KLL is exact at these sizes
        exact = vals[(ts >= c.start_ms) & (ts < c.end_ms)] if c.window != SINCE_START else vals[ts < c.end_ms]
        assert c.count == exact.size and c.p50 == exact_quantile(exact, 0.5)


def test_checkpoint_keeps_the_counts_exact() -> None:
    ts = T0 + np.arange(1800) * 1000
    vals = util_series(1800, 5)
    whole = feed(RollingSeries(RollingConfig()), ts, vals)
    first = RollingSeries(RollingConfig())
    part = feed(first, ts[:900], vals[:900])
    restored = RollingSeries.from_checkpoint(RollingConfig(), first.checkpoint())
    cut = restored.closed_to
    assert cut is not None
    rest = ts >= cut
    part = [c for c in part if c.end_ms <= cut] + feed(restored, ts[rest], vals[rest])
    assert [(c.window, c.end_ms, c.p25, c.p50, c.p95, c.count) for c in part] == [
        (c.window, c.end_ms, c.p25, c.p50, c.p95, c.count) for c in whole
    ]


def test_job_quantiles_merge_gpu_histograms_exactly() -> None:
    merger = JobMerger(JobStageConfig(wait_s=0.0))
    per_gpu = {f"g{i}": util_series(60, 10 + i) for i in range(8)}
    out = []
    for gpu, values in per_gpu.items():
        histogram = IntHistogram()
        histogram.update(values)
        sketch = GpuSketch(
            job_id="j1",
            node="n0",
            gpu_uuid=gpu,
            metric="gpu_util",
            window="1m",
            window_start=T0,
            window_end=T0 + 60_000,
            count=values.size,
            sum=float(values.sum()),
            sketch=histogram.to_bytes(),
        )
        out.extend(merger.add(sketch, now=0.0))
    out.extend(merger.tick(now=100.0))
    assert len(out) == 1
    everything = np.concatenate(list(per_gpu.values()))
    assert [out[0].p25, out[0].p50, out[0].p95] == [exact_quantile(everything, r) for r in (0.25, 0.5, 0.95)]
