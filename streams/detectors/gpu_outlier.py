"""The GPU, or the node, of a job that behaves unlike its peers: robust outliers within a job.

Runs in the job stage, on :class:`hpcinsight.streams.jobs.JobGpuWindow`: all of a job's GPUs in one window,
whichever workers sampled them (the per-GPU stage only sees the GPUs of its own partitions, so a
comparison there would depend on how partitions happen to be assigned).

* GPU: every GPU's median (p50) of the window (the mean, for memory utilisation, SM activity and
  PCIe/NVLink throughput, which are kept as window means) against the median of all the job's GPUs, in
  robust deviations (1.4826 x MAD, floored per metric and at ``rel_floor`` of the median, so a job
  whose GPUs agree perfectly does not turn noise, or a difference of a few percent, into an outlier).
* Node: the median of a node's GPUs against the median of the job's nodes, the same way, when
  the job spans at least ``min_nodes`` nodes. A node whose GPUs are all slow (a bad PCIe switch,
  a hot rack, a misconfigured host) moves as one, and is named as one.

For utilisation, power and SM clock, whose windows arrive as medians, the GPU's window mean is
judged beside its median, and a GPU (or node) is out of line only when both are, on the same side:
its robust z is the smaller of the two. A median is ill-conditioned on a window split between two
levels: when a whole job pauses for a checkpoint that fills about half of the window, each GPU's
median lands on one level or the other depending on a second or two of timing, so GPUs doing exactly
the same work sit many deviations apart. The mean moves smoothly with the split and keeps them
together, while a GPU that is really slow, idle or throttled is out of line on both.

Only jobs whose GPUs work in lockstep are judged: in most of its recent utilisation windows the job's
median GPU is busy and its GPUs sit close together (training). Replicas of a service under uneven
load, or GPUs that mostly idle, are not peers doing the same work, and a busy replica among idle
ones is no fault (the GenAI serving trace: 997 false incidents on 24 pods in 12 h without this).

More than ``k`` deviations for ``fire_after`` consecutive windows fires; ``resolve_after`` windows
back within ``k_resolve`` deviations (hysteresis) and ``quiet_s`` with no metric out of line resolve
(a re-fire within it is folded: :mod:`hpcinsight.streams.detectors.incidents`). One incident per GPU or node, however many of its metrics are out of line
(an idle GPU is out of line on all of them): it fires with the first, lists each metric's robust z
in its evidence (``z_<metric>``), and resolves when every metric is back. Sliding windows overlap, so consecutive windows share samples: with short
windows a burst of noise can count twice; judge a window at least a few hops long (the default is
the shortest window the worker emits, 1 min by default).
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

from hpcinsight.schemas.events import Anomaly, Event, SubjectType
from hpcinsight.streams.detectors import Detector, WindowChoice
from hpcinsight.streams.detectors.incidents import Hygiene, Incident, Incidents, State, anomaly_id
from hpcinsight.streams.jobs import JobGpuWindow

MAD_SCALE = 1.4826  # makes MAD estimate the standard deviation of normal data


@dataclass(frozen=True)
class GpuOutlierConfig:
    k: float = 5.0
    #: a metric out of line is back within this many deviations (hysteresis; at most k)
    k_resolve: float = 3.0
    fire_after: int = 2
    resolve_after: int = 2
    #: an incident resolves only after no metric of its subject has been out of line for this long
    quiet_s: float = 30.0
    min_peers: int = 4
    min_nodes: int = 3
    window: str | None = None  # None: the shortest sliding window
    #: the smallest robust deviation is also this share of the peers' median: with k, an outlier differs by at
    #: least k x rel_floor (20%) from its peers (GPUs whose NVLink traffic agrees within 1% are not made
    #: outliers by one 4% apart)
    rel_floor: float = 0.04
    #: only jobs whose GPUs work in lockstep are judged: in at least this share of their last lockstep_windows
    #: utilisation windows, the job's median GPU was at least lockstep_busy_pct busy and its GPUs within
    #: lockstep_spread (robust deviation over median) of each other. Replicas of a service under uneven
    #: load, or a job whose GPUs mostly idle, are not peers doing the same work
    lockstep_share: float = 0.6
    lockstep_windows: int = 30
    lockstep_busy_pct: float = 20.0
    lockstep_spread: float = 0.15
    #: metric -> smallest robust deviation used (its units)
    floors: dict[str, float] = field(
        default_factory=lambda: {
            "gpu_util": 3.0,
            "power_w": 15.0,
            "sm_clock_mhz": 50.0,
            "mem_util_pct": 3.0,
            "sm_active_pct": 3.0,
            "pcie_bytes_per_s": 2e8,
            "nvlink_bytes_per_s": 2e9,
        }
    )


def robust(values: list[float], floor: float, rel_floor: float = 0.0) -> tuple[float, float]:
    """Median and robust deviation (at least ``floor``, and ``rel_floor`` of the median) of ``values``."""
    median = statistics.median(values)
    return median, max(MAD_SCALE * statistics.median(abs(v - median) for v in values), floor, rel_floor * abs(median))


def _nearer_zero(z_value: float, z_mean: float) -> float:
    """Of a subject's two robust z, the one nearer zero; zero when they disagree in sign."""
    return min(z_value, z_mean, key=abs) if z_value * z_mean > 0 else 0.0


