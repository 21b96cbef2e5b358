"""KLL sketches: rank error within 1% against exact ranks, bounded size, exact merges."""

from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from hpcinsight.streams.sketches import (
    IntHistogram,
    QuantileSketch,
    RawValues,
    histogram_bytes,
    load_sketch,
    merge_sketches,
    quantile_rows,
    raw_rows,
)

RANKS = (0.25, 0.5, 0.95)
GENAI = Path(__file__).resolve().parents[2] / "shared" / "data" / "alibaba-genai-2026" / "pod_gpu_duty_cycle_anon.tar.gz"


def rank_errors(values: np.ndarray, sketch: QuantileSketch) -> list[float]:
    exact = np.sort(values.astype(np.float32))
    qs = sketch.quantiles(RANKS)
    assert qs is not None
    # the true rank of the returned value, as an interval (ties), against the asked rank
    errors = []
    for q, r in zip(qs, RANKS):
        lo = np.searchsorted(exact, q, side="left") / exact.size
        hi = np.searchsorted(exact, q, side="right") / exact.size
        errors.append(0.0 if lo <= r <= hi else min(abs(lo - r), abs(hi - r)))
    return errors


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(1).uniform(0, 100, 200_000),
        np.clip(np.random.default_rng(2).normal(85, 6, 200_000), 0, 100),
        np.concatenate([np.zeros(150_000), np.random.default_rng(3).uniform(90, 100, 50_000)]),  # idle, then busy
    ],
    ids=["uniform", "busy", "bimodal"],
)
def test_rank_error_within_one_percent(values: np.ndarray) -> None:
    sketch = QuantileSketch()
    sketch.update(values)
    assert sketch.count == values.size
    assert max(rank_errors(values, sketch)) <= 0.01
    assert QuantileSketch.rank_error() <= 0.01


def test_real_gpu_utilisation_series() -> None:
    if not GENAI.exists():
        pytest.skip(f"the Alibaba GenAI trace is not at {GENAI}")
    with tarfile.open(GENAI) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".csv"))
        rows = list(csv.DictReader(io.TextIOWrapper(tar.extractfile(member), "utf-8")))
    values = np.array([float(r["value"]) for r in rows])
    assert values.size > 100_000
    sketch = QuantileSketch()
    for chunk in np.array_split(values, 100):  # fed the way a worker would, batch by batch
        sketch.update(chunk)
    assert max(rank_errors(values, sketch)) <= 0.01


def test_size_stays_under_8_kb_per_window() -> None:
    sketch = QuantileSketch()
    sketch.update(np.random.default_rng(4).uniform(0, 100, 2_000_000))
    assert len(sketch.to_bytes()) <= 8 * 1024


def test_job_quantiles_are_merges_of_gpu_sketches() -> None:
    rng = np.random.default_rng(5)
    gpus = [rng.uniform(0, 100, 20_000) * (0.2 if i == 3 else 1.0) for i in range(8)]
    sketches = []
    for values in gpus:
        s = QuantileSketch()
        s.update(values)
        sketches.append(QuantileSketch.from_bytes(s.to_bytes()))  # as if read back from a table
    job = QuantileSketch.merged(sketches)
    assert job.count == sum(v.size for v in gpus)
    assert max(rank_errors(np.concatenate(gpus), job)) <= 0.01


def test_empty_sketch_has_no_quantiles() -> None:
    sketch = QuantileSketch()
    sketch.update([])
    assert sketch.quantiles() is None and sketch.count == 0


