"""What the router holds: alerts (one per anomaly id), their groups, and the notifications it sends.

An anomaly becomes an alert with labels (what routes, groups, silences and inhibits it) taken from
the anomaly and from the scheduler's view of its job (user, team). The alert's identity is the
anomaly's stable id, so the firing and the resolved message of one incident are one alert, and a
replayed anomaly is recognised as one already seen.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import msgspec

from hpcinsight.schemas.events import Anomaly

#: every label an alert can carry; configuration naming another label is a typo and refused
LABELS = ("alertname", "kind", "severity", "subject_type", "subject", "node", "gpu", "gpu_uuid", "job", "user", "team", "drain")


class JobInfo(msgspec.Struct):
    """Who a job belongs to, learnt from the scheduler events."""

    user: str | None = None
    team: str | None = None
    ended_at: int | None = None  # ms; a finished job is forgotten some days later


class Alert(msgspec.Struct):
    """One anomaly incident as the router sees it."""

    id: str
    labels: dict[str, str]
    message: str  # the firing message: what is wrong
    evidence: dict[str, float]
    starts_at: int  # ms, when the anomaly started
    updated_at: int  # ms, the anomaly's latest timestamp
    ends_at: int | None = None  # ms, when it resolved
    resolved_message: str | None = None
    groups: list[str] = []  # keys of the groups holding it
    #: a flush saw it firing and left it out (muted): its resolution is then not told either
    passed_over: bool = False

    @property
    def firing(self) -> bool:
        return self.ends_at is None


def alert_labels(a: Anomaly, jobs: Mapping[str, JobInfo]) -> dict[str, str]:
    labels = {"alertname": a.kind, "kind": a.kind, "severity": a.severity, "subject_type": a.subject_type, "subject": a.subject}
    if a.node:
        labels["node"] = a.node
    if a.gpu_uuid:
        labels["gpu_uuid"] = a.gpu_uuid
    gpu_index = a.evidence.get("gpu_index")
    if gpu_index is not None and float(gpu_index).is_integer():
        labels["gpu"] = str(int(gpu_index))
    if a.job_id:
        labels["job"] = a.job_id
        job = jobs.get(a.job_id)
        if job is not None:
            if job.user:
                labels["user"] = job.user
            if job.team:
                labels["team"] = job.team
    if a.evidence.get("drain", 0.0) >= 1.0:  # e.g. an XID after which the node must be drained
        labels["drain"] = "true"
    return labels


def alert_of(a: Anomaly, jobs: Mapping[str, JobInfo]) -> Alert:
    return Alert(
        id=a.id,
        labels=alert_labels(a, jobs),
        message=a.message,
        evidence=dict(a.evidence),
        starts_at=a.started_at,
        updated_at=a.ts,
    )


class Notification(msgspec.Struct):
    """One message to one receiver about one group: its firing alerts and those that resolved since."""

    id: str  # idempotency key: the same notification always has the same id
    group_key: str
    receiver: str
    seq: int  # the group's notification count, so a repeat is a new notification
    created_at: int  # ms
    group_labels: dict[str, str]
    firing: list[Alert]
    resolved: list[Alert]

    @property
    def status(self) -> str:
        return "firing" if self.firing else "resolved"

    @property
    def alerts(self) -> list[Alert]:
        return [*self.firing, *self.resolved]


def notification_id(group_key: str, seq: int, firing: list[str], resolved: list[str]) -> str:
    text = "\n".join([group_key, str(seq), ",".join(sorted(firing)), ",".join(sorted(resolved))])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


_encoder = msgspec.json.Encoder()
_notification_decoder = msgspec.json.Decoder(Notification)


def encode(value: object) -> bytes:
    return _encoder.encode(value)


def decode_notification(raw: bytes | str) -> Notification:
    return _notification_decoder.decode(raw)
