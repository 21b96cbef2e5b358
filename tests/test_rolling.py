"""Rolling quantiles on KLL panes: the same windows as an exact computation, within 1% rank error."""

from __future__ import annotations

import numpy as np
import pytest

from hpcinsight.streams.rolling import SINCE_START, Closed, RollingConfig, RollingSeries
from hpcinsight.streams.windows import WindowSpec

T0 = 1_700_000_000_000  # a multiple of every hop used here


def rank_ok(values: np.ndarray, q: float, v: float, eps: float = 0.01) -> bool:
    """``v`` answers quantile ``q`` of ``values`` within ``eps`` normalised rank error.

    Sketches hold float32 (as ClickHouse stores the samples), so ranks are taken among float32 values.
    """
    values = values.astype(np.float32)
    lo, hi = float(np.mean(values < v)), float(np.mean(values <= v))
    return lo - eps <= q <= hi + eps


def feed(series: RollingSeries, ts: np.ndarray, vals: np.ndarray, job: str | None = "j1") -> list[Closed]:
    out: list[Closed] = []
    for t, v in zip(ts.tolist(), vals.tolist()):
        out.extend(series.add(int(t), float(v), job))
    return out


def test_every_window_matches_exact_quantiles_within_one_percent_rank() -> None:
    rng = np.random.default_rng(7)
    n = 2 * 3600
    ts = T0 + 123 + np.arange(n) * 1000  # 1 Hz for two hours, not aligned to panes
    vals = np.clip(rng.normal(70, 20, n), 0, 100).astype(np.float32)
    vals[rng.random(n) < 0.1] = 0.0  # data-loading dips: ties at 0
    cfg = RollingConfig()
    out = feed(RollingSeries(cfg), ts, vals)
    by_window: dict[str, list[Closed]] = {}
    for c in out:
        by_window.setdefault(c.window, []).append(c)
    assert set(by_window) == {"1m", "5m", "1h", SINCE_START}
    for spec in cfg.windows:
        closed = by_window[spec.label]
        for c in closed:
            assert c.end_ms - c.start_ms == spec.size_ms and c.end_ms % spec.hop_ms == 0
            assert c.start_ms >= ts[0], "a window the series does not fully cover was emitted"
            exact = vals[(ts >= c.start_ms) & (ts < c.end_ms)]
            assert c.count == exact.size
            p25, p50, p95, mean = c.quantiles()
            for q, v in ((0.25, p25), (0.5, p50), (0.95, p95)):
                assert rank_ok(exact, q, v), (spec.label, c.end_ms, q, v)
            assert mean == pytest.approx(float(exact.astype(np.float64).mean()), rel=1e-6)
        # every window whose end was passed (minus lateness) and that the series covers is emitted
        last = int(ts[-1]) - cfg.lateness_ms
        ends = [c.end_ms for c in closed]
        assert ends == sorted(ends) and len(set(ends)) == len(ends)
        assert all(b - a == spec.hop_ms for a, b in zip(ends, ends[1:]))
        first_end = (
            (int(ts[0]) + spec.size_ms) // spec.hop_ms + (1 if (int(ts[0]) + spec.size_ms) % spec.hop_ms else 0)
        ) * spec.hop_ms
        assert ends[0] == first_end
        assert ends[-1] <= last < ends[-1] + spec.hop_ms
    since = by_window[SINCE_START]
    assert all(c.end_ms % cfg.since_start_every_ms == 0 for c in since)
    final = since[-1]
    exact = vals[ts < final.end_ms]
    assert final.start_ms <= ts[0] and final.count == exact.size
    for q, v in zip((0.25, 0.5, 0.95), final.quantiles()[:3]):
        assert rank_ok(exact, q, v)


def test_hour_window_fits_the_memory_budget() -> None:
    rng = np.random.default_rng(1)
    series = RollingSeries(RollingConfig())
    ts = T0 + np.arange(3 * 3600) * 1000
    values = np.clip(rng.normal(70, 20, ts.size), 0, 100)
    values[rng.random(ts.size) < 0.1] = 0.0  # many distinct values and ties: the sketch's worst case here
    held: dict[str, int] = {}
    for t, v in zip(ts.tolist(), values.tolist()):
        series.add(int(t), float(v), "j1")
        if t % 30_000 == 0:  # the peak is just before the hour's pane closes: sample often
            for label, size in series.window_memory_bytes().items():
                held[label] = max(held.get(label, 0), size)
    assert max(held.values()) <= 8 * 1024, held
    per_window = series.window_memory_bytes()
    assert max(per_window.values()) <= 8 * 1024, per_window
    assert per_window["1h"] > per_window["1m"]


