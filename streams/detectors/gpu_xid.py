"""XID errors reported by the driver, decoded, as GPU fault anomalies.

Every occurrence counts (the evidence carries the count, repeats included). One incident per
GPU and XID code: it fires on the first occurrence and resolves after ``quiet_s`` of event
time without that code on that GPU (a repeat within it is folded into the incident and counted:
:mod:`hpcinsight.streams.detectors.incidents`). The detector tells time by the per-GPU quantile windows
that arrive regularly, so an incident resolves even though no further XID comes. Codes that
mean the GPU cannot be trusted any more (fallen off the bus, uncorrectable or uncontained ECC,
micro-controller halt or breakpoint, GSP failure) are critical and say the node should be drained;
the others are warnings whose message says what to do instead (restart the job, reset the GPU
when it is free for a recorded row remap, watch a high single-bit error rate).
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcinsight.schemas.events import Anomaly, Event, GpuQuantiles, XidEvent
from hpcinsight.streams.detectors import Detector
from hpcinsight.streams.detectors.incidents import Hygiene, Incident, Incidents, Severity, State


@dataclass(frozen=True)
class XidMeaning:
    meaning: str
    drain: bool
    #: what to do, where "drain the node" / "check the job" would mislead (e.g. a recorded row remap)
    action: str | None = None

    @property
    def severity(self) -> Severity:
        return "critical" if self.drain else "warning"

    @property
    def advice(self) -> str:
        return self.action or ("drain the node" if self.drain else "check the job")


# Facts from NVIDIA's XID catalogue and GPU debug guidelines: what each common code means and whether
# the node needs draining (the GPU must be reset or replaced) or only the job needs attention.
XIDS: dict[int, XidMeaning] = {
    # the catalogue's immediate action for 8 is to restart the application, not to reset the GPU
    8: XidMeaning("GPU stopped processing (channel idle timeout)", False),
    13: XidMeaning("graphics engine exception (usually the application)", False),
    31: XidMeaning("GPU memory page fault (usually the application)", False),
    32: XidMeaning("invalid or corrupted push buffer stream", False),
    38: XidMeaning("driver firmware error", True),
    43: XidMeaning("GPU stopped processing (usually the application)", False),
    45: XidMeaning(
        "preemptive cleanup after earlier errors",
        False,
        "usually follows another XID or a killed process; look at what preceded it",
    ),
    48: XidMeaning("double-bit ECC error", True),
    # NVIDIA's debug guidelines: reset the GPU that reported 61 (and report it if it recurs)
    61: XidMeaning("internal micro-controller breakpoint/warning", True),
    62: XidMeaning("internal micro-controller halt", True),
    63: XidMeaning(
        "ECC page retirement or row remapping recorded", False, "reset the GPU when its job ends for the repair to take effect"
    ),
    64: XidMeaning("ECC page retirement or row remapping failed", True),
    69: XidMeaning("graphics engine class error", False),
    74: XidMeaning("NVLink error", True),
    79: XidMeaning("GPU has fallen off the bus", True),
    92: XidMeaning(
        "high single-bit ECC error rate", False, "watch the GPU's ECC counts and plan its replacement if the rate persists"
    ),
    94: XidMeaning(
        "contained ECC error (the application was affected)",
        False,
        "restart the affected job (other jobs are unharmed) and reset the GPU when convenient",
    ),
    95: XidMeaning("uncontained ECC error", True),
    109: XidMeaning("context switch timeout", False),
    119: XidMeaning("GSP RPC timeout", True),
    120: XidMeaning("GSP error", True),
    140: XidMeaning("unrecovered ECC error", True),
}
UNKNOWN = XidMeaning("unlisted XID", False)


@dataclass(frozen=True)
class GpuXidConfig:
    quiet_s: float = 600.0


@dataclass
class _Where:
    node: str
    gpu_index: int
    count: int = 1


class GpuXidDetector(Detector[GpuXidConfig]):
    kind = "gpu_xid"
    inputs = (XidEvent, GpuQuantiles)
    config_type = GpuXidConfig

    def __init__(self, config: GpuXidConfig | None = None) -> None:
        super().__init__(config)
        self._incidents: Incidents[tuple[str, int]] = Incidents(self.kind, Hygiene.of(quiet_s=self.config.quiet_s))
        self._where: dict[tuple[str, int], _Where] = {}
        self._gpus: dict[str, set[int]] = {}  # GPU -> its codes with an open incident

    def observe(self, event: Event) -> list[Event]:
        if isinstance(event, XidEvent):
            return self._on_xid(event)
        if isinstance(event, GpuQuantiles):
            return self._on_time(event.gpu_uuid, event.window_end)
        return []

    def _on_xid(self, x: XidEvent) -> list[Event]:
        key = (x.gpu_uuid, x.xid)
        got = self._incidents.judge(key, f"{x.gpu_uuid}/{x.xid}", x.ts, fire=True, severity=XIDS.get(x.xid, UNKNOWN).severity)
        if got is None:  # a repeat: counted, not re-announced
            where = self._where.get(key)
            if where is not None:
                where.count += 1
            return []
        self._where[key] = _Where(x.node, x.gpu_index)
        self._gpus.setdefault(x.gpu_uuid, set()).add(x.xid)
        return [self._anomaly(x.gpu_uuid, x.xid, got[1], "firing", x.ts)]

    def _on_time(self, gpu_uuid: str, now_ms: int) -> list[Event]:
        codes = self._gpus.get(gpu_uuid)
        if not codes:
            return []
        out: list[Event] = []
        for xid in sorted(codes):
            got = self._incidents.judge((gpu_uuid, xid), f"{gpu_uuid}/{xid}", now_ms, fire=False)
            if got is not None:
                out.append(self._anomaly(gpu_uuid, xid, got[1], "resolved", now_ms))
                codes.discard(xid)
                self._where.pop((gpu_uuid, xid), None)
        return out

    def restore(self, open_incidents: list[Anomaly]) -> None:
        for a in open_incidents:
            if a.gpu_uuid is None or "xid" not in a.evidence:
                continue
            xid = int(a.evidence["xid"])
            self._incidents.restore((a.gpu_uuid, xid), a)
            self._where[(a.gpu_uuid, xid)] = _Where(
                a.node or "", int(a.evidence.get("gpu_index", 0)), int(a.evidence.get("count", 1))
            )
            self._gpus.setdefault(a.gpu_uuid, set()).add(xid)

    def _anomaly(self, gpu_uuid: str, xid: int, incident: Incident, state: State, ts: int) -> Anomaly:
        meaning = XIDS.get(xid, UNKNOWN)
        where = self._where[(gpu_uuid, xid)]
        if state == "firing":
            message = f"XID {xid} on GPU {where.gpu_index} of {where.node}: {meaning.meaning}; {meaning.advice}"
        else:
            message = f"XID {xid} on GPU {where.gpu_index} of {where.node}: quiet for {self.config.quiet_s:g} s after {where.count} occurrence(s)"
        return Anomaly(
            id=incident.id,
            kind=self.kind,
            severity=meaning.severity,
            state=state,
            subject_type="gpu",
            subject=gpu_uuid,
            ts=ts,
            started_at=incident.started_at,
            window_start=incident.started_at,
            window_end=max(ts, incident.last_bad),
            message=message,
            evidence={
                "xid": float(xid),
                "count": float(where.count),
                "drain": float(meaning.drain),
                "gpu_index": float(where.gpu_index),
            },
            node=where.node,
            gpu_uuid=gpu_uuid,
        )