class _Peers:
    """The peer statistics of one window's subjects (median and robust deviation of their values
    and, where the window's means came too, of their means): a subject's evidence and robust z
    are taken from them one subject at a time, so that a subject in line costs a few operations,
    not an evidence record (a 10,240-GPU job's window has 10,240 subjects, nearly all in line)."""

    __slots__ = ("values", "means", "median", "scale", "mean_median", "mean_scale")

    def __init__(self, values: dict[str, float], means: dict[str, float] | None, floor: float, rel_floor: float = 0.0) -> None:
        self.values = values
        self.median, self.scale = robust(list(values.values()), floor, rel_floor)
        self.means = means if means is not None and means.keys() == values.keys() else None
        self.mean_median, self.mean_scale = robust(list(self.means.values()), floor, rel_floor) if self.means else (0.0, 1.0)

    def z(self, subject: str) -> float:
        """The subject's robust z: of its value and, with means, the one of value and mean nearer
        zero (zero when they disagree in sign)."""
        z_value = (self.values[subject] - self.median) / self.scale
        return z_value if self.means is None else _nearer_zero(z_value, self._z_mean(subject))

    def _z_mean(self, subject: str) -> float:
        assert self.means is not None
        return (self.means[subject] - self.mean_median) / self.mean_scale

    def evidence(self, subject: str) -> dict[str, float]:
        """The subject's evidence against its peers (``robust_z`` is :meth:`z`)."""
        value = self.values[subject]
        evidence = {
            "value": value,
            "peer_median": self.median,
            "robust_dev": self.scale,
            "robust_z": (value - self.median) / self.scale,
            "peers": float(len(self.values)),
        }
        if self.means is not None:
            z_value, z_mean = evidence["robust_z"], self._z_mean(subject)
            evidence.update(
                mean=self.means[subject],
                peer_mean_median=self.mean_median,
                robust_z_median=z_value,
                robust_z_mean=z_mean,
                robust_z=_nearer_zero(z_value, z_mean),
            )
        return evidence


def _by_node(values: dict[str, float], node_of: dict[str, str]) -> tuple[dict[str, float], dict[str, int]]:
    """The median of each node's GPUs, and how many GPUs each has."""
    grouped: dict[str, list[float]] = {}
    for uuid, value in values.items():
        grouped.setdefault(node_of.get(uuid, "?"), []).append(value)
    return {n: statistics.median(v) for n, v in grouped.items()}, {n: len(v) for n, v in grouped.items()}


