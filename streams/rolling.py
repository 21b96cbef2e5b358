"""Rolling quantiles of one GPU metric: sliding windows and since-job-start, exact where the metric allows.

A metric whose values are whole percentages (NVML's utilisation) keeps exact counts per pane
(:class:`~hpcinsight.streams.sketches.IntHistogram`: exact quantiles, merged by addition); any
other keeps KLL sketches. A series starts exact and turns to sketches at its first value that
does not fit, for good.

Every series (one GPU, one metric) keeps the raw values of its open *base panes* (``base_ms``
long, 10 s by default) and nothing else raw. When event time passes a base pane's end (plus the
allowed lateness), the pane's values go, in one vectorised update each, into:

* the pane sketch of every sliding window (a window of ``size`` sliding by ``hop`` is the merge of
  its ``size / hop`` hop-long pane sketches; KLL sketches merge but cannot subtract, so panes are
  how a window slides);
* the since-start sketch of the job that holds the GPU (reset when another job takes it).

A window ``[end - size, end)`` is emitted when its last base pane closes, if the series covers it
entirely (a GPU that just appeared is not judged on a partial window). The since-start view is
emitted at every multiple of ``since_start_every_ms`` and when the job changes.

Lateness: a sample is used while its base pane is still open, i.e. up to ``lateness_ms`` after the
pane's end as seen by the newest sample of the series; an older one is counted in ``late`` and
dropped (every window it belonged to is already out).

Memory per series is bounded by the panes: with the default windows (1 min by 10 s, 5 min by
1 min, 1 h by 20 min) the largest, the hour, holds at most three pane sketches of ~2.3 KB each.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from hpcinsight.streams.sketches import (
    IntHistogram,
    QuantileSketch,
    RawValues,
    Sketch,
    histogram_bytes,
    load_sketch,
    loosen,
    merge_sketches,
    quantile_rows,
    raw_rows,
    widen,
)
from hpcinsight.streams.windows import WindowSpec

if TYPE_CHECKING:
    from hpcinsight.streams.bank import Banks, ExactBank, RawBank

DEFAULT_WINDOWS: tuple[WindowSpec, ...] = (
    WindowSpec(60_000, 10_000),
    WindowSpec(300_000, 60_000),
    WindowSpec(3_600_000, 1_200_000),
)
SINCE_START = "since_start"
RANKS = (0.25, 0.5, 0.95)  # the quantiles a window carries
_NOTHING: list[Closed] = []  # returned when nothing closes; never mutated by callers


@dataclass(frozen=True)
class RollingConfig:
    windows: tuple[WindowSpec, ...] = DEFAULT_WINDOWS
    base_ms: int = 10_000
    lateness_ms: int = 2_000
    since_start_every_ms: int = 60_000

    def __post_init__(self) -> None:
        if self.base_ms <= 0 or self.lateness_ms < 0 or self.since_start_every_ms <= 0:
            raise ValueError("base pane and since-start period must be positive, lateness >= 0")
        for w in self.windows:
            if w.hop_ms % self.base_ms:
                raise ValueError(f"window {w.label}: its hop must be a multiple of the base pane ({self.base_ms} ms)")
        if self.since_start_every_ms % self.base_ms:
            raise ValueError("the since-start period must be a multiple of the base pane")
        if len({w.label for w in self.windows}) != len(self.windows):
            raise ValueError("two windows with the same label")


@dataclass(slots=True)
class Summary:
    """A window's values: exact counts while they are whole percentages (:class:`IntHistogram`,
    e.g. NVML's utilisation), else the values themselves while at most KLL's ``k``
    (:class:`RawValues`), else a KLL sketch; the exact count and sum beside any (the mean is
    exact; the quantiles are exact but for KLL's)."""

    sketch: Sketch = field(default_factory=IntHistogram)
    count: int = 0
    total: float = 0.0

    @classmethod
    def new(cls, exact: bool) -> Summary:
        return cls(IntHistogram() if exact else RawValues())

    @classmethod
    def of_pane(cls, values: np.ndarray, total: float, counts: np.ndarray | None, exact: bool) -> Summary:
        """A summary of one pane, as :meth:`new` then :meth:`add_pane` make it: every series
        starts one a window at every hop, so the common kinds are built from the pane at once."""
        if exact and counts is not None:
            return cls(IntHistogram(counts.copy()), int(values.size), total)  # a copy: a filling is added to
        if not exact and values.size <= RawValues.LIMIT:
            return cls(RawValues.of(values), int(values.size), total)
        summary = cls.new(exact)
        summary.add_pane(values, total, counts)
        return summary

    def add_pane(self, values: np.ndarray, total: float, counts: np.ndarray | None) -> None:
        """Add a closing pane's ``values`` with their float64 ``total`` and their histogram
        ``counts`` (None when they do not fit one): a pane goes into several summaries, and is
        summed and counted once."""
        sketch = self.sketch
        if isinstance(sketch, IntHistogram):
            if counts is not None:
                sketch.counts += counts
            else:  # a value counts cannot hold: from now on raw values or a sketch
                sketch = self.sketch = loosen(sketch, values.size)
                sketch.update(values)
        elif isinstance(sketch, RawValues):
            if sketch.n + values.size > RawValues.LIMIT:
                sketch = self.sketch = widen(sketch)
            sketch.update(values)
        else:
            sketch.update(values)
        self.count += int(values.size)
        self.total += total

    @property
    def exact(self) -> bool:
        return isinstance(self.sketch, IntHistogram)

    def to_state(self) -> tuple[bytes, int, float]:
        return self.sketch.to_bytes(), self.count, self.total

    @classmethod
    def from_state(cls, state: tuple[bytes, int, float]) -> Summary:
        return cls(load_sketch(state[0]), state[1], state[2])


@dataclass(frozen=True)
class Pane:
    """One base pane of the series a bank closes together (:mod:`hpcinsight.streams.bank`):
    each one's values (``values`` from ``begins[k]`` to ``begins[k] + sizes[k]``), their float64
    sums, and for an exact bank their histograms (``counts``, a row each)."""

    values: np.ndarray
    begins: np.ndarray
    sizes: np.ndarray
    totals: np.ndarray
    counts: np.ndarray | None

    def part(self, picked: np.ndarray) -> Pane:
        return Pane(
            self.values,
            self.begins[picked],
            self.sizes[picked],
            self.totals[picked],
            None if self.counts is None else self.counts[picked],
        )

    def within(self) -> np.ndarray:
        """Each value's place among its series' pane values, for the values of :meth:`flat`."""
        ends = np.cumsum(self.sizes)
        return np.arange(int(ends[-1]) if ends.size else 0) - np.repeat(ends - self.sizes, self.sizes)

    def flat(self) -> np.ndarray:
        """The values of every series of the pane, in order."""
        return self.values[np.repeat(self.begins, self.sizes) + self.within()]

    def of(self, k: int) -> np.ndarray:
        begin = int(self.begins[k])
        return self.values[begin : begin + int(self.sizes[k])]


class Closed(msgspec.Struct, frozen=True):
    """One window (or since-start view) ready to be emitted: a snapshot, later samples don't change it.
    (A struct, not a dataclass: a close burst makes one per series, and a frozen dataclass costs a
    microsecond each to build.)"""

    window: str
    start_ms: int
    end_ms: int
    job_id: str | None
    count: int
    total: float
    p25: float
    p50: float
    p95: float
    sketch: bytes  # serialised histogram or KLL (hpcinsight.streams.sketches.load_sketch), for the job stage to merge

    @property
    def mean(self) -> float:
        return self.total / self.count

    def quantiles(self) -> tuple[float, float, float, float]:
        return self.p25, self.p50, self.p95, self.mean


class WindowState:
    """The closed hop panes of one sliding window, and the one being filled."""

    __slots__ = ("spec", "size_ms", "hop_ms", "label", "panes", "filling", "filling_start")

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self.size_ms, self.hop_ms, self.label = spec.size_ms, spec.hop_ms, spec.label  # read at every pane close
        self.panes: deque[tuple[int, Summary]] = deque()
        self.filling: Summary | None = None
        self.filling_start = 0


#: a summary in a checkpoint: its sketch's bytes, its count and total (Summary.to_state)
SummaryState = tuple[bytes, int, float]
#: a window in a checkpoint: its hop panes (start, summary), its filling's start and summary
WindowCheckpoint = tuple[list[tuple[int, SummaryState]], int, SummaryState | None]


def loaded_windows(config: RollingConfig, states: Sequence[WindowCheckpoint]) -> list[WindowState]:
    """The sliding windows a checkpoint holds, as objects."""
    windows = []
    for spec, (panes, filling_start, filling) in zip(config.windows, states):
        w = WindowState(spec)
        w.panes = deque((s, Summary.from_state(p)) for s, p in panes)
        w.filling_start = filling_start
        w.filling = Summary.from_state(filling) if filling else None
        windows.append(w)
    return windows


class SeriesState(msgspec.Struct, array_like=True):
    """What a series needs to continue after a restart (see :meth:`RollingSeries.checkpoint`)."""

    first_ms: int
    closed_to: int
    job_id: str | None
    job_start: int
    since_sent_to: int
    since: SummaryState | None
    windows: list[WindowCheckpoint]


#: a pane to close: (start, its values, the job of its newest value, the series' first sample
#: time then); None: a long silence, the windows start over (see RollingSeries.queue)
_Op = tuple[int, list[float], "str | None", int] | None
#: one ``queue`` call that moved the series on: (ops queued up to its end, closed_to and first
#: sample time after it, the caller's token: see RollingSeries.tag)
_Group = tuple[int, int, int, object]
#: a window to emit: (series, window label, start, end, job, the summaries it merges: its hop
#: panes, or the since-start summary; merged by _snapshots, for all windows of a round at once)
_Emit = tuple["RollingSeries", str, int, int, "str | None", "list[Summary]"]
#: a group whose closes have all run: (series, the group's token, closed_to, first_ms)
Finished = tuple["RollingSeries", object, int, int]
#: called after each round of closes with the groups it finished, in order
OnGroups = Callable[[list[Finished]], None]
#: a banked series' closed state as a checkpoint holds it (ExactBank.state)
BankState = tuple[list["WindowCheckpoint"], "SummaryState | None", "str | None", int, int]


class RollingSeries:
    """Rolling quantiles of one metric of one GPU.

    Taking a sample (:meth:`queue`) only files it in its open pane and notes the panes it
    closes; :func:`close_queued` runs those closes, for many series at once. A worker's series
    all close on the same samples (its GPUs are sampled at the same instants), so the array work
    of a batch's closes is done once for all its series (issue 19).

    Given ``banks``, the series keeps its closed state in one (:mod:`~hpcinsight.streams.bank`:
    the closes of all its series in a few array operations): the exact bank while its values
    are whole percentages, the raw bank if its first value is not one; as the objects here if it
    turns from one to the other with history."""

    def __init__(self, config: RollingConfig, banks: Banks | None = None) -> None:
        self.config = config
        self._banks = banks
        self._bank: ExactBank | RawBank | None = banks.exact if banks is not None else None
        self._row = self._bank.allocate() if self._bank is not None else None  # its row in the bank, while there
        self._base, self._lateness = config.base_ms, config.lateness_ms
        self._max_size = max(w.size_ms for w in config.windows)
        self._windows = [WindowState(w) for w in config.windows]
        self._open: dict[int, tuple[list[float], str | None]] = {}  # base pane start -> values, job
        self._closed_to: int | None = None  # every base pane ending at or before this is closed (or queued to)
        self._first_ms: int | None = None
        self._max_ts = -1
        self._ops: list[_Op] = []  # closes queued, not yet run (close_queued)
        self._groups: list[_Group] = []
        self._job: str | None = None
        self._job_start = 0
        self._since: Summary | None = None
        #: every value so far a whole percentage: windows keep exact counts (see Summary)
        self._exact = True
        self._since_sent_to = 0  # end of the last since-start view emitted
        self.late = 0

    # -- input ------------------------------------------------------------------------------

    def add(self, ts_ms: int, value: float | None, job_id: str | None) -> list[Closed]:
        """Take one sample; return the windows and since-start views it completes (its closes
        run now: :meth:`queue` and :func:`close_queued` for one series)."""
        if self.queue(ts_ms, value, job_id) is None:
            return _NOTHING
        return close_queued([self])[self][-1]

    def queue(self, ts_ms: int, value: float | None, job_id: str | None) -> list[int] | None:
        """Take one sample; note the base panes it closes without closing them.

        Returns None when the series did not move on (most samples: a list append), else the
        ends of the panes it queued, maybe none (the series' first sample). Each such call is
        one group of :func:`close_queued`'s answer, in order (see :meth:`tag`)."""
        base = self._base
        pane = ts_ms - ts_ms % base
        closed_to = self._closed_to
        moved: list[int] | None = None
        if closed_to is None:
            closed_to = self._closed_to = pane
            self._first_ms = ts_ms
            moved = []
        elif pane < closed_to:
            self.late += 1
            return None
        max_ts = self._max_ts
        if max_ts >= 0 and ts_ms - max_ts > self._max_size:
            moved = self._queue_until(max_ts + self._lateness + base, [])
            self._ops.append(None)  # a long silence: start over, emit no empty windows
            self._open.clear()
            self._closed_to, self._first_ms = pane, ts_ms
            closed_to = pane
        if ts_ms > max_ts:
            self._max_ts = max_ts = ts_ms
        if value is not None:
            entry = self._open.get(pane)
            if entry is None:
                self._open[pane] = ([value], job_id)
            else:
                entry[0].append(value)
                if entry[1] != job_id:  # the GPU changed hands inside a pane: the newest job wins
                    self._open[pane] = (entry[0], job_id)
        if closed_to + base <= max_ts - self._lateness:
            moved = self._queue_until(max_ts - self._lateness, moved if moved is not None else [])
        if moved is not None:
            assert self._closed_to is not None and self._first_ms is not None
            self._groups.append((len(self._ops), self._closed_to, self._first_ms, None))
        return moved

    def tag(self, token: object) -> int:
        """Give the group the last :meth:`queue` call began a token for ``on_groups``; its index."""
        n, closed_to, first_ms, _ = self._groups[-1]
        self._groups[-1] = (n, closed_to, first_ms, token)
        return len(self._groups) - 1

    def _queue_until(self, watermark: int, ends: list[int]) -> list[int]:
        base, closed_to, first_ms = self._base, self._closed_to, self._first_ms
        assert closed_to is not None and first_ms is not None
        while closed_to + base <= watermark:
            values, job = self._open.pop(closed_to, ([], None))
            self._ops.append((closed_to, values, job, first_ms))
            closed_to += base
            ends.append(closed_to)
        self._closed_to = closed_to
        return ends

    # -- closing (run by close_queued) ------------------------------------------------------

    def _close(self, op: _Op, values: np.ndarray, total: float, counts: np.ndarray | None, out: list[_Emit]) -> None:
        """Close one queued pane: its ``values`` with their sum and, for an exact series whose
        values fit, their histogram (None otherwise). Windows to emit go to ``out``."""
        if op is None:
            self._windows = [WindowState(w) for w in self.config.windows]
            return
        start, _, job, first_ms = op
        end = start + self.config.base_ms
        if values.size:
            if self._exact and counts is None:
                self._exact = False  # a fractional metric (or not a percentage): sketches from now on
            if self._since is None or job != self._job:
                if self._since is not None and self._since.count and self._since_sent_to < start:
                    out.append((self, SINCE_START, self._job_start, start, self._job, [self._since]))
                self._job, self._job_start, self._since = job, start, Summary.of_pane(values, total, counts, self._exact)
            else:
                self._since.add_pane(values, total, counts)
        for w in self._windows:
            hop, size = w.hop_ms, w.size_ms
            if values.size:
                if w.filling is None:
                    w.filling, w.filling_start = Summary.of_pane(values, total, counts, self._exact), start - start % hop
                else:
                    w.filling.add_pane(values, total, counts)
            if end % hop == 0:
                panes = w.panes
                if w.filling is not None:
                    panes.append((w.filling_start, w.filling))
                    w.filling = None
                while panes and panes[0][0] < end - size:
                    panes.popleft()
                if panes and end - size >= first_ms:
                    parts = [summary for _, summary in panes]  # closed hop panes never change: merged later
                    if any(p.count for p in parts):
                        out.append((self, w.label, end - size, end, self._job, parts))
                # the oldest pane is in no later window: free it now, not at the next close
                while panes and panes[0][0] < end - size + hop:
                    panes.popleft()
        if self._since is not None and self._since.count and end % self.config.since_start_every_ms == 0:
            out.append((self, SINCE_START, self._job_start, end, self._job, [self._since]))
            self._since_sent_to = end

    def _unbank(self) -> None:
        """Leave the exact bank for good (a value that is not a whole percentage): to the raw
        bank if nothing is held yet, else its state as objects."""
        assert self._banks is not None and self._bank is self._banks.exact and self._row is not None
        if self._bank.is_empty(self._row):
            self._bank.release(self._row)
            self._bank, self._row, self._exact = self._banks.raw, self._banks.raw.allocate(), False
            return
        self._windows, self._since, self._job, self._job_start, self._since_sent_to = self._bank.summaries(self._row)
        self._bank.release(self._row)
        self._bank, self._row = None, None

    def release(self) -> None:
        """Give the series' row back to its bank (the series is dropped)."""
        if self._bank is not None and self._row is not None:
            self._bank.release(self._row)
            self._bank, self._row = None, None

    # -- restart ----------------------------------------------------------------------------

    def checkpoint(self, closed_to: int | None = None, first_ms: int | None = None) -> bytes:
        """Everything closed so far (open base panes excluded: replay restores those). Inside
        :func:`close_queued` (its ``on_groups``) the series is closed to where that group left
        it, not to where :meth:`queue` has moved on: pass the group's ``closed_to`` and ``first_ms``."""
        closed_to = self._closed_to if closed_to is None else closed_to
        first_ms = self._first_ms if first_ms is None else first_ms
        assert closed_to is not None and first_ms is not None
        return checkpoints([(self, closed_to, first_ms)])[0]

    def _encoded(self, closed_to: int, first_ms: int, banked: BankState | None) -> bytes:
        """The checkpoint's bytes, given the bank's state of the series' row (``None``: objects)."""
        if banked is not None:
            windows, since, job, job_start, since_sent_to = banked
        else:
            windows = [
                ([(s, p.to_state()) for s, p in w.panes], w.filling_start, w.filling.to_state() if w.filling else None)
                for w in self._windows
            ]
            since = self._since.to_state() if self._since is not None else None
            job, job_start, since_sent_to = self._job, self._job_start, self._since_sent_to
        state = SeriesState(first_ms, closed_to, job, job_start, since_sent_to, since, windows)
        return msgspec.msgpack.encode(state)

    def _held(self) -> tuple[list[WindowState], Summary | None, str | None, int, int]:
        """The closed state: windows, since-start view, job, its start, the last view's end."""
        if self._bank is not None and self._row is not None:
            return self._bank.summaries(self._row)
        return self._windows, self._since, self._job, self._job_start, self._since_sent_to

    @classmethod
    def from_checkpoint(cls, config: RollingConfig, data: bytes, banks: Banks | None = None) -> RollingSeries:
        """The series a checkpoint holds; in the bank of its kind if ``banks`` are given."""
        state = msgspec.msgpack.decode(data, type=SeriesState)
        series = cls(config)
        if len(state.windows) != len(series._windows):
            raise ValueError("checkpoint was taken with other windows")
        series._first_ms, series._closed_to = state.first_ms, state.closed_to
        series._max_ts = state.closed_to - 1
        series._job, series._job_start, series._since_sent_to = state.job_id, state.job_start, state.since_sent_to
        series._since = Summary.from_state(state.since) if state.since else None
        series._windows = loaded_windows(config, state.windows)
        held = [series._since, *(p for w in series._windows for _, p in w.panes), *(w.filling for w in series._windows)]
        held = [s for s in held if s is not None]
        series._exact = all(s.exact for s in held)
        if banks is not None:
            bank: ExactBank | RawBank | None = None  # a series that turned with history stays as objects
            if series._exact and banks.exact.fits(series._windows):
                bank = banks.exact
            elif not any(s.exact for s in held):
                bank = banks.raw
            if bank is not None:
                series._banks, series._bank, series._row = banks, bank, bank.allocate()
                bank.load(series._row, series._windows, series._since, series._job, series._job_start, series._since_sent_to)
                series._windows, series._since = [WindowState(w) for w in config.windows], None  # held by the bank
        return series

    @property
    def closed_to(self) -> int | None:
        return self._closed_to

    def window_memory_bytes(self) -> dict[str, int]:
        """Serialised sketch bytes held for each sliding window."""
        return {
            w.spec.label: sum(len(p.sketch.to_bytes()) for _, p in w.panes)
            + (len(w.filling.sketch.to_bytes()) if w.filling else 0)
            for w in self._held()[0]
        }


def checkpoints(due: Sequence[tuple[RollingSeries, int, int]]) -> list[bytes]:
    """Each series' :meth:`RollingSeries.checkpoint`, closed to the ``closed_to`` and from the
    ``first_ms`` beside it; the banked series' state taken one bank call for all of a bank's
    (at a checkpoint boundary, many series are due in the same close)."""
    of_bank: dict[ExactBank | RawBank, list[int]] = {}
    for j, (s, _, _) in enumerate(due):
        if s._bank is not None and s._row is not None:
            of_bank.setdefault(s._bank, []).append(j)
    banked: list[BankState | None] = [None] * len(due)
    for bank, members in of_bank.items():
        for j, state in zip(members, bank.states([due[j][0]._row for j in members])):  # type: ignore[misc]  # rows: above
            banked[j] = state
    return [s._encoded(closed_to, first_ms, banked[j]) for j, (s, closed_to, first_ms) in enumerate(due)]


def close_queued(series: Sequence[RollingSeries], on_groups: OnGroups | None = None) -> dict[RollingSeries, list[list[Closed]]]:
    """Run the closes :meth:`RollingSeries.queue` noted, each series' in order; the windows each
    group (each ``queue`` call that moved a series on) completed, per series and group.

    The work goes in rounds, the k-th queued close of every series in round k: a round's values
    are one array, summed, tested for whole percentages and counted into histograms in a few
    calls for all, and the quantiles and bytes of the exact windows it completes are taken the
    same way. Only the sketch updates and the windows' bookkeeping remain a series' own. A
    pane's sum is taken in its values' order (numpy's own sum pairs 8 or more: the same number
    unless the values span more than about 2**25 in size).

    ``on_groups`` is called after each round with the groups it finished (each with its token),
    in order: a series changes once a round, so each is still as its group left it (e.g. to
    checkpoint them, all in a few calls)."""
    out: dict[RollingSeries, list[list[Closed]]] = {}
    todo: list[tuple[RollingSeries, list[_Op], list[_Group]]] = []
    for s in series:
        if s in out or not s._groups:
            continue
        out[s] = [[] for _ in s._groups]
        todo.append((s, s._ops, s._groups))
        s._ops, s._groups = [], []
    done = [0] * len(todo)  # groups finished, per series
    finished: list[Finished] = []  # this round's, for on_groups
    for i, (_, _, groups) in enumerate(todo):  # a series' first sample: a group before any close
        if not groups[0][0]:
            _finish(todo[i], done, i, 0, finished)
    rank = 0
    while True:
        if finished and on_groups is not None:
            on_groups(finished)
        finished = []
        live = [i for i, (_, ops, _) in enumerate(todo) if rank < len(ops)]
        if not live:
            return out
        closes = [todo[i] for i in live if todo[i][1][rank] is not None]
        values, offsets, sums, counts, table = _pane_arrays(
            [ops[rank][1] for _, ops, _ in closes], [s._exact for s, _, _ in closes]
        )  # type: ignore[index]  # not None: filtered above
        emits: list[_Emit] = []
        owners: list[list[Closed]] = []  # where each emitted window goes: its series' group
        banked: list[tuple[int, int]] = []  # (series, its pane among the closes) for the banks
        k = 0
        for i in live:
            s, ops, groups = todo[i]
            op = ops[rank]
            before = len(emits)
            if op is None:
                if s._row is not None:
                    s._bank.reset(s._row)  # type: ignore[union-attr]  # a row is in a bank
                else:
                    s._close(None, values[:0], 0.0, None, emits)
            else:
                if s._row is not None and s._exact and counts[k] is None and offsets[k] != offsets[k + 1]:
                    s._unbank()  # not a whole percentage: to the raw bank if nothing is held yet, else objects
                if s._row is not None:
                    banked.append((i, k))  # closed below, with every series of its bank and pane
                    k += 1
                    continue
                s._close(op, values[offsets[k] : offsets[k + 1]], float(sums[k]), counts[k], emits)
                k += 1
            owners += [out[s][done[i]]] * (len(emits) - before)
            _finish(todo[i], done, i, rank + 1, finished)
        if banked:
            _close_banked(
                [(todo[i][0], todo[i][1][rank], k, out[todo[i][0]][done[i]]) for i, k in banked], values, offsets, sums, table
            )  # type: ignore[misc]  # ops are not None here
            for i, _ in banked:
                _finish(todo[i], done, i, rank + 1, finished)
        for owner, closed in zip(owners, _snapshots(emits)):
            owner.append(closed)
        rank += 1


def _close_banked(
    closes: list[tuple[RollingSeries, tuple[int, list[float], str | None, int], int, list[Closed]]],
    values: np.ndarray,
    offsets: list[int],
    sums: np.ndarray,
    table: np.ndarray | None,
) -> None:
    """Run a round's closes of banked series, a bank call for each bank and pane: each close is
    (series, its op, its pane among the round's, where its windows go)."""
    by_pane: dict[
        tuple[ExactBank | RawBank, int], list[tuple[RollingSeries, tuple[int, list[float], str | None, int], int, list[Closed]]]
    ] = {}
    for close in closes:
        assert close[0]._bank is not None
        by_pane.setdefault((close[0]._bank, close[1][0]), []).append(close)
    begins = np.asarray(offsets, dtype=np.int64)
    sizes = np.diff(begins)
    for (bank, start), members in by_pane.items():
        panes = np.array([k for _, _, k, _ in members], dtype=np.int64)
        counts = table[panes] if table is not None else None
        ended, windows, periodic = bank.close(
            np.array([s._row for s, _, _, _ in members], dtype=np.int64),
            start,
            Pane(values, begins[panes], sizes[panes], sums[panes], counts),
            [op[2] for _, op, _, _ in members],
            np.array([op[3] for _, op, _, _ in members], dtype=np.int64),
        )
        for emitted in (ended, *windows, periodic):  # each series' in the order RollingSeries._close emits them
            for j, closed in emitted:
                members[j][3].append(closed)


def _finish(
    entry: tuple[RollingSeries, list[_Op], list[_Group]], done: list[int], i: int, ran: int, finished: list[Finished]
) -> None:
    """Mark the groups of ``entry`` whose closes are all run (the first ``ran``) finished."""
    s, _, groups = entry
    while done[i] < len(groups) and groups[done[i]][0] == ran:
        _, closed_to, first_ms, token = groups[done[i]]
        finished.append((s, token, closed_to, first_ms))
        done[i] += 1


def _pane_arrays(
    panes: list[list[float]], exact: list[bool]
) -> tuple[np.ndarray, list[int], np.ndarray, list[np.ndarray | None], np.ndarray | None]:
    """The values of ``panes`` as one float32 array, where each pane's begin, each pane's
    float64 sum, and, where ``exact`` and its values are whole percentages, its histogram; the
    histograms as the rows of one array too (zeros for the others; None when none)."""
    sizes = [len(p) for p in panes]
    offsets = [0, *itertools.accumulate(sizes)]
    values = np.array(list(itertools.chain.from_iterable(panes)), dtype=np.float32)
    n = len(panes)
    pane_of = np.repeat(np.arange(n), sizes)
    sums = np.bincount(pane_of, weights=values.astype(np.float64), minlength=n)
    counts: list[np.ndarray | None] = [None] * n
    table: np.ndarray | None = None
    want = [j for j in range(n) if exact[j] and sizes[j]]
    if want:
        with np.errstate(invalid="ignore"):  # NaN and infinity: caught by the comparison below
            whole = values.astype(np.int64)
        bad = (whole != values) | (whole < 0) | (whole > IntHistogram.BINS - 1)  # a fraction, NaN, infinity, or out of 0..100
        unfit = np.bincount(pane_of, weights=bad, minlength=n) > 0
        fit = [j for j in want if not unfit[j]]
        if fit:
            use = np.zeros(n, dtype=bool)
            use[fit] = True
            keep = use[pane_of]
            table = np.bincount(pane_of[keep] * IntHistogram.BINS + whole[keep], minlength=n * IntHistogram.BINS)
            table = table.reshape(n, IntHistogram.BINS)
            for j in fit:
                counts[j] = table[j]
    return values, offsets, sums, counts, table


def _snapshots(emits: list[_Emit]) -> list[Closed]:
    """The windows of ``emits`` as :class:`Closed`: each merges its parts by
    :func:`merge_sketches`' rule, done here for all at once. The exact ones' counts are added in
    one call and their quantiles and bytes taken together (:func:`quantile_rows`, the rule of
    :meth:`IntHistogram.quantiles`); the raw ones' values are joined in one call for all of a
    length and sorted together (:func:`raw_rows`); KLL's are merged one by one."""
    out: list[Closed | None] = [None] * len(emits)
    sizes: list[tuple[int, float]] = [(0, 0.0)] * len(emits)  # each window's count and sum
    exact: list[int] = []
    raw: dict[int, list[int]] = {}  # raw windows by their number of values
    kll: list[int] = []
    for j, e in enumerate(emits):
        parts = e[5]
        if len(parts) == 1:  # most: a window of one hop pane, a since-start view
            part = parts[0]
            n, kind = part.count, type(part.sketch)
            sizes[j] = (n, part.total)
            if kind is IntHistogram:
                exact.append(j)
            elif kind is RawValues:  # never past its LIMIT: Summary.add_pane widens first
                raw.setdefault(n, []).append(j)
            else:
                kll.append(j)
            continue
        n, total, kinds = 0, 0.0, set()
        for part in parts:
            n += part.count
            total += part.total
            kinds.add(type(part.sketch))
        sizes[j] = (n, total)
        if len(kinds) == 1 and IntHistogram in kinds:
            exact.append(j)
        elif QuantileSketch not in kinds and n <= RawValues.LIMIT:
            raw.setdefault(n, []).append(j)
        else:
            kll.append(j)
    if exact:
        ends = list(itertools.accumulate(len(emits[j][5]) for j in exact))
        stacked = np.stack([p.sketch.counts for j in exact for p in emits[j][5]])  # type: ignore[union-attr]  # IntHistogram: sorted above
        rows = np.add.reduceat(stacked, [0, *ends[:-1]], axis=0) if len(stacked) > len(exact) else stacked
        (p25, p50, p95), blobs = quantile_rows(rows, RANKS), histogram_bytes(rows)
        for r, j in enumerate(exact):
            out[j] = _closed(emits[j], sizes[j], p25[r], p50[r], p95[r], blobs[r])
    for n, windows in raw.items():
        pieces: list[np.ndarray] = []
        for j in windows:
            for p in emits[j][5]:
                sketch = p.sketch
                if type(sketch) is RawValues:
                    pieces += sketch.parts
                elif p.count:
                    pieces.append(sketch.values())  # type: ignore[union-attr]  # a histogram: no KLL in a raw window
        values = np.concatenate(pieces).reshape(len(windows), n)
        (p25, p50, p95), blobs = raw_rows(values, RANKS)
        for r, j in enumerate(windows):
            out[j] = _closed(emits[j], sizes[j], p25[r], p50[r], p95[r], blobs[r])
    for j in kll:
        parts = emits[j][5]
        sketch = merge_sketches([p.sketch for p in parts]) if len(parts) > 1 else parts[0].sketch
        q = sketch.quantiles(RANKS)
        assert q is not None, "an empty window is never emitted"
        out[j] = _closed(emits[j], sizes[j], q[0], q[1], q[2], sketch.to_bytes())
    return out  # type: ignore[return-value]  # every slot filled above


def _closed(emit: _Emit, size: tuple[int, float], p25: float, p50: float, p95: float, sketch: bytes) -> Closed:
    _, label, start, end, job, _ = emit
    count, total = size
    assert count, "an empty window is never emitted"
    return Closed(label, start, end, job, count, total, p25, p50, p95, sketch)


class WindowMeans:
    """Window means of a few metrics of one GPU, from per-pane sums: cheap where a sketch is not needed.

    Peer comparisons (an outlier GPU or node) need one number per GPU and window for memory
    utilisation and interconnect throughput; sums and counts per base pane give it for a few
    additions a sample. Panes are those of :class:`RollingSeries` (same base), kept for
    ``keep_ms``; :meth:`mean` answers for any window within that span.
    """

    __slots__ = ("names", "_base", "_keep", "_panes")

    def __init__(self, names: tuple[str, ...], base_ms: int, keep_ms: int) -> None:
        self.names = names
        self._base, self._keep = base_ms, keep_ms
        self._panes: dict[int, list[float]] = {}  # pane start -> [sum_0, count_0, sum_1, count_1, ...]

    def add(self, ts_ms: int, values: tuple[float | None, ...]) -> None:
        pane = ts_ms - ts_ms % self._base
        acc = self._panes.get(pane)
        if acc is None:
            acc = self._panes[pane] = [0.0] * (2 * len(self.names))
            horizon = pane - self._keep
            for old in [p for p in self._panes if p < horizon]:
                del self._panes[old]
        i = 0
        for v in values:
            if v is not None:
                acc[i] += v
                acc[i + 1] += 1
            i += 2

    def mean(self, start_ms: int, end_ms: int) -> dict[str, float]:
        inside = [acc for pane, acc in self._panes.items() if start_ms <= pane < end_ms]
        totals = [sum(column) for column in zip(*inside)]  # pane by pane, in order: a column's sum
        return {name: totals[2 * i] / totals[2 * i + 1] for i, name in enumerate(self.names) if inside and totals[2 * i + 1]}
