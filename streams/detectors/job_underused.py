"""An under-used job: its GPUs' p95 utilisation since the job started stays below a threshold.

Reads the job stage's since-start quantiles (the merge of every GPU's sketch, so one busy GPU in
an idle 64-GPU job does not hide the other 63: the job's p95 is over all its GPU-seconds). After a
warm-up (jobs load data and compile before they compute), a job whose p95 stays below its
threshold for ``for_s`` fires; it resolves when the p95 climbs ``resolve_margin_pct`` over the
threshold (hysteresis: a since-start p95 hovering at the threshold is one incident) or the job
ends (:mod:`hpcinsight.streams.detectors.incidents` keeps the incident). The threshold defaults to ``threshold_pct`` and can be set per team or per user
(``team:nlp=20``, ``user:alice=50``; the user's setting wins), since what counts as "using the
GPUs" differs between, say, inference services and pre-training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hpcinsight.schemas.events import Anomaly, Event, JobQuantiles, SchedulerEvent
from hpcinsight.streams.detectors import Detector
from hpcinsight.streams.detectors.incidents import Hygiene, Incident, Incidents, State
from hpcinsight.streams.rolling import SINCE_START


@dataclass(frozen=True)
class JobUnderusedConfig:
    threshold_pct: float = 30.0
    warmup_s: float = 600.0
    for_s: float = 600.0
    #: an open incident resolves once the p95 is this far over the threshold
    resolve_margin_pct: float = 5.0
    #: and after no low window for this long
    quiet_s: float = 0.0
    metric: str = "gpu_util"
    #: per-team / per-user thresholds: {"team:nlp": 20.0, "user:alice": 50.0}
    overrides: dict[str, float] = field(default_factory=dict)

    def threshold(self, team: str | None, user: str | None) -> float:
        if user and f"user:{user}" in self.overrides:
            return self.overrides[f"user:{user}"]
        if team and f"team:{team}" in self.overrides:
            return self.overrides[f"team:{team}"]
        return self.threshold_pct


class JobUnderusedDetector(Detector[JobUnderusedConfig]):
    kind = "job_underused"
    inputs = (JobQuantiles, SchedulerEvent)
    config_type = JobUnderusedConfig

    def __init__(self, config: JobUnderusedConfig | None = None) -> None:
        super().__init__(config)
        self._incidents: Incidents[str] = Incidents(
            self.kind, Hygiene.of(fire_after_s=self.config.for_s, quiet_s=self.config.quiet_s)
        )
        self._last: dict[str, JobQuantiles] = {}

    def observe(self, event: Event) -> list[Event]:
        if isinstance(event, SchedulerEvent):
            return self._job_event(event)
        if not isinstance(event, JobQuantiles) or event.window != SINCE_START or event.metric != self.config.metric:
            return []
        cfg = self.config
        self._last[event.job_id] = event
        age_s = (event.window_end - event.window_start) / 1000
        threshold = cfg.threshold(event.team, event.user)
        low = event.p95 < threshold
        if low and age_s < cfg.warmup_s:
            return []  # warming up: not judged
        got = self._incidents.judge(
            event.job_id, event.job_id, event.window_end, fire=low, clear=event.p95 >= threshold + cfg.resolve_margin_pct
        )
        if got is None:
            return []
        state, incident = got
        verb = "is under-using its GPUs" if state == "firing" else "is using its GPUs again"
        return [self._anomaly(event, incident, state, threshold, verb)]

    def _job_event(self, event: SchedulerEvent) -> list[Event]:
        if event.kind not in ("finished", "deleted", "preempted"):
            return []
        last = self._last.pop(event.job_id, None)
        incident = self._incidents.close(event.job_id)
        if incident is None or last is None:
            return []
        threshold = self.config.threshold(last.team, last.user)
        return [self._anomaly(last, incident, "resolved", threshold, f"ended ({event.kind})", ts=max(event.ts, last.window_end))]

    def restore(self, open_incidents: list[Anomaly]) -> None:
        for a in open_incidents:
            if a.job_id:
                self._incidents.restore(a.job_id, a)

    def _anomaly(
        self, q: JobQuantiles, incident: Incident, state: State, threshold: float, verb: str, ts: int | None = None
    ) -> Anomaly:
        return Anomaly(
            id=incident.id,
            kind=self.kind,
            severity="warning",
            state=state,
            subject_type="job",
            subject=q.job_id,
            ts=ts if ts is not None else q.window_end,
            started_at=incident.started_at,
            window_start=q.window_start,
            window_end=q.window_end,
            message=(
                f"job {q.job_id} ({q.user or 'unknown user'}, team {q.team or 'unknown'}) {verb}: "
                f"p95 GPU utilisation since start {q.p95:.1f}% over {q.gpus} GPUs (threshold {threshold:g}%)"
            ),
            evidence={
                "p95_pct": q.p95,
                "p50_pct": q.p50,
                "p25_pct": q.p25,
                "mean_pct": q.mean,
                "threshold_pct": threshold,
                "gpus": float(q.gpus),
                "age_s": (q.window_end - q.window_start) / 1000,
            },
            job_id=q.job_id,
        )
