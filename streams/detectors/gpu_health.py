"""GPU hardware health from the raw NVML samples: memory errors, row remapping, throttling, stuck clocks.

Each condition is its own incident per GPU (subject ``<gpu_uuid>/<condition>``), so a GPU that
is both hot and has a pending row remap raises two incidents that fire and resolve on their own:

``ecc_uncorrectable`` (critical)
    The cumulative volatile uncorrected ECC count went up since the GPU's previous sample. The
    job on it has most likely lost data. A count that goes *down* is a driver reload or GPU
    reset: the detector takes the new value as its baseline and says nothing. Resolves once the
    count has stayed put for ``ecc_quiet_s`` of event time.
``row_remap_pending`` (warning)
    ``remapped_rows_pending`` (Ampere+) or ``retired_pages_pending`` (older GPUs): the memory
    repair is recorded but only takes effect after a GPU reset. Resolves when the flag clears.
``row_remap_failure`` (critical)
    ``remapped_rows_failure``: the GPU ran out of spare rows; it should be replaced.
``thermal_throttle`` (warning) and ``power_throttle`` (info, warning with a power brake)
    Over a sliding ``throttle_window_s`` of event time, the share of the *busy* samples
    (``gpu_util >= throttle_busy_pct``) whose decoded reasons include a thermal reason
    (``sw_thermal``, ``hw_thermal``) or a power reason (``sw_power_cap``, ``hw_power_brake``).
    Idle samples are left out: an idle GPU reports ``sw_power_cap`` and that means nothing.
    ``hw_slowdown`` alone is in neither set: it is a summary bit that newer drivers break down
    into ``hw_thermal`` / ``hw_power_brake`` and that also flickers on P-state changes; a GPU
    held at half clock by it alone is caught by ``clock_stuck_low``. A window is judged once
    its busy samples span half of it (and number ``throttle_min_samples``), so the first
    seconds of a job, which commonly hit the power cap, are not a verdict. Fires above
    ``throttle_share``, resolves below half of it (hysteresis) once no window has been over
    ``throttle_share`` for ``throttle_quiet_s``: throttling that comes and goes with a room's
    cooling cycle is one incident that counts its episodes, not a page per cycle.
    A GPU at its power cap under full load is working as designed, hence ``info`` unless an
    external power brake (``hw_power_brake``) was seen, which points at the node's power supply.
``clock_stuck_low`` (warning)
    While busy (``gpu_util >= clock_busy_pct``), the SM clock stays below ``clock_low_ratio`` of
    ``sm_clock_max_mhz`` for ``clock_low_s`` with no thermal, power or sync-boost reason to
    explain it. Explained low samples are left to the throttle incidents (no double report).
    ``applications_clocks`` is deliberately *not* an explanation: clocks locked low by a
    previous user's ``nvidia-smi -lgc`` / ``-ac`` are exactly what this incident should catch.
    Resolves after ``clock_low_s`` of busy samples at normal clocks.

Every condition keeps its incidents in one :class:`hpcinsight.streams.detectors.incidents.Incidents` table
(fire after, resolve after, quiet time, folding, restore), as every detector does.
Samples whose value a condition needs is null (not supported, MIG instance, read error) are
skipped for that condition only. A sample not newer than the GPU's previous one (redelivery,
late arrival) is ignored: comparing counters out of order would invent ECC increases. Judged
samples further apart than ``max_gap_s`` restart a clock run rather than bridging the gap.
An idle GPU cannot show that its clocks or throttling are back to normal, so those incidents
stay open while it idles. Memory is bounded: the throttle window holds at most
``max_window_samples`` entries and a GPU not heard of for ``forget_after_s`` with nothing open
is forgotten.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from hpcinsight.schemas.events import Anomaly, Event, GpuSample
from hpcinsight.streams.detectors import Detector
from hpcinsight.streams.detectors.incidents import Hygiene, Incident, Incidents, Severity, State

THERMAL_REASONS = frozenset({"sw_thermal", "hw_thermal"})
POWER_REASONS = frozenset({"sw_power_cap", "hw_power_brake"})
#: reasons that account for a low SM clock: those are reported as throttling, not as stuck clocks
EXPLAINING_REASONS = THERMAL_REASONS | POWER_REASONS | {"sync_boost"}

ECC = "ecc_uncorrectable"
REMAP_PENDING = "row_remap_pending"
REMAP_FAILURE = "row_remap_failure"
THERMAL = "thermal_throttle"
POWER = "power_throttle"
CLOCK = "clock_stuck_low"
CONDITIONS = (ECC, REMAP_PENDING, REMAP_FAILURE, THERMAL, POWER, CLOCK)


@dataclass(frozen=True)
class GpuHealthConfig:
    #: an ECC incident resolves after the uncorrected count stayed unchanged this long
    ecc_quiet_s: float = 600.0
    #: sliding event-time window over which throttled samples are counted
    throttle_window_s: float = 60.0
    #: share of busy samples with a thermal (or power) reason above which the GPU is throttled
    throttle_share: float = 0.5
    #: a sample is busy, hence judged for throttling, at or above this utilisation
    throttle_busy_pct: float = 10.0
    #: fewest busy samples in the window for a verdict
    throttle_min_samples: int = 5
    #: a throttle incident resolves only after no window over throttle_share for this long (cooling cycles fold)
    throttle_quiet_s: float = 300.0
    #: SM clock below this fraction of its maximum counts as low
    clock_low_ratio: float = 0.6
    #: how long clocks must stay low (and then normal again) to fire (and resolve)
    clock_low_s: float = 60.0
    #: a sample is busy enough to judge its clock at or above this utilisation
    clock_busy_pct: float = 50.0
    #: judged samples further apart than this restart a clock run
    max_gap_s: float = 30.0
    #: cap on the throttle window's entries (a burst of samples cannot grow it without bound)
    max_window_samples: int = 1200
    #: a GPU unseen this long with no open incident is forgotten
    forget_after_s: float = 3600.0


class _Reasons(NamedTuple):
    """A distinct set of throttle reasons, and whether they count as thermal or power throttling:
    worked out once per combination (see :func:`_reasons`) and shared by the samples that carry it."""

    reasons: frozenset[str]
    thermal: bool
    power: bool


#: one busy sample in the throttle window: when, and its reasons
_Obs = tuple[int, _Reasons]

_NONE = _Reasons(frozenset(), False, False)
_REASON_SETS: dict[tuple[str, ...], _Reasons] = {}
_REASON_SETS_MAX = 256  # a GPU reports a handful of combinations; hostile input must not grow this


def _reasons(throttle: list[str]) -> _Reasons:
    """The reasons of a sample: this runs on every busy sample of every GPU, so each distinct
    combination is worked out once (none at all, the usual case, without a lookup)."""
    if not throttle:
        return _NONE
    key = tuple(throttle)
    got = _REASON_SETS.get(key)
    if got is None:
        reasons = frozenset(throttle)
        got = _Reasons(reasons, bool(reasons & THERMAL_REASONS), bool(reasons & POWER_REASONS))
        if len(_REASON_SETS) < _REASON_SETS_MAX:
            _REASON_SETS[key] = got
    return got


@dataclass
class _Gpu:
    node: str
    gpu_index: int
    last_ts: int = 0
    job_id: str | None = None
    open: set[str] = field(default_factory=set)  # conditions with an open incident (a cheap guard on the hot path)
    ecc_prev: int | None = None
    ecc_last_increase: int = 0
    ecc_new: int = 0
    window: deque[_Obs] = field(default_factory=deque)
    hits: dict[str, int] = field(default_factory=lambda: {THERMAL: 0, POWER: 0})  # window samples per condition


class GpuHealthDetector(Detector[GpuHealthConfig]):
    kind = "gpu_health"
    inputs = (GpuSample,)
    config_type = GpuHealthConfig

    def __init__(self, config: GpuHealthConfig | None = None) -> None:
        super().__init__(config)
        self._gpus: dict[str, _Gpu] = {}
        cfg = self.config
        throttle = Hygiene.of(quiet_s=cfg.throttle_quiet_s)
        self._incidents: dict[str, Incidents[str]] = {  # condition -> its incidents, keyed by GPU
            ECC: Incidents(self.kind, Hygiene.of(quiet_s=cfg.ecc_quiet_s)),
            REMAP_PENDING: Incidents(self.kind),
            REMAP_FAILURE: Incidents(self.kind),
            THERMAL: Incidents(self.kind, throttle),
            POWER: Incidents(self.kind, throttle),
            CLOCK: Incidents(
                self.kind, Hygiene.of(fire_after_s=cfg.clock_low_s, resolve_after_s=cfg.clock_low_s, max_gap_s=cfg.max_gap_s)
            ),
        }
        self._now = 0
        self._last_sweep = 0
        self._throttle_window_ms = cfg.throttle_window_s * 1000

    def observe(self, event: Event) -> list[Event]:
        if not isinstance(event, GpuSample):
            return []
        gpu = self._gpus.get(event.gpu_uuid)
        if gpu is None:
            gpu = self._gpus[event.gpu_uuid] = _Gpu(event.node, event.gpu_index)
        if event.ts <= gpu.last_ts:  # duplicate or late: out-of-order counters would lie
            return []
        gpu.node, gpu.gpu_index, gpu.last_ts, gpu.job_id = event.node, event.gpu_index, event.ts, event.job_id
        out: list[Event] = []
        count = event.ecc_uncorrected_volatile
        if (
            gpu.open
            or (count is not None and gpu.ecc_prev is not None and count > gpu.ecc_prev)
            or event.remapped_rows_pending
            or event.retired_pages_pending
            or event.remapped_rows_failure
        ):
            out += self._ecc(event, gpu)
            out += self._remap(event, gpu)
        elif count is not None:  # the usual case, healthy memory: what _ecc and _remap do then
            gpu.ecc_prev = count
        out += self._throttle(event, gpu)
        out += self._clock(event, gpu)
        if event.ts > self._now:
            self._sweep(event.ts)
        return out

    # --- conditions -----------------------------------------------------------------------
    def _ecc(self, s: GpuSample, gpu: _Gpu) -> list[Event]:
        out: list[Event] = []
        count, prev = s.ecc_uncorrected_volatile, gpu.ecc_prev
        if count is not None:
            gpu.ecc_prev = count
            if prev is not None and count > prev:
                gpu.ecc_last_increase = s.ts
                gpu.ecc_new += count - prev
                if ECC not in gpu.open:
                    gpu.ecc_new = count - prev
                got = self._judge(s, gpu, ECC, True, severity="critical")
                if got is not None:
                    evidence = self._ecc_evidence(s, gpu, prev)
                    out.append(
                        self._anomaly(
                            s,
                            ECC,
                            got,
                            "firing",
                            evidence,
                            (
                                f"{count - prev} new uncorrectable ECC error(s) on GPU {s.gpu_index} of {s.node} "
                                f"({count} since the driver loaded): memory contents were lost and the job on it has "
                                "likely failed or computed garbage; drain the GPU and reset it, replace it if it recurs"
                            ),
                        )
                    )
                return out
        got = self._judge(s, gpu, ECC, False) if ECC in gpu.open else None
        if got is not None:
            evidence = self._ecc_evidence(s, gpu, gpu.ecc_prev)
            out.append(
                self._anomaly(
                    s,
                    ECC,
                    got,
                    "resolved",
                    evidence,
                    (
                        f"no new uncorrectable ECC error on GPU {s.gpu_index} of {s.node} for {self.config.ecc_quiet_s:g} s "
                        f"({gpu.ecc_new} in this incident)"
                    ),
                )
            )
        return out

    @staticmethod
    def _ecc_evidence(s: GpuSample, gpu: _Gpu, prev: int | None) -> dict[str, float]:
        evidence = {"ecc_uncorrected_new": float(gpu.ecc_new), "gpu_index": float(s.gpu_index)}
        if gpu.ecc_prev is not None:
            evidence["ecc_uncorrected_total"] = float(gpu.ecc_prev)
        if prev is not None:
            evidence["ecc_uncorrected_previous"] = float(prev)
        if s.ecc_corrected_volatile is not None:
            evidence["ecc_corrected_total"] = float(s.ecc_corrected_volatile)
        return evidence

    def _remap(self, s: GpuSample, gpu: _Gpu) -> list[Event]:
        if (
            not (s.remapped_rows_pending or s.retired_pages_pending or s.remapped_rows_failure)
            and REMAP_PENDING not in gpu.open
            and REMAP_FAILURE not in gpu.open
        ):
            return []  # the common case, healthy memory: nothing to fire or resolve
        flags = {
            "remapped_rows_pending": s.remapped_rows_pending,
            "retired_pages_pending": s.retired_pages_pending,
            "remapped_rows_failure": s.remapped_rows_failure,
        }
        evidence = {name: float(value) for name, value in flags.items() if value is not None}
        evidence["gpu_index"] = float(s.gpu_index)
        if s.ecc_uncorrected_volatile is not None:
            evidence["ecc_uncorrected_total"] = float(s.ecc_uncorrected_volatile)
        out: list[Event] = []
        pending = (
            None
            if s.remapped_rows_pending is None and s.retired_pages_pending is None
            else bool(s.remapped_rows_pending or s.retired_pages_pending)
        )
        what = "rows remapped" if s.remapped_rows_pending else "pages retired"
        out += self._flag(
            s,
            gpu,
            REMAP_PENDING,
            pending,
            "warning",
            evidence,
            (
                f"GPU {s.gpu_index} of {s.node} has {what} pending: faulty memory was fenced off but the repair only "
                "takes effect after a GPU reset; drain the GPU and reset it when its job ends"
            ),
            f"no repair pending any more on GPU {s.gpu_index} of {s.node} (it was reset)",
        )
        out += self._flag(
            s,
            gpu,
            REMAP_FAILURE,
            s.remapped_rows_failure,
            "critical",
            evidence,
            (
                f"row remapping failed on GPU {s.gpu_index} of {s.node}: no spare memory rows are left to fence off "
                "faulty memory; drain the node and replace the GPU"
            ),
            f"row remapping failure no longer reported on GPU {s.gpu_index} of {s.node}",
        )
        return out

    def _flag(
        self,
        s: GpuSample,
        gpu: _Gpu,
        condition: str,
        value: bool | None,
        severity: Severity,
        evidence: dict[str, float],
        firing: str,
        resolved: str,
    ) -> list[Event]:
        if value is None or (not value and condition not in gpu.open):  # not reported, or nothing to resolve
            return []
        got = self._judge(s, gpu, condition, value, severity=severity)
        if got is None:
            return []
        state: State = "firing" if value else "resolved"
        return [self._anomaly(s, condition, got, state, evidence, firing if value else resolved)]

    def _throttle(self, s: GpuSample, gpu: _Gpu) -> list[Event]:
        # Runs on every sample of every GPU: the common path (nothing open, shares below the
        # threshold) does a few comparisons and returns.
        cfg = self.config
        window, hits = gpu.window, gpu.hits
        window_ms = self._throttle_window_ms
        oldest = s.ts - window_ms
        if (s.throttle_reasons is not None or s.throttle) and s.gpu_util is not None and s.gpu_util >= cfg.throttle_busy_pct:
            seen = _reasons(s.throttle)
            window.append((s.ts, seen))
            # running counts: the verdict below costs O(1) per sample, not a scan of the window
            if seen.thermal:
                hits[THERMAL] += 1
            if seen.power:
                hits[POWER] += 1
        # the oldest out: past the window (never the sample just taken), or past the cap
        while window and (window[0][0] <= oldest or len(window) > cfg.max_window_samples):
            _, gone = window.popleft()
            if gone.thermal:
                hits[THERMAL] -= 1
            if gone.power:
                hits[POWER] -= 1
        if not hits[THERMAL] and not hits[POWER] and not gpu.open and cfg.throttle_share >= 0:
            return []  # the usual case, at once: no throttled sample in the window, nothing to resolve
        n = len(window)
        if n < cfg.throttle_min_samples or s.ts - window[0][0] < window_ms / 2:
            return []  # too little of the window seen busy for a verdict
        limit = cfg.throttle_share * n
        if hits[THERMAL] <= limit and hits[POWER] <= limit and THERMAL not in gpu.open and POWER not in gpu.open:
            return []  # the usual case: nothing throttles, nothing to resolve
        out: list[Event] = []
        for condition, reasons in ((THERMAL, THERMAL_REASONS), (POWER, POWER_REASONS)):
            hits_now = gpu.hits[condition]
            over = hits_now > cfg.throttle_share * n
            if condition not in gpu.open and not over:
                continue  # the usual case: nothing building, nothing open
            share = hits_now / n
            if condition not in gpu.open:
                throttled = [o for o in gpu.window if o[1].reasons & reasons]
                braked = any("hw_power_brake" in o[1].reasons for o in throttled)
                severity: Severity = "warning" if condition == THERMAL or braked else "info"
                got = self._judge(s, gpu, condition, True, since=throttled[0][0], severity=severity)
                if got is not None:
                    out.append(
                        self._anomaly(
                            s,
                            condition,
                            got,
                            "firing",
                            self._throttle_evidence(s, gpu, reasons, share),
                            self._throttle_message(s, condition, share, braked),
                        )
                    )
                continue
            got = self._judge(s, gpu, condition, over, clear=share < cfg.throttle_share / 2)
            if got is not None:
                evidence = self._throttle_evidence(s, gpu, reasons, share)
                evidence["episodes"] = float(got.episodes)
                out.append(
                    self._anomaly(
                        s,
                        condition,
                        got,
                        "resolved",
                        evidence,
                        (
                            f"GPU {s.gpu_index} of {s.node}: {'thermal' if condition == THERMAL else 'power'} throttling down "
                            f"to {share:.0%} of its busy samples over the last {cfg.throttle_window_s:g} s, "
                            f"after {got.episodes} episode(s)"
                        ),
                    )
                )
        return out

    def _throttle_evidence(self, s: GpuSample, gpu: _Gpu, reasons: frozenset[str], share: float) -> dict[str, float]:
        n = len(gpu.window)
        evidence = {
            "share": share,
            "threshold": self.config.throttle_share,
            "busy_samples": float(n),
            "window_s": self.config.throttle_window_s,
            "gpu_index": float(s.gpu_index),
        }
        for reason in sorted(reasons):
            evidence[f"{reason}_share"] = sum(reason in o[1].reasons for o in gpu.window) / n
        for name in ("temperature_c", "power_w", "power_limit_w", "sm_clock_mhz", "sm_clock_max_mhz", "gpu_util"):
            value = getattr(s, name)
            if value is not None:
                evidence[name] = float(value)
        if s.throttle_reasons is not None:
            evidence["throttle_reasons"] = float(s.throttle_reasons)
        return evidence

    def _throttle_message(self, s: GpuSample, condition: str, share: float, braked: bool) -> str:
        head = f"GPU {s.gpu_index} of {s.node} is"
        span = f"in {share:.0%} of its busy samples over the last {self.config.throttle_window_s:g} s"
        if condition == THERMAL:
            temp = f", {s.temperature_c:.0f} °C" if s.temperature_c is not None else ""
            return (
                f"{head} thermally throttled {span}{temp}: it runs below its clocks and slows its job; "
                "check the node's cooling (fans, airflow, inlet temperature) and drain it if this persists"
            )
        power = ""
        if s.power_w is not None and s.power_limit_w is not None:
            power = f" ({s.power_w:.0f} W of a {s.power_limit_w:.0f} W limit)"
        if braked:
            return (
                f"{head} held down by an external power brake {span}{power}: the node's power supply or "
                "chassis asked the GPU to slow down; check the node's power delivery and drain it if it persists"
            )
        return (
            f"{head} power-capped {span}{power}: at the default limit this is a GPU working at its power budget; "
            "check that the limit was not lowered (nvidia-smi -q -d POWER) if the job is slower than expected"
        )

    def _clock(self, s: GpuSample, gpu: _Gpu) -> list[Event]:
        cfg = self.config
        if (
            s.gpu_util is None
            or s.gpu_util < cfg.clock_busy_pct
            or s.sm_clock_mhz is None
            or not s.sm_clock_max_mhz
            or (s.throttle_reasons is None and not s.throttle)
        ):
            return []  # idle, or a reading missing: no verdict
        ratio = s.sm_clock_mhz / s.sm_clock_max_mhz
        low = ratio < cfg.clock_low_ratio
        if low and EXPLAINING_REASONS.intersection(s.throttle):
            return []  # low for a reason the throttle incidents report
        if not low and CLOCK not in gpu.open and not self._incidents[CLOCK].building(s.gpu_uuid):
            return []  # the usual case: clocks normal, nothing building or open
        got = self._judge(s, gpu, CLOCK, low)
        if got is None:
            return []
        evidence = self._clock_evidence(s, ratio)
        if CLOCK in gpu.open:  # it just fired
            evidence["low_for_s"] = (s.ts - got.started_at) / 1000
            reasons = f" (reported reasons: {', '.join(s.throttle)})" if s.throttle else ""
            return [
                self._anomaly(
                    s,
                    CLOCK,
                    got,
                    "firing",
                    evidence,
                    (
                        f"GPU {s.gpu_index} of {s.node} runs at {s.sm_clock_mhz:.0f} MHz, {ratio:.0%} of its "
                        f"{s.sm_clock_max_mhz:.0f} MHz maximum, while {s.gpu_util:.0f}% busy for {evidence['low_for_s']:.0f} s "
                        f"with no thermal or power reason{reasons}: clocks are probably locked low (nvidia-smi -lgc/-ac) "
                        "or the GPU is degraded; reset its clocks (nvidia-smi -rgc -rac) or drain and reset it"
                    ),
                )
            ]
        return [
            self._anomaly(
                s,
                CLOCK,
                got,
                "resolved",
                evidence,
                (
                    f"GPU {s.gpu_index} of {s.node} is back at {s.sm_clock_mhz:.0f} MHz ({ratio:.0%} of its maximum) "
                    f"for {cfg.clock_low_s:g} s"
                ),
            )
        ]

    def _clock_evidence(self, s: GpuSample, ratio: float) -> dict[str, float]:
        """Built only when the verdict changes (the clock check runs on every busy sample)."""
        assert s.sm_clock_mhz is not None and s.sm_clock_max_mhz is not None and s.gpu_util is not None
        evidence = {
            "sm_clock_mhz": float(s.sm_clock_mhz),
            "sm_clock_max_mhz": float(s.sm_clock_max_mhz),
            "clock_ratio": ratio,
            "threshold_ratio": self.config.clock_low_ratio,
            "gpu_util": float(s.gpu_util),
            "gpu_index": float(s.gpu_index),
        }
        if s.throttle_reasons is not None:
            evidence["throttle_reasons"] = float(s.throttle_reasons)
        return evidence

    # --- incidents --------------------------------------------------------------------------
    def _judge(
        self,
        s: GpuSample,
        gpu: _Gpu,
        condition: str,
        bad: bool,
        clear: bool | None = None,
        since: int | None = None,
        severity: Severity = "warning",
    ) -> Incident | None:
        """One judgment of a condition on this GPU; the incident when it fires or resolves now."""
        got = self._incidents[condition].judge(
            s.gpu_uuid, f"{s.gpu_uuid}/{condition}", s.ts, fire=bad, clear=clear, since=since, severity=severity
        )
        if got is None:
            return None
        if got[0] == "firing":
            gpu.open.add(condition)
        else:
            gpu.open.discard(condition)
        return got[1]

    def _anomaly(
        self, s: GpuSample, condition: str, incident: Incident, state: State, evidence: dict[str, float], message: str
    ) -> Anomaly:
        return Anomaly(
            id=incident.id,
            kind=self.kind,
            severity=incident.severity,
            state=state,
            subject_type="gpu",
            subject=f"{s.gpu_uuid}/{condition}",
            ts=s.ts,
            started_at=incident.started_at,
            window_start=min(incident.started_at, s.ts),
            window_end=s.ts,
            message=message,
            evidence=evidence,
            node=s.node,
            gpu_uuid=s.gpu_uuid,
            job_id=s.job_id,
        )

    def restore(self, open_incidents: list[Anomaly]) -> None:
        for a in open_incidents:
            if a.gpu_uuid is None or not a.subject.startswith(f"{a.gpu_uuid}/"):
                continue
            condition = a.subject[len(a.gpu_uuid) + 1 :]
            if condition not in CONDITIONS:
                continue
            gpu = self._gpus.setdefault(a.gpu_uuid, _Gpu(a.node or "", int(a.evidence.get("gpu_index", 0))))
            self._incidents[condition].restore(a.gpu_uuid, a)
            gpu.open.add(condition)
            if condition == ECC:
                gpu.ecc_last_increase = max(gpu.ecc_last_increase, a.ts)
                gpu.ecc_new = int(a.evidence.get("ecc_uncorrected_new", 0))
                if "ecc_uncorrected_total" in a.evidence:  # so an increase while we were down is still seen
                    gpu.ecc_prev = int(a.evidence["ecc_uncorrected_total"])

    def _sweep(self, ts: int) -> None:
        """Forget GPUs long unseen with nothing open (MIG instances come and go with new UUIDs)."""
        self._now = max(self._now, ts)
        horizon = self.config.forget_after_s * 1000
        if self._now - self._last_sweep < horizon / 2:
            return
        self._last_sweep = self._now
        for uuid in [u for u, g in self._gpus.items() if not g.open and g.last_ts < self._now - horizon]:
            del self._gpus[uuid]
            for table in self._incidents.values():
                table.forget(uuid)
