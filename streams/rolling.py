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

from collections import deque
from dataclasses import dataclass, field

import msgspec
import numpy as np

from hpcinsight.streams.sketches import IntHistogram, QuantileSketch, Sketch, load_sketch, widen
from hpcinsight.streams.windows import WindowSpec

DEFAULT_WINDOWS: tuple[WindowSpec, ...] = (
    WindowSpec(60_000, 10_000),
    WindowSpec(300_000, 60_000),
    WindowSpec(3_600_000, 1_200_000),
)
SINCE_START = "since_start"
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


@dataclass
class Summary:
    """A window's values: exact counts while they are whole percentages (:class:`IntHistogram`,
    e.g. NVML's utilisation), else a KLL sketch; the exact count and sum beside either (the mean is
    exact; the quantiles are exact for the histogram, KLL's otherwise)."""

    sketch: Sketch = field(default_factory=IntHistogram)
    count: int = 0
    total: float = 0.0

    @classmethod
    def new(cls, exact: bool) -> Summary:
        return cls(IntHistogram() if exact else QuantileSketch())

    def add_pane(self, values: np.ndarray, total: float, counts: np.ndarray | None) -> None:
        """Add a closing pane's ``values`` with their float64 ``total`` and their histogram
        ``counts`` (None when they do not fit one): a pane goes into several summaries, and is
        summed and counted once."""
        sketch = self.sketch
        if isinstance(sketch, IntHistogram):
            if counts is not None:
                sketch.counts += counts
            else:  # a value counts cannot hold: from now on a sketch
                sketch = self.sketch = widen(sketch)
                sketch.update(values)
        else:
            sketch.update(values)
        self.count += int(values.size)
        self.total += total

    def merge(self, other: Summary) -> None:
        mine, theirs = self.sketch, other.sketch
        if isinstance(mine, IntHistogram) and isinstance(theirs, IntHistogram):
            mine.merge(theirs)
        else:
            self.sketch = widen(mine).merge(widen(theirs))
        self.count += other.count
        self.total += other.total

    @classmethod
    def merged(cls, parts: list[Summary], exact: bool) -> Summary:
        """One summary of ``parts``: the counts added in one call while every part is exact."""
        if exact and all(isinstance(p.sketch, IntHistogram) for p in parts):
            counts = np.add.reduce([p.sketch.counts for p in parts])  # type: ignore[union-attr]  # all IntHistogram, checked above
            return cls(IntHistogram(counts), sum(p.count for p in parts), sum(p.total for p in parts))
        out = cls.new(exact)
        for part in parts:
            out.merge(part)
        return out

    @property
    def exact(self) -> bool:
        return isinstance(self.sketch, IntHistogram)

    def to_state(self) -> tuple[bytes, int, float]:
        return self.sketch.to_bytes(), self.count, self.total

    @classmethod
    def from_state(cls, state: tuple[bytes, int, float]) -> Summary:
        return cls(load_sketch(state[0]), state[1], state[2])


@dataclass(frozen=True)
class Closed:
    """One window (or since-start view) ready to be emitted: a snapshot, later samples don't change it."""

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

    @classmethod
    def of(cls, window: str, start_ms: int, end_ms: int, job_id: str | None, summary: Summary) -> Closed:
        q = summary.sketch.quantiles()
        assert q is not None and summary.count, "an empty window is never emitted"
        return cls(window, start_ms, end_ms, job_id, summary.count, summary.total, q[0], q[1], q[2], summary.sketch.to_bytes())

    @property
    def mean(self) -> float:
        return self.total / self.count

    def quantiles(self) -> tuple[float, float, float, float]:
        return self.p25, self.p50, self.p95, self.mean


class _Window:
    """The closed hop panes of one sliding window, and the one being filled."""

    __slots__ = ("spec", "size_ms", "hop_ms", "label", "panes", "filling", "filling_start")

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self.size_ms, self.hop_ms, self.label = spec.size_ms, spec.hop_ms, spec.label  # read at every pane close
        self.panes: deque[tuple[int, Summary]] = deque()
        self.filling: Summary | None = None
        self.filling_start = 0


