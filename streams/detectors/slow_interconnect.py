"""A job slowed down by its InfiniBand fabric: a node whose traffic collapsed, or a port that errs or flaps.

Reads the attributed IB port samples (``job_id`` set by the stream processor; samples without
one are ignored) and the job's training steps. Per job and node:

* **Throughput.** A node's throughput at a tick is ``xmit + rcv`` bytes/s summed over its ports
  (a tick with a port missing or a counter reset is not used). Its *baseline* is the median over
  ``baseline_s`` after the node's first ``warmup_s`` in the job (NCCL setup and data loading
  are not representative); a median, not an EWMA, so a slow phase cannot drag the baseline down
  with it. A node is *low* when the median of its ticks over the last ``smooth_s`` is below
  ``drop_ratio`` x its baseline **and** below ``drop_ratio`` x the median of its job peers
  (same statistic): both, because a job's own phases (evaluation, checkpointing) lower every
  node at once, which is not a fabric fault. Nodes whose baseline is under
  ``min_baseline_bytes_per_s`` barely use the fabric and are not judged on throughput.
  -> subject ``node`` (the fault cannot be pinned on one port from the aggregate).
* **Port errors.** Per port, the physical/integrity error counters of each interval
  (symbol errors, link error recoveries, receive errors, remote physical errors, local link
  integrity errors, buffer overruns) summed over ``smooth_s``; at or above ``errors_per_s``
  the port is erring. ``xmit_discards`` is shown but not judged (it is congestion as much as
  a fault). -> subject ``link`` ``<node>/<device>/<port>``.
* **Transmit waits.** A port whose ``xmit_wait_per_s`` (median over ``smooth_s``) is at least
  ``xmit_wait_ratio`` x the median of the job's other ports and at least
  ``xmit_wait_min_per_s``. The counter's tick is hardware-defined, hence a ratio to peers
  rather than an absolute limit. -> ``link``.
* **Flapping.** Any ``link_downed`` increment within ``flap_window_s`` marks the port flapping.
  A link going down is a hardware event in its own right: it needs no slowdown of the steps
  to count, and it is ``critical`` (everything else is ``warning``).

**Steps.** When the job reports steps, a throughput, error or wait finding only counts while the
job's median step duration over the last ``step_recent_s`` is at least ``step_slowdown`` x its
baseline (median over ``baseline_s`` after ``warmup_s`` from the job's first step): an IB
anomaly that does not slow the job is not this detector's business. While that cannot be told
yet (no step baseline, no recent step) the finding is held, neither firing nor resolving. A job
that reports no steps is judged on the IB evidence alone, and its anomalies say so
(``steps_reported`` 0 and the message).

A finding fires after holding at every judgment for ``fire_after_s`` and resolves after being
absent for ``resolve_after_s`` and ``quiet_s`` (judgments further apart than ``max_gap_s`` restart
the count; a node's throughput is back only above ``resolve_ratio``, hysteresis). The incidents
live in one :class:`hpcinsight.streams.detectors.incidents.Incidents` table, as in every detector.
No ``job`` subject: a job-wide drop is indistinguishable from a change of phase here.
Incidents close when their node leaves the job (its samples carry another job) or when the job
or node is unseen for ``forget_after_s``; that also bounds the memory, as do the short
per-port windows (``smooth_s``, plus the rare flap events) and the ``max_ticks`` caps.
"""

from __future__ import annotations

import bisect
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from hpcinsight.schemas.events import Anomaly, Event, IbSample, StepMetric
from hpcinsight.streams.detectors import Detector
from hpcinsight.streams.detectors.incidents import Hygiene, Incident, Incidents, Severity, State

#: per-interval error counters that mean a sick link
ERROR_FIELDS = (
    "symbol_errors",
    "link_error_recovery",
    "rcv_errors",
    "rcv_remote_physical_errors",
    "local_link_integrity_errors",
    "excessive_buffer_overrun_errors",
)
#: shown in the evidence, not judged
SHOWN_FIELDS = ("xmit_discards",)


