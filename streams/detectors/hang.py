"""A hung job: every GPU of a running job sits near 0% and no rank has reported a step for a while.

Both signals are needed. Idle GPUs alone may be a job waiting on data or a checkpoint write;
a quiet step stream alone may be a slow step. Together, for ``steps_silent_s`` of event time,
they are the signature of a collective that never completes (a dead rank, an NCCL deadlock).
Only jobs that report steps (the training-step client) can be judged; the others are left to
the under-used detectors. Resolves when a step arrives or the GPUs are busy again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.events import Anomaly, Event, GpuQuantiles, StepMetric
from streams.detectors import Detector, WindowChoice, anomaly_id


@dataclass(frozen=True)
class HangConfig:
    idle_pct: float = 5.0
    steps_silent_s: float = 120.0
    window: str | None = None  # None: the shortest sliding window


@dataclass
class _Job:
    last_step_ms: int = 0
    last_step: int = 0
    gpu_p95: dict[str, float] = field(default_factory=dict)
    open_id: str | None = None
    started_at: int = 0


class HangDetector(Detector[HangConfig]):
    kind = "hang"
    inputs = (GpuQuantiles, StepMetric)
    config_type = HangConfig

    def __init__(self, config: HangConfig | None = None) -> None:
        super().__init__(config)
        self._jobs: dict[str, _Job] = {}
        self._window = WindowChoice(self.config.window)

    def observe(self, event: Event) -> list[Event]:
        if isinstance(event, StepMetric):
            job = self._jobs.setdefault(event.job_id, _Job())
            job.last_step_ms = max(job.last_step_ms, event.ts)
            job.last_step = max(job.last_step, event.step)
            if job.open_id is not None:
                return [self._anomaly(event.job_id, job, "resolved", event.ts, f"step {event.step} completed")]
            return []
        if (
            not isinstance(event, GpuQuantiles) or event.metric != "gpu_util" or event.job_id is None
            or not self._window.accepts(event)
        ):
            return []
        job = self._jobs.get(event.job_id)
        if job is None or job.last_step_ms == 0:  # no step client: cannot tell a hang from idling
            return []
        job.gpu_p95[event.gpu_uuid] = event.p95
        silent_ms = event.window_end - job.last_step_ms
        hung = all(p < self.config.idle_pct for p in job.gpu_p95.values()) and silent_ms >= self.config.steps_silent_s * 1000
        if hung and job.open_id is None:
            job.started_at = job.last_step_ms
            job.open_id = anomaly_id(self.kind, event.job_id, job.started_at)
            return [self._anomaly(event.job_id, job, "firing", event.window_end,
                                  f"all {len(job.gpu_p95)} GPUs below {self.config.idle_pct:g}% and no step for {silent_ms / 1000:.0f} s")]
        if not hung and job.open_id is not None and event.p95 >= self.config.idle_pct:
            return [self._anomaly(event.job_id, job, "resolved", event.window_end, "GPUs busy again")]
        return []

    def restore(self, open_incidents: list[Anomaly]) -> None:
        for a in open_incidents:
            if a.job_id is not None:
                job = self._jobs.setdefault(a.job_id, _Job())
                job.open_id, job.started_at = a.id, a.started_at
                job.last_step_ms = max(job.last_step_ms, a.started_at)

    def _anomaly(self, job_id: str, job: _Job, state: str, ts: int, why: str) -> Anomaly:
        assert job.open_id is not None
        anomaly = Anomaly(
            id=job.open_id, kind=self.kind, severity="critical" if state == "firing" else "info", state=state,  # type: ignore[arg-type]
            subject_type="job", subject=job_id, ts=ts, started_at=job.started_at, window_start=job.last_step_ms,
            window_end=ts, message=f"job {job_id} {'looks hung' if state == 'firing' else 'is moving again'}: {why}",
            evidence={"last_step": float(job.last_step), "silent_s": (ts - job.last_step_ms) / 1000,
                      "gpus": float(len(job.gpu_p95)), "max_gpu_p95": max(job.gpu_p95.values(), default=0.0)},
            job_id=job_id,
        )
        if state == "resolved":
            job.open_id = None
        return anomaly
