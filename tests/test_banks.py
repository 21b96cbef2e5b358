"""Series kept in banks give what series kept as objects give (issue 19).

The per-GPU stage keeps its series' closed state as arrays across series (``streams.bank``: an
exact bank of counts, a raw bank of values) and closes them a pane at a time for all. Here the
same random series as tests/test_grouped_closes.py (whole percentages in the exact bank,
fractions and clocks in the raw one, a mix that turns a banked series into objects, late
samples, long silences, job changes, missing values) run in shared banks, fed interleaved and
closed at random points, and must give, to the bit, the windows and checkpoints of the series
kept as objects sample by sample; a checkpoint of either restores into the other; rows given
back are clean when taken again. Past KLL's k values, where KLL compacts at random, the windows
must agree in all but the sketch's draw: counts, totals, kinds, and quantiles within its error.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from hpcinsight.streams.bank import Banks
from hpcinsight.streams.rolling import Closed, RollingConfig, RollingSeries, close_queued
from hpcinsight.streams.sketches import IntHistogram, QuantileSketch, RawValues, load_sketch
from tests.test_grouped_closes import CONFIGS, Sample, _alone, _series, interleaved


def _aligned(rng: random.Random, n: int, gpus: int) -> list[list[Sample]]:
    """GPUs of one node: sampled at the same instants, so their panes close on the same sample
    (one bank call for all); some idle, one job moving across them."""
    t = rng.randrange(0, 10**6) * 1000
    out: list[list[Sample]] = [[] for _ in range(gpus)]
    for k in range(n):
        t += 1000
        for g in range(gpus):
            job = None if g == 0 else ("a" if k < n // 2 or g % 2 else "b")
            value = None if rng.random() < 0.02 else float(rng.randrange(0, 101) if g % 3 else 0)
            out[g].append((t, value, job))
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_banked_series_give_what_series_as_objects_give(seed: int, config: str) -> None:
    rng = random.Random(1000 + seed)
    cfg = CONFIGS[config]
    inputs = [_series(rng, rng.randrange(50, 350)) for _ in range(8)] + _aligned(rng, 400, 6)
    expected = [_alone(cfg, samples) for samples in inputs]
    banks = Banks(cfg, capacity=4)  # grows while the series come
    series = [RollingSeries(cfg, banks) for _ in inputs]
    windows, checkpoints = interleaved(series, inputs, rng)
    assert {s._bank for s in series} >= {banks.exact, banks.raw}  # both banks held series
    for i, (want_windows, want_checkpoints) in enumerate(expected):
        assert windows[i] == want_windows, i
        assert checkpoints[i] == want_checkpoints, i
    emitted = [w for want, _ in expected for group in want for w in group]
    assert sum(IntHistogram.is_serialised(w.sketch) for w in emitted) > 200  # the bank's own windows
    assert {IntHistogram.is_serialised(w.sketch) for w in emitted} == {True, False}


def _feed(series: RollingSeries, samples: list[Sample]) -> tuple[list[list[Closed]], list[bytes]]:
    windows, checkpoints = [], []
    for sample in samples:
        before = series.closed_to
        closed = series.add(*sample)
        if series.closed_to != before:
            windows.append(list(closed))
            checkpoints.append(series.checkpoint())
    return windows, checkpoints


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_a_checkpoint_restores_into_the_bank_and_out_of_it(seed: int, config: str) -> None:
    """A checkpoint taken as objects restores into a bank, one taken in a bank restores as
    objects, and the restored series go on alike, checkpoints byte for byte."""
    rng = random.Random(2000 + seed)
    cfg = CONFIGS[config]
    samples = [(t, float(rng.randrange(0, 101)) if rng.random() > 0.03 else None, job) for t, _, job in _series(rng, 500)]
    cut = len(samples) // 2
    banks = Banks(cfg)
    whole = RollingSeries(cfg)
    banked = RollingSeries(cfg, banks)
    _feed(whole, samples[:cut])
    _feed(banked, samples[:cut])
    assert whole.checkpoint() == banked.checkpoint()
    into = RollingSeries.from_checkpoint(cfg, whole.checkpoint(), banks)
    out_of = RollingSeries.from_checkpoint(cfg, banked.checkpoint())
    assert into._row is not None and out_of._row is None
    want = _feed(out_of, samples[cut:])
    assert _feed(into, samples[cut:]) == want
    assert want[0] and want[1]


def test_a_row_given_back_is_clean_when_taken_again() -> None:
    cfg = CONFIGS["short"]
    rng = random.Random(7)
    samples = [(t, float(rng.randrange(0, 101)), "a") for t, _, _ in _series(rng, 200)]
    banks = Banks(cfg, capacity=1)
    first = RollingSeries(cfg, banks)
    _feed(first, samples)
    row = first._row
    first.release()
    again = RollingSeries(cfg, banks)
    assert again._row == row
    assert _feed(again, samples) == _feed(RollingSeries(cfg), samples)


def test_a_banked_series_turned_fractional_goes_on_as_objects() -> None:
    cfg = RollingConfig()
    banks = Banks(cfg)
    t0 = 3_600_000
    samples: list[Sample] = [(t0 + k * 1000, float(k % 100), "a") for k in range(120)]
    samples += [(t0 + k * 1000, 250.5 + k, "a") for k in range(120, 195)]  # under KLL's k in all: no random compaction
    banked = RollingSeries(cfg, banks)
    got = _feed(banked, samples)
    assert banked._row is None and banks.exact._free == [0]  # left the bank, its row given back
    assert got == _feed(RollingSeries(cfg), samples)


def test_one_bank_call_closes_a_pane_for_every_series() -> None:
    """The point of the bank: series closing the same pane are one call, whatever their number."""
    cfg = CONFIGS["short"]
    banks = Banks(cfg)
    bank = banks.exact
    calls = []
    close = bank.close

    def counted(rows: np.ndarray, *args: object) -> object:
        calls.append(len(rows))
        return close(rows, *args)  # type: ignore[arg-type]

    bank.close = counted  # type: ignore[method-assign]
    series = [RollingSeries(cfg, banks) for _ in range(50)]
    for k in range(12):
        for s in series:
            s.queue(3_600_000 + k * 1000, 50.0, "a")
    close_queued(series)
    assert calls and set(calls) == {50}


def _kinds(closed: list[list[Closed]]) -> list[tuple[object, ...]]:
    """The windows but for KLL's draw: where, whose, how many, their sum, of what kind."""
    return [
        (c.window, c.start_ms, c.end_ms, c.job_id, c.count, c.total, type(load_sketch(c.sketch)))
        for group in closed
        for c in group
    ]