@dataclass(frozen=True)
class SlowInterconnectConfig:
    #: the job's (node's) first seconds are not representative: no baseline from them
    warmup_s: float = 60.0
    #: span after warm-up whose median is the baseline (throughput per node, step time per job)
    baseline_s: float = 120.0
    #: trailing span of the statistics judged at each tick (absorbs per-tick jitter)
    smooth_s: float = 10.0
    #: a node is low below this fraction of its baseline and of its peers' median
    drop_ratio: float = 0.5
    #: a low node is back above this fraction of its baseline or of its peers' median (hysteresis)
    resolve_ratio: float = 0.7
    #: nodes with a lower baseline barely use the fabric: their throughput is not judged
    min_baseline_bytes_per_s: float = 1e6
    #: fewest peer nodes with current data for the throughput comparison
    min_peers: int = 1
    #: port error rate (sum of ERROR_FIELDS per second over smooth_s) that counts as erring
    errors_per_s: float = 0.1
    #: a port waits too much at this multiple of the job's other ports' median ...
    xmit_wait_ratio: float = 5.0
    #: ... and at least this many xmit-wait ticks per second
    xmit_wait_min_per_s: float = 1e6
    #: a link_downed increment within this span marks the port flapping
    flap_window_s: float = 300.0
    #: findings only count while the steps take this multiple of their baseline
    step_slowdown: float = 1.2
    #: span of recent steps whose median is compared with the baseline
    step_recent_s: float = 30.0
    #: a finding fires after holding this long
    fire_after_s: float = 30.0
    #: and resolves after being gone this long
    resolve_after_s: float = 60.0
    #: and no judgment with the finding for this long (a re-fire within it folds into the incident)
    quiet_s: float = 60.0
    #: judgments further apart than this restart the fire/resolve count
    max_gap_s: float = 30.0
    #: a job or node unseen this long is closed and forgotten
    forget_after_s: float = 600.0
    #: cap on every per-node, per-port and per-job list of values
    max_ticks: int = 4096


@dataclass
class _PortTick:
    ts: int
    bytes_per_s: float | None
    errors: tuple[int, ...]  # ERROR_FIELDS then SHOWN_FIELDS, in this interval
    xmit_wait: float | None


@dataclass
class _Port:
    ticks: deque[_PortTick] = field(default_factory=deque)
    flaps: deque[tuple[int, int]] = field(default_factory=deque)  # (ts, link_downed) where > 0
    last_ts: int = 0
    rate_gbps: float | None = None


@dataclass
class _Node:
    first_ts: int | None = None  # its first sample in the job (set by the first one after a restore)
    last_ts: int = 0
    ports: dict[tuple[str, int], _Port] = field(default_factory=dict)
    tick_ts: int | None = None  # the tick being assembled from its ports' samples
    tick_ports: set[tuple[str, int]] = field(default_factory=set)
    tick_bytes: float | None = 0.0
    closed_ts: int = 0  # the last closed tick: a port's sample for it or earlier is too late to add
    tput: deque[tuple[int, float]] = field(default_factory=deque)
    baseline_values: list[float] = field(default_factory=list)
    baseline: float | None = None
    current: float | None = None
    current_ts: int = 0


@dataclass
class _Steps:
    first_ts: int | None = None
    baseline_values: list[float] = field(default_factory=list)
    baseline: float | None = None
    recent: deque[tuple[int, float]] = field(default_factory=deque)
    newest: int = 0


@dataclass
class _Job:
    last_ts: int = 0
    nodes: dict[str, _Node] = field(default_factory=dict)
    steps: _Steps = field(default_factory=_Steps)
    # peer and step snapshots, refreshed every smooth_s / 2 of event time: a job may have
    # thousands of nodes and ranks, and recomputing them at every node's tick would be quadratic
    tput_snapshot: list[float] = field(default_factory=list)
    tput_of: dict[str, float] = field(default_factory=dict)
    wait_snapshot: list[float] = field(default_factory=list)
    wait_of: dict[tuple[str, str, int], float] = field(default_factory=dict)
    step_ratio: tuple[bool, float | None, float | None] = (False, None, None)
    snapshot_at: int | None = None


