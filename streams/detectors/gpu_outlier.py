"""The GPU of a job that behaves unlike its peers: a robust outlier among the job's GPUs.

For each job, metric and window, every GPU's median (p50) is compared with the median of
all the job's GPUs in that window; the distance is measured in robust deviations
(1.4826 x MAD, with a floor per metric so a job whose GPUs agree perfectly does not turn
noise into infinity). A GPU more than ``k`` deviations away for ``fire_after`` consecutive
windows fires; it resolves after ``resolve_after`` windows back in line. A window is judged
when the job's next window starts arriving, so every GPU of the job has reported.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from schemas.events import Anomaly, Event, GpuQuantiles
from streams.detectors import Detector, WindowChoice, anomaly_id

MAD_SCALE = 1.4826  # makes MAD estimate the standard deviation of normal data


@dataclass(frozen=True)
class GpuOutlierConfig:
    k: float = 5.0
    fire_after: int = 2
    resolve_after: int = 2
    min_peers: int = 4
    window: str | None = None  # None: the shortest sliding window
    #: metric -> smallest robust deviation used (its units)
    floors: dict[str, float] = field(default_factory=lambda: {"gpu_util": 3.0, "power_w": 15.0, "sm_clock_mhz": 50.0})


@dataclass
class _Track:
    high: int = 0
    low: int = 0
    open_id: str | None = None
    started_at: int = 0
    since: int = 0


class GpuOutlierDetector(Detector[GpuOutlierConfig]):
    kind = "gpu_outlier"
    inputs = (GpuQuantiles,)
    config_type = GpuOutlierConfig

    def __init__(self, config: GpuOutlierConfig | None = None) -> None:
        super().__init__(config)
        # (job, metric) -> window_end -> gpu_uuid -> quantiles
        self._pending: dict[tuple[str, str], dict[int, dict[str, GpuQuantiles]]] = {}
        self._tracks: dict[tuple[str, str], _Track] = {}
        self._window = WindowChoice(self.config.window)

    def observe(self, event: Event) -> list[Event]:
        if (
            not isinstance(event, GpuQuantiles) or event.job_id is None or event.metric not in self.config.floors
            or not self._window.accepts(event)
        ):
            return []
        windows = self._pending.setdefault((event.job_id, event.metric), {})
        windows.setdefault(event.window_end, {})[event.gpu_uuid] = event
        out: list[Event] = []
        for end in sorted(e for e in windows if e < event.window_end):  # earlier windows are complete
            out.extend(self._judge(event.metric, windows.pop(end)))
        return out

    def _judge(self, metric: str, gpus: dict[str, GpuQuantiles]) -> list[Event]:
        if len(gpus) < self.config.min_peers:
            return []
        values = [q.p50 for q in gpus.values()]
        median = statistics.median(values)
        scale = max(MAD_SCALE * statistics.median(abs(v - median) for v in values), self.config.floors[metric])
        out: list[Event] = []
        for uuid, q in gpus.items():
            z = (q.p50 - median) / scale
            track = self._tracks.setdefault((uuid, metric), _Track())
            evidence = {"value": q.p50, "peer_median": median, "robust_dev": scale, "robust_z": z, "peers": float(len(gpus))}
            if abs(z) > self.config.k:
                if track.high == 0:
                    track.since = q.window_start
                track.high, track.low = track.high + 1, 0
                if track.open_id is None and track.high >= self.config.fire_after:
                    track.started_at = track.since
                    track.open_id = anomaly_id(self.kind, f"{uuid}/{metric}", track.started_at)
                    out.append(self._anomaly(q, track, "firing", evidence))
            else:
                track.low, track.high = track.low + 1, 0
                if track.open_id is not None and track.low >= self.config.resolve_after:
                    out.append(self._anomaly(q, track, "resolved", evidence))
                    track.open_id = None
        return out

    def restore(self, open_incidents: list[Anomaly]) -> None:
        for a in open_incidents:
            for metric in self.config.floors:  # the id says which metric it was about
                if a.gpu_uuid and anomaly_id(self.kind, f"{a.gpu_uuid}/{metric}", a.started_at) == a.id:
                    track = self._tracks.setdefault((a.gpu_uuid, metric), _Track())
                    track.open_id, track.started_at = a.id, a.started_at

    def _anomaly(self, q: GpuQuantiles, track: _Track, state: str, evidence: dict[str, float]) -> Anomaly:
        assert track.open_id is not None
        where = "out of line with" if state == "firing" else "back in line with"
        return Anomaly(
            id=track.open_id, kind=self.kind, severity="warning", state=state,  # type: ignore[arg-type]
            subject_type="gpu", subject=q.gpu_uuid, ts=q.window_end, started_at=track.started_at,
            window_start=q.window_start, window_end=q.window_end,
            message=(f"GPU {q.gpu_index} of {q.node}: {q.metric} {evidence['value']:.1f} is {where} its job's "
                     f"{int(evidence['peers'])} GPUs (median {evidence['peer_median']:.1f}, robust z {evidence['robust_z']:+.1f})"),
            evidence=evidence, node=q.node, gpu_uuid=q.gpu_uuid, job_id=q.job_id,
        )