def test_late_samples_within_lateness_are_used_later_ones_dropped() -> None:
    cfg = RollingConfig(windows=(WindowSpec(20_000, 10_000),), lateness_ms=3_000)
    series = RollingSeries(cfg)
    out = feed(series, T0 + np.array([0, 5_000, 10_000, 12_000]), np.array([1.0, 2.0, 3.0, 4.0]))
    out += series.add(T0 + 9_000, 5.0, "j1")  # late by 3 s: its pane [0, 10 s) is still open
    out += feed(series, T0 + np.array([14_000, 21_000, 23_500]), np.array([6.0, 7.0, 8.0]))
    assert series.late == 0
    out += series.add(T0 + 8_000, 9.0, "j1")  # pane [0, 10 s) closed at 13 s: dropped
    assert series.late == 1
    out += series.add(T0 + 33_000, 10.0, "j1")
    windows = [c for c in out if c.window == "20s"]
    assert [(c.start_ms - T0, c.count) for c in windows] == [(0, 6), (10_000, 5)]
    assert windows[0].total == 1 + 2 + 5 + 3 + 4 + 6


def test_since_start_restarts_when_another_job_takes_the_gpu() -> None:
    cfg = RollingConfig(windows=(WindowSpec(20_000, 10_000),), lateness_ms=0, since_start_every_ms=20_000)
    series = RollingSeries(cfg)
    out = feed(series, T0 + np.arange(0, 40_000, 1000), np.full(40, 10.0), job="a")
    out += feed(series, T0 + np.arange(40_000, 81_000, 1000), np.full(41, 90.0), job="b")
    since = [(c.job_id, c.start_ms - T0, c.end_ms - T0, c.count) for c in out if c.window == SINCE_START]
    assert since == [("a", 0, 20_000, 20), ("a", 0, 40_000, 40), ("b", 40_000, 60_000, 20), ("b", 40_000, 80_000, 40)]


def test_checkpoint_then_replay_continues_exactly() -> None:
    rng = np.random.default_rng(3)
    ts = T0 + 500 + np.arange(1800) * 1000
    vals = rng.uniform(0, 100, ts.size)
    cfg = RollingConfig()
    whole = feed(RollingSeries(cfg), ts, vals)
    first = RollingSeries(cfg)
    head = feed(first, ts[:1000], vals[:1000])
    restored = RollingSeries.from_checkpoint(cfg, first.checkpoint())
    assert restored.closed_to == first.closed_to
    resume = ts >= restored.closed_to  # the samples of panes not closed at the checkpoint
    tail = feed(restored, ts[resume], vals[resume])
    # KLL compaction flips random coins, so the sketches differ bit-wise after a restore; what must
    # hold is that the same windows come out with the same counts and sums, and within the bound
    key = lambda c: (c.window, c.start_ms, c.end_ms, c.count, round(c.total, 6))
    assert [key(c) for c in head + tail] == [key(c) for c in whole]
    for c in head + tail:
        exact = vals[(ts >= c.start_ms) & (ts < c.end_ms)]
        assert all(rank_ok(exact, q, v) for q, v in zip((0.25, 0.5, 0.95), (c.p25, c.p50, c.p95)))


def test_a_long_silence_starts_the_series_over() -> None:
    cfg = RollingConfig(windows=(WindowSpec(20_000, 10_000),), lateness_ms=0)
    series = RollingSeries(cfg)
    out = feed(series, T0 + np.arange(0, 30_000, 1000), np.full(30, 50.0))
    out += feed(series, T0 + 600_000 + np.arange(0, 30_000, 1000), np.full(30, 60.0))
    after = [c for c in out if c.window == "20s" and c.end_ms > T0 + 600_000]
    assert after and all(c.start_ms >= T0 + 600_000 for c in after)
    assert all(c.total == 60.0 * c.count for c in after)


def test_window_means_of_the_cheap_metrics() -> None:
    from hpcinsight.streams.rolling import WindowMeans

    means = WindowMeans(("a", "b"), base_ms=10_000, keep_ms=70_000)
    rng = np.random.default_rng(2)
    a, b = rng.uniform(0, 100, 200), rng.uniform(0, 1e10, 200)
    ts = T0 + np.arange(200) * 1000
    for i, t in enumerate(ts.tolist()):
        means.add(int(t), (float(a[i]), None if i % 7 == 0 else float(b[i])))
    window = (ts >= T0 + 130_000) & (ts < T0 + 190_000)
    got = means.mean(T0 + 130_000, T0 + 190_000)
    assert got["a"] == pytest.approx(a[window].mean())
    kept = window & (np.arange(200) % 7 != 0)
    assert got["b"] == pytest.approx(b[kept].mean())
    assert means.mean(T0, T0 + 60_000) == {}  # older than keep_ms: forgotten