def _median_without(values: list[float], own: float | None) -> float | None:
    """Median of sorted ``values`` with one occurrence of ``own`` left out (a peer median)."""
    n = len(values)
    if own is None:
        return statistics.median(values) if values else None
    i = bisect.bisect_left(values, own)
    if n < 2 or i >= n or values[i] != own:
        return statistics.median(values) if values else None
    m = n - 1

    def kth(k: int) -> float:
        return values[k] if k < i else values[k + 1]

    return kth(m // 2) if m % 2 else (kth(m // 2 - 1) + kth(m // 2)) / 2


def _gb(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1e9:.2f} GB/s"


class SlowInterconnectDetector(Detector[SlowInterconnectConfig]):
    kind = "slow_interconnect"
    inputs = (IbSample, StepMetric)
    config_type = SlowInterconnectConfig

    def __init__(self, config: SlowInterconnectConfig | None = None) -> None:
        super().__init__(config)
        self._jobs: dict[str, _Job] = {}
        self._job_of: dict[str, str] = {}  # node -> the job it is judged in
        cfg = self.config
        # keyed (job, node) for a node's throughput, (job, node, device, port) for a port
        self._incidents: Incidents[tuple[str, ...]] = Incidents(
            self.kind,
            Hygiene.of(
                fire_after_s=cfg.fire_after_s, resolve_after_s=cfg.resolve_after_s, quiet_s=cfg.quiet_s, max_gap_s=cfg.max_gap_s
            ),
        )
        self._now = 0
        self._last_sweep = 0

    def observe(self, event: Event) -> list[Event]:
        out: list[Event] = []
        if isinstance(event, StepMetric):
            self._on_step(event)
        elif isinstance(event, IbSample) and event.job_id is not None:
            out += self._on_ib(event, event.job_id)
        else:
            return []
        out += self._sweep(event.ts)
        return out

    # --- steps ------------------------------------------------------------------------------
    def _on_step(self, m: StepMetric) -> None:
        if m.duration_s <= 0:
            return
        cfg = self.config
        job = self._jobs.setdefault(m.job_id, _Job())
        job.last_ts = max(job.last_ts, m.ts)
        steps = job.steps
        if steps.first_ts is None:
            steps.first_ts = m.ts
        start = steps.first_ts + cfg.warmup_s * 1000
        if steps.baseline is None:
            if m.ts >= start and len(steps.baseline_values) < cfg.max_ticks:
                steps.baseline_values.append(m.duration_s)
            if m.ts >= start + cfg.baseline_s * 1000 and len(steps.baseline_values) >= 5:
                steps.baseline = statistics.median(steps.baseline_values)
                steps.baseline_values = []
        steps.newest = max(steps.newest, m.ts)
        steps.recent.append((m.ts, m.duration_s))
        cutoff = steps.newest - cfg.step_recent_s * 1000
        while steps.recent and (steps.recent[0][0] <= cutoff or len(steps.recent) > cfg.max_ticks):
            steps.recent.popleft()

    def _step_ratio(self, job: _Job) -> tuple[bool, float | None, float | None]:
        """(the job reports steps, recent median step time, its ratio to the baseline or None)."""
        steps = job.steps
        if steps.first_ts is None:
            return False, None, None
        cutoff = steps.newest - self.config.step_recent_s * 1000
        recent = [d for ts, d in steps.recent if ts > cutoff]
        median = statistics.median(recent) if recent else None
        if median is None or not steps.baseline:
            return True, median, None
        return True, median, median / steps.baseline

    # --- IB samples ---------------------------------------------------------------------------
    def _on_ib(self, s: IbSample, job_id: str) -> list[Event]:
        out: list[Event] = []
        previous = self._job_of.get(s.node)
        if previous is not None and previous != job_id:  # the node now runs another job
            out += self._close_node(previous, s.node, s.ts, f"node {s.node} now runs job {job_id}")
        self._job_of[s.node] = job_id
        job = self._jobs.setdefault(job_id, _Job())
        job.last_ts = max(job.last_ts, s.ts)
        node = job.nodes.setdefault(s.node, _Node())
        if node.first_ts is None:
            node.first_ts = s.ts
        key = (s.device, s.port)
        port = node.ports.setdefault(key, _Port())
        if s.ts <= port.last_ts:  # duplicate or late: its errors are already counted
            return out
        port.last_ts = s.ts
        node.last_ts = max(node.last_ts, s.ts)
        port.rate_gbps = s.rate_gbps if s.rate_gbps is not None else port.rate_gbps
        usable = not s.counters_reset and s.xmit_bytes_per_s is not None and s.rcv_bytes_per_s is not None
        port_bytes = (s.xmit_bytes_per_s or 0.0) + (s.rcv_bytes_per_s or 0.0) if usable else None
        errors = tuple(int(getattr(s, name) or 0) for name in ERROR_FIELDS + SHOWN_FIELDS)
        self._push_port(port, _PortTick(s.ts, port_bytes, errors, s.xmit_wait_per_s), s.link_downed or 0)
        if node.tick_ts is not None and s.ts > node.tick_ts:
            out += self._close_tick(job_id, job, s.node, node)
        if node.tick_ts is None and s.ts > node.closed_ts:
            node.tick_ts, node.tick_ports, node.tick_bytes = s.ts, set(), 0.0
        if s.ts == node.tick_ts:
            node.tick_ports.add(key)
            node.tick_bytes = None if node.tick_bytes is None or port_bytes is None else node.tick_bytes + port_bytes
            # every port active on the node has reported this tick: judge now rather than at the next
            # (not on the node's first tick, whose ports are not known yet)
            if node.closed_ts and self._active_ports(node, s.ts) <= node.tick_ports:
                out += self._close_tick(job_id, job, s.node, node)
        return out

    def _active_ports(self, node: _Node, ts: int) -> set[tuple[str, int]]:
        """Ports heard from within ``max_gap_s``: a tick lacking one of them is incomplete."""
        return {k for k, p in node.ports.items() if p.last_ts >= ts - self.config.max_gap_s * 1000}

    def _push_port(self, port: _Port, tick: _PortTick, downed: int) -> None:
        cfg = self.config
        port.ticks.append(tick)
        while port.ticks and (port.ticks[0].ts <= tick.ts - cfg.smooth_s * 1000 or len(port.ticks) > cfg.max_ticks):
            port.ticks.popleft()
        if downed > 0:
            port.flaps.append((tick.ts, downed))
        while port.flaps and (port.flaps[0][0] <= tick.ts - cfg.flap_window_s * 1000 or len(port.flaps) > cfg.max_ticks):
            port.flaps.popleft()

    def _close_tick(self, job_id: str, job: _Job, name: str, node: _Node) -> list[Event]:
        """A node's tick is complete: update its throughput and baseline, then judge it and its ports."""
        assert node.tick_ts is not None
        cfg = self.config
        ts, value, ports = node.tick_ts, node.tick_bytes, node.tick_ports
        if not self._active_ports(node, ts) <= ports:
            value = None  # a port missing from this tick would look like a drop
        node.tick_ts, node.tick_ports, node.tick_bytes, node.closed_ts = None, set(), 0.0, ts
        if value is not None:
            node.tput.append((ts, value))
        while node.tput and (node.tput[0][0] <= ts - cfg.smooth_s * 1000 or len(node.tput) > cfg.max_ticks):
            node.tput.popleft()
        start = (node.first_ts if node.first_ts is not None else ts) + cfg.warmup_s * 1000
        if node.baseline is None:
            if value is not None and ts >= start and len(node.baseline_values) < cfg.max_ticks:
                node.baseline_values.append(value)
            if ts >= start + cfg.baseline_s * 1000 and len(node.baseline_values) >= 3:
                node.baseline = statistics.median(node.baseline_values)
                node.baseline_values = []
        node.current = statistics.median(v for _, v in node.tput) if node.tput else None
        node.current_ts = ts
        self._refresh_snapshots(job, ts)
        reported, step_median, ratio = job.step_ratio
        # the step gate: True passes, False blocks, None cannot tell yet (hold)
        gate: bool | None = True if not reported else None if ratio is None else ratio >= cfg.step_slowdown
        steps = self._step_evidence(job, reported, step_median, ratio)
        out = self._judge_node(job_id, job, name, node, ts, gate, steps)
        for key in sorted(ports):
            out += self._judge_port(job_id, job, name, node, key, ts, gate, steps)
        return out

    def _refresh_snapshots(self, job: _Job, ts: int) -> None:
        cfg = self.config
        if job.snapshot_at is not None and ts - job.snapshot_at < cfg.smooth_s * 500 and ts >= job.snapshot_at:
            return
        job.snapshot_at = ts
        fresh = ts - (cfg.smooth_s + cfg.max_gap_s) * 1000
        job.tput_of = {n: node.current for n, node in job.nodes.items() if node.current is not None and node.current_ts >= fresh}
        job.tput_snapshot = sorted(job.tput_of.values())
        job.wait_of = {}
        for n, node in job.nodes.items():
            for (device, number), port in node.ports.items():
                waits = [t.xmit_wait for t in port.ticks if t.xmit_wait is not None]
                if waits and port.last_ts >= fresh:
                    job.wait_of[(n, device, number)] = statistics.median(waits)
        job.wait_snapshot = sorted(job.wait_of.values())
        job.step_ratio = self._step_ratio(job)

    def _judge_node(
        self, job_id: str, job: _Job, name: str, node: _Node, ts: int, gate: bool | None, steps: dict[str, float]
    ) -> list[Event]:
        cfg = self.config
        peers = len(job.tput_snapshot) - (1 if name in job.tput_of else 0)
        peer_median = _median_without(job.tput_snapshot, job.tput_of.get(name)) if peers > 0 else None
        key = (job_id, name)
        finding: bool | None
        back = True
        if (
            node.baseline is None
            or node.baseline < cfg.min_baseline_bytes_per_s
            or node.current is None
            or peers < cfg.min_peers
            or peer_median is None
        ):
            finding = None if self._incidents.get(key) is not None and node.baseline is None else False
        else:
            finding = node.current < cfg.drop_ratio * node.baseline and node.current < cfg.drop_ratio * peer_median
            back = node.current >= cfg.resolve_ratio * node.baseline or node.current >= cfg.resolve_ratio * peer_median
        evidence = {
            "current_bytes_per_s": node.current if node.current is not None else 0.0,
            "peers": float(peers),
            "drop_ratio": cfg.drop_ratio,
            "ports": float(len(node.ports)),
            **steps,
        }
        if node.baseline is not None:
            evidence["baseline_bytes_per_s"] = node.baseline
            if node.current is not None and node.baseline > 0:
                evidence["ratio_to_baseline"] = node.current / node.baseline
        if peer_median is not None:
            evidence["peer_median_bytes_per_s"] = peer_median
            if node.current is not None and peer_median > 0:
                evidence["ratio_to_peers"] = node.current / peer_median
        waits = [job.wait_of[(name, d, p)] for d, p in node.ports if (name, d, p) in job.wait_of]
        if waits:
            evidence["xmit_wait_per_s"] = max(waits)
        evidence["errors"] = float(sum(sum(t.errors[: len(ERROR_FIELDS)]) for p in node.ports.values() for t in p.ticks))
        evidence["link_downed"] = float(sum(d for p in node.ports.values() for _, d in p.flaps))
        got = self._step_run(key, f"{job_id}/{name}", self._gated(finding, gate), ts, back, "warning")
        if got is None:
            return []
        state, incident = got
        subject = name
        if state == "firing":
            message = (
                f"InfiniBand traffic of node {name} in job {job_id} is {_gb(node.current)}, "
                f"{evidence.get('ratio_to_baseline', 0):.0%} of its own baseline {_gb(node.baseline)} and "
                f"{evidence.get('ratio_to_peers', 0):.0%} of its {peers} peers' median {_gb(peer_median)}"
                f"{self._step_phrase(steps)}: a degraded HCA, cable or switch port on this node is holding the "
                "job back; check its ports (ibstat, error counters) and drain the node if it persists"
            )
        else:
            message = (
                f"InfiniBand traffic of node {name} in job {job_id} is back in line ({_gb(node.current)}) "
                f"for {cfg.resolve_after_s:g} s"
            )
        return [self._anomaly(incident, state, "node", subject, ts, message, evidence, name, job_id)]

    def _judge_port(
        self,
        job_id: str,
        job: _Job,
        name: str,
        node: _Node,
        key: tuple[str, int],
        ts: int,
        gate: bool | None,
        steps: dict[str, float],
    ) -> list[Event]:
        cfg = self.config
        port = node.ports[key]
        device, number = key
        sums = [sum(t.errors[i] for t in port.ticks) for i in range(len(ERROR_FIELDS) + len(SHOWN_FIELDS))]
        error_rate = sum(sums[: len(ERROR_FIELDS)]) / cfg.smooth_s
        downed = sum(d for _, d in port.flaps)
        own_wait = job.wait_of.get((name, device, number))
        waits = [t.xmit_wait for t in port.ticks if t.xmit_wait is not None]
        wait = statistics.median(waits) if waits else None
        peer_wait = _median_without(job.wait_snapshot, own_wait) if len(job.wait_snapshot) > (own_wait is not None) else None
        erring = error_rate >= cfg.errors_per_s
        flapping = downed > 0
        waiting = (
            wait is not None
            and peer_wait is not None
            and wait >= cfg.xmit_wait_min_per_s
            and wait >= cfg.xmit_wait_ratio * peer_wait
        )
        finding = erring or flapping or waiting
        evidence = {name_: float(v) for name_, v in zip(ERROR_FIELDS + SHOWN_FIELDS, sums)}
        evidence |= {"error_rate_per_s": error_rate, "link_downed": float(downed), **steps}
        if wait is not None:
            evidence["xmit_wait_per_s"] = wait
        if peer_wait is not None:
            evidence["peer_xmit_wait_per_s"] = peer_wait
        port_bytes = [t.bytes_per_s for t in port.ticks if t.bytes_per_s is not None]
        if port_bytes:
            evidence["current_bytes_per_s"] = statistics.median(port_bytes)
        if port.rate_gbps is not None:
            evidence["rate_gbps"] = port.rate_gbps
        if node.baseline is not None:
            evidence["node_baseline_bytes_per_s"] = node.baseline
        if node.current is not None:
            evidence["node_current_bytes_per_s"] = node.current
        # a flap is its own evidence: it needs no slowdown of the steps to count
        subject = f"{name}/{device}/{number}"
        got = self._step_run(
            (job_id, name, device, str(number)),
            f"{job_id}/{subject}",
            True if flapping else self._gated(finding, gate),
            ts,
            True,
            "critical" if flapping else "warning",
        )
        if got is None:
            return []
        state, incident = got
        where = f"port {device}/{number} of node {name} (job {job_id})"
        if state == "firing":
            parts = []
            if erring:
                kinds = ", ".join(f"{n} {int(v)}" for n, v in zip(ERROR_FIELDS, sums) if v)
                parts.append(f"{error_rate:.2f} link errors/s over {cfg.smooth_s:g} s ({kinds})")
            if flapping:
                parts.append(f"the link went down {downed} time(s) in the last {cfg.flap_window_s:g} s")
            if waiting and wait is not None and peer_wait:
                parts.append(f"transmit waits {wait:.3g}/s, {wait / peer_wait:.1f}x the job's other ports")
            if flapping:
                advice = "the link is flapping: reseat or replace the cable or transceiver, check the switch port, drain the node"
            elif erring:
                advice = "a bad cable, transceiver or port: reseat or replace it, or drain the node"
            else:
                advice = "the port is congested or its link partner is slow to return credits: check the switch port and routing"
            message = f"{where}: {'; '.join(parts)}{self._step_phrase(steps)}: {advice}"
        else:
            message = f"{where}: no link errors, flaps or excess transmit waits for {cfg.resolve_after_s:g} s"
        return [self._anomaly(incident, state, "link", subject, ts, message, evidence, name, job_id)]

    # --- incident bookkeeping -----------------------------------------------------------------
    @staticmethod
    def _gated(finding: bool | None, gate: bool | None) -> bool | None:
        """An IB finding counts only with slower steps; with no finding the subject is healthy."""
        if finding is None:
            return None
        if not finding:
            return False
        return gate  # None: the steps cannot tell yet, hold

    def _step_run(
        self, key: tuple[str, ...], id_subject: str, bad: bool | None, ts: int, back: bool, severity: Severity
    ) -> tuple[State, Incident] | None:
        """Judge a subject once (``bad`` None: cannot tell, hold); the transition it makes, if any."""
        if bad is None:
            return None
        return self._incidents.judge(key, id_subject, ts, fire=bad, clear=back, severity=severity)

    def _step_evidence(self, job: _Job, reported: bool, median: float | None, ratio: float | None) -> dict[str, float]:
        evidence = {"steps_reported": float(reported), "step_slowdown": self.config.step_slowdown}
        if job.steps.baseline is not None:
            evidence["step_baseline_s"] = job.steps.baseline
        if median is not None:
            evidence["step_recent_s"] = median
        if ratio is not None:
            evidence["step_time_ratio"] = ratio
        return evidence

    @staticmethod
    def _step_phrase(steps: dict[str, float]) -> str:
        if not steps["steps_reported"]:
            return " (the job reports no step times: judged on InfiniBand evidence alone)"
        if "step_time_ratio" in steps:
            return f"; its steps take {steps['step_time_ratio']:.2f}x their baseline"
        return ""

    def _anomaly(
        self,
        incident: Incident,
        state: State,
        subject_type: Literal["node", "link"],
        subject: str,
        ts: int,
        message: str,
        evidence: dict[str, float],
        node: str,
        job_id: str,
    ) -> Anomaly:
        return Anomaly(
            id=incident.id,
            kind=self.kind,
            severity=incident.severity,
            state=state,
            subject_type=subject_type,
            subject=subject,
            ts=ts,
            started_at=incident.started_at,
            window_start=min(incident.started_at, ts),
            window_end=ts,
            message=message,
            evidence={**evidence, "episodes": float(incident.episodes)},
            node=node,
            job_id=job_id,
        )

    def _close_node(self, job_id: str, name: str, ts: int, why: str) -> list[Event]:
        """Resolve what is open on a node that left the job (or went silent), and forget it."""
        job = self._jobs.get(job_id)
        node = job.nodes.pop(name, None) if job is not None else None
        if self._job_of.get(name) == job_id:
            del self._job_of[name]
        if node is None:
            return []
        out: list[Event] = []
        keys: list[tuple[tuple[str, ...], Literal["node", "link"], str]] = [((job_id, name), "node", name)]
        keys += [((job_id, name, d, str(n)), "link", f"{name}/{d}/{n}") for (d, n) in sorted(node.ports)]
        for key, subject_type, subject in keys:
            incident = self._incidents.close(key)
            if incident is not None:
                out.append(
                    self._anomaly(
                        incident,
                        "resolved",
                        subject_type,
                        subject,
                        ts,
                        f"{subject} is no longer judged in job {job_id}: {why}",
                        {},
                        name,
                        job_id,
                    )
                )
        return out

    def _sweep(self, ts: int) -> list[Event]:
        """Close jobs and nodes unseen for ``forget_after_s`` (bounded memory, no incident left hanging)."""
        self._now = max(self._now, ts)
        if not self._last_sweep:  # first event (after a start or restart): give everyone time to report
            self._last_sweep = ts
        horizon = self.config.forget_after_s * 1000
        if self._now - self._last_sweep < horizon / 2:
            return []
        self._last_sweep = self._now
        out: list[Event] = []
        for job_id, job in list(self._jobs.items()):
            for name in [n for n, node in job.nodes.items() if node.last_ts < self._now - horizon]:
                out += self._close_node(job_id, name, self._now, f"no sample for {self.config.forget_after_s:g} s")
            if not job.nodes and job.last_ts < self._now - horizon:
                del self._jobs[job_id]
        return out

    def restore(self, open_incidents: list[Anomaly]) -> None:
        for a in open_incidents:
            if a.job_id is None or a.node is None:
                continue
            job = self._jobs.setdefault(a.job_id, _Job())
            self._job_of.setdefault(a.node, a.job_id)
            node = job.nodes.setdefault(a.node, _Node())
            node.last_ts = max(node.last_ts, a.ts)
            if "step_baseline_s" in a.evidence and job.steps.baseline is None:
                job.steps.baseline = a.evidence["step_baseline_s"]
                job.steps.first_ts = a.started_at
            baseline = a.evidence.get("baseline_bytes_per_s", a.evidence.get("node_baseline_bytes_per_s"))
            if baseline is not None and node.baseline is None:
                node.baseline = baseline
            key: tuple[str, ...]
            if a.subject_type == "node" and a.subject == a.node:
                key = (a.job_id, a.node)
            elif a.subject_type == "link" and a.subject.startswith(f"{a.node}/"):
                device, _, number = a.subject[len(a.node) + 1 :].rpartition("/")
                if not device or not number.isdigit():
                    continue
                node.ports.setdefault((device, int(number)), _Port())
                key = (a.job_id, a.node, device, number)
            else:
                continue
            self._incidents.restore(key, a, subject=f"{a.job_id}/{a.subject}")
