"""An under-used job: its GPUs' p95 utilisation since the job started stays below a threshold.

Reads the job stage's since-start quantiles (the merge of every GPU's sketch, so one busy GPU in
an idle 64-GPU job does not hide the other 63: the job's p95 is over all its GPU-seconds). After a
warm-up (jobs load data and compile before they compute), a job whose p95 stays below its
threshold for ``for_s`` fires; it resolves when the p95 climbs back over the threshold or the job
ends. The threshold defaults to ``threshold_pct`` and can be set per team or per user
(``team:nlp=20``, ``user:alice=50``; the user's setting wins), since what counts as "using the
GPUs" differs between, say, inference services and pre-training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.events import Anomaly, Event, JobQuantiles, SchedulerEvent
from streams.detectors import Detector, anomaly_id
from streams.rolling import SINCE_START


@dataclass(frozen=True)
class JobUnderusedConfig:
    threshold_pct: float = 30.0
    warmup_s: float = 600.0
    for_s: float = 600.0
    metric: str = "gpu_util"
    #: per-team / per-user thresholds: {"team:nlp": 20.0, "user:alice": 50.0}
    overrides: dict[str, float] = field(default_factory=dict)

    def threshold(self, team: str | None, user: str | None) -> float:
        if user and f"user:{user}" in self.overrides:
            return self.overrides[f"user:{user}"]
        if team and f"team:{team}" in self.overrides:
            return self.overrides[f"team:{team}"]
        return self.threshold_pct


@dataclass
class _Track:
    low_since: int | None = None
    open_id: str | None = None
    started_at: int = 0
    last: JobQuantiles | None = None


class JobUnderusedDetector(Detector[JobUnderusedConfig]):
    kind = "job_underused"
    inputs = (JobQuantiles, SchedulerEvent)
    config_type = JobUnderusedConfig

    def __init__(self, config: JobUnderusedConfig | None = None) -> None:
        super().__init__(config)
        self._tracks: dict[str, _Track] = {}

    def observe(self, event: Event) -> list[Event]:
        if isinstance(event, SchedulerEvent):
            return self._job_event(event)
        if not isinstance(event, JobQuantiles) or event.window != SINCE_START or event.metric != self.config.metric:
            return []
        cfg = self.config
        track = self._tracks.setdefault(event.job_id, _Track())
        track.last = event
        age_s = (event.window_end - event.window_start) / 1000
        threshold = cfg.threshold(event.team, event.user)
        if event.p95 >= threshold:
            track.low_since = None
            if track.open_id is not None:
                return [self._anomaly(event, track, "resolved", threshold, "is using its GPUs again")]
            return []
        if age_s < cfg.warmup_s:
            return []
        if track.low_since is None:
            track.low_since = event.window_end
        if track.open_id is None and (event.window_end - track.low_since) / 1000 >= cfg.for_s:
            track.started_at = track.low_since
            track.open_id = anomaly_id(self.kind, event.job_id, track.started_at)
            return [self._anomaly(event, track, "firing", threshold, "is under-using its GPUs")]
        return []

    def _job_event(self, event: SchedulerEvent) -> list[Event]:
        if event.kind not in ("finished", "deleted", "preempted"):
            return []
        track = self._tracks.pop(event.job_id, None)
        if track is None or track.open_id is None or track.last is None:
            return []
        last = track.last
        threshold = self.config.threshold(last.team, last.user)
        return [self._anomaly(last, track, "resolved", threshold, f"ended ({event.kind})", ts=max(event.ts, last.window_end))]

    def restore(self, open_incidents: list[Anomaly]) -> None:
        for incident in open_incidents:
            if incident.job_id:
                track = self._tracks.setdefault(incident.job_id, _Track())
                track.open_id, track.started_at, track.low_since = incident.id, incident.started_at, incident.started_at

    def _anomaly(self, q: JobQuantiles, track: _Track, state: str, threshold: float, verb: str, ts: int | None = None) -> Anomaly:
        assert track.open_id is not None
        anomaly = Anomaly(
            id=track.open_id,
            kind=self.kind,
            severity="warning",
            state=state,  # type: ignore[arg-type]
            subject_type="job",
            subject=q.job_id,
            ts=ts if ts is not None else q.window_end,
            started_at=track.started_at,
            window_start=q.window_start,
            window_end=q.window_end,
            message=(
                f"job {q.job_id} ({q.user or 'unknown user'}, team {q.team or 'unknown'}) {verb}: "
                f"p95 GPU utilisation since start {q.p95:.1f}% over {q.gpus} GPUs (threshold {threshold:g}%)"
            ),
            evidence={
                "p95_pct": q.p95, "p50_pct": q.p50, "p25_pct": q.p25, "mean_pct": q.mean,
                "threshold_pct": threshold, "gpus": float(q.gpus), "age_s": (q.window_end - q.window_start) / 1000,
            },
            job_id=q.job_id,
        )
        if state == "resolved":
            track.open_id = None
        return anomaly
