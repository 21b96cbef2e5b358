"""The closed state of exact series (whole percentages: NVML's utilisation) as arrays, a row a series.

At a pane boundary every series of a worker closes on the same sample; kept as objects, each close
is some twenty Python steps a series (its sliding windows' hop panes, its since-start view, the
windows it emits). Here a series' hop panes are slots of a ring of counts per window, and a close
is a few array operations for every series that closes on the same pane: the fillings take the
pane's counts, the boundary's hop panes move into the rings, and the windows due are summed,
their quantiles and bytes taken together (docs/streams.md, "The exact bank").

The rules are :meth:`hpcinsight.streams.rolling.RollingSeries._close`'s, and the answers the same
to the bit (tests/test_exact_bank.py): the same windows, counts, totals (summed in the same
order), quantiles, bytes and checkpoints. A series leaves the bank for good at its first value
that is not a whole percentage (:meth:`ExactBank.summaries` gives its state as objects).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from hpcinsight.streams.rolling import RANKS, SINCE_START, Closed, RollingConfig, Summary, WindowState
from hpcinsight.streams.sketches import IntHistogram, histogram_bytes, quantile_rows

BINS = IntHistogram.BINS
#: a ring slot that holds no hop pane (no pane start: those are multiples of the hop, >= 0)
EMPTY = -1

#: a close's windows, each as (the index of its series in the close, the window)
Emitted = list[tuple[int, Closed]]


class ExactBank:
    """Rows of exact series' closed state: per sliding window a ring of hop-pane counts (a hop
    pane's slot is its start's hop number modulo the panes in a window) and the pane filling,
    and the since-start counts of the series' job."""

    def __init__(self, config: RollingConfig, capacity: int = 64) -> None:
        self.config = config
        self._specs = [(w.label, w.size_ms, w.hop_ms, w.size_ms // w.hop_ms) for w in config.windows]
        self._capacity = 0
        self._free: list[int] = []
        self._used = 0
        # per window: the ring (start, count, total, counts) and the filling (start, count, total, counts)
        self._ring_start: list[np.ndarray] = []
        self._ring_n: list[np.ndarray] = []
        self._ring_total: list[np.ndarray] = []
        self._ring_counts: list[np.ndarray] = []
        self._fill_start: list[np.ndarray] = []
        self._fill_n: list[np.ndarray] = []
        self._fill_total: list[np.ndarray] = []
        self._fill_counts: list[np.ndarray] = []
        self._since_n = np.zeros(0, dtype=np.int64)
        self._since_total = np.zeros(0)
        self._since_counts = np.zeros((0, BINS), dtype=np.int64)
        self._job_start = np.zeros(0, dtype=np.int64)
        self._since_sent_to = np.zeros(0, dtype=np.int64)
        self._job: list[str | None] = []
        self._grow(capacity)

    # -- rows -------------------------------------------------------------------------------

    def allocate(self) -> int:
        """A row for a new series, every window empty."""
        if self._free:
            return self._free.pop()
        if self._used == self._capacity:
            self._grow(2 * self._capacity)
        self._used += 1
        return self._used - 1

    def release(self, row: int) -> None:
        """Give back the row of a series that left (forgotten, restored, or turned fractional)."""
        self.reset(row)
        self._since_n[row], self._since_total[row], self._since_counts[row] = 0, 0.0, 0
        self._job_start[row], self._since_sent_to[row], self._job[row] = 0, 0, None
        self._free.append(row)

    def reset(self, row: int) -> None:
        """Start the row's sliding windows over (a long silence); its since-start view stays."""
        for i in range(len(self._specs)):
            self._ring_start[i][row], self._ring_n[i][row], self._ring_total[i][row], self._ring_counts[i][row] = EMPTY, 0, 0.0, 0
            self._fill_start[i][row], self._fill_n[i][row], self._fill_total[i][row], self._fill_counts[i][row] = 0, 0, 0.0, 0

    def _grow(self, capacity: int) -> None:
        def grown(a: np.ndarray, fill: float) -> np.ndarray:
            out = np.full((capacity, *a.shape[1:]), fill, dtype=a.dtype)
            out[: len(a)] = a
            return out

        if not self._ring_start:  # the first: empty arrays of the right shapes
            for _, _, _, slots in self._specs:
                self._ring_start.append(np.zeros((0, slots), dtype=np.int64))
                self._ring_n.append(np.zeros((0, slots), dtype=np.int64))
                self._ring_total.append(np.zeros((0, slots)))
                self._ring_counts.append(np.zeros((0, slots, BINS), dtype=np.int32))
                self._fill_start.append(np.zeros(0, dtype=np.int64))
                self._fill_n.append(np.zeros(0, dtype=np.int64))
                self._fill_total.append(np.zeros(0))
                self._fill_counts.append(np.zeros((0, BINS), dtype=np.int32))
        for i in range(len(self._specs)):
            self._ring_start[i] = grown(self._ring_start[i], EMPTY)
            self._ring_n[i] = grown(self._ring_n[i], 0)
            self._ring_total[i] = grown(self._ring_total[i], 0.0)
            self._ring_counts[i] = grown(self._ring_counts[i], 0)
            self._fill_start[i] = grown(self._fill_start[i], 0)
            self._fill_n[i] = grown(self._fill_n[i], 0)
            self._fill_total[i] = grown(self._fill_total[i], 0.0)
            self._fill_counts[i] = grown(self._fill_counts[i], 0)
        self._since_n = grown(self._since_n, 0)
        self._since_total = grown(self._since_total, 0.0)
        self._since_counts = grown(self._since_counts, 0)
        self._job_start = grown(self._job_start, 0)
        self._since_sent_to = grown(self._since_sent_to, 0)
        self._job += [None] * (capacity - len(self._job))
        self._capacity = capacity

    # -- closing ----------------------------------------------------------------------------

    def close(
        self,
        rows: np.ndarray,
        start: int,
        counts: np.ndarray,
        sizes: np.ndarray,
        totals: np.ndarray,
        jobs: Sequence[str | None],
        first_ms: np.ndarray,
    ) -> tuple[Emitted, list[Emitted], Emitted]:
        """Close base pane ``start`` of the series in ``rows`` (distinct): their values' histograms
        ``counts``, their numbers ``sizes`` and float64 sums ``totals``, the job of each pane's
        newest value and each series' first sample time. Returns what each emits, as
        :meth:`RollingSeries._close` orders it: the since-start views of jobs that ended, each
        sliding window's windows, the periodic since-start views."""
        end = start + self.config.base_ms
        has = np.flatnonzero(sizes > 0)
        ended: Emitted = []
        if has.size:
            ended = self._since_add(rows, has, start, counts, sizes, totals, jobs)
        windows: list[Emitted] = []
        for i, (_, _, hop, _) in enumerate(self._specs):
            if has.size:
                self._fill(i, rows[has], start - start % hop, counts[has], sizes[has], totals[has])
            windows.append(self._boundary(i, rows, end, first_ms) if end % hop == 0 else [])
        periodic: Emitted = []
        if end % self.config.since_start_every_ms == 0:
            due = np.flatnonzero(self._since_n[rows] > 0)
            if due.size:
                periodic = self._since_views(rows, due, end)
                self._since_sent_to[rows[due]] = end
        return ended, windows, periodic

    def _since_add(
        self,
        rows: np.ndarray,
        has: np.ndarray,
        start: int,
        counts: np.ndarray,
        sizes: np.ndarray,
        totals: np.ndarray,
        jobs: Sequence[str | None],
    ) -> Emitted:
        """Add the pane to each series' since-start view, or start a new one where the job
        changed (or none was open); the views of the jobs that ended."""
        held = self._job
        row_list = rows.tolist()
        began = self._since_n[rows[has]] == 0
        new = [k for k, fresh in zip(has.tolist(), began.tolist()) if fresh or jobs[k] != held[row_list[k]]]
        ended: Emitted = []
        if new:
            moved = np.array(new, dtype=np.int64)
            r = rows[moved]
            gone = moved[(self._since_n[r] > 0) & (self._since_sent_to[r] < start)]
            if gone.size:
                ended = self._since_views(rows, gone, start)
            self._since_counts[r] = counts[moved]
            self._since_n[r] = sizes[moved]
            self._since_total[r] = totals[moved]
            self._job_start[r] = start
            for k in new:
                held[row_list[k]] = jobs[k]
        if len(new) < has.size:
            kept = np.setdiff1d(has, np.array(new, dtype=np.int64), assume_unique=True)
            r = rows[kept]
            self._since_counts[r] += counts[kept]
            self._since_n[r] += sizes[kept]
            self._since_total[r] += totals[kept]
        return ended

    def _since_views(self, rows: np.ndarray, picked: np.ndarray, end: int) -> Emitted:
        r = rows[picked]
        counts = self._since_counts[r]
        (p25, p50, p95), blobs = quantile_rows(counts, RANKS), histogram_bytes(counts)
        n, total, started = self._since_n[r].tolist(), self._since_total[r].tolist(), self._job_start[r].tolist()
        held = self._job
        return [
            (k, Closed(SINCE_START, started[j], end, held[row], n[j], total[j], p25[j], p50[j], p95[j], blobs[j]))
            for j, (k, row) in enumerate(zip(picked.tolist(), r.tolist()))
        ]

    def _fill(self, i: int, rows: np.ndarray, hop_start: int, counts: np.ndarray, sizes: np.ndarray, totals: np.ndarray) -> None:
        """Add a pane to window ``i``'s filling hop pane of each row (begun where empty)."""
        fill_n = self._fill_n[i]
        began = rows[fill_n[rows] == 0]
        self._fill_start[i][began] = hop_start
        self._fill_counts[i][rows] += counts.astype(np.int32)
        fill_n[rows] += sizes
        self._fill_total[i][rows] += totals  # 0.0 + a total is the total: as a filling begun from the pane

    def _boundary(self, i: int, rows: np.ndarray, end: int, first_ms: np.ndarray) -> Emitted:
        """At a hop boundary of window ``i``: the fillings join the rings, the windows ending
        here are taken from each ring's panes since ``end - size``, and the oldest pane, in no
        later window, is dropped."""
        label, size, hop, slots = self._specs[i]
        ring_start, ring_n, ring_total, ring_counts = (
            self._ring_start[i],
            self._ring_n[i],
            self._ring_total[i],
            self._ring_counts[i],
        )
        fill_n = self._fill_n[i]
        filled = rows[fill_n[rows] > 0]
        if filled.size:
            starts = self._fill_start[i][filled]
            slot = (starts // hop) % slots
            ring_start[filled, slot] = starts
            ring_n[filled, slot] = fill_n[filled]
            ring_total[filled, slot] = self._fill_total[i][filled]
            ring_counts[filled, slot] = self._fill_counts[i][filled]
            fill_n[filled], self._fill_total[i][filled], self._fill_counts[i][filled] = 0, 0.0, 0
        begin = end - size
        held = ring_start[rows]
        out: Emitted = []
        # the panes of [begin, end), in order: the k-th starts at begin + k * hop, in its slot
        order = [((begin + k * hop) // hop) % slots for k in range(slots)]
        inside = [(held[:, s] == begin + k * hop) & (held[:, s] != EMPTY) for k, s in enumerate(order)]
        due = np.flatnonzero(np.logical_or.reduce(inside) & (first_ms <= begin))
        if due.size:
            r = rows[due]
            n = np.zeros(due.size, dtype=np.int64)
            total = np.zeros(due.size)
            counts = np.zeros((due.size, BINS), dtype=np.int64)
            for k, s in enumerate(order):
                take = inside[k][due]
                n += np.where(take, ring_n[r, s], 0)
                total = total + np.where(take, ring_total[r, s], 0.0)  # pane by pane, oldest first, as the objects sum
                counts += ring_counts[r, s] * take[:, np.newaxis]
            (p25, p50, p95), blobs = quantile_rows(counts, RANKS), histogram_bytes(counts)
            jobs, n_list, totals = self._job, n.tolist(), total.tolist()
            out = [
                (k, Closed(label, begin, end, jobs[row], n_list[j], totals[j], p25[j], p50[j], p95[j], blobs[j]))
                for j, (k, row) in enumerate(zip(due.tolist(), r.tolist()))
            ]
        stale = held < begin + hop
        if stale.any():
            held[stale] = EMPTY
            ring_start[rows] = held
        return out

    # -- state as objects (checkpoints, restore, leaving the bank) ---------------------------

    def summaries(self, row: int) -> tuple[list[WindowState], Summary | None, str | None, int, int]:
        """The row's state as :class:`RollingSeries` holds it: its windows, since-start view, job,
        the job's start and the end of the last since-start view emitted."""
        windows = []
        for i, w in enumerate(self.config.windows):
            window = WindowState(w)
            starts = self._ring_start[i][row]
            window.panes = deque(
                (
                    int(starts[s]),
                    self._summary(self._ring_counts[i][row, s], self._ring_n[i][row, s], self._ring_total[i][row, s]),
                )
                for s in np.argsort(starts, kind="stable")
                if starts[s] != EMPTY
            )
            window.filling_start = int(self._fill_start[i][row])
            if self._fill_n[i][row]:
                window.filling = self._summary(self._fill_counts[i][row], self._fill_n[i][row], self._fill_total[i][row])
            windows.append(window)
        since = None
        if self._since_n[row]:
            since = self._summary(self._since_counts[row], self._since_n[row], self._since_total[row])
        return windows, since, self._job[row], int(self._job_start[row]), int(self._since_sent_to[row])

    @staticmethod
    def _summary(counts: np.ndarray, n: np.integer, total: np.floating) -> Summary:
        return Summary(IntHistogram(counts.astype(np.int64)), int(n), float(total))

    def load(
        self, row: int, windows: Sequence[WindowState], since: Summary | None, job: str | None, job_start: int, sent_to: int
    ) -> None:
        """Put an exact series' state (every summary a histogram) into ``row``."""
        self.reset(row)
        for i, (w, (_, _, hop, slots)) in enumerate(zip(windows, self._specs)):
            for start, summary in w.panes:
                s = (start // hop) % slots
                self._ring_start[i][row, s], self._ring_n[i][row, s], self._ring_total[i][row, s] = (
                    start,
                    summary.count,
                    summary.total,
                )
                self._ring_counts[i][row, s] = summary.sketch.counts  # type: ignore[union-attr]  # exact: checked by the caller
            self._fill_start[i][row] = w.filling_start
            if w.filling is not None:
                self._fill_n[i][row], self._fill_total[i][row] = w.filling.count, w.filling.total
                self._fill_counts[i][row] = w.filling.sketch.counts  # type: ignore[union-attr]
        if since is not None:
            self._since_n[row], self._since_total[row] = since.count, since.total
            self._since_counts[row] = since.sketch.counts  # type: ignore[union-attr]
        self._job[row], self._job_start[row], self._since_sent_to[row] = job, job_start, sent_to
