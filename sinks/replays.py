"""Samples the worker forwarded twice, caught before they reach the rollups.

The worker is at-least-once: after a restart it handles again the raw messages since its last
commit and forwards their samples again, as new messages at new offsets. ``gpu_samples`` is a
ReplacingMergeTree and collapses them on its key, but the rollup views (``gpu_rollup_1m`` and
those fed from it) aggregate every inserted row: a replayed sample would weigh twice in their
quantiles and counts, forever (found by the chaos campaign: 152 of 4,376 samples counted twice
after one worker kill).

A GPU's samples reach the sink in time order (one agent per node, one partition per node, the
worker forwards in partition order), so a sample stamped at or before the newest one already
stored for its GPU, or earlier in the same batch, is a replay. :class:`SeriesWatermarks` keeps
that newest timestamp per GPU (loaded from the store when partitions are assigned) and drops such
rows from each batch before it is inserted. The price: a node whose clock steps back by more than a sampling interval loses
samples until its clock passes the last stored one (counted in the sink's metrics).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class SeriesWatermarks:
    """Newest stored ``ts`` per series (``keys``) of one table; see the module's docstring."""

    def __init__(self, table: str, keys: tuple[str, ...] = ("node", "gpu_index"), ts: str = "ts") -> None:
        self.table, self.keys, self.ts = table, keys, ts
        self.newest: dict[tuple[Any, ...], int] = {}
        self.dropped = 0

    def load(self, client: Any, partition: int, lookback_hours: int = 24, before_offset: int | None = None) -> None:
        """Take the newest stored timestamp of every series read from Kafka ``partition`` (of the
        rows stored from offsets before ``before_offset``, if given: what was stored before an insert)."""
        keys = ", ".join(self.keys)
        before = "" if before_offset is None else " AND _offset < {o:UInt64}"
        result = client.query(
            f"SELECT {keys}, toUnixTimestamp64Milli(max({self.ts})) FROM `{self.table}` "
            f"WHERE _partition = {{p:UInt32}} AND {self.ts} >= now() - toIntervalHour({{h:UInt32}}){before} GROUP BY {keys}",
            parameters={"p": partition, "h": lookback_hours, "o": before_offset or 0},
        )
        for *key, newest in result.result_rows:
            k = tuple(key)
            self.newest[k] = max(self.newest.get(k, newest), int(newest))

    def drop_replays(self, table: pa.Table) -> pa.Table:
        """``table`` without its replays: a row is dropped when its series already has a row at or
        after its time, stored or earlier in ``table`` (rows are in Kafka order). The newest times
        then include what ``table`` adds (call it for rows about to be inserted). Whether a row is
        dropped depends only on the stored marks and the rows before it, not on how the rows are cut
        into tables, so the same messages read again give the same rows (see insert_journal)."""
        n = table.num_rows
        if n == 0:
            return table
        ts = pc.cast(table.column(self.ts), pa.int64()).to_numpy(zero_copy_only=False)
        # one integer per series, from each key column's dictionary codes
        series = np.zeros(n, np.int64)
        for k in self.keys:
            encoded = pc.dictionary_encode(table.column(k).combine_chunks(), null_encoding="encode")
            series = series * len(encoded.dictionary) + encoded.indices.to_numpy(zero_copy_only=False)
        # by series, Kafka order within each (a radix sort when the codes fit 16 bits: 3x faster)
        order = np.argsort(series.astype(np.uint16) if series.max() < 2**16 else series, kind="stable")
        sorted_series, sorted_ts = series[order], ts[order]
        first = np.empty(n, bool)  # each series' first row
        first[0] = True
        np.not_equal(sorted_series[1:], sorted_series[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        group = np.cumsum(first) - 1
        # each series' mark: its newest stored time, or below every row
        base = int(sorted_ts.min()) - 1
        first_rows = table.select(list(self.keys)).take(pa.array(order[starts]))
        keys = list(zip(*(first_rows.column(k).to_pylist() for k in self.keys), strict=True))
        marks = np.array([max(self.newest.get(key, base), base) for key in keys], np.int64) - base
        # the newest time before each row in its series, or its mark: a running max restarted per
        # series (series are shifted apart, so one maximum.accumulate serves them all)
        spread = group * (int(sorted_ts.max()) - base + 1)
        running = np.maximum.accumulate(sorted_ts - base + spread)
        threshold = np.empty(n, np.int64)
        threshold[1:] = running[:-1]
        threshold -= spread
        threshold[starts] = 0
        np.maximum(threshold, marks[group], out=threshold)
        stale_sorted = sorted_ts - base <= threshold
        ends = np.append(starts[1:], n) - 1
        for key, newest in zip(keys, (running[ends] - spread[ends] + base).tolist(), strict=True):
            if newest > self.newest.get(key, base):
                self.newest[key] = newest
        dropped = int(stale_sorted.sum())
        if not dropped:
            return table
        stale = np.zeros(n, bool)
        stale[order] = stale_sorted
        self.dropped += dropped
        return table.filter(pa.array(~stale))
