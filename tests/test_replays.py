"""The sink's replay filter: a row goes when its GPU already has a row at or after its time."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from hpcinsight.sinks.replays import SeriesWatermarks


def samples(rows: list[tuple[str, int, int]]) -> pa.Table:
    nodes, gpus, ts = zip(*rows, strict=True)
    return pa.table({"node": pa.array(nodes), "gpu_index": pa.array(gpus, pa.uint8()), "ts": pa.array(ts, pa.timestamp("ms"))})


def rows_of(table: pa.Table) -> list[tuple[str, int, int]]:
    ts = table.column("ts").cast(pa.int64()).to_pylist()
    return list(zip(table.column("node").to_pylist(), table.column("gpu_index").to_pylist(), ts, strict=True))


def kept_by_rule(rows: list[tuple[str, int, int]], stored: dict[tuple[str, int], int]) -> list[tuple[str, int, int]]:
    """The rule, row by row: kept when later than every earlier time of its series, stored or not."""
    newest, kept = dict(stored), []
    for node, gpu, ts in rows:
        if ts > newest.get((node, gpu), -(2**62)):
            kept.append((node, gpu, ts))
        newest[(node, gpu)] = max(ts, newest.get((node, gpu), ts))
    return kept


def test_a_replay_inside_one_batch_is_dropped_too() -> None:
    """The worker restarted and forwarded 11 and 12 again within one batch of the sink: before,
    only rows at or before the stored mark went, and these two reached the rollups twice."""
    marks = SeriesWatermarks("gpu_samples")
    marks.newest[("n0", 0)] = 10
    batch = samples([("n0", 0, t) for t in (9, 11, 12, 11, 12, 13)] + [("n1", 0, 5), ("n1", 0, 5)])
    assert rows_of(marks.drop_replays(batch)) == [("n0", 0, 11), ("n0", 0, 12), ("n0", 0, 13), ("n1", 0, 5)]
    assert marks.dropped == 4 and marks.newest == {("n0", 0): 13, ("n1", 0): 5}


def test_the_rows_kept_do_not_depend_on_how_the_messages_are_cut_into_batches() -> None:
    """So a batch read again from Kafka after a crash keeps exactly the rows it kept the first
    time, however the first run's polls had cut it (hpcinsight.sinks.insert_journal)."""
    rng = np.random.default_rng(7)
    for trial in range(30):
        series = [(f"n{i}", g) for i in range(3) for g in range(2)]
        rows = []
        clock = {s: 0 for s in series}
        for _ in range(200):
            node, gpu = series[rng.integers(len(series))]
            step = int(rng.integers(-3, 4))  # replays and clock steps back as well as forward
            clock[(node, gpu)] += step
            rows.append((node, gpu, 1_000 + clock[(node, gpu)]))
        stored = {s: 1_000 + int(rng.integers(-5, 5)) for s in series[: trial % len(series)]}
        expected = kept_by_rule(rows, stored)
        whole = SeriesWatermarks("gpu_samples")
        whole.newest.update(stored)
        assert rows_of(whole.drop_replays(samples(rows))) == expected
        cut = SeriesWatermarks("gpu_samples")
        cut.newest.update(stored)
        bounds = sorted({0, len(rows), *rng.integers(0, len(rows), 5).tolist()})
        pieces = [rows_of(cut.drop_replays(samples(rows[a:b]))) for a, b in zip(bounds, bounds[1:], strict=False)]
        assert [r for piece in pieces for r in piece] == expected
        assert cut.newest == whole.newest and cut.dropped == whole.dropped == len(rows) - len(expected)