class GpuOutlierDetector(Detector[GpuOutlierConfig]):
    kind = "gpu_outlier"
    inputs = (JobGpuWindow,)
    config_type = GpuOutlierConfig

    def __init__(self, config: GpuOutlierConfig | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        # a metric's spells out of line (never paged by themselves) and the one incident of each GPU or node
        self._metrics: Incidents[tuple[str, str]] = Incidents(
            f"{self.kind}/metric", Hygiene.of(cfg.fire_after, resolve_after=cfg.resolve_after)
        )
        self._incidents: Incidents[str] = Incidents(self.kind, Hygiene.of(quiet_s=cfg.quiet_s))
        self._out: dict[str, set[str]] = {}  # subject -> its metrics out of line now
        self._worst: dict[str, dict[str, float]] = {}  # subject -> metric -> its robust z when it went out (evidence)
        self._window = WindowChoice(self.config.window)
        self._lockstep: dict[str, deque[bool]] = {}  # job -> whether each recent utilisation window was in lockstep

    def observe(self, event: Event) -> list[Event]:
        if not isinstance(event, JobGpuWindow) or event.metric not in self.config.floors or not self._window.accepts(event):
            return []
        if not self._in_lockstep(event):
            return []
        floor = self.config.floors[event.metric]
        out: list[Event] = []
        if len(event.value) >= self.config.min_peers:
            peers = _Peers(event.value, event.mean, floor, self.config.rel_floor)
            for uuid in event.value:
                if self._quiet(event.metric, uuid, peers.z(uuid)):
                    continue
                out += self._judge(event, "gpu", uuid, event.node.get(uuid), uuid, peers.evidence(uuid))
        node_values, gpus_on = _by_node(event.value, event.node)
        if len(node_values) >= self.config.min_nodes:
            node_means = _by_node(event.mean, event.node)[0] if event.mean is not None else None
            peers = _Peers(node_values, node_means, floor, self.config.rel_floor)
            for node in node_values:
                if self._quiet(event.metric, node, peers.z(node)):
                    continue
                out += self._judge(
                    event, "node", node, node, None, {**peers.evidence(node), "gpus_on_node": float(gpus_on[node])}
                )
        return out

    def _quiet(self, metric: str, subject: str, z: float) -> bool:
        """Whether judging ``subject`` would change nothing: in line, with no spell of this metric
        building or open and no incident (what :meth:`_judge` would find, without its work)."""
        return abs(z) <= self.config.k and not self._metrics.tracks((subject, metric)) and subject not in self._out

    def _in_lockstep(self, w: JobGpuWindow) -> bool:
        """Whether the job's GPUs do the same work (see the config); a job without utilisation windows is judged."""
        cfg = self.config
        history = self._lockstep.get(w.job_id)
        if w.metric == "gpu_util" and w.value:
            if history is None:
                history = self._lockstep[w.job_id] = deque(maxlen=cfg.lockstep_windows)
            median, spread = robust(list(w.value.values()), 0.0)
            history.append(median >= cfg.lockstep_busy_pct and spread <= cfg.lockstep_spread * median)
        if history is None:
            return True
        return len(history) >= 3 and sum(history) >= cfg.lockstep_share * len(history)

    def _judge(
        self, w: JobGpuWindow, level: SubjectType, subject: str, node: str | None, uuid: str | None, evidence: dict[str, float]
    ) -> list[Event]:
        cfg = self.config
        z = abs(evidence["robust_z"])
        spell = self._metrics.judge(
            (subject, w.metric), subject, w.window_end, fire=z > cfg.k, clear=z < min(cfg.k_resolve, cfg.k), since=w.window_start
        )
        out = self._out.get(subject)
        if spell is not None and spell[0] == "firing":
            out = self._out.setdefault(subject, set())
            out.add(w.metric)
            self._worst.setdefault(subject, {}).setdefault(w.metric, evidence["robust_z"])
        elif spell is not None and out is not None:
            out.discard(w.metric)
        if out is None:
            return []
        since = spell[1].started_at if spell is not None else None
        got = self._incidents.judge(subject, subject, w.window_end, fire=bool(out), since=since)
        if got is None:
            if not out and self._incidents.get(subject) is None:
                del self._out[subject]
                self._worst.pop(subject, None)
            return []
        state, incident = got
        anomaly = self._anomaly(w, level, subject, node, uuid, incident, state, evidence)
        if state == "resolved":
            self._out.pop(subject, None)
            self._worst.pop(subject, None)
        return [anomaly]

    def restore(self, open_incidents: list[Anomaly]) -> None:
        for a in open_incidents:
            if anomaly_id(self.kind, a.subject, a.started_at) != a.id:
                continue
            metrics = {k[2:] for k in a.evidence if k.startswith("z_")} or {str(m) for m in self.config.floors}
            self._incidents.restore(a.subject, a)
            self._out[a.subject] = set(metrics)
            self._worst[a.subject] = {m: a.evidence[f"z_{m}"] for m in metrics if f"z_{m}" in a.evidence}
            for m in metrics:  # each must come back in line before the incident can resolve
                self._metrics.restore((a.subject, m), a)

    def _anomaly(
        self,
        w: JobGpuWindow,
        level: SubjectType,
        subject: str,
        node: str | None,
        uuid: str | None,
        incident: Incident,
        state: State,
        evidence: dict[str, float],
    ) -> Anomaly:
        what = f"GPU {uuid} on {node}" if level == "gpu" else f"node {node} ({int(evidence['gpus_on_node'])} GPUs)"
        peers = f"{int(evidence['peers'])} {'GPUs' if level == 'gpu' else 'nodes'}"
        statistic = "median" if w.statistic == "p50" else "mean"
        if state == "firing":
            mean = f" (mean {evidence['mean']:.4g})" if "mean" in evidence else ""
            message = (
                f"{what}: {statistic} {w.metric} {evidence['value']:.4g}{mean} over {w.window} is out of line with "
                f"job {w.job_id}'s {peers} (median {evidence['peer_median']:.4g}, robust z {evidence['robust_z']:+.1f})"
            )
        else:
            message = f"{what} is back in line with job {w.job_id}'s {peers} on every metric"
        full = {
            **evidence,
            **{f"z_{m}": z for m, z in self._worst.get(subject, {}).items()},
            "metrics_out": float(len(self._out.get(subject, ()))),
            "episodes": float(incident.episodes),
        }
        return Anomaly(
            id=incident.id,
            kind=self.kind,
            severity="warning",
            state=state,
            subject_type=level,
            subject=subject,
            ts=w.window_end,
            started_at=incident.started_at,
            window_start=w.window_start,
            window_end=w.window_end,
            message=message,
            evidence=full,
            node=node,
            gpu_uuid=uuid,
            job_id=w.job_id,
        )
