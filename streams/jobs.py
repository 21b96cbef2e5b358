"""The job stage: a job's quantiles are the merge of its GPUs' sketches.

The per-GPU stage runs where the GPU's node is partitioned; a job spans nodes, so each GPU sends
its closed window sketches (:class:`GpuSketch`) keyed by job, and this stage, partitioned by job,
merges the sketches of one ``(job, metric, window, window_end)``. It emits the job's
:class:`JobQuantiles` as soon as every GPU that reported the job's previous window has reported
this one. A GPU that went away (node lost, job shrank) must not hold the job up forever, but a GPU
whose worker is merely behind (a restart, a backlog replayed at full speed) must not be left out:
so an incomplete window goes out only once a sketch at least ``grace_ms`` newer (event time) has
arrived *and* the window has waited ``wait_s`` of processing time, or after ``stale_s`` of
processing time in any case (the job ended: nothing newer will come; see :meth:`JobMerger.tick`).
A sketch for a window already emitted is counted in ``late`` and dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from hpcinsight.schemas.events import Event, GpuSketch, JobQuantiles
from hpcinsight.streams.rolling import SINCE_START
from hpcinsight.streams.sketches import (
    IntHistogram,
    RawValues,
    Sketch,
    histogram_rows,
    load_sketch,
    loosen,
    merge_sketches,
    raw_index,
    raw_value_rows,
    row_quantiles,
)


class JobGpuWindow(Event, frozen=True):
    """Every GPU of a job in one sliding window, side by side: what peer comparisons need.

    Internal to the worker (never on a topic): the job stage hands it to the detectors that
    compare a job's GPUs and nodes with each other, which only this stage can do, since it is
    where all of a job's GPUs meet whatever worker sampled them.
    """

    __schema__: ClassVar[str] = "job_gpu_window"
    __version__: ClassVar[int] = 1

    job_id: str
    metric: str
    window: str
    window_start: int
    window_end: int
    statistic: str  # "p50" (from the GPU's sketch) or "mean" (metrics kept as window means)
    value: dict[str, float]  # gpu uuid -> the GPU's statistic in the window
    node: dict[str, str]  # gpu uuid -> its node
    #: with statistic "p50": gpu uuid -> the GPU's window mean too. A median is ill-conditioned on a
    #: window split between two levels (a job-wide checkpoint pause filling half of it): it jumps from
    #: one level to the other as the split passes one half, while the mean moves smoothly
    mean: dict[str, float] | None = None


@dataclass(frozen=True)
class JobStageConfig:
    grace_ms: int = 20_000
    wait_s: float = 10.0
    stale_s: float = 30.0
    idle_forget_ms: int = 2 * 3_600_000  # a job silent this long (event time) is forgotten


@dataclass
class _Pending:
    since: float  # processing time of its first sketch
    sketches: dict[str, GpuSketch] = field(default_factory=dict)


@dataclass
class _Series:
    pending: dict[int, _Pending] = field(default_factory=dict)  # window_end -> GPUs so far
    expected: frozenset[str] = frozenset()  # GPUs of the last emitted window
    emitted_to: int = 0
    newest: int = 0


#: from this many GPUs a job's window is merged as one array of histograms (see _merge)
ROWS_FROM_GPUS = 12


def _merge(data: list[bytes], medians: bool) -> tuple[Sketch, list[float]]:
    """The merge of a window's GPU sketches and, if asked, each one's median (0 for an empty one).
    From ROWS_FROM_GPUS exact ones, as one array (measured: 1.7-1.9 times faster from 32 GPUs,
    slower below about 12, where a few calls a GPU cost less than the array's setup); so too raw
    values as many a GPU (power and clocks at a steady rate), which otherwise cost a sort and a
    KLL sketch a GPU (a 1,280-GPU job's window took about 0.1 s)."""
    rows = histogram_rows(data) if len(data) >= ROWS_FROM_GPUS else None
    if rows is not None:
        return IntHistogram(rows.sum(axis=0)), np.nan_to_num(row_quantiles(rows, 0.5), nan=0.0).tolist() if medians else []
    raw = raw_value_rows(data) if len(data) >= ROWS_FROM_GPUS else None
    if raw is not None:
        ordered = np.sort(raw, axis=1)
        values = ordered.ravel()
        merged = loosen(RawValues([values]), 0)  # raw within k, else a KLL of every value (as merging each GPU's would give)
        return merged, ordered[:, raw_index(0.5, ordered.shape[1])].astype(np.float64).tolist() if medians else []
    sketches = [load_sketch(d) for d in data]
    return merge_sketches(sketches), [(s.quantiles([0.5]) or [0.0])[0] for s in sketches] if medians else []


class JobMerger:
    def __init__(self, config: JobStageConfig | None = None) -> None:
        self.config = config or JobStageConfig()
        self._series: dict[tuple[str, str, str], _Series] = {}
        # (job, metric) -> GPUs of its latest emitted window of any kind: a new window kind (the
        # first since-start view, the first hour) need not wait out the grace period to know them
        self._gpus_of: dict[tuple[str, str], frozenset[str]] = {}
        self.late = 0
        self._newest = 0
        self.gpu_windows: list[JobGpuWindow] = []  # filled by add/tick, drained by the caller

    def add(self, sketch: GpuSketch, now: float | None = None) -> list[JobQuantiles]:
        now = time.monotonic() if now is None else now
        key = (sketch.job_id, sketch.metric, sketch.window)
        series = self._series.setdefault(key, _Series())
        end = sketch.window_end
        if end <= series.emitted_to:
            self.late += 1
            return []
        series.pending.setdefault(end, _Pending(now)).sketches[sketch.gpu_uuid] = sketch  # a replay overwrites
        series.newest = max(series.newest, end)
        out = self._release(key, series, now) if self._may_release(key, series, now) else []
        if sketch.window_end > self._newest:
            self._newest = sketch.window_end
            out += self._forget_idle()
        return out

    def _may_release(self, key: tuple[str, str, str], series: _Series, now: float) -> bool:
        """False when :meth:`_release` would release nothing: its first window is neither complete
        nor has it waited long enough to be overdue. (This runs at every sketch added, a
        10,240-GPU job's window is 10,240 of them, and the answer is nearly always False.)"""
        first = series.pending[min(series.pending)]
        expected = self._expected(key, series)
        waited = now - first.since
        return waited >= min(self.config.wait_s, self.config.stale_s) or (bool(expected) and len(first.sketches) >= len(expected))

    def _expected(self, key: tuple[str, str, str], series: _Series) -> frozenset[str]:
        """The GPUs a window of ``series`` waits for: those of its previous window, else the job's known ones."""
        return series.expected or self._gpus_of.get(key[:2], frozenset())

    def _release(self, key: tuple[str, str, str], series: _Series, now: float) -> list[JobQuantiles]:
        out: list[JobQuantiles] = []
        cfg = self.config
        for e in sorted(series.pending):
            pending = series.pending[e]
            expected = self._expected(key, series)
            # the length first: the subset test walks the expected GPUs, and this runs at every sketch
            # added, so without it a job of n GPUs would cost n^2 / 2 lookups a window
            complete = bool(expected) and len(pending.sketches) >= len(expected) and expected <= pending.sketches.keys()
            waited = now - pending.since
            overdue = (series.newest - e >= cfg.grace_ms and waited >= cfg.wait_s) or waited >= cfg.stale_s
            if not (complete or overdue):
                break  # windows go out in order
            out.append(self._emit(series, e))
        return out

    def tick(self, now: float | None = None) -> list[JobQuantiles]:
        """Release windows that waited too long (call it periodically: a finished job sends nothing newer)."""
        now = time.monotonic() if now is None else now
        out: list[JobQuantiles] = []
        for key, series in self._series.items():
            if series.pending:
                out.extend(self._release(key, series, now))
        return out

    def _emit(self, series: _Series, end: int) -> JobQuantiles:
        pending = series.pending.pop(end)
        parts = list(pending.sketches.values())
        merged, gpu_medians = _merge([p.sketch for p in parts], medians=parts[0].window != SINCE_START)
        if parts[0].window != SINCE_START:
            start, nodes = min(p.window_start for p in parts), {p.gpu_uuid: p.node for p in parts}
            medians = {p.gpu_uuid: m for p, m in zip(parts, gpu_medians, strict=True)}
            means = {p.gpu_uuid: p.sum / p.count for p in parts if p.count}
            first = parts[0]
            self.gpu_windows.append(
                JobGpuWindow(
                    job_id=first.job_id,
                    metric=first.metric,
                    window=first.window,
                    window_start=start,
                    window_end=end,
                    statistic="p50",
                    value=medians,
                    node=nodes,
                    mean=means if len(means) == len(medians) else None,
                )
            )
            for name in sorted({m for p in parts for m in p.means}):
                values = {p.gpu_uuid: p.means[name] for p in parts if name in p.means}
                self.gpu_windows.append(
                    JobGpuWindow(
                        job_id=first.job_id,
                        metric=name,
                        window=first.window,
                        window_start=start,
                        window_end=end,
                        statistic="mean",
                        value=values,
                        node=nodes,
                    )
                )
        q = merged.quantiles()
        assert q is not None
        count, total = sum(p.count for p in parts), sum(p.sum for p in parts)
        series.expected, series.emitted_to = frozenset(pending.sketches), end
        first = parts[0]
        self._gpus_of[(first.job_id, first.metric)] = series.expected
        return JobQuantiles(
            job_id=first.job_id,
            metric=first.metric,
            window=first.window,
            window_start=min(p.window_start for p in parts),
            window_end=end,
            gpus=len(parts),
            count=count,
            p25=q[0],
            p50=q[1],
            p95=q[2],
            mean=total / count if count else 0.0,
            user=first.user,
            team=first.team,
            priority=first.priority,
        )

    def _forget_idle(self) -> list[JobQuantiles]:
        """Forget the jobs silent for ``idle_forget_ms`` of event time (bounded memory), emitting
        first whatever windows they still had pending: in a fast catch-up another job's input can
        run hours of event time ahead of a job whose windows were still waiting for late GPUs."""
        horizon = self._newest - self.config.idle_forget_ms
        out: list[JobQuantiles] = []
        for key in [k for k, s in self._series.items() if s.newest < horizon]:
            series = self._series.pop(key)
            out.extend(self._emit(series, e) for e in sorted(series.pending))
            self._gpus_of.pop(key[:2], None)
        return out

    def forget(self) -> None:
        """Drop all state (the partitions it came from are being rebuilt by a replay)."""
        self._series.clear()
        self._gpus_of.clear()
        self.gpu_windows.clear()
