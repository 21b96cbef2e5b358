"""Series' closed state as arrays, a row a series: their pane closes at once for all of a worker.

At a pane boundary every series of a worker closes on the same sample; kept as objects, each close
is some twenty Python steps a series (its sliding windows' hop panes, its since-start view, the
windows it emits). Here a series' hop panes are slots of a ring per window, and a close is a few
array operations for every series that closes the same pane: the fillings take the pane, at a
hop boundary they move into the rings, and the windows due are merged from the slots, their
quantiles and bytes taken together (docs/streams.md, "The banks").

Two banks, by what a series' values are: :class:`ExactBank` keeps counts (whole percentages:
NVML's utilisation), :class:`RawBank` the values themselves, up to KLL's ``k`` a summary, and a
KLL sketch beyond (power, clocks). The rules are
:meth:`hpcinsight.streams.rolling.RollingSeries._close`'s, and the answers the same
(tests/test_banks.py): the same windows, counts, totals (summed in the same order), quantiles,
bytes and checkpoints, to the bit but where a KLL sketch compacts (it draws at random).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from hpcinsight.streams.rolling import (
    RANKS,
    SINCE_START,
    BankState,
    Closed,
    Pane,
    RollingConfig,
    Summary,
    SummaryState,
    WindowCheckpoint,
    WindowState,
    loaded_windows,
)
from hpcinsight.streams.sketches import (
    IntHistogram,
    QuantileSketch,
    RawValues,
    Sketch,
    histogram_bytes,
    merge_sketches,
    quantile_rows,
    raw_rows,
    widen,
)

BINS = IntHistogram.BINS
LIMIT = RawValues.LIMIT
#: a ring slot that holds no hop pane (no pane start: those are multiples of the hop, >= 0)
EMPTY = -1

#: a close's windows, each as (the index of its series in the close, the window)
Emitted = list[tuple[int, Closed]]
#: a summary's figures for a window: (p25, p50, p95, bytes), one per row
Views = list[tuple[float, float, float, bytes]]


class _Bank:
    """What both banks keep alike: rows, the rings' and fillings' starts, counts and totals, the
    since-start view's count and total, and each series' job; and the close's bookkeeping. The
    values themselves (the payload) are the subclass's."""

    # per window, a row each: the ring's hop panes (start, count, total) and the filling's
    _ring_start: list[np.ndarray]
    _ring_n: list[np.ndarray]
    _ring_total: list[np.ndarray]
    _fill_start: list[np.ndarray]
    _fill_n: list[np.ndarray]
    _fill_total: list[np.ndarray]
    # a row each: the since-start view (count, total), its job's start, the last view's end
    _since_n: np.ndarray
    _since_total: np.ndarray
    _job_start: np.ndarray
    _since_sent_to: np.ndarray

    def __init__(self, config: RollingConfig) -> None:
        self.config = config
        self._specs = [(w.label, w.size_ms, w.hop_ms, w.size_ms // w.hop_ms) for w in config.windows]
        self._capacity = 0
        self._free: list[int] = []
        self._used = 0
        self._arrays: dict[str, tuple[list[np.ndarray] | None, float]] = {}  # name -> (per window or None, fill)
        for name, fill in (("ring_start", EMPTY), ("ring_n", 0), ("ring_total", 0.0)):
            self._declare(
                name,
                [np.zeros((0, slots), dtype=np.float64 if name == "ring_total" else np.int64) for *_, slots in self._specs],
                fill,
            )
        for name, fill in (("fill_start", 0), ("fill_n", 0), ("fill_total", 0.0)):
            self._declare(name, [np.zeros(0, dtype=np.float64 if name == "fill_total" else np.int64) for _ in self._specs], fill)
        self._declare("since_n", np.zeros(0, dtype=np.int64), 0)
        self._declare("since_total", np.zeros(0), 0.0)
        self._declare("job_start", np.zeros(0, dtype=np.int64), 0)
        self._declare("since_sent_to", np.zeros(0, dtype=np.int64), 0)
        self._job: list[str | None] = []

    def _declare(self, name: str, arrays: np.ndarray | list[np.ndarray], fill: float) -> None:
        """An array grown with the rows (or one per window), new rows set to ``fill``."""
        self._arrays[name] = (arrays if isinstance(arrays, list) else None, fill)
        setattr(self, "_" + name, arrays)

    def _grow(self, capacity: int) -> None:
        def grown(a: np.ndarray, fill: float) -> np.ndarray:
            out = np.full((capacity, *a.shape[1:]), fill, dtype=a.dtype)
            out[: len(a)] = a
            return out

        for name, (per_window, fill) in self._arrays.items():
            if per_window is None:
                setattr(self, "_" + name, grown(getattr(self, "_" + name), fill))
            else:
                arrays = getattr(self, "_" + name)
                arrays[:] = [grown(a, fill) for a in arrays]
        self._job += [None] * (capacity - len(self._job))
        self._capacity = capacity

    # -- rows -------------------------------------------------------------------------------

    def allocate(self) -> int:
        """A row for a new series, every window empty."""
        if self._free:
            return self._free.pop()
        if self._used == self._capacity:
            self._grow(max(64, 2 * self._capacity))
        self._used += 1
        return self._used - 1

    def release(self, row: int) -> None:
        """Give back the row of a series that left (forgotten, restored, or moved)."""
        self.reset(row)
        self._since_n[row], self._since_total[row] = 0, 0.0
        self._job_start[row], self._since_sent_to[row], self._job[row] = 0, 0, None
        self._clear_since(row)
        self._free.append(row)

    def reset(self, row: int) -> None:
        """Start the row's sliding windows over (a long silence); its since-start view stays."""
        for i in range(len(self._specs)):
            self._ring_start[i][row], self._ring_n[i][row], self._ring_total[i][row] = EMPTY, 0, 0.0
            self._fill_start[i][row], self._fill_n[i][row], self._fill_total[i][row] = 0, 0, 0.0
            self._clear_window(i, row)

    def is_empty(self, row: int) -> bool:
        """Whether the row holds nothing yet (no value closed since the series began)."""
        return not self._since_n[row] and all(
            not self._fill_n[i][row] and (self._ring_start[i][row] == EMPTY).all() for i in range(len(self._specs))
        )

    # -- closing ----------------------------------------------------------------------------

    def close(
        self, rows: np.ndarray, start: int, pane: Pane, jobs: Sequence[str | None], first_ms: np.ndarray
    ) -> tuple[Emitted, list[Emitted], Emitted]:
        """Close base pane ``start`` of the series in ``rows`` (distinct), given the pane's values,
        the job of each one's newest value and each series' first sample time. Returns what each
        emits, as :meth:`RollingSeries._close` orders it: the since-start views of jobs that
        ended, each sliding window's windows, the periodic since-start views."""
        end = start + self.config.base_ms
        has = np.flatnonzero(pane.sizes > 0)
        ended: Emitted = []
        if has.size:
            ended = self._since_pane(rows, has, start, pane, jobs)
        windows: list[Emitted] = []
        for i, (_, _, hop, _) in enumerate(self._specs):
            if has.size:
                self._fill(i, rows[has], start - start % hop, pane.part(has))
            windows.append(self._boundary(i, rows, end, first_ms) if end % hop == 0 else [])
        periodic: Emitted = []
        if end % self.config.since_start_every_ms == 0:
            due = np.flatnonzero(self._since_n[rows] > 0)
            if due.size:
                periodic = self._since_views(rows, due, end)
                self._since_sent_to[rows[due]] = end
        return ended, windows, periodic

    def _since_pane(self, rows: np.ndarray, has: np.ndarray, start: int, pane: Pane, jobs: Sequence[str | None]) -> Emitted:
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
            self._since_restart(r, pane.part(moved))
            self._since_n[r] = pane.sizes[moved]
            self._since_total[r] = pane.totals[moved]
            self._job_start[r] = start
            for k in new:
                held[row_list[k]] = jobs[k]
        if len(new) < has.size:
            kept = np.setdiff1d(has, np.array(new, dtype=np.int64), assume_unique=True)
            r = rows[kept]
            self._since_add(r, pane.part(kept))
            self._since_n[r] += pane.sizes[kept]
            self._since_total[r] += pane.totals[kept]
        return ended

    def _since_views(self, rows: np.ndarray, picked: np.ndarray, end: int) -> Emitted:
        r = rows[picked]
        views = self._since_figures(r)
        n, total, started = self._since_n[r].tolist(), self._since_total[r].tolist(), self._job_start[r].tolist()
        held = self._job
        return [
            (k, Closed(SINCE_START, started[j], end, held[row], n[j], total[j], *views[j]))
            for j, (k, row) in enumerate(zip(picked.tolist(), r.tolist()))
        ]

    def _fill(self, i: int, rows: np.ndarray, hop_start: int, pane: Pane) -> None:
        """Add a pane to window ``i``'s filling hop pane of each row (begun where empty)."""
        fill_n = self._fill_n[i]
        began = fill_n[rows] == 0
        self._fill_start[i][rows[began]] = hop_start
        self._fill_add(i, rows, pane)
        fill_n[rows] += pane.sizes
        self._fill_total[i][rows] += pane.totals  # 0.0 + a total is the total: as a filling begun from the pane

    def _boundary(self, i: int, rows: np.ndarray, end: int, first_ms: np.ndarray) -> Emitted:
        """At a hop boundary of window ``i``: the fillings join the rings, the windows ending
        here are taken from each ring's panes since ``end - size``, and the oldest pane, in no
        later window, is dropped."""
        label, size, hop, slots = self._specs[i]
        ring_start, ring_n, ring_total = self._ring_start[i], self._ring_n[i], self._ring_total[i]
        fill_n = self._fill_n[i]
        filled = rows[fill_n[rows] > 0]
        if filled.size:
            starts = self._fill_start[i][filled]
            slot = (starts // hop) % slots
            self._fill_to_ring(i, filled, slot)
            ring_start[filled, slot] = starts
            ring_n[filled, slot] = fill_n[filled]
            ring_total[filled, slot] = self._fill_total[i][filled]
            fill_n[filled], self._fill_total[i][filled] = 0, 0.0
        begin = end - size
        held = ring_start[rows]
        out: Emitted = []
        # the panes of [begin, end), in order: the k-th starts at begin + k * hop, in its slot
        order = [((begin + k * hop) // hop) % slots for k in range(slots)]
        inside = np.stack([(held[:, s] == begin + k * hop) & (held[:, s] != EMPTY) for k, s in enumerate(order)], axis=1)
        due = np.flatnonzero(inside.any(axis=1) & (first_ms <= begin))
        if due.size:
            r = rows[due]
            take = inside[due]  # (due, k): the k-th pane of [begin, end) is held
            by_order = np.array(order, dtype=np.int64)
            n = np.where(take, ring_n[r][:, by_order], 0).sum(axis=1)
            total = np.zeros(due.size)
            totals = ring_total[r][:, by_order]
            for k in range(slots):
                total = total + np.where(take[:, k], totals[:, k], 0.0)  # pane by pane, oldest first, as the objects sum
            views = self._window_figures(i, r, by_order, take, n)
            jobs, n_list, total_list = self._job, n.tolist(), total.tolist()
            out = [
                (k, Closed(label, begin, end, jobs[row], n_list[j], total_list[j], *views[j]))
                for j, (k, row) in enumerate(zip(due.tolist(), r.tolist()))
            ]
        stale = held < begin + hop
        if stale.any():
            self._drop(i, rows, stale & (held != EMPTY))
            held[stale] = EMPTY
            ring_start[rows] = held
        return out

    # -- state as objects (checkpoints, restore, leaving the bank) ---------------------------

    def summaries(self, row: int) -> tuple[list[WindowState], Summary | None, str | None, int, int]:
        """The row's state as :class:`RollingSeries` holds it (a series leaving the bank): its
        windows, since-start view, job, the job's start and the last view's end."""
        windows, since, job, job_start, sent_to = self.state(row)
        return loaded_windows(self.config, windows), Summary.from_state(since) if since else None, job, job_start, sent_to

    def state(self, row: int) -> BankState:
        """The row's state as a checkpoint holds it (:class:`SeriesState`'s windows and since-start
        view, each summary as its bytes, count and total), the job, its start and the last view's
        end, serialised straight from the arrays."""
        return self.states([row])[0]

    def states(self, rows: Sequence[int]) -> list[BankState]:
        """:meth:`state` of each of ``rows``, the summaries' bytes made in one call per window and
        kind: at a checkpoint boundary many series are due in the same close."""
        at = np.asarray(rows, dtype=np.int64)
        windows: list[list[WindowCheckpoint]] = [[] for _ in rows]
        for i in range(len(self._specs)):
            starts = self._ring_start[i][at]
            order = np.argsort(starts, axis=1, kind="stable")
            ordered = np.take_along_axis(starts, order, axis=1)
            held_row, held_at = np.nonzero(ordered != EMPTY)  # row by row, each row's panes in start order
            slots = order[held_row, held_at]
            where = at[held_row]
            blobs = self._ring_bytes(i, where, slots)
            n, total = self._ring_n[i][where, slots].tolist(), self._ring_total[i][where, slots].tolist()
            panes: list[list[tuple[int, SummaryState]]] = [[] for _ in rows]
            for j, start, blob, count, sum_ in zip(held_row.tolist(), ordered[held_row, held_at].tolist(), blobs, n, total):
                panes[j].append((start, (blob, count, sum_)))
            fill_n = self._fill_n[i][at]
            filling = np.flatnonzero(fill_n)
            fills: list[SummaryState | None] = [None] * len(rows)
            fill_total = self._fill_total[i][at[filling]].tolist()
            for j, blob, count, sum_ in zip(
                filling.tolist(), self._fill_bytes(i, at[filling]), fill_n[filling].tolist(), fill_total
            ):
                fills[j] = (blob, count, sum_)
            for j, start in enumerate(self._fill_start[i][at].tolist()):
                windows[j].append((panes[j], start, fills[j]))
        since_n = self._since_n[at]
        viewed = np.flatnonzero(since_n)
        since: list[SummaryState | None] = [None] * len(rows)
        since_total = self._since_total[at[viewed]].tolist()
        for j, blob, count, sum_ in zip(viewed.tolist(), self._since_bytes(at[viewed]), since_n[viewed].tolist(), since_total):
            since[j] = (blob, count, sum_)
        job_start, sent_to = self._job_start[at].tolist(), self._since_sent_to[at].tolist()
        return [(windows[j], since[j], self._job[row], job_start[j], sent_to[j]) for j, row in enumerate(at.tolist())]

    def load(
        self, row: int, windows: Sequence[WindowState], since: Summary | None, job: str | None, job_start: int, sent_to: int
    ) -> None:
        """Put a series' state (every summary of the bank's kind) into ``row``."""
        self.reset(row)
        for i, (w, (_, _, hop, slots)) in enumerate(zip(windows, self._specs)):
            for start, summary in w.panes:
                s = (start // hop) % slots
                self._ring_start[i][row, s], self._ring_n[i][row, s], self._ring_total[i][row, s] = (
                    start,
                    summary.count,
                    summary.total,
                )
                self._load_ring(i, row, s, summary.sketch)
            self._fill_start[i][row] = w.filling_start
            if w.filling is not None:
                self._fill_n[i][row], self._fill_total[i][row] = w.filling.count, w.filling.total
                self._load_fill(i, row, w.filling.sketch)
        if since is not None:
            self._since_n[row], self._since_total[row] = since.count, since.total
            self._load_since(row, since.sketch)
        self._job[row], self._job_start[row], self._since_sent_to[row] = job, job_start, sent_to

    # -- the payload: each bank's own ---------------------------------------------------------

    def _fill_add(self, i: int, rows: np.ndarray, pane: Pane) -> None:
        raise NotImplementedError

    def _fill_to_ring(self, i: int, rows: np.ndarray, slots: np.ndarray) -> None:
        raise NotImplementedError

    def _drop(self, i: int, rows: np.ndarray, stale: np.ndarray) -> None:
        """Ring slots of window ``i`` emptied (``stale``, a row of ``rows`` each): free what they held."""

    def _clear_window(self, i: int, row: int) -> None:
        raise NotImplementedError

    def _clear_since(self, row: int) -> None:
        raise NotImplementedError

    def _since_restart(self, rows: np.ndarray, pane: Pane) -> None:
        raise NotImplementedError

    def _since_add(self, rows: np.ndarray, pane: Pane) -> None:
        raise NotImplementedError

    def _since_figures(self, rows: np.ndarray) -> Views:
        raise NotImplementedError

    def _window_figures(self, i: int, rows: np.ndarray, slots: np.ndarray, take: np.ndarray, n: np.ndarray) -> Views:
        raise NotImplementedError

    def _ring_bytes(self, i: int, rows: np.ndarray, slots: np.ndarray) -> list[bytes]:
        """The bytes of window ``i``'s ring slot ``slots[j]`` of row ``rows[j]``, for each ``j``."""
        raise NotImplementedError

    def _fill_bytes(self, i: int, rows: np.ndarray) -> list[bytes]:
        raise NotImplementedError

    def _since_bytes(self, rows: np.ndarray) -> list[bytes]:
        raise NotImplementedError

    def _load_ring(self, i: int, row: int, slot: int, sketch: Sketch) -> None:
        raise NotImplementedError

    def _load_fill(self, i: int, row: int, sketch: Sketch) -> None:
        raise NotImplementedError

    def _load_since(self, row: int, sketch: Sketch) -> None:
        raise NotImplementedError


def _counts(pane: Pane) -> np.ndarray:
    """A pane's histograms in an exact bank (none given: every series' pane was empty)."""
    return pane.counts if pane.counts is not None else np.zeros((len(pane.sizes), BINS), dtype=np.int64)


def _count_figures(counts: np.ndarray) -> Views:
    (p25, p50, p95), blobs = quantile_rows(counts, RANKS), histogram_bytes(counts)
    return list(zip(p25, p50, p95, blobs))


#: the most samples of one value a hop pane or filling holds in the exact bank (its counts are
#: int32: at 1 Hz a pane holds thousands; only a hand-made checkpoint holds more)
PANE_COUNT_MAX = np.iinfo(np.int32).max


class ExactBank(_Bank):
    """Whole percentages: per pane, window filling and since-start view, 101 counts."""

    _ring_counts: list[np.ndarray]
    _fill_counts: list[np.ndarray]
    _since_counts: np.ndarray

    @staticmethod
    def fits(windows: Sequence[WindowState]) -> bool:
        """Whether the hop panes and fillings of ``windows`` fit the bank's counts (a restored
        series that does not fit stays as objects, which count in int64)."""
        summaries = [p for w in windows for _, p in w.panes] + [w.filling for w in windows if w.filling is not None]
        return all(int(s.sketch.counts.max()) <= PANE_COUNT_MAX for s in summaries)  # type: ignore[union-attr]  # exact: histograms

    def __init__(self, config: RollingConfig, capacity: int = 64) -> None:
        super().__init__(config)
        self._declare("ring_counts", [np.zeros((0, slots, BINS), dtype=np.int32) for *_, slots in self._specs], 0)
        self._declare("fill_counts", [np.zeros((0, BINS), dtype=np.int32) for _ in self._specs], 0)
        self._declare("since_counts", np.zeros((0, BINS), dtype=np.int64), 0)
        self._grow(capacity)

    def _fill_add(self, i: int, rows: np.ndarray, pane: Pane) -> None:
        self._fill_counts[i][rows] += _counts(pane).astype(np.int32)

    def _fill_to_ring(self, i: int, rows: np.ndarray, slots: np.ndarray) -> None:
        self._ring_counts[i][rows, slots] = self._fill_counts[i][rows]
        self._fill_counts[i][rows] = 0

    def _clear_window(self, i: int, row: int) -> None:
        self._ring_counts[i][row], self._fill_counts[i][row] = 0, 0

    def _clear_since(self, row: int) -> None:
        self._since_counts[row] = 0

    def _since_restart(self, rows: np.ndarray, pane: Pane) -> None:
        self._since_counts[rows] = _counts(pane)

    def _since_add(self, rows: np.ndarray, pane: Pane) -> None:
        self._since_counts[rows] += _counts(pane)

    def _since_figures(self, rows: np.ndarray) -> Views:
        return _count_figures(self._since_counts[rows])

    def _window_figures(self, i: int, rows: np.ndarray, slots: np.ndarray, take: np.ndarray, n: np.ndarray) -> Views:
        held = self._ring_counts[i][rows][:, slots]  # (rows, panes in order, bins)
        return _count_figures((held * take[:, :, np.newaxis]).sum(axis=1, dtype=np.int64))

    def _ring_bytes(self, i: int, rows: np.ndarray, slots: np.ndarray) -> list[bytes]:
        return histogram_bytes(self._ring_counts[i][rows, slots].astype(np.int64))

    def _fill_bytes(self, i: int, rows: np.ndarray) -> list[bytes]:
        return histogram_bytes(self._fill_counts[i][rows].astype(np.int64))

    def _since_bytes(self, rows: np.ndarray) -> list[bytes]:
        return histogram_bytes(self._since_counts[rows])

    def _load_ring(self, i: int, row: int, slot: int, sketch: Sketch) -> None:
        self._ring_counts[i][row, slot] = sketch.counts  # type: ignore[union-attr]  # the exact bank's: a histogram

    def _load_fill(self, i: int, row: int, sketch: Sketch) -> None:
        self._fill_counts[i][row] = sketch.counts  # type: ignore[union-attr]

    def _load_since(self, row: int, sketch: Sketch) -> None:
        self._since_counts[row] = sketch.counts  # type: ignore[union-attr]


class _Values:
    """Raw values of many summaries, a row each (``buf[row, :n]``, in the order they came), and a
    KLL sketch for those past :data:`LIMIT` (then ``buf`` holds nothing for them). The width
    grows to the longest row, up to :data:`LIMIT`."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.buf = np.zeros((*shape, 1), dtype=np.float32)
        self.kll: dict[tuple[int, ...], QuantileSketch] = {}

    def grow_rows(self, capacity: int) -> None:
        out = np.zeros((capacity, *self.buf.shape[1:]), dtype=np.float32)
        out[: len(self.buf)] = self.buf
        self.buf = out

    def widen_to(self, width: int) -> None:
        if width > self.buf.shape[-1]:
            out = np.zeros((*self.buf.shape[:-1], min(LIMIT, max(width, 2 * self.buf.shape[-1]))), dtype=np.float32)
            out[..., : self.buf.shape[-1]] = self.buf
            self.buf = out

    def add(self, at: tuple[np.ndarray, ...], n: np.ndarray, pane: Pane) -> None:
        """Add each series' pane values to its summary at ``at`` (index arrays) holding ``n``
        values (0: a summary begun from the pane), as
        :meth:`hpcinsight.streams.rolling.Summary.add_pane` does: raw while within the limit,
        else a KLL sketch of the values so far and then the pane's."""
        keys = list(zip(*(a.tolist() for a in at)))
        after = n + pane.sizes
        over = after > LIMIT
        sketched = np.array([key in self.kll for key in keys], dtype=bool) if self.kll else np.zeros(len(keys), dtype=bool)
        for j in np.flatnonzero(over | sketched).tolist():  # a KLL sketch: one by one, as the objects
            key = keys[j]
            sketch = self.kll.get(key)
            if sketch is None:
                sketch = self.kll[key] = widen(RawValues([self.buf[key][: int(n[j])].copy()] if n[j] else None))
            sketch.update(pane.of(j))
        raw = np.flatnonzero(~(over | sketched))
        if raw.size:
            self.widen_to(int(after[raw].max()))
            width = self.buf.shape[-1]
            flat_rows = np.ravel_multi_index(tuple(a[raw] for a in at), self.buf.shape[:-1])
            part = pane.part(raw)
            self.buf.reshape(-1)[np.repeat(flat_rows * width + n[raw], part.sizes) + part.within()] = part.flat()

    def sketch(self, key: tuple[int, ...], n: int) -> Sketch:
        got = self.kll.get(key)
        if got is not None:
            return got
        return RawValues([self.buf[key][:n].copy()] if n else None)

    def to_bytes(self, at: tuple[np.ndarray, ...], n: np.ndarray) -> list[bytes]:
        """:meth:`sketch`'s bytes of the summaries at ``at`` (index arrays) holding ``n`` values
        each, without the objects: a KLL sketch's, or the values in order (sorted in one call)."""
        keys = list(zip(*(a.tolist() for a in at))) if self.kll else []
        out: list[bytes] = [b""] * len(n)
        sketched = [j for j, key in enumerate(keys) if key in self.kll]
        for j in sketched:
            out[j] = self.kll[keys[j]].to_bytes()
        raw = _others(len(n), sketched)
        if raw.size:
            got = _padded(self.buf[tuple(a[raw] for a in at)], n[raw])  # a copy: fancy indexing
            for j, blob in zip(raw.tolist(), raw_rows(got, (), n[raw])[1]):
                out[j] = blob
        return out

    def load(self, key: tuple[int, ...], sketch: Sketch) -> None:
        self.kll.pop(key, None)
        if isinstance(sketch, QuantileSketch):
            self.kll[key] = sketch
        elif sketch.count:
            values = sketch.values()
            self.widen_to(values.size)
            self.buf[key][: values.size] = values


def _others(size: int, sketched: list[int]) -> np.ndarray:
    """The indices below ``size`` not in ``sketched`` (the summaries still raw), in order."""
    return np.setdiff1d(np.arange(size), np.array(sketched, dtype=np.int64), assume_unique=True) if sketched else np.arange(size)


def _padded(values: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``values`` (a copy: fancy indexing made it) with each row past its ``n`` values set to
    +inf, which sorts after every value: rows of different lengths sorted in one call."""
    values[np.arange(values.shape[-1]) >= n[..., np.newaxis]] = np.inf
    return values


def _mixed_figures(
    size: int,
    sketched: list[int],
    sketch_of: Callable[[int], Sketch],
    gather: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
) -> Views:
    """The figures of ``size`` summaries: those ``sketched`` one by one from their KLL sketch,
    the others' raw values (``gather``: rows padded with +inf, and their numbers) sorted together."""
    out: Views = [(0.0, 0.0, 0.0, b"")] * size
    for j in sketched:
        sketch = sketch_of(j)
        q = sketch.quantiles(RANKS)
        assert q is not None
        out[j] = (q[0], q[1], q[2], sketch.to_bytes())
    raw = _others(size, sketched)
    if raw.size:
        values, sizes = gather(raw)
        (p25, p50, p95), blobs = raw_rows(values, RANKS, sizes)
        for r, j in enumerate(raw.tolist()):
            out[j] = (p25[r], p50[r], p95[r], blobs[r])
    return out


class RawBank(_Bank):
    """Any other values (power, clocks): per pane, window filling and since-start view the values
    themselves while at most KLL's ``k``, a KLL sketch beyond, as the objects keep them."""

    def __init__(self, config: RollingConfig, capacity: int = 64) -> None:
        super().__init__(config)
        self._ring_values = [_Values((0, slots)) for *_, slots in self._specs]
        self._fill_values = [_Values((0,)) for _ in self._specs]
        self._since_values = _Values((0,))
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        super()._grow(capacity)
        for v in (*self._ring_values, *self._fill_values, self._since_values):
            v.grow_rows(capacity)

    def _fill_add(self, i: int, rows: np.ndarray, pane: Pane) -> None:
        self._fill_values[i].add((rows,), self._fill_n[i][rows], pane)

    def _fill_to_ring(self, i: int, rows: np.ndarray, slots: np.ndarray) -> None:
        fill, ring = self._fill_values[i], self._ring_values[i]
        ring.widen_to(fill.buf.shape[-1])
        ring.buf[rows, slots, : fill.buf.shape[-1]] = fill.buf[rows]
        if ring.kll or fill.kll:  # a pane past the limit: its sketch moves with it
            for row, slot in zip(rows.tolist(), slots.tolist()):
                ring.kll.pop((row, slot), None)
                moved = fill.kll.pop((row,), None)
                if moved is not None:
                    ring.kll[(row, slot)] = moved

    def _drop(self, i: int, rows: np.ndarray, stale: np.ndarray) -> None:
        ring = self._ring_values[i]
        if ring.kll:
            for j, slot in zip(*np.nonzero(stale)):
                ring.kll.pop((int(rows[j]), int(slot)), None)

    def _clear_window(self, i: int, row: int) -> None:
        ring, fill = self._ring_values[i], self._fill_values[i]
        for slot in range(ring.buf.shape[1]):
            ring.kll.pop((row, slot), None)
        fill.kll.pop((row,), None)

    def _clear_since(self, row: int) -> None:
        self._since_values.kll.pop((row,), None)

    def _since_restart(self, rows: np.ndarray, pane: Pane) -> None:
        for row in rows.tolist():
            self._since_values.kll.pop((row,), None)
        self._since_values.add((rows,), np.zeros(len(rows), dtype=np.int64), pane)

    def _since_add(self, rows: np.ndarray, pane: Pane) -> None:
        self._since_values.add((rows,), self._since_n[rows], pane)

    def _since_figures(self, rows: np.ndarray) -> Views:
        values, n = self._since_values, self._since_n[rows]
        sketched = [j for j, row in enumerate(rows.tolist()) if (row,) in values.kll] if values.kll else []

        def gather(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return _padded(values.buf[rows[raw]], n[raw]), n[raw]

        return _mixed_figures(len(rows), sketched, lambda j: values.kll[(int(rows[j]),)], gather)

    def _window_figures(self, i: int, rows: np.ndarray, slots: np.ndarray, take: np.ndarray, n: np.ndarray) -> Views:
        ring = self._ring_values[i]
        counts = np.where(take, self._ring_n[i][rows][:, slots], 0)  # (rows, panes in order)
        kll = ring.kll
        if kll:
            merged = [j for j in range(len(rows)) if n[j] > LIMIT or any((int(rows[j]), int(s)) in kll for s in slots[take[j]])]
        else:
            merged = np.flatnonzero(n > LIMIT).tolist()

        def sketch_of(j: int) -> Sketch:  # past the limit, or a KLL pane: merged as merge_sketches does, pane by pane
            row = int(rows[j])
            parts = [
                ring.sketch((row, int(s)), int(c)) for s, c, t in zip(slots.tolist(), counts[j].tolist(), take[j].tolist()) if t
            ]
            return merge_sketches(parts) if len(parts) > 1 else parts[0]

        def gather(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            got = _padded(ring.buf[rows[raw]][:, slots], counts[raw])  # (raw, panes, width)
            return got.reshape(len(raw), -1), n[raw]

        return _mixed_figures(len(rows), merged, sketch_of, gather)

    def _ring_bytes(self, i: int, rows: np.ndarray, slots: np.ndarray) -> list[bytes]:
        return self._ring_values[i].to_bytes((rows, slots), self._ring_n[i][rows, slots])

    def _fill_bytes(self, i: int, rows: np.ndarray) -> list[bytes]:
        return self._fill_values[i].to_bytes((rows,), self._fill_n[i][rows])

    def _since_bytes(self, rows: np.ndarray) -> list[bytes]:
        return self._since_values.to_bytes((rows,), self._since_n[rows])

    def _load_ring(self, i: int, row: int, slot: int, sketch: Sketch) -> None:
        self._ring_values[i].load((row, slot), sketch)

    def _load_fill(self, i: int, row: int, sketch: Sketch) -> None:
        self._fill_values[i].load((row,), sketch)

    def _load_since(self, row: int, sketch: Sketch) -> None:
        self._since_values.load((row,), sketch)


class Banks:
    """A worker's banks: a new series begins in the exact one, and moves to the raw one if its
    first value is not a whole percentage (to objects if it turns later, with history)."""

    def __init__(self, config: RollingConfig, capacity: int = 64) -> None:
        self.exact = ExactBank(config, capacity)
        self.raw = RawBank(config, capacity)
