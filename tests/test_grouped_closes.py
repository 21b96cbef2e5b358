"""Closes run for many series at once (``close_queued``) give what each series gives alone.

The per-GPU stage queues the panes a batch's samples close and runs them all together, in
rounds across series (issue 19). Here random series (whole percentages, fractions, a mix that
turns exact counts into sketches, late samples, long silences, job changes, missing values) are
fed interleaved and closed at random points, and must give, per series, the same windows and the
same checkpoints at the same points as ``RollingSeries.add`` sample by sample.

Series stay under KLL's k values a sketch: beyond it KLL compacts at random, and two runs of the
same sketch differ (both within its error bound).
"""

from __future__ import annotations

import random

import msgspec
import pytest

from hpcinsight.streams.rolling import Closed, Finished, RollingConfig, RollingSeries, close_queued
from hpcinsight.streams.rolling import checkpoints as checkpoint_all
from hpcinsight.streams.sketches import IntHistogram, load_sketch
from hpcinsight.streams.windows import WindowSpec

CONFIGS = {
    "default": RollingConfig(),
    "short": RollingConfig(
        windows=(WindowSpec(10_000, 5_000), WindowSpec(30_000, 10_000)), base_ms=5_000, since_start_every_ms=20_000
    ),
}
Sample = tuple[int, float | None, str | None]


def _series(rng: random.Random, n: int) -> list[Sample]:
    t = rng.randrange(0, 10**6) * 1000
    kind = rng.choice(["whole", "fraction", "mixed", "wide"])
    job: str | None = "a"
    out: list[Sample] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.01:
            t += rng.choice([3_700_000, 400_000, 61_000])  # a silence, some longer than the longest window
        elif r < 0.05:
            t -= rng.randrange(0, 15_000)  # late, within the lateness or not
        else:
            t += rng.choice([1000, 1000, 1000, 500, 2500])
        if rng.random() < 0.01:
            job = rng.choice(["a", "b", None])
        value: float | None
        if kind == "whole" or (kind == "mixed" and rng.random() < 0.97):
            value = float(rng.randrange(0, 101))
        elif kind == "wide":
            value = float(rng.randrange(0, 2000))  # whole but not a percentage (clocks)
        else:
            value = rng.uniform(0, 400)
        out.append((t, None if rng.random() < 0.03 else value, job))
    return out


def _state(checkpoint: bytes) -> object:
    """A checkpoint's content: each summary as its count, total and quantiles. A KLL sketch
    queried before it was saved carries a flag saying its values are sorted; the values are
    the same."""
    first, closed_to, job, job_start, sent, since, windows = msgspec.msgpack.decode(checkpoint)

    def summary(state: list | None) -> object:
        if state is None:
            return None
        sketch = load_sketch(state[0])
        return sketch.count, sketch.quantiles([i / 20 for i in range(1, 20)]), state[1], state[2]

    panes = [([(s, summary(p)) for s, p in held], start, summary(filling)) for held, start, filling in windows]
    return first, closed_to, job, job_start, sent, summary(since), panes


def _alone(config: RollingConfig, samples: list[Sample]) -> tuple[list[list[Closed]], list[object]]:
    """Each sample through ``add``: the windows of each one that moved the series on, and the
    checkpoint after it."""
    series, windows, checkpoints = RollingSeries(config), [], []
    for sample in samples:
        before = series.closed_to
        closed = series.add(*sample)
        if series.closed_to != before:
            windows.append(list(closed))
            checkpoints.append(_state(series.checkpoint()))
        else:
            assert not closed
    return windows, checkpoints


def interleaved(
    series: list[RollingSeries], inputs: list[list[Sample]], rng: random.Random
) -> tuple[list[list[list[Closed]]], list[list[object]]]:
    """``inputs`` fed to ``series`` interleaved, in random batches each closed by ``close_queued``:
    per series, the windows of each group and the checkpoint after it."""
    windows: list[list[list[Closed]]] = [[] for _ in inputs]  # per series, per group
    checkpoints: list[list[object]] = [[] for _ in inputs]
    moved: list[list[int]] = [[] for _ in inputs]  # group indices, in the order queue made them
    fed = [0] * len(inputs)

    def on_groups(finished: list[Finished]) -> None:  # a round's checkpoints together, as the worker takes them
        for (_, token, _, _), data in zip(finished, checkpoint_all([(s, c, f) for s, _, c, f in finished])):
            i, group = token  # type: ignore[misc]
            assert group == len(checkpoints[i])
            checkpoints[i].append(_state(data))

    while any(f < len(samples) for f, samples in zip(fed, inputs)):
        for _ in range(rng.randrange(1, 400)):  # a batch: samples of the series interleaved
            i = rng.randrange(len(inputs))
            if fed[i] < len(inputs[i]):
                if series[i].queue(*inputs[i][fed[i]]) is not None:
                    moved[i].append(series[i].tag((i, len(checkpoints[i]) + len(moved[i]))))
                fed[i] += 1
        closed = close_queued(series, on_groups)
        for i, s in enumerate(series):
            groups = closed.get(s, [])
            assert len(groups) == len(moved[i])
            windows[i] += groups
            moved[i] = []
    return windows, checkpoints


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_closes_of_many_series_at_once_are_each_series_alone(seed: int, config: str) -> None:
    rng = random.Random(seed)
    cfg = CONFIGS[config]
    inputs = [_series(rng, rng.randrange(50, 350)) for _ in range(8)]
    expected = [_alone(cfg, samples) for samples in inputs]
    windows, checkpoints = interleaved([RollingSeries(cfg) for _ in inputs], inputs, rng)
    for i, (want_windows, want_checkpoints) in enumerate(expected):
        assert windows[i] == want_windows, i
        assert checkpoints[i] == want_checkpoints, i
    emitted = [w for want, _ in expected for group in want for w in group]
    assert len(emitted) > 100  # windows did close, exact and not
    assert {IntHistogram.is_serialised(w.sketch) for w in emitted} == {True, False}
