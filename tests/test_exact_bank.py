"""Series kept in an exact bank give, to the bit, what series kept as objects give (issue 19).

The per-GPU stage keeps its exact series' closed state as arrays across series
(``streams.bank.ExactBank``) and closes them a pane at a time for all. Here the same random
series as tests/test_grouped_closes.py (whole percentages, fractions that turn a banked series
into objects, late samples, long silences, job changes, missing values) run in one shared bank,
fed interleaved and closed at random points, and must give the windows and checkpoints of the
series kept as objects sample by sample; a checkpoint of either restores into the other; rows
given back are clean when taken again.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from hpcinsight.streams.bank import ExactBank
from hpcinsight.streams.rolling import Closed, RollingConfig, RollingSeries, close_queued
from hpcinsight.streams.sketches import IntHistogram
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
    bank = ExactBank(cfg, capacity=4)  # grows while the series come
    windows, checkpoints = interleaved([RollingSeries(cfg, bank) for _ in inputs], inputs, rng)
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
    bank = ExactBank(cfg)
    whole = RollingSeries(cfg)
    banked = RollingSeries(cfg, bank)
    _feed(whole, samples[:cut])
    _feed(banked, samples[:cut])
    assert whole.checkpoint() == banked.checkpoint()
    into = RollingSeries.from_checkpoint(cfg, whole.checkpoint(), bank)
    out_of = RollingSeries.from_checkpoint(cfg, banked.checkpoint())
    assert into._row is not None and out_of._row is None
    want = _feed(out_of, samples[cut:])
    assert _feed(into, samples[cut:]) == want
    assert want[0] and want[1]


def test_a_row_given_back_is_clean_when_taken_again() -> None:
    cfg = CONFIGS["short"]
    rng = random.Random(7)
    samples = [(t, float(rng.randrange(0, 101)), "a") for t, _, _ in _series(rng, 200)]
    bank = ExactBank(cfg, capacity=1)
    first = RollingSeries(cfg, bank)
    _feed(first, samples)
    row = first._row
    first.release()
    again = RollingSeries(cfg, bank)
    assert again._row == row
    assert _feed(again, samples) == _feed(RollingSeries(cfg), samples)


def test_a_banked_series_turned_fractional_goes_on_as_objects() -> None:
    cfg = RollingConfig()
    bank = ExactBank(cfg)
    t0 = 3_600_000
    samples: list[Sample] = [(t0 + k * 1000, float(k % 100), "a") for k in range(120)]
    samples += [(t0 + k * 1000, 250.5 + k, "a") for k in range(120, 195)]  # under KLL's k in all: no random compaction
    banked = RollingSeries(cfg, bank)
    got = _feed(banked, samples)
    assert banked._row is None and bank._free == [0]  # left the bank, its row given back
    assert got == _feed(RollingSeries(cfg), samples)


def test_one_bank_call_closes_a_pane_for_every_series() -> None:
    """The point of the bank: series closing the same pane are one call, whatever their number."""
    cfg = CONFIGS["short"]
    bank = ExactBank(cfg)
    calls = []
    close = bank.close

    def counted(rows: np.ndarray, *args: object) -> object:
        calls.append(len(rows))
        return close(rows, *args)  # type: ignore[arg-type]

    bank.close = counted  # type: ignore[method-assign]
    series = [RollingSeries(cfg, bank) for _ in range(50)]
    for k in range(12):
        for s in series:
            s.queue(3_600_000 + k * 1000, 50.0, "a")
    close_queued(series)
    assert calls and set(calls) == {50}
