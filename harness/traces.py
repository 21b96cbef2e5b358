"""Real GPU utilisation traces as evaluation scenarios: samples replayed as recorded, labelled by idle spells.

A scenario with a ``trace:`` section (see :mod:`hpcinsight.harness.scenario`) is not simulated: its GPU
samples are a stretch of a recorded trace, the Alibaba GenAI serving pods' GPU utilisation (one
sample a minute, ``../shared/data/alibaba-genai-2026``), sent through the same pipeline as the sim
scenarios, stamped before the sim clock starts (event time, in the order recorded).

**Labels, from the data alone** (written before the detectors ran on it; no detector output is read):

* an *idle spell* of a pod is a run of minutes below ``idle_pct``; busy stretches shorter than
  ``merge_min`` inside it do not end it (an operator paged for an idle GPU does not want a new page
  because a request came in for a few minutes). A spell of at least ``min_idle_min`` minutes is a
  required ``gpu_underused`` label on the pod's GPU, a shorter one a *may* label (true, not required);
* a job (``per_job`` pods side by side, as replicas of one service) whose GPU-minutes are at or above
  30% less than 5% of the time over the whole stretch is a required ``job_underused`` label from its
  warm-up and ``for_s`` on; a job idle from its first minute for at least that long is a *may* one;
* nothing else is true: any ``gpu_outlier``, ``gpu_health`` or other flag on these pods is false
  (replicas of a service under real, bursty load are not outliers of each other).

The trace is read from its ``tar.gz`` as shipped (the project never copies it); pods are taken in
sorted order of their (anonymised) id among those with a sample in every minute of the stretch, so
the selection is the trace's, not ours.
"""

from __future__ import annotations

import csv
import io
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

MINUTE_MS = 60_000


@dataclass(frozen=True)
class TraceSpec:
    file: str  # the tar.gz (or csv), absolute or relative to the scenario file
    pods: int = 24
    hours: float = 12.0
    per_job: int = 8
    idle_pct: float = 10.0
    min_idle_min: int = 3
    merge_min: int = 10
    busy_pct: float = 30.0  # job_underused: a GPU-minute at or above this is "using the GPU"


@dataclass
class Trace:
    """The chosen stretch: each pod's utilisation per minute from the stretch's start, and its job."""

    spec: TraceSpec
    minutes: int
    series: dict[str, list[float]] = field(default_factory=dict)  # pod -> utilisation per minute
    job_of: dict[str, int] = field(default_factory=dict)  # pod -> job number


def _rows(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        tar = tarfile.open(path, "r:gz")
        member = next(m for m in tar.getmembers() if m.name.endswith(".csv"))
        handle = tar.extractfile(member)
        assert handle is not None
        return io.TextIOWrapper(handle, encoding="utf-8")
    return open(path, encoding="utf-8")


def read(spec: TraceSpec, base: Path) -> Trace:
    """The stretch of the trace ``spec`` names (``value, timestamp_anon, container_ip`` rows)."""
    path = Path(spec.file) if Path(spec.file).is_absolute() else (base / spec.file).resolve()
    if not path.exists():
        raise FileNotFoundError(f"trace {path} is not there (see ../shared/data/README.md)")
    by_pod: dict[str, dict[int, float]] = defaultdict(dict)
    with _rows(path) as fh:
        for row in csv.DictReader(fh):
            by_pod[row["container_ip"]][int(float(row["timestamp_anon"]))] = float(row["value"])
    start = min(t for samples in by_pod.values() for t in samples)
    minutes = int(spec.hours * 60)
    chosen: dict[str, list[float]] = {}
    for pod in sorted(by_pod):
        per_minute: dict[int, float] = {}
        for t, value in by_pod[pod].items():
            m = (t - start) // 60
            if 0 <= m < minutes:
                per_minute[int(m)] = max(0.0, min(100.0, value))
        if len(per_minute) == minutes:
            chosen[pod] = [per_minute[m] for m in range(minutes)]
        if len(chosen) == spec.pods:
            break
    if len(chosen) < spec.pods:
        raise ValueError(f"trace {path}: only {len(chosen)} pods have every minute of the first {spec.hours:g} h")
    return Trace(spec, minutes, chosen, {pod: i // spec.per_job for i, pod in enumerate(chosen)})


def idle_spells(series: list[float], idle_pct: float, merge_min: int) -> list[tuple[int, int]]:
    """(first, last+1) minutes of each idle spell: runs below ``idle_pct``, joined across busy runs shorter
    than ``merge_min``."""
    runs: list[list[int]] = []
    for m, value in enumerate(series):
        if value < idle_pct:
            if runs and m - runs[-1][1] < merge_min:
                runs[-1][1] = m + 1
            else:
                runs.append([m, m + 1])
    return [(a, b) for a, b in runs]
