"""Mergeable quantile summaries for rolling and since-start quantiles: Apache DataSketches KLL,
and two exact kinds it yields to while they suffice (whole-percentage counts, the values themselves).

Why KLL (``datasketches.kll_floats_sketch``): it is mergeable (a job's quantiles are the merge
of its GPUs' sketches, never a re-scan), its rank error is proven and known in advance
(``k=400``: 0.68% at 99% confidence, within the 1% the issue allows), its size is bounded
(about 5 KB serialised after a million values, below the 8 KB per GPU-window budget), and the
library is maintained by the Apache DataSketches project with a C++ core, so updates from
numpy arrays cost microseconds. DDSketch bounds relative value error instead, which is the
wrong guarantee for utilisation near 0%; t-digest has no strict bound.

This module is the seam the stream processors use; nothing else imports datasketches.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

import datasketches
import numpy as np

K = 400  # normalised rank error 0.0068 (99% confidence)


class QuantileSketch:
    """A KLL sketch of float values with the three quantiles operators ask for."""

    __slots__ = ("_kll",)

    def __init__(self, k: int = K, _kll: datasketches.kll_floats_sketch | None = None) -> None:
        self._kll = _kll if _kll is not None else datasketches.kll_floats_sketch(k)

    @staticmethod
    def rank_error(k: int = K) -> float:
        """The normalised rank error bound (99% confidence) of a sketch of this ``k``."""
        return float(datasketches.kll_floats_sketch.get_normalized_rank_error(k, False))

    def update(self, values: float | Sequence[float] | np.ndarray) -> None:
        if isinstance(values, (int, float)):
            self._kll.update(float(values))
        else:
            array = np.asarray(values, dtype=np.float32)
            if array.size:
                self._kll.update(array)

    def merge(self, other: QuantileSketch) -> QuantileSketch:
        self._kll.merge(other._kll)
        return self

    @classmethod
    def merged(cls, sketches: Iterable[QuantileSketch], k: int = K) -> QuantileSketch:
        out = cls(k)
        for sketch in sketches:
            out.merge(sketch)
        return out

    @property
    def count(self) -> int:
        return int(self._kll.n)

    def quantiles(self, ranks: Sequence[float] = (0.25, 0.5, 0.95)) -> list[float] | None:
        """Values at ``ranks``, or None when the sketch is empty."""
        if self._kll.is_empty():
            return None
        return [float(v) for v in self._kll.get_quantiles(list(ranks))]

    def to_bytes(self) -> bytes:
        return bytes(self._kll.serialize())

    @classmethod
    def from_bytes(cls, data: bytes) -> QuantileSketch:
        return cls(_kll=datasketches.kll_floats_sketch.deserialize(data))


class IntHistogram:
    """Exact counts of the integer values 0..100, for a metric NVML reports as a whole percentage.

    Why: utilisation is an integer, so 101 counters hold a window exactly. Quantiles are exact
    (the same rank rule as KLL's, so where KLL is exact the two agree), merging is an addition and
    so is taking a pane away, and an update is one ``bincount``. A value that is not such an
    integer does not fit (:meth:`fits`): the caller keeps a KLL sketch instead (:func:`widen`).
    """

    __slots__ = ("counts",)
    BINS = 101
    _MAGIC = b"HPH"  # KLL's serialised form starts with its preamble length (1, 2 or 5): never 'H'

    def __init__(self, counts: np.ndarray | None = None) -> None:
        self.counts = counts if counts is not None else np.zeros(self.BINS, dtype=np.int64)

    @classmethod
    def fits(cls, values: np.ndarray) -> bool:
        """True when every value is a whole number within 0..100."""
        return cls.counts_if_fit(values) is not None

    @classmethod
    def counts_if_fit(cls, values: np.ndarray) -> np.ndarray | None:
        """The histogram of ``values``, or None when they do not :meth:`fit` (one pass, not a
        test and then a count: a pane closes for every series every few seconds)."""
        with np.errstate(invalid="ignore"):  # NaN and infinity: caught by the comparison below
            whole = values.astype(np.int64)
        if (whole != values).any():  # a fraction, NaN or infinity
            return None
        try:
            counts = np.bincount(whole, minlength=cls.BINS)
        except ValueError:  # a negative value
            return None
        return counts if counts.size == cls.BINS else None

    def update(self, values: np.ndarray) -> None:
        """Count ``values``, which must :meth:`fit`."""
        if values.size:
            self.counts += np.bincount(values.astype(np.int64), minlength=self.BINS)

    def merge(self, other: IntHistogram) -> IntHistogram:
        self.counts += other.counts
        return self

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def quantiles(self, ranks: Sequence[float] = (0.25, 0.5, 0.95)) -> list[float] | None:
        """The smallest value with more than ``rank * n`` values at or below it (KLL's exclusive rule,
        the default of its ``get_quantiles``); rank 1 gives the largest value."""
        cumulative: list[int] = self.counts.cumsum().tolist()  # bisect on a list: fewer calls than numpy's for 3 ranks
        n = cumulative[-1]
        if not n:
            return None
        top = bisect.bisect_left(cumulative, n)  # the largest value (rank 1 finds no count above n)
        return [float(min(bisect.bisect_right(cumulative, rank * n), top)) for rank in ranks]

    def values(self) -> np.ndarray:
        """Every value counted, in order (to widen into a sketch)."""
        return np.repeat(np.arange(self.BINS, dtype=np.float32), self.counts)

    def to_bytes(self) -> bytes:
        """The 101 counts, 4 bytes each unless one needs 8 (408 bytes: KLL's for some 100 values)."""
        if self.counts.max() < 1 << 32:
            return self._MAGIC + b"4" + self.counts.astype("<u4").tobytes()
        return self._MAGIC + b"8" + self.counts.astype("<u8").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> IntHistogram:
        width = data[len(cls._MAGIC) : len(cls._MAGIC) + 1]
        body = memoryview(data)[len(cls._MAGIC) + 1 :]
        if width not in (b"4", b"8") or len(body) != cls.BINS * int(width):
            raise ValueError("a histogram's bytes are 101 counts of 4 or 8 bytes")
        return cls(np.frombuffer(body, dtype=f"<u{width.decode()}").astype(np.int64))

    @classmethod
    def is_serialised(cls, data: bytes) -> bool:
        return data[: len(cls._MAGIC)] == cls._MAGIC


class RawValues:
    """The values themselves, while there are at most :data:`K` of them (a window of a minute or
    five at 1 Hz), for a metric a histogram cannot hold (power, clocks).

    Why: KLL keeps every value until it holds ``k`` and compacts only beyond, so up to ``k``
    values its quantiles are these values' by the same rank rule, and so are these. Raw, a pane
    close costs no sketch calls (a new sketch, an update, a merge, a query and a serialisation,
    a microsecond or two each) and many windows' quantiles are one sort (:func:`raw_rows`). The
    caller turns it into a KLL sketch (:func:`widen`) before it would pass ``k``.
    """

    __slots__ = ("parts", "n")
    LIMIT = K
    _MAGIC = b"HPR"  # see IntHistogram._MAGIC

    def __init__(self, parts: list[np.ndarray] | None = None) -> None:
        self.parts = parts if parts is not None else []  # float32 arrays, never changed once here
        self.n = sum(p.size for p in self.parts)

    @classmethod
    def of(cls, values: np.ndarray) -> RawValues:
        """A copy of ``values`` (as :meth:`update` keeps it), at most :data:`LIMIT` of them."""
        raw = cls()
        raw.update(values)
        return raw

    def update(self, values: np.ndarray) -> None:
        """Keep a copy of ``values`` (float32, as KLL's)."""
        if values.size:
            self.parts.append(np.array(values, dtype=np.float32))
            self.n += values.size

    def merge(self, other: RawValues) -> RawValues:
        self.parts += other.parts
        self.n += other.n
        return self

    @property
    def count(self) -> int:
        return self.n

    def values(self) -> np.ndarray:
        parts = self.parts
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def quantiles(self, ranks: Sequence[float] = (0.25, 0.5, 0.95)) -> list[float] | None:
        """KLL's exclusive rule on the values themselves: the smallest with more than ``rank * n``
        values at or below it (the ``floor(rank * n)``-th in order), the largest for rank 1."""
        n = self.n
        if not n:
            return None
        ordered = np.sort(self.values())
        return [float(ordered[raw_index(rank, n)]) for rank in ranks]

    def to_bytes(self) -> bytes:
        """The values in order (the same values give the same bytes), 4 bytes each."""
        return raw_rows(self.values()[np.newaxis], ())[1][0]

    @classmethod
    def from_bytes(cls, data: bytes) -> RawValues:
        body = memoryview(data)[len(cls._MAGIC) + 1 :]
        if data[len(cls._MAGIC) : len(cls._MAGIC) + 1] != b"f" or len(body) % 4 or len(body) // 4 > cls.LIMIT:
            raise ValueError(f"raw values' bytes are at most {cls.LIMIT} float32 values")
        return cls([np.frombuffer(body, dtype="<f4").astype(np.float32)] if len(body) else None)

    @classmethod
    def is_serialised(cls, data: bytes) -> bool:
        return data[: len(cls._MAGIC)] == cls._MAGIC


#: what a window carries: exact counts where the values allow, the values while few, a KLL sketch otherwise
Sketch = QuantileSketch | IntHistogram | RawValues


def load_sketch(data: bytes) -> Sketch:
    """Any kind from its bytes (a GPU window's ``sketch`` field, a checkpoint)."""
    if IntHistogram.is_serialised(data):
        return IntHistogram.from_bytes(data)
    if RawValues.is_serialised(data):
        return RawValues.from_bytes(data)
    return QuantileSketch.from_bytes(data)


def widen(sketch: Sketch) -> QuantileSketch:
    """A KLL sketch of the same values (a fractional value arrived, or a KLL is merged in)."""
    if isinstance(sketch, QuantileSketch):
        return sketch
    kll = QuantileSketch()
    kll.update(sketch.values())
    return kll


def loosen(sketch: IntHistogram | RawValues, more: int) -> RawValues | QuantileSketch:
    """The same values in a kind that takes fractions and ``more`` values: raw while they stay
    within :data:`K`, else a KLL sketch."""
    if sketch.count + more <= RawValues.LIMIT:
        return sketch if isinstance(sketch, RawValues) else RawValues([sketch.values()] if sketch.count else None)
    return widen(sketch)


def histogram_rows(data: Sequence[bytes]) -> np.ndarray | None:
    """Serialised histograms as one array of counts, a row each; None if one is a KLL sketch. A
    job's window merges one a GPU and takes each GPU's median: as rows, that is a few array calls
    for the job, not a few for each GPU."""
    if not data or not all(IntHistogram.is_serialised(d) for d in data):
        return None
    head, body = len(IntHistogram._MAGIC) + 1, IntHistogram.BINS * 4
    if all(len(d) == head + body and d[head - 1 : head] == b"4" for d in data):
        joined = b"".join(memoryview(d)[head:] for d in data)
        return np.frombuffer(joined, dtype="<u4").reshape(len(data), IntHistogram.BINS).astype(np.int64)
    return np.stack([IntHistogram.from_bytes(d).counts for d in data])


def raw_value_rows(data: Sequence[bytes]) -> np.ndarray | None:
    """Serialised raw values, as many in each, as one array, a row each (in order); None unless
    every one is raw and they hold as many values, at least one. As :func:`histogram_rows`, for
    power and clocks: a job's window of raw values is a few array calls, not a few a GPU."""
    head = len(RawValues._MAGIC) + 1
    if not data or not all(RawValues.is_serialised(d) and d[head - 1 : head] == b"f" for d in data):
        return None
    size = len(data[0]) - head
    if size <= 0 or size % 4 or size // 4 > RawValues.LIMIT or any(len(d) - head != size for d in data):
        return None
    joined = b"".join(memoryview(d)[head:] for d in data)
    return np.frombuffer(joined, dtype="<f4").reshape(len(data), size // 4).astype(np.float32)


def _row_positions(counts: np.ndarray, ranks: Sequence[float]) -> list[np.ndarray]:
    """For each rank, each row's value by :meth:`IntHistogram.quantiles`' rule (0 for an empty row)."""
    cumulative = counts.cumsum(axis=1)
    n = cumulative[:, -1:]
    top = (cumulative < n).sum(axis=1)
    return [np.minimum((cumulative <= rank * n).sum(axis=1), top).astype(np.float64) for rank in ranks]


def row_quantiles(counts: np.ndarray, rank: float) -> np.ndarray:
    """Each row's value at ``rank`` by :meth:`IntHistogram.quantiles`' rule; NaN for an empty row."""
    [at] = _row_positions(counts, [rank])
    at[counts.sum(axis=1) == 0] = np.nan
    return at


def quantile_rows(counts: np.ndarray, ranks: Sequence[float]) -> list[list[float]]:
    """For each rank, each row's value by :meth:`IntHistogram.quantiles`' rule (rows not empty):
    the quantiles of many windows in a few array calls."""
    return [at.tolist() for at in _row_positions(counts, ranks)]


def histogram_bytes(counts: np.ndarray) -> list[bytes]:
    """Each row's :meth:`IntHistogram.to_bytes`, the rows converted in one call."""
    head, size = IntHistogram._MAGIC + b"4", IntHistogram.BINS * 4
    narrow = counts.max(axis=1) < 1 << 32
    blob = counts.astype("<u4").tobytes()
    return [
        head + blob[r * size : (r + 1) * size] if narrow[r] else IntHistogram(counts[r]).to_bytes() for r in range(len(counts))
    ]


def merge_sketches(sketches: Iterable[Sketch]) -> Sketch:
    """The merge of any mix: exact while every part is a histogram, raw while every part is
    raw or exact and they hold at most :data:`K` values, KLL otherwise."""
    parts = list(sketches)
    if all(isinstance(s, IntHistogram) for s in parts):
        return IntHistogram(np.sum([s.counts for s in parts], axis=0) if parts else None)  # type: ignore[union-attr]
    if not any(isinstance(s, QuantileSketch) for s in parts) and sum(s.count for s in parts) <= RawValues.LIMIT:
        return RawValues([s.values() for s in parts if s.count])  # type: ignore[union-attr]  # no KLL: checked above
    out = QuantileSketch()
    for s in parts:
        out.merge(widen(s))
    return out


def raw_rows(
    values: np.ndarray, ranks: Sequence[float], sizes: np.ndarray | None = None
) -> tuple[list[list[float]], list[bytes]]:
    """For rows of values (one window a row), each row's :meth:`RawValues.quantiles` (a list per
    rank) and :meth:`RawValues.to_bytes`, from one sort. A row holds ``sizes[r]`` values and +inf
    after them when ``sizes`` is given (rows of different lengths in one array), else it is full."""
    ordered = np.sort(values, axis=1)
    head = RawValues._MAGIC + b"f"
    blob = ordered.astype("<f4")
    if sizes is None:
        n = ordered.shape[1]
        columns = [ordered[:, raw_index(rank, n)].astype(np.float64).tolist() for rank in ranks]
        data, size = blob.tobytes(), 4 * n
        return columns, [head + data[r * size : (r + 1) * size] for r in range(len(ordered))]
    rows = np.arange(len(ordered))
    columns = [
        ordered[rows, np.minimum((rank * sizes).astype(np.int64), sizes - 1)].astype(np.float64).tolist() for rank in ranks
    ]
    return columns, [head + blob[r, :size].tobytes() for r, size in enumerate(sizes.tolist())]


def raw_index(rank: float, n: int) -> int:
    """Where KLL's exclusive rule finds ``rank`` among ``n`` values in order: the smallest with
    more than ``rank * n`` at or below it, the last for rank 1."""
    return min(int(rank * n), n - 1)
