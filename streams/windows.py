"""Sliding event-time windows of one metric per GPU, and their exact quantiles.

Windows are ``size`` long and start every ``hop``, aligned to multiples of ``hop`` since the
epoch, so every GPU (and anyone re-checking in SQL) agrees on the same boundaries: the
window ending at ``E`` holds the samples with ``E - size <= ts < E``. A window is emitted
when the first sample at or past its end arrives. Quantiles use numpy's default
('linear') method over the exact values; issue 4 replaces this with mergeable sketches.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

QUANTILES = (25.0, 50.0, 95.0)


@dataclass(frozen=True)
class WindowSpec:
    size_ms: int
    hop_ms: int

    def __post_init__(self) -> None:
        if self.hop_ms <= 0 or self.size_ms <= 0 or self.size_ms % self.hop_ms:
            raise ValueError("window size must be a positive multiple of the hop")

    @property
    def label(self) -> str:
        seconds = self.size_ms / 1000
        if seconds >= 3600 and seconds % 3600 == 0:
            return f"{seconds / 3600:g}h"
        return f"{seconds / 60:g}m" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g}s"


@dataclass(frozen=True)
class WindowResult:
    start_ms: int
    end_ms: int
    count: int
    p25: float
    p50: float
    p95: float
    mean: float


class SlidingQuantiles:
    """Holds the recent samples of one series and closes windows as event time advances.

    Only windows the series fully covers are emitted (none that starts before the first
    sample), so a GPU that just appeared is not judged on a partial window.
    """

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self._samples: deque[tuple[int, float]] = deque()
        self._next_end: int | None = None
        self._first_ts: int | None = None
        self.late = 0  # samples that arrived after a window they belonged to was emitted

    def add(self, ts_ms: int, value: float | None) -> list[WindowResult]:
        spec = self.spec
        if self._next_end is None:
            self._next_end = (ts_ms // spec.hop_ms + 1) * spec.hop_ms
            self._first_ts = ts_ms
        out: list[WindowResult] = []
        while ts_ms >= self._next_end:
            result = self._close(self._next_end)
            if result is not None:
                out.append(result)
            self._next_end += spec.hop_ms
            if ts_ms - self._next_end > spec.size_ms:  # a long gap: restart, emit no empties
                self._next_end = (ts_ms // spec.hop_ms + 1) * spec.hop_ms
                self._first_ts = ts_ms
        if ts_ms < self._next_end - spec.hop_ms:
            self.late += 1
        if value is not None and ts_ms >= self._next_end - spec.size_ms:
            self._samples.append((ts_ms, value))
        return out

    def _close(self, end_ms: int) -> WindowResult | None:
        start_ms = end_ms - self.spec.size_ms
        values = np.fromiter((v for t, v in self._samples if start_ms <= t < end_ms), dtype=np.float64)
        # The next window starts one hop later: nothing older is needed again.
        while self._samples and self._samples[0][0] < start_ms + self.spec.hop_ms:
            self._samples.popleft()
        assert self._first_ts is not None
        if values.size == 0 or start_ms < self._first_ts:
            return None
        p25, p50, p95 = np.percentile(values, QUANTILES)
        return WindowResult(start_ms, end_ms, int(values.size), float(p25), float(p50), float(p95), float(values.mean()))