def test_past_kll_k_the_raw_bank_merges_as_the_objects_do() -> None:
    """Power for 40 minutes at 1 Hz: hour panes and since-start views past KLL's k turn to KLL
    sketches in the raw bank as in the objects, windows of both kinds merge alike."""
    cfg = RollingConfig()
    rng = random.Random(11)
    t0 = 7_200_000
    samples: list[Sample] = [(t0 + k * 1000, rng.uniform(100.0, 400.0), "a" if k < 1800 else "b") for k in range(2400)]
    banks = Banks(cfg)
    banked = RollingSeries(cfg, banks)
    got = _feed(banked, samples)
    want = _feed(RollingSeries(cfg), samples)
    assert banked._bank is banks.raw
    assert _kinds(got[0]) == _kinds(want[0])
    sketched = [
        (a, b) for ga, gb in zip(got[0], want[0]) for a, b in zip(ga, gb) if isinstance(load_sketch(b.sketch), QuantileSketch)
    ]
    assert len(sketched) > 20  # hour windows and since-start views past k
    for a, b in sketched:
        assert abs(a.p50 - b.p50) < 0.03 * 300 and abs(a.p95 - b.p95) < 0.03 * 300, (a, b)
    raw = [(a, b) for ga, gb in zip(got[0], want[0]) for a, b in zip(ga, gb) if RawValues.is_serialised(b.sketch)]
    assert raw and all(a == b for a, b in raw)  # the 1 and 5 minute windows: to the bit
    assert len(got[1]) == len(want[1])


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_raw_banked_series_checkpoint_byte_for_byte(config: str) -> None:
    """Power under KLL's k: the raw bank's windows and checkpoints are the objects' bytes."""
    cfg = CONFIGS[config]
    rng = random.Random(5)
    samples = [(t, rng.uniform(50.0, 400.0) if rng.random() > 0.03 else None, job) for t, _, job in _series(rng, 380)]
    banks = Banks(cfg)
    banked = RollingSeries(cfg, banks)
    got = _feed(banked, samples)
    assert banked._bank is banks.raw
    assert got == _feed(RollingSeries(cfg), samples)
    assert got[1]


def test_a_summary_of_exactly_k_values_stays_raw() -> None:
    """KLL's k values (400) in the since-start view and the hour's hop pane: still raw, as the
    objects keep them; a KLL sketch only past k."""
    cfg = RollingConfig()
    rng = random.Random(3)
    t0 = 1_200_000 * 10
    samples: list[Sample] = [(t0 + k * 1000, rng.uniform(100.0, 400.0), "a") for k in range(400)]
    samples.append((t0 + 402_000, None, "a"))  # closes the last pane without a value
    banks = Banks(cfg)
    banked = RollingSeries(cfg, banks)
    got = _feed(banked, samples)
    assert got == _feed(RollingSeries(cfg), samples)
    windows, since, *_ = banks.raw.state(banked._row)  # type: ignore[arg-type]
    assert since is not None and since[1] == 400 and RawValues.is_serialised(since[0])


def test_a_checkpoint_past_the_banks_counts_restores_as_objects() -> None:
    """The exact bank counts a hop pane in int32: a checkpoint whose pane holds more (none made at
    1 Hz would; a hand-made one can) restores as objects and counts on without wrapping."""
    import msgspec

    from hpcinsight.streams.rolling import SeriesState

    cfg = CONFIGS["short"]
    t0 = 3_600_000
    samples: list[Sample] = [(t0 + k * 1000, float(k % 7), "a") for k in range(60)]
    whole = RollingSeries(cfg)
    _feed(whole, samples[:40])
    state = msgspec.msgpack.decode(whole.checkpoint(), type=SeriesState)
    panes, filling_start, filling = state.windows[0]
    assert panes, "a hop pane to swell"
    start, _ = panes[-1]  # the newest: in the next window
    counts = np.zeros(IntHistogram.BINS, dtype=np.int64)
    counts[3] = 3_000_000_000  # past int32
    swollen = (IntHistogram(counts).to_bytes(), 3_000_000_000, 9_000_000_000.0)
    state.windows[0] = ([*panes[:-1], (start, swollen)], filling_start, filling)
    data = msgspec.msgpack.encode(state)

    banks = Banks(cfg)
    restored = RollingSeries.from_checkpoint(cfg, data, banks)
    assert restored._row is None and banks.exact._used == 0  # stayed as objects
    want = _feed(RollingSeries.from_checkpoint(cfg, data), samples[40:])
    got = _feed(restored, samples[40:])
    assert got == want
    assert any(c.count >= 3_000_000_000 for group in got[0] for c in group)  # counted, not wrapped
