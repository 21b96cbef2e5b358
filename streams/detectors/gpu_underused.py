"""A GPU whose windowed p95 utilisation stays below a threshold: idle while it is held.

Reads the per-GPU utilisation quantiles. Fires when ``fire_after`` consecutive windows have
p95 below ``threshold_pct``; resolves once ``resolve_after`` consecutive windows are at or above
``resolve_pct`` (hysteresis: a GPU hovering around the threshold is not paged on and off) and the
GPU has not been idle for ``quiet_s``: a serving GPU whose load dips back under the threshold
between bursts keeps its one incident (the idle spell), however often the load crosses it
(:mod:`hpcinsight.streams.detectors.incidents`). Using p95 (not the mean) means a GPU that is busy even 5% of
the time is not flagged: this catches GPUs doing nothing, not GPUs doing little. A GPU that no job
holds (``job_id`` null in its window) is free, not under-used: it is never flagged, and an open
incident resolves when its job lets the GPU go.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcinsight.schemas.events import Anomaly, Event, GpuQuantiles
from hpcinsight.streams.detectors import Detector, WindowChoice
from hpcinsight.streams.detectors.incidents import Hygiene, Incident, Incidents, State


@dataclass(frozen=True)
class GpuUnderusedConfig:
    threshold_pct: float = 10.0
    #: an open incident needs windows at or above this to resolve (hysteresis; at least threshold_pct)
    resolve_pct: float = 20.0
    fire_after: int = 1
    resolve_after: int = 3
    #: and the GPU idle in none of its windows for this long (a re-fire within it is the same idle spell)
    quiet_s: float = 600.0
    metric: str = "gpu_util"
    window: str | None = None  # None: the shortest sliding window


class GpuUnderusedDetector(Detector[GpuUnderusedConfig]):
    kind = "gpu_underused"
    inputs = (GpuQuantiles,)
    config_type = GpuUnderusedConfig

    def __init__(self, config: GpuUnderusedConfig | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        self._incidents: Incidents[str] = Incidents(
            self.kind, Hygiene.of(cfg.fire_after, resolve_after=cfg.resolve_after, quiet_s=cfg.quiet_s)
        )
        self._window = WindowChoice(self.config.window)

    def observe(self, event: Event) -> list[Event]:
        if not isinstance(event, GpuQuantiles) or event.metric != self.config.metric or not self._window.accepts(event):
            return []
        cfg = self.config
        evidence = {
            "p95_pct": event.p95,
            "p50_pct": event.p50,
            "threshold_pct": cfg.threshold_pct,
            "samples": float(event.count),
            "gpu_index": float(event.gpu_index),
        }  # the alert's `gpu` label
        if event.job_id is None:  # free: idle is what a free GPU should be
            incident = self._incidents.close(event.gpu_uuid)
            return [self._anomaly(event, incident, "resolved", evidence)] if incident is not None else []
        got = self._incidents.judge(
            event.gpu_uuid,
            event.gpu_uuid,
            event.window_end,
            fire=event.p95 < cfg.threshold_pct,
            clear=event.p95 >= max(cfg.resolve_pct, cfg.threshold_pct),
            since=event.window_start,
        )
        if got is None:
            return []
        state, incident = got
        return [self._anomaly(event, incident, state, evidence)]

    def restore(self, open_incidents: list[Anomaly]) -> None:
        for a in open_incidents:
            if a.gpu_uuid is not None:
                self._incidents.restore(a.gpu_uuid, a)

    def _anomaly(self, q: GpuQuantiles, incident: Incident, state: State, evidence: dict[str, float]) -> Anomaly:
        evidence = {**evidence, "episodes": float(incident.episodes)}
        verb = "is idle" if state == "firing" else ("is busy again" if q.job_id is not None else "was released by its job")
        return Anomaly(
            id=incident.id,
            kind=self.kind,
            severity="warning",
            state=state,
            subject_type="gpu",
            subject=q.gpu_uuid,
            ts=q.window_end,  # event time: when the evidence was complete
            started_at=incident.started_at,
            window_start=q.window_start,
            window_end=q.window_end,
            message=(
                f"GPU {q.gpu_index} of {q.node} {verb}: p95 utilisation {q.p95:.1f}% over {q.window} "
                f"(threshold {self.config.threshold_pct:g}%)"
            ),
            evidence=evidence,
            node=q.node,
            gpu_uuid=q.gpu_uuid,
            job_id=q.job_id,
        )