def test_histograms_as_rows_give_each_ones_quantiles_and_their_merge() -> None:
    """The job stage reads a window's GPU histograms as one array: the same medians and merge
    as one histogram at a time, empty and 8-byte ones included; a KLL among them, no rows."""
    from hpcinsight.streams.sketches import histogram_rows, row_quantiles

    rng = np.random.default_rng(3)
    hists = [IntHistogram(np.bincount(rng.integers(0, 101, int(n)), minlength=101)) for n in rng.integers(1, 60, 200)]
    hists += [IntHistogram(), IntHistogram(np.eye(101, dtype=np.int64)[7] * 5), IntHistogram(np.full(101, 1 << 33))]
    data = [h.to_bytes() for h in hists]
    for subset in (data[:200], data):  # all 4-byte counts (one join), then with an 8-byte one
        rows = histogram_rows(subset)
        assert rows is not None
        expected = [IntHistogram.from_bytes(d) for d in subset]
        assert (rows == np.stack([h.counts for h in expected])).all()
        for rank in (0.0, 0.25, 0.5, 0.95, 1.0):
            got = row_quantiles(rows, rank).tolist()
            want = [(h.quantiles([rank]) or [float("nan")])[0] for h in expected]
            assert np.allclose(got, want, equal_nan=True), rank
        assert (rows.sum(axis=0) == merge_sketches(expected).counts).all()  # type: ignore[union-attr]
    kll = QuantileSketch()
    kll.update([0.5, 1.5])
    assert histogram_rows([data[0], kll.to_bytes()]) is None and histogram_rows([]) is None


def test_histogram_rows_give_each_histograms_quantiles_and_bytes() -> None:
    rng = np.random.default_rng(3)
    rows = rng.integers(0, 5, size=(40, IntHistogram.BINS))
    rows[3] = 0
    rows[3, 17] = 9  # one value only
    rows[7, :] = 0
    rows[7, 100] = 1  # the top value
    rows[11, 2] = 1 << 33  # a count beyond 4 bytes
    ranks = (0.0, 0.25, 0.5, 0.95, 1.0)
    columns = quantile_rows(rows, ranks)
    blobs = histogram_bytes(rows)
    for r, row in enumerate(rows):
        histogram = IntHistogram(row.copy())
        assert [c[r] for c in columns] == histogram.quantiles(ranks), r
        assert blobs[r] == histogram.to_bytes(), r


ALL_RANKS = [i / 40 for i in range(41)]


@pytest.mark.parametrize("n", [1, 2, 7, 10, 60, 299, 300, 400])
def test_raw_values_answer_as_kll_does_up_to_its_k(n: int) -> None:
    """Up to k values KLL keeps them all, so the values themselves give its very answers."""
    rng = np.random.default_rng(n)
    for values in (rng.uniform(0, 700, n), rng.integers(900, 2000, n).astype(np.float64), np.repeat(rng.uniform(0, 1, 3), n)[:n]):
        raw, kll = RawValues(), QuantileSketch()
        for part in np.array_split(values, 4):  # pane by pane
            raw.update(part)
            kll.update(part)
        assert raw.count == kll.count == n
        assert raw.quantiles(ALL_RANKS) == kll.quantiles(ALL_RANKS)
        again = load_sketch(raw.to_bytes())
        assert isinstance(again, RawValues) and again.quantiles(ALL_RANKS) == kll.quantiles(ALL_RANKS)


def test_raw_values_merge_raw_within_k_and_as_kll_beyond() -> None:
    rng = np.random.default_rng(5)
    parts = [RawValues([rng.uniform(0, 300, 60).astype(np.float32)]) for _ in range(6)]
    counts = IntHistogram()
    counts.update(np.array([3.0, 50.0, 50.0]))
    small = merge_sketches([*parts, counts])
    assert isinstance(small, RawValues) and small.count == 363
    big = merge_sketches([*parts, RawValues([rng.uniform(0, 300, 60).astype(np.float32)])])
    assert isinstance(big, QuantileSketch) and big.count == 420
    with pytest.raises(ValueError):
        RawValues.from_bytes(RawValues._MAGIC + b"f" + bytes(4 * 401))


def test_raw_rows_give_each_rows_quantiles_and_bytes() -> None:
    rows = np.random.default_rng(9).uniform(0, 500, size=(30, 10)).astype(np.float32)
    columns, blobs = raw_rows(rows, ALL_RANKS)
    for r, row in enumerate(rows):
        raw = RawValues([row])
        assert [c[r] for c in columns] == raw.quantiles(ALL_RANKS)
        assert blobs[r] == raw.to_bytes()
