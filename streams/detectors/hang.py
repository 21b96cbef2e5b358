"""A hung job: no rank has reported a step for a while and its GPUs do no work, idle or spinning.

A collective that never completes (a dead rank, an NCCL deadlock, a lost peer) shows in two ways
on real hardware:

* **idle**: every GPU of the job sits near 0% utilisation (the kernels returned, the host waits);
* **spinning**: NCCL's kernels keep polling for data that never comes, so ``gpu_util`` (the share
  of time *a* kernel runs) stays at 100% on every GPU, while nothing is computed or moved: SM
  activity drops to the few SMs the polling blocks occupy, tensor cores stop, power falls to
  near idle, and NVLink traffic stops. Utilisation alone is fooled.

Steps gone silent are needed in both cases. Idle GPUs alone may be a job waiting on data or a
checkpoint write; a quiet step stream alone may be a slow step. Together, for ``steps_silent_s`` of
event time, they are the signature of a hang. "Doing no work" is judged per job from the job
stage's windows (every GPU side by side): the job's median SM activity and power, and its NVLink
traffic where the GPUs have links, each below ``work_ratio`` of the same job's level while its
steps were advancing (its own baseline, so GPU models and workloads need no absolute limits).
Only jobs that report steps (the training-step client) can be judged; the others are left to
the under-used detectors. Resolves when a step arrives, or when the GPUs work again.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

from hpcinsight.schemas.events import Anomaly, Event, GpuQuantiles, StepMetric
from hpcinsight.streams.detectors import Detector, WindowChoice
from hpcinsight.streams.detectors.incidents import Incident, Incidents, State
from hpcinsight.streams.jobs import JobGpuWindow

#: job-window metrics that show work being done, and how each is summarised across the job's GPUs
WORK_METRICS = ("sm_active_pct", "power_w", "nvlink_bytes_per_s")


@dataclass(frozen=True)
class HangConfig:
    idle_pct: float = 5.0
    steps_silent_s: float = 120.0
    #: a job does no work when each work metric is below this share of its level while stepping
    work_ratio: float = 0.4
    #: windows kept for that level (those in which steps advanced)
    baseline_windows: int = 30
    window: str | None = None  # None: the shortest sliding window


@dataclass
class _Job:
    last_step_ms: int = 0
    last_step: int = 0
    gpu_p95: dict[str, float] = field(default_factory=dict)
    levels: dict[str, deque[float]] = field(default_factory=dict)  # work metric -> job medians while stepping
    now: dict[str, float] = field(default_factory=dict)  # work metric -> the latest window's job median
    now_end: int = 0


class HangDetector(Detector[HangConfig]):
    kind = "hang"
    inputs = (GpuQuantiles, StepMetric, JobGpuWindow)
    config_type = HangConfig

    def __init__(self, config: HangConfig | None = None) -> None:
        super().__init__(config)
        self._jobs: dict[str, _Job] = {}
        self._incidents: Incidents[str] = Incidents(self.kind)
        self._window = WindowChoice(self.config.window)
        self._job_window = WindowChoice(self.config.window)

    def observe(self, event: Event) -> list[Event]:
        if isinstance(event, StepMetric):
            stepping = self._jobs.setdefault(event.job_id, _Job())
            stepping.last_step_ms = max(stepping.last_step_ms, event.ts)
            stepping.last_step = max(stepping.last_step, event.step)
            got = self._incidents.judge(event.job_id, event.job_id, event.ts, fire=False, clear=True)
            return (
                [self._anomaly(event.job_id, stepping, got[1], "resolved", event.ts, f"step {event.step} completed")]
                if got
                else []
            )
        if isinstance(event, JobGpuWindow):
            return self._on_job_window(event)
        if (
            not isinstance(event, GpuQuantiles)
            or event.metric != "gpu_util"
            or event.job_id is None
            or not self._window.accepts(event)
        ):
            return []
        job = self._jobs.get(event.job_id)
        if job is None or job.last_step_ms == 0:  # no step client: cannot tell a hang from idling
            return []
        job.gpu_p95[event.gpu_uuid] = event.p95
        return self._judge(event.job_id, job, event.window_end)

    def _on_job_window(self, w: JobGpuWindow) -> list[Event]:
        if w.metric not in WORK_METRICS or not w.value or not self._job_window.accepts(w):
            return []
        job = self._jobs.get(w.job_id)
        if job is None or job.last_step_ms == 0:
            return []
        level = statistics.median((w.mean or w.value).values())
        if job.last_step_ms >= w.window_start + (w.window_end - w.window_start) // 2:  # steps advanced in this window
            kept = job.levels.setdefault(w.metric, deque(maxlen=self.config.baseline_windows))
            kept.append(level)
        job.now[w.metric] = level
        job.now_end = max(job.now_end, w.window_end)
        return self._judge(w.job_id, job, w.window_end)

    def _no_work(self, job: _Job) -> tuple[bool | None, dict[str, float]]:
        """Whether every work metric known for the job is far below its level while stepping (None: cannot tell)."""
        ratios: dict[str, float] = {}
        for metric in WORK_METRICS:
            kept, now = job.levels.get(metric), job.now.get(metric)
            if not kept or now is None:
                continue
            base = statistics.median(kept)
            if base > 0:
                ratios[metric] = now / base
        if "sm_active_pct" not in ratios and "power_w" not in ratios:
            return None, ratios
        return all(r < self.config.work_ratio for r in ratios.values()), ratios

    def _judge(self, job_id: str, job: _Job, ts: int) -> list[Event]:
        cfg = self.config
        silent_ms = ts - job.last_step_ms
        idle = bool(job.gpu_p95) and all(p < cfg.idle_pct for p in job.gpu_p95.values())
        no_work, ratios = self._no_work(job)
        silent = silent_ms >= cfg.steps_silent_s * 1000
        hung = silent and (idle or no_work is True)
        working = not idle and no_work is not True
        got = self._incidents.judge(job_id, job_id, ts, fire=hung, clear=working, since=job.last_step_ms, severity="critical")
        if got is None:
            return []
        state, incident = got
        if state == "firing":
            how = (
                f"all {len(job.gpu_p95)} GPUs below {cfg.idle_pct:g}%"
                if idle
                else "its GPUs spin without working ("
                + ", ".join(f"{m} {100 * r:.0f}%" for m, r in sorted(ratios.items()))
                + " of their level while stepping; utilisation "
                + f"p95 {max(job.gpu_p95.values(), default=0.0):.0f}%: collective kernels polling)"
            )
            why = f"{how} and no step for {silent_ms / 1000:.0f} s"
        else:
            why = "GPUs working again"
        return [self._anomaly(job_id, job, incident, state, ts, why, idle, ratios)]

    def restore(self, open_incidents: list[Anomaly]) -> None:
        for a in open_incidents:
            if a.job_id is not None:
                self._incidents.restore(a.job_id, a)
                job = self._jobs.setdefault(a.job_id, _Job())
                job.last_step_ms = max(job.last_step_ms, a.started_at)

    def _anomaly(
        self,
        job_id: str,
        job: _Job,
        incident: Incident,
        state: State,
        ts: int,
        why: str,
        idle: bool | None = None,
        ratios: dict[str, float] | None = None,
    ) -> Anomaly:
        evidence = {
            "last_step": float(job.last_step),
            "silent_s": (ts - job.last_step_ms) / 1000,
            "gpus": float(len(job.gpu_p95)),
            "max_gpu_p95": max(job.gpu_p95.values(), default=0.0),
        }
        if idle is not None:
            evidence["spinning"] = float(not idle)
        evidence |= {f"{m}_ratio": r for m, r in (ratios or {}).items()}
        return Anomaly(
            id=incident.id,
            kind=self.kind,
            severity="critical" if state == "firing" else "info",
            state=state,
            subject_type="job",
            subject=job_id,
            ts=ts,
            started_at=incident.started_at,
            window_start=job.last_step_ms,
            window_end=ts,
            message=f"job {job_id} {'looks hung' if state == 'firing' else 'is moving again'}: {why}",
            evidence=evidence,
            job_id=job_id,
        )
