"""A GPU whose windowed p95 utilisation stays below a threshold: idle while it is held.

Reads the per-GPU utilisation quantiles. Fires when ``fire_after`` consecutive windows have
p95 below ``threshold_pct``, and resolves after ``resolve_after`` consecutive windows at or
above it. Using p95 (not the mean) means a GPU that is busy even 5% of the time is not
flagged: this catches GPUs doing nothing, not GPUs doing little. A GPU that no job holds
(``job_id`` null in its window) is free, not under-used: it is never flagged, and an open
incident resolves when its job lets the GPU go.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.events import Anomaly, Event, GpuQuantiles
from streams.detectors import Detector, WindowChoice, anomaly_id


@dataclass(frozen=True)
class GpuUnderusedConfig:
    threshold_pct: float = 10.0
    fire_after: int = 1
    resolve_after: int = 1
    metric: str = "gpu_util"
    window: str | None = None  # None: the shortest sliding window


@dataclass
class _Track:
    low: int = 0
    high: int = 0
    open_id: str | None = None
    started_at: int = 0
    low_since: int = 0
    evidence: dict[str, float] = field(default_factory=dict)


class GpuUnderusedDetector(Detector[GpuUnderusedConfig]):
    kind = "gpu_underused"
    inputs = (GpuQuantiles,)
    config_type = GpuUnderusedConfig

    def __init__(self, config: GpuUnderusedConfig | None = None) -> None:
        super().__init__(config)
        self._tracks: dict[str, _Track] = {}
        self._window = WindowChoice(self.config.window)

    def observe(self, event: Event) -> list[Event]:
        if not isinstance(event, GpuQuantiles) or event.metric != self.config.metric or not self._window.accepts(event):
            return []
        cfg = self.config
        track = self._tracks.setdefault(event.gpu_uuid, _Track())
        evidence = {"p95_pct": event.p95, "p50_pct": event.p50, "threshold_pct": cfg.threshold_pct, "samples": float(event.count),
                    "gpu_index": float(event.gpu_index)}  # the alert's `gpu` label
        if event.job_id is None:  # free: idle is what a free GPU should be
            track.low = track.high = 0
            if track.open_id is not None:
                anomaly = self._anomaly(event, track, "resolved", evidence)
                track.open_id = None
                return [anomaly]
            return []
        if event.p95 < cfg.threshold_pct:
            if track.low == 0:
                track.low_since = event.window_start
            track.low, track.high = track.low + 1, 0
            if track.open_id is None and track.low >= cfg.fire_after:
                track.started_at = track.low_since
                track.open_id = anomaly_id(self.kind, event.gpu_uuid, track.started_at)
                return [self._anomaly(event, track, "firing", evidence)]
        else:
            track.high, track.low = track.high + 1, 0
            if track.open_id is not None and track.high >= cfg.resolve_after:
                anomaly = self._anomaly(event, track, "resolved", evidence)
                track.open_id = None
                return [anomaly]
        return []

    def restore(self, open_incidents: list[Anomaly]) -> None:
        for incident in open_incidents:
            if incident.gpu_uuid is None:
                continue
            track = self._tracks.setdefault(incident.gpu_uuid, _Track())
            track.open_id, track.started_at = incident.id, incident.started_at

    def _anomaly(self, q: GpuQuantiles, track: _Track, state: str, evidence: dict[str, float]) -> Anomaly:
        assert track.open_id is not None
        verb = "is idle" if state == "firing" else ("is busy again" if q.job_id is not None else "was released by its job")
        return Anomaly(
            id=track.open_id,
            kind=self.kind,
            severity="warning",
            state=state,  # type: ignore[arg-type]
            subject_type="gpu",
            subject=q.gpu_uuid,
            ts=q.window_end,  # event time: when the evidence was complete
            started_at=track.started_at,
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
