"""The per-GPU stage restored from its checkpoints emits what it would have emitted uninterrupted.

In process, without a broker: the latest checkpoint of every series taken mid-period, the raw
samples replayed from just before the oldest as ``recovery.rebuild_gpu_stage`` does, then the
rest of the stream handled. The integration tests kill real workers; this pins the state logic.
"""

from __future__ import annotations

from bench.stream import GPUS_PER_NODE, _messages
from hpcinsight.schemas.catalog import GPU_QUANTILES, STREAM_STATE
from hpcinsight.schemas.events import StateCheckpoint
from hpcinsight.streams.processor import Output, SampleProcessor

NODES, MINUTES = 4, 6
T0 = 1_699_999_200_000  # an hour's start; nothing here reads the wall clock but the check for samples from the future


def _ticks() -> list[tuple[int, list[tuple[bytes, bytes]]]]:
    """Each second's raw messages, one a node, with the second's timestamp."""
    data = _messages(NODES, MINUTES * 60, T0)
    return [(T0 + k * 1000, data[k * NODES : (k + 1) * NODES]) for k in range(MINUTES * 60)]


def _handle(processor: SampleProcessor, messages: list[tuple[bytes, bytes]]) -> list[Output]:
    return [o for key, value in messages for o in processor.handle("raw", 0, 0, key, value)]


def test_restored_from_checkpoints_the_stage_emits_what_it_would_have() -> None:
    ticks = _ticks()
    cut = len(ticks) * 2 // 3 + 7  # mid-period for every series

    whole = SampleProcessor()
    expected = [_quantiles(_handle(whole, m)) for _, m in ticks]

    before = SampleProcessor()
    latest: dict[str, StateCheckpoint] = {}
    for _, m in ticks[:cut]:
        for o in _handle(before, m):
            if o.topic is STREAM_STATE:
                for record in STREAM_STATE.codec.decode(o.value):
                    latest[record.series] = record
    assert len(latest) == NODES * GPUS_PER_NODE * 3

    after = SampleProcessor()
    for record in latest.values():
        after.restore_series(0, record)
    rolling = after.config.rolling
    start = min(c.ts for c in latest.values()) - (rolling.lateness_ms + 2 * rolling.base_ms + after.config.replay_margin_ms)
    for ts, m in ticks[:cut]:
        if ts >= start:
            for _key, value in m:
                after.replay(0, value)
    got = [_quantiles(_handle(after, m)) for _, m in ticks[cut:]]
    assert got == expected[cut:] and any(got)


def _quantiles(outputs: list[Output]) -> list[tuple[object, ...]]:
    """The windows emitted, their numbers exact for the histogram series and within float32 for KLL's."""
    return [
        (q.gpu_uuid, q.metric, q.window, q.window_start, q.window_end, q.count, q.p25, q.p50, q.p95, round(q.mean, 3))
        for o in outputs
        if o.topic is GPU_QUANTILES
        for q in GPU_QUANTILES.codec.decode(o.value)
    ]


def test_each_series_checkpoints_once_a_period_and_not_all_at_the_same_close() -> None:
    processor = SampleProcessor()
    every = processor.config.checkpoint_every_ms
    taken: dict[str, list[int]] = {}
    for _, m in _ticks():
        for o in _handle(processor, m):
            if o.topic is STREAM_STATE:
                for record in STREAM_STATE.codec.decode(o.value):
                    taken.setdefault(record.series, []).append(record.ts)
    assert len(taken) == NODES * GPUS_PER_NODE * 3
    for series, times in taken.items():
        later = times[1:]  # the first is at the series' first close
        assert len(later) >= MINUTES - 1, series
        assert all(b - a == every for a, b in zip(later, later[1:])), (series, times)
    phases = {times[1] % every for times in taken.values()}
    base = processor.config.rolling.base_ms
    assert len(phases) == every // base  # 96 series over the 6 closes of a minute: each close takes some
