"""The talk's indicators, computed from one simulated (or recorded) run.

Buckets follow the live pipeline's scheduling KPIs (streams/kpis.py) so the two can be read
side by side: ``gpu_bucket`` of a request of ``g`` GPUs is ``cpu`` (0), ``frac`` (0<g<1),
``1``, ``2-4``, ``5-8``, ``>8``; ``job_class`` is ``small`` (g<=1), ``medium`` (1<g<=8),
``large`` (g>8) for GPU jobs. Quantiles are numpy's default (linear), as there.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np


def gpu_bucket(gpus: float) -> str:
    if gpus <= 0:
        return "cpu"
    if gpus < 1:
        return "frac"
    if gpus < 2:
        return "1"
    if gpus <= 4:
        return "2-4"
    if gpus <= 8:
        return "5-8"
    return ">8"


def job_class(gpus: float) -> str:
    if gpus <= 0:
        return "cpu"
    if gpus <= 1:
        return "small"
    if gpus <= 8:
        return "medium"
    return "large"


def quantiles(values: Iterable[float]) -> dict[str, float | int]:
    arr = np.asarray(list(values), dtype=np.float64)
    if len(arr) == 0:
        return {"p50": None, "p95": None, "count": 0}
    return {"p50": round(float(np.quantile(arr, 0.5)), 3), "p95": round(float(np.quantile(arr, 0.95)), 3), "count": int(len(arr))}


def waits_by(records: list[tuple[dict[str, str], float]]) -> dict[str, dict[str, dict]]:
    """``records``: (the request's groups by dimension, its wait) -> quantiles per dimension and group."""
    grouped: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for groups, wait in records:
        for dim, group in groups.items():
            grouped[dim][group].append(wait)
    return {dim: {g: quantiles(v) for g, v in sorted(gs.items())} for dim, gs in sorted(grouped.items())}


def shares(totals: dict[str, float], digits: int = 2) -> dict[str, float]:
    return {k: round(v, digits) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