class SeriesState(msgspec.Struct, array_like=True):
    """What a series needs to continue after a restart (see :meth:`RollingSeries.checkpoint`)."""

    first_ms: int
    closed_to: int
    job_id: str | None
    job_start: int
    since_sent_to: int
    since: tuple[bytes, int, float] | None
    windows: list[tuple[list[tuple[int, tuple[bytes, int, float]]], int, tuple[bytes, int, float] | None]]


class RollingSeries:
    """Rolling quantiles of one metric of one GPU."""

    def __init__(self, config: RollingConfig) -> None:
        self.config = config
        self._base, self._lateness = config.base_ms, config.lateness_ms
        self._max_size = max(w.size_ms for w in config.windows)
        self._windows = [_Window(w) for w in config.windows]
        self._open: dict[int, tuple[list[float], str | None]] = {}  # base pane start -> values, job
        self._closed_to: int | None = None  # every base pane ending at or before this is closed
        self._first_ms: int | None = None
        self._max_ts = -1
        self._job: str | None = None
        self._job_start = 0
        self._since: Summary | None = None
        #: every value so far a whole percentage: windows keep exact counts (see Summary)
        self._exact = True
        self._since_sent_to = 0  # end of the last since-start view emitted
        self.late = 0

    # -- input ------------------------------------------------------------------------------

    def add(self, ts_ms: int, value: float | None, job_id: str | None) -> list[Closed]:
        """Take one sample; return the windows and since-start views it completes.

        The hot path of the stream processor (three calls per GPU sample): nothing but a list
        append unless a base pane closes."""
        base = self._base
        pane = ts_ms - ts_ms % base
        closed_to = self._closed_to
        if closed_to is None:
            closed_to = self._closed_to = pane
            self._first_ms = ts_ms
        elif pane < closed_to:
            self.late += 1
            return _NOTHING
        out: list[Closed] | None = None
        max_ts = self._max_ts
        if max_ts >= 0 and ts_ms - max_ts > self._max_size:
            out = self._close_until(max_ts + self._lateness + base)
            self._restart(pane, ts_ms)  # a long silence: start over, emit no empty windows
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
            closed = self._close_until(max_ts - self._lateness)
            out = closed if out is None else out + closed
        return out if out is not None else _NOTHING

    def _restart(self, pane: int, ts_ms: int) -> None:
        self._windows = [_Window(w) for w in self.config.windows]
        self._open.clear()
        self._closed_to, self._first_ms = pane, ts_ms

    # -- closing ----------------------------------------------------------------------------

    def _close_until(self, watermark: int) -> list[Closed]:
        out: list[Closed] = []
        base = self.config.base_ms
        assert self._closed_to is not None
        while self._closed_to + base <= watermark:
            start = self._closed_to
            values, job = self._open.pop(start, ([], None))
            out.extend(self._close_pane(start, np.asarray(values, dtype=np.float32), job))
            self._closed_to = start + base
        return out

    def _close_pane(self, start: int, values: np.ndarray, job: str | None) -> list[Closed]:
        # Runs for every series at every base pane: with thousands of GPUs sampled at the same
        # instants, all of a worker's series close together, and that burst is what an anomaly
        # waits behind. Hence the pane is summed once, and a window of one pane is not copied.
        end = start + self.config.base_ms
        out: list[Closed] = []
        total = float(values.sum(dtype=np.float64)) if values.size else 0.0
        counts = None
        if values.size:
            if self._exact:
                counts = IntHistogram.counts_if_fit(values)
                if counts is None:
                    self._exact = False  # a fractional metric (or not a percentage): sketches from now on
            if self._since is None or job != self._job:
                if self._since is not None and self._since.count and self._since_sent_to < start:
                    out.append(Closed.of(SINCE_START, self._job_start, start, self._job, self._since))
                self._job, self._job_start, self._since = job, start, Summary.new(self._exact)
            self._since.add_pane(values, total, counts)
        first_ms = self._first_ms
        assert first_ms is not None
        for w in self._windows:
            hop, size = w.hop_ms, w.size_ms
            if values.size:
                if w.filling is None:
                    w.filling, w.filling_start = Summary.new(self._exact), start - start % hop
                w.filling.add_pane(values, total, counts)
            if end % hop == 0:
                panes = w.panes
                if w.filling is not None:
                    panes.append((w.filling_start, w.filling))
                    w.filling = None
                while panes and panes[0][0] < end - size:
                    panes.popleft()
                if panes and end - size >= first_ms:
                    if len(panes) == 1:
                        merged = panes[0][1]  # Closed.of snapshots it: nothing later changes the copy it emits
                    else:
                        merged = Summary.merged([summary for _, summary in panes], self._exact)
                    if merged.count:
                        out.append(Closed.of(w.label, end - size, end, self._job, merged))
                # the oldest pane is in no later window: free it now, not at the next close
                while panes and panes[0][0] < end - size + hop:
                    panes.popleft()
        if self._since is not None and self._since.count and end % self.config.since_start_every_ms == 0:
            out.append(Closed.of(SINCE_START, self._job_start, end, self._job, self._since))
            self._since_sent_to = end
        return out

    # -- restart ----------------------------------------------------------------------------

    def checkpoint(self) -> bytes:
        """Everything closed so far (open base panes excluded: replay restores those)."""
        assert self._closed_to is not None and self._first_ms is not None
        state = SeriesState(
            first_ms=self._first_ms,
            closed_to=self._closed_to,
            job_id=self._job,
            job_start=self._job_start,
            since_sent_to=self._since_sent_to,
            since=self._since.to_state() if self._since is not None else None,
            windows=[
                ([(s, p.to_state()) for s, p in w.panes], w.filling_start, w.filling.to_state() if w.filling else None)
                for w in self._windows
            ],
        )
        return msgspec.msgpack.encode(state)

    @classmethod
    def from_checkpoint(cls, config: RollingConfig, data: bytes) -> RollingSeries:
        state = msgspec.msgpack.decode(data, type=SeriesState)
        series = cls(config)
        if len(state.windows) != len(series._windows):
            raise ValueError("checkpoint was taken with other windows")
        series._first_ms, series._closed_to = state.first_ms, state.closed_to
        series._max_ts = state.closed_to - 1
        series._job, series._job_start, series._since_sent_to = state.job_id, state.job_start, state.since_sent_to
        series._since = Summary.from_state(state.since) if state.since else None
        for w, (panes, filling_start, filling) in zip(series._windows, state.windows):
            w.panes = deque((s, Summary.from_state(p)) for s, p in panes)
            w.filling_start = filling_start
            w.filling = Summary.from_state(filling) if filling else None
        held = [series._since] + [p for w in series._windows for _, p in w.panes] + [w.filling for w in series._windows]
        series._exact = all(s.exact for s in held if s is not None)
        return series

    @property
    def closed_to(self) -> int | None:
        return self._closed_to

    def window_memory_bytes(self) -> dict[str, int]:
        """Serialised sketch bytes held for each sliding window."""
        return {
            w.spec.label: sum(len(p.sketch.to_bytes()) for _, p in w.panes)
            + (len(w.filling.sketch.to_bytes()) if w.filling else 0)
            for w in self._windows
        }


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
        for i, v in enumerate(values):
            if v is not None:
                acc[2 * i] += v
                acc[2 * i + 1] += 1

    def mean(self, start_ms: int, end_ms: int) -> dict[str, float]:
        totals = [0.0] * (2 * len(self.names))
        for pane, acc in self._panes.items():
            if start_ms <= pane < end_ms:
                for i, v in enumerate(acc):
                    totals[i] += v
        return {name: totals[2 * i] / totals[2 * i + 1] for i, name in enumerate(self.names) if totals[2 * i + 1]}
