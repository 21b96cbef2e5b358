"""The FGD authors' published allocation ratios, and ours set beside them.

``anchor_figures.json`` holds their per-seed figures for the default openb trace at 100% and
130% arrived GPU demand (facts taken from their published results file; its origin is in the
file). Random can only agree with them statistically: its choices come from a different
random stream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from statistics import mean

FIGURES = Path(__file__).with_name("anchor_figures.json")
TOLERANCE_PP = 0.3  # the acceptance bound on the mean over seeds 42-51


@cache
def published() -> dict:
    return json.loads(FIGURES.read_text())


def published_value(policy: str, seed: int, level: int) -> float | None:
    return published()["policies"].get(policy, {}).get(str(seed), {}).get(str(level))


@dataclass(frozen=True)
class Comparison:
    policy: str
    level: int
    ours: float
    theirs: float | None
    seeds: int

    @property
    def diff(self) -> float | None:
        return None if self.theirs is None else round(self.ours - self.theirs, 2)

    @property
    def within(self) -> bool | None:
        return None if self.diff is None else abs(self.diff) <= TOLERANCE_PP


def compare(curves: dict[str, dict[int, dict[int, float]]], levels: tuple[int, ...] = (100, 130)) -> list[Comparison]:
    """``curves[policy][seed][level]`` (ours) against their mean over the same seeds."""
    out = []
    for policy, by_seed in curves.items():
        for level in levels:
            seeds = [s for s in by_seed if level in by_seed[s]]
            if not seeds:
                continue
            ours = round(mean(by_seed[s][level] for s in seeds), 2)
            theirs_vals = [published_value(policy, s, level) for s in seeds]
            theirs = round(mean(theirs_vals), 2) if all(v is not None for v in theirs_vals) else None
            out.append(Comparison(policy, level, ours, theirs, len(seeds)))
    return out
