"""Samples the worker forwarded twice, caught before they reach the rollups.

The worker is at-least-once: after a restart it handles again the raw messages since its last
commit and forwards their samples again, as new messages at new offsets. ``gpu_samples`` is a
ReplacingMergeTree and collapses them on its key, but the rollup views (``gpu_rollup_1m`` and
those fed from it) aggregate every inserted row: a replayed sample would weigh twice in their
quantiles and counts, forever (found by the chaos campaign: 152 of 4,376 samples counted twice
after one worker kill).

A GPU's samples reach the sink in time order (one agent per node, one partition per node, the
worker forwards in partition order), so a sample stamped at or before the newest one already
stored for its GPU is a replay. :class:`SeriesWatermarks` keeps that newest timestamp per GPU
(loaded from the store when partitions are assigned) and drops such rows from each batch before
it is inserted. The price: a node whose clock steps back by more than a sampling interval loses
samples until its clock passes the last stored one (counted in the sink's metrics).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


class SeriesWatermarks:
    """Newest stored ``ts`` per series (``keys``) of one table; see the module's docstring."""

    def __init__(self, table: str, keys: tuple[str, ...] = ("node", "gpu_index"), ts: str = "ts") -> None:
        self.table, self.keys, self.ts = table, keys, ts
        self.newest: dict[tuple[Any, ...], int] = {}
        self.dropped = 0

    def load(self, client: Any, partition: int, lookback_hours: int = 24) -> None:
        """Take the newest stored timestamp of every series read from Kafka ``partition``."""
        keys = ", ".join(self.keys)
        result = client.query(
            f"SELECT {keys}, toUnixTimestamp64Milli(max({self.ts})) FROM `{self.table}` "
            f"WHERE _partition = {{p:UInt32}} AND {self.ts} >= now() - toIntervalHour({{h:UInt32}}) GROUP BY {keys}",
            parameters={"p": partition, "h": lookback_hours},
        )
        for *key, newest in result.result_rows:
            k = tuple(key)
            self.newest[k] = max(self.newest.get(k, newest), int(newest))

    def drop_replays(self, table: pa.Table) -> pa.Table:
        """``table`` without the rows at or before their series' newest stored time; the newest
        times then include what ``table`` adds (call it for rows about to be inserted)."""
        if table.num_rows == 0:
            return table
        ts = pc.cast(table.column(self.ts), pa.int64())
        spans = (
            pa.table({**{k: table.column(k) for k in self.keys}, "_ts": ts})
            .group_by(list(self.keys))
            .aggregate([("_ts", "min"), ("_ts", "max")])
        )
        keys = [spans.column(k).to_pylist() for k in self.keys]
        lows, highs = spans.column("_ts_min").to_pylist(), spans.column("_ts_max").to_pylist()
        affected: dict[str, list[Any]] = {k: [] for k in self.keys}
        marks: list[int] = []
        for i, (low, high) in enumerate(zip(lows, highs, strict=True)):
            key = tuple(column[i] for column in keys)
            newest = self.newest.get(key)
            if newest is not None and low <= newest:
                for k, column in zip(self.keys, keys, strict=True):
                    affected[k].append(column[i])
                marks.append(newest)
            if newest is None or high > newest:
                self.newest[key] = high
        if not marks:
            return table
        # rows of the affected series, with their mark, by a join: no per-row Python
        rows = pa.table(
            {**{k: table.column(k) for k in self.keys}, "_ts": ts, "_row": pa.array(range(table.num_rows), pa.int64())}
        )
        joined = rows.join(
            pa.table(
                {
                    **{k: pa.array(v, table.schema.field(k).type) for k, v in affected.items()},
                    "_mark": pa.array(marks, pa.int64()),
                }
            ),
            list(self.keys),
        )
        stale = joined.filter(pc.less_equal(joined.column("_ts"), joined.column("_mark"))).column("_row")
        if len(stale) == 0:
            return table
        keep = pc.invert(pc.is_in(pa.array(range(table.num_rows), pa.int64()), value_set=stale.combine_chunks()))
        self.dropped += len(stale)
        return table.filter(keep)
