"""Sliding event-time window specifications.

Windows are ``size`` long and start every ``hop``, aligned to multiples of ``hop`` since the
epoch, so every GPU (and anyone re-checking in SQL) agrees on the same boundaries: the window
ending at ``E`` holds the samples with ``E - size <= ts < E``. :mod:`hpcinsight.streams.rolling` keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass


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
