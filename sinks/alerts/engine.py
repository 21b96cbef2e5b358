"""The router's logic, with no I/O and no clock of its own: routing, grouping, deduplication,
repeats, resolution, inhibition and silences, as Alertmanager users know them.

* **Routing.** An alert walks the route tree from the root: the first child whose matchers match
  takes it (and its own children are tried in turn); with ``continue: true`` the next matching
  siblings take it too. If no child matches, the route itself does. Each matching route puts the
  alert into the group of its ``group_by`` label values.
* **Grouping and timing.** A new group waits ``group_wait`` before its first notification, so the
  alerts of one fault arrive together; after that it is looked at every ``group_interval``.
* **What is sent** (the notification log, per group): a notification goes out when the group has a
  firing alert its receiver was not told about, when an alert it was told about has resolved, or,
  with nothing new, when ``repeat_interval`` has passed since the last one. A resolved alert is only
  mentioned to a receiver that heard it fire. Resolved alerts leave the group once it was looked at;
  an empty group is closed.
* **Deduplication.** An alert is its anomaly's stable id: the firing and the resolved message of
  one incident are one alert, and an anomaly seen again (an upstream replay) changes nothing. Ids of
  finished alerts are remembered (tombstones) for ``tombstone_keep_s``.
* **Muting.** An alert matched by an active silence, or inhibited (a firing alert matching an
  inhibit rule's source, with the same values of its ``equal`` labels, mutes those matching its
  target; an alert matching both sides is only muted by one that does not), is left out of its
  group's notifications while the mute lasts. Its resolution is still told to whoever heard it fire.
* **Short incidents, by their own clock.** An alert that fires and resolves before its group is
  looked at is dropped as a flap only when it lasted less than ``group_wait`` by its own timestamps.
  One that lasted longer (the router read its firing and its resolution together: it was catching up
  after a restart, or the pipeline upstream delivered both in one burst) is told once, as resolved
  with its start and end, to receivers that want resolutions. So what is told depends on the
  anomalies, not on how late the router read them.

Every change is recorded in :class:`Changes`, which the store writes in one transaction together with
the Kafka offsets that caused it.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import msgspec

from hpcinsight.schemas.events import Anomaly, SchedulerEvent, Silence
from hpcinsight.sinks.alerts.config import GROUP_BY_ALL, AlertsConfig, InhibitRule, RouteConfig
from hpcinsight.sinks.alerts.matchers import Matcher, matches_all
from hpcinsight.sinks.alerts.model import Alert, JobInfo, Notification, alert_of, notification_id

DAY_MS = 86_400_000


class Group(msgspec.Struct):
    key: str
    route_id: str
    receiver: str
    labels: dict[str, str]
    alert_ids: list[str]
    created_at: int
    next_flush_at: int
    seq: int = 0


class SentEntry(msgspec.Struct):
    """What the group's receiver was last told: which alerts firing, which resolved, and when."""

    firing: list[str]
    resolved: list[str]
    at: int


@dataclass
class Changes:
    """What changed since the last :meth:`Engine.take_changes`; ``None`` values are deletions."""

    alerts: dict[str, Alert | None] = field(default_factory=dict)
    groups: dict[str, Group | None] = field(default_factory=dict)
    sent: dict[str, SentEntry | None] = field(default_factory=dict)
    tombstones: dict[str, int | None] = field(default_factory=dict)
    silences: dict[str, Silence | None] = field(default_factory=dict)
    jobs: dict[str, JobInfo | None] = field(default_factory=dict)
    notifications: list[Notification] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any((self.alerts, self.groups, self.sent, self.tombstones, self.silences, self.jobs, self.notifications))


@dataclass
class EngineStats:
    anomalies: int = 0
    new_alerts: int = 0
    duplicates: int = 0
    resolved: int = 0
    unknown_resolved: int = 0
    history_resolved: int = 0  # incidents over before a new router started: not told
    notifications: int = 0
    muted_silenced: int = 0
    muted_inhibited: int = 0


class _Route:
    def __init__(self, config: RouteConfig) -> None:
        self.config = config
        self.children = [_Route(c) for c in config.routes]

    def match(self, labels: dict[str, str]) -> list[RouteConfig]:
        if not matches_all(self.config.matchers, labels):
            return []
        found: list[RouteConfig] = []
        for child in self.children:
            hit = child.match(labels)
            found += hit
            if hit and not child.config.continue_:
                break
        return found or [self.config]


def _equal_key(rule: InhibitRule, labels: dict[str, str]) -> tuple[str, ...]:
    """The values of a rule's ``equal`` labels: a source mutes a target only where they agree."""
    return tuple(labels.get(e, "") for e in rule.equal)


def group_labels(route: RouteConfig, labels: dict[str, str]) -> dict[str, str]:
    if route.group_by == GROUP_BY_ALL:
        return dict(sorted(labels.items()))
    return {name: labels[name] for name in route.group_by if name in labels}


def group_key(route: RouteConfig, labels: dict[str, str]) -> str:
    return f"{route.id}:{json.dumps(labels, sort_keys=True, separators=(',', ':'))}"


class Engine:
    def __init__(self, config: AlertsConfig, tombstone_keep_s: float = 30 * 86400.0) -> None:
        self.config = config
        self.tombstone_keep_ms = int(tombstone_keep_s * 1000)
        self._root = _Route(config.route)
        self.routes = {r.id: r for r in config.route.walk()}
        self.alerts: dict[str, Alert] = {}
        self.groups: dict[str, Group] = {}
        self.sent: dict[str, SentEntry] = {}
        self.tombstones: dict[str, int] = {}
        self.silences: dict[str, Silence] = {}
        self._silence_matchers: dict[str, tuple[Matcher, ...]] = {}
        self.jobs: dict[str, JobInfo] = {}
        self.stats = EngineStats()
        self._changes = Changes()
        self._schedule: list[tuple[int, str]] = []
        self._sources: list[dict[tuple[str, ...], list[tuple[str, bool]]]] | None = None
        self._last_prune = 0
        # What lets a flush with nothing new be skipped: groups whose alerts changed since their last
        # look, and an epoch that moves whenever muting may have changed (a silence written, starting
        # or ending; an inhibiting alert firing or resolving), with the epoch each group last saw.
        self._dirty: set[str] = set()
        self._mute_epoch = 0
        self._seen_epoch: dict[str, int] = {}
        self._silence_boundary: int | None = None

    # -- state in and out ----------------------------------------------------------------
    def take_changes(self) -> Changes:
        changes, self._changes = self._changes, Changes()
        return changes

    def load(
        self,
        alerts: list[Alert],
        groups: list[Group],
        sent: dict[str, SentEntry],
        tombstones: dict[str, int],
        silences: list[Silence],
        jobs: dict[str, JobInfo],
        now_ms: int,
    ) -> None:
        """Take back persisted state. Groups of routes the configuration no longer has are closed
        and their firing alerts routed afresh."""
        self.tombstones = dict(tombstones)
        self.jobs = dict(jobs)
        for s in silences:
            self._set_silence(s)
        self.alerts = {a.id: a for a in alerts}
        for g in groups:
            if g.route_id in self.routes and self.routes[g.route_id].receiver == g.receiver:
                self.groups[g.key] = g
                heapq.heappush(self._schedule, (g.next_flush_at, g.key))
            else:
                self._changes.groups[g.key] = None
                self._changes.sent[g.key] = None
        self.sent = {k: v for k, v in sent.items() if k in self.groups}
        for a in list(self.alerts.values()):
            kept = [k for k in a.groups if k in self.groups]
            if kept != a.groups:
                a.groups = kept
                if a.firing and not kept:
                    self._route(a, now_ms)
                self._touch(a)
                if not a.groups:
                    self._forget(a, now_ms)
        self._sources = None
        self._dirty = set(self.groups)
        self._changes.notifications.clear()

    # -- input -------------------------------------------------------------------------
    def observe_anomaly(self, anomaly: Anomaly, now_ms: int) -> str:
        """Take one anomaly; returns what it was: new, update, resolved, duplicate or unknown."""
        self.stats.anomalies += 1
        if anomaly.id in self.tombstones:
            self.stats.duplicates += 1
            return "duplicate"
        alert = self.alerts.get(anomaly.id)
        if anomaly.state == "firing":
            if alert is None:
                alert = alert_of(anomaly, self.jobs)
                self.alerts[alert.id] = alert
                self._route(alert, now_ms)
                self._touch(alert)
                self._source_changed(alert)
                self.stats.new_alerts += 1
                return "new"
            if not alert.firing or anomaly.ts <= alert.updated_at:
                self.stats.duplicates += 1
                return "duplicate"
            alert.updated_at, alert.message, alert.evidence = anomaly.ts, anomaly.message, dict(anomaly.evidence)
            self._touch(alert)
            return "update"
        if alert is None:
            # resolved, never seen firing (it fired before this router's history): nothing to tell
            self._tombstone(anomaly.id, now_ms)
            self.stats.unknown_resolved += 1
            return "unknown"
        if not alert.firing:
            self.stats.duplicates += 1
            return "duplicate"
        alert.ends_at = max(anomaly.ts, alert.starts_at)
        alert.updated_at = anomaly.ts
        alert.resolved_message = anomaly.message
        if anomaly.evidence:
            alert.evidence = dict(anomaly.evidence)
        self._touch(alert)
        self._dirty.update(alert.groups)
        self._source_changed(alert)
        self.stats.resolved += 1
        return "resolved"

    def observe_history(self, anomalies: list[Anomaly], now_ms: int) -> None:
        """What happened before a new router's start: the last word on each incident. Those still
        firing become alerts (and are told); those already resolved are remembered as done, never
        told: a router deployed today does not page about last week."""
        for anomaly in anomalies:
            if anomaly.state == "firing":
                self.observe_anomaly(anomaly, now_ms)
            elif anomaly.id not in self.alerts:
                self._tombstone(anomaly.id, now_ms)
                self.stats.history_resolved += 1
            else:
                self.observe_anomaly(anomaly, now_ms)

    def observe_scheduler(self, event: SchedulerEvent) -> None:
        job = self.jobs.get(event.job_id)
        changed = False
        if job is None:
            job = self.jobs[event.job_id] = JobInfo()
            changed = True
        if event.user and event.user != job.user:
            job.user, changed = event.user, True
        if event.team and event.team != job.team:
            job.team, changed = event.team, True
        if event.kind in ("finished", "deleted") and job.ended_at is None:
            job.ended_at, changed = event.ts, True
        if changed:
            self._changes.jobs[event.job_id] = job

    def observe_silence(self, silence: Silence) -> None:
        known = self.silences.get(silence.id)
        if known is not None and known.ts > silence.ts:
            return  # an older version of the silence
        self._set_silence(silence)
        self._changes.silences[silence.id] = silence

    def _set_silence(self, silence: Silence) -> None:
        self.silences[silence.id] = silence
        self._silence_matchers[silence.id] = tuple(Matcher.parse(m) for m in silence.matchers)
        self._mute_epoch += 1
        self._silence_boundary = None

    def _source_changed(self, alert: Alert) -> None:
        """An alert fired or resolved: if it can inhibit others, muting may have changed."""
        if any(matches_all(rule.source, alert.labels) for rule in self.config.inhibit_rules):
            self._sources = None
            self._mute_epoch += 1

    def _check_silence_boundary(self, now_ms: int) -> None:
        """Move the mute epoch when a silence starts or ends."""
        if self._silence_boundary is None:
            times = [t for s in self.silences.values() for t in (s.starts_at, s.ends_at) if t > now_ms]
            self._silence_boundary = min(times, default=2**62)
        elif now_ms >= self._silence_boundary:
            self._mute_epoch += 1
            self._silence_boundary = None
            self._check_silence_boundary(now_ms)

    # -- muting --------------------------------------------------------------------------
    def silenced_by(self, alert: Alert, now_ms: int) -> str | None:
        for sid, s in self.silences.items():
            if s.starts_at <= now_ms < s.ends_at and matches_all(self._silence_matchers[sid], alert.labels):
                return sid
        return None

    def inhibited_by(self, alert: Alert) -> str | None:
        if self._sources is None:
            self._sources = [self._index_sources(rule) for rule in self.config.inhibit_rules]
        for n, key, two_sided in self._rules_targeting(alert):
            for source_id, source_two_sided in self._sources[n].get(key, ()):
                if source_id != alert.id and not (two_sided and source_two_sided):
                    return source_id
        return None

    def _rules_targeting(self, alert: Alert) -> Iterator[tuple[int, tuple[str, ...], bool]]:
        """(index, ``equal`` label values, whether it also matches the source side) of each inhibit
        rule whose target side matches ``alert``."""
        for n, rule in enumerate(self.config.inhibit_rules):
            if matches_all(rule.target, alert.labels):
                yield n, _equal_key(rule, alert.labels), matches_all(rule.source, alert.labels)

    def _index_sources(self, rule: InhibitRule) -> dict[tuple[str, ...], list[tuple[str, bool]]]:
        index: dict[tuple[str, ...], list[tuple[str, bool]]] = {}
        for a in self.alerts.values():
            if a.firing and matches_all(rule.source, a.labels):
                index.setdefault(_equal_key(rule, a.labels), []).append((a.id, matches_all(rule.target, a.labels)))
        return index

    def muted(self, alert: Alert, now_ms: int) -> bool:
        if self.silenced_by(alert, now_ms) is not None:
            self.stats.muted_silenced += 1
            return True
        if self.inhibited_by(alert) is not None:
            self.stats.muted_inhibited += 1
            return True
        return False

    # -- time ----------------------------------------------------------------------------
    def next_due_ms(self) -> int | None:
        while self._schedule:
            at, key = self._schedule[0]
            g = self.groups.get(key)
            if g is not None and g.next_flush_at == at:
                return at
            heapq.heappop(self._schedule)  # stale entry
        return None

    def tick(self, now_ms: int) -> list[Notification]:
        """Look at every group that is due; returns (and records) the notifications to send."""
        out: list[Notification] = []
        self._check_silence_boundary(now_ms)
        while (due := self.next_due_ms()) is not None and due <= now_ms:
            _, key = heapq.heappop(self._schedule)
            n = self._flush(self.groups[key], now_ms)
            if n is not None:
                out.append(n)
        if now_ms - self._last_prune >= 60_000:
            self._prune(now_ms)
            self._last_prune = now_ms
        self._changes.notifications += out
        self.stats.notifications += len(out)
        return out

    def _flush(self, g: Group, now_ms: int) -> Notification | None:
        route = self.routes[g.route_id]
        prev = self.sent.get(g.key)
        g.next_flush_at = now_ms + int(route.group_interval_s * 1000)
        if (
            g.key not in self._dirty
            and self._seen_epoch.get(g.key) == self._mute_epoch
            and (prev is None or now_ms - prev.at < route.repeat_interval_s * 1000)
        ):
            # nothing new, nothing muted or unmuted, no repeat due: the answer would be "send nothing".
            # The new flush time is not persisted: after a restart the group is simply looked at early.
            heapq.heappush(self._schedule, (g.next_flush_at, g.key))
            return None
        self._dirty.discard(g.key)
        self._seen_epoch[g.key] = self._mute_epoch
        members = [self.alerts[i] for i in g.alert_ids]
        firing = [a for a in members if a.firing and not self.muted(a, now_ms)]
        told = set(prev.firing) if prev else set()
        wants_resolved = any(i.common.send_resolved for i in self.config.receivers[g.receiver].integrations)
        wait_ms = int(route.group_wait_s * 1000)
        resolved = [
            a for a in members if not a.firing and (a.id in told or (wants_resolved and self._told_late(a, wait_ms, now_ms)))
        ]
        shown = {a.id for a in firing}
        for a in members:
            if a.firing and not a.passed_over and a.id not in shown:
                a.passed_over = True  # muted now: neither its firing nor its resolution is told
                self._touch(a)
        firing_ids, resolved_ids = {a.id for a in firing}, {a.id for a in resolved}
        if prev is None:
            send = bool(firing or resolved)
        elif not firing_ids <= told:
            send = True  # something new is firing
        elif not firing:
            send = bool(told) or bool(resolved)  # everything told of has resolved (or is muted now)
        elif wants_resolved and not resolved_ids <= set(prev.resolved):
            send = True
        else:
            send = now_ms - prev.at >= route.repeat_interval_s * 1000
        notification = None
        if send:
            entry = SentEntry(sorted(firing_ids), sorted(resolved_ids), now_ms)
            self.sent[g.key] = entry
            self._changes.sent[g.key] = entry
            if firing or resolved:
                g.seq += 1
                notification = Notification(
                    id=notification_id(g.key, g.seq, entry.firing, entry.resolved),
                    group_key=g.key,
                    receiver=g.receiver,
                    seq=g.seq,
                    created_at=now_ms,
                    group_labels=dict(g.labels),
                    firing=[msgspec.structs.replace(a, groups=[]) for a in firing],
                    resolved=[msgspec.structs.replace(a, groups=[]) for a in resolved],
                )
        # resolved alerts are done with this group, told or not
        for a in members:
            if not a.firing:
                a.groups = [k for k in a.groups if k != g.key]
                if not a.groups:
                    self._forget(a, now_ms)
                else:
                    self._touch(a)
        still = [a.id for a in members if a.firing]
        changed = notification is not None or len(still) != len(g.alert_ids)
        g.alert_ids = still
        if g.alert_ids:
            heapq.heappush(self._schedule, (g.next_flush_at, g.key))
            if changed:
                self._changes.groups[g.key] = g
        else:
            del self.groups[g.key]
            self.sent.pop(g.key, None)
            self._seen_epoch.pop(g.key, None)
            self._changes.groups[g.key] = None
            self._changes.sent[g.key] = None
        return notification

    # -- bookkeeping ---------------------------------------------------------------------
    def _told_late(self, alert: Alert, wait_ms: int, now_ms: int) -> bool:
        """Whether a resolved alert no flush saw firing is told anyway: it lasted ``group_wait`` or
        more by its own timestamps, no flush passed it over as muted, no silence matches it now, and
        no inhibiting alert fired while it did (the sources may have resolved since: read together,
        they are judged as a live router would have judged them)."""
        assert alert.ends_at is not None
        if alert.passed_over or alert.ends_at - alert.starts_at < wait_ms or self.silenced_by(alert, now_ms) is not None:
            return False
        for n, key, two_sided in self._rules_targeting(alert):
            rule = self.config.inhibit_rules[n]
            for other in self.alerts.values():
                if (
                    other.id != alert.id
                    and matches_all(rule.source, other.labels)
                    and _equal_key(rule, other.labels) == key
                    and not (two_sided and matches_all(rule.target, other.labels))
                    and other.starts_at < alert.ends_at
                    and (other.ends_at is None or other.ends_at > alert.starts_at)
                ):
                    self.stats.muted_inhibited += 1
                    return False
        return True

    def _route(self, alert: Alert, now_ms: int) -> None:
        for route in self._root.match(alert.labels):
            labels = group_labels(route, alert.labels)
            key = group_key(route, labels)
            g = self.groups.get(key)
            if g is None:
                g = self.groups[key] = Group(
                    key, route.id, route.receiver, labels, [], now_ms, now_ms + int(route.group_wait_s * 1000)
                )
                heapq.heappush(self._schedule, (g.next_flush_at, key))
            if alert.id not in g.alert_ids:
                g.alert_ids.append(alert.id)
                self._changes.groups[key] = g
                self._dirty.add(key)
            if key not in alert.groups:
                alert.groups.append(key)

    def _touch(self, alert: Alert) -> None:
        self._changes.alerts[alert.id] = alert

    def _forget(self, alert: Alert, now_ms: int) -> None:
        self.alerts.pop(alert.id, None)
        self._changes.alerts[alert.id] = None
        self._tombstone(alert.id, now_ms)

    def _tombstone(self, alert_id: str, now_ms: int) -> None:
        self.tombstones[alert_id] = now_ms
        self._changes.tombstones[alert_id] = now_ms

    def _prune(self, now_ms: int) -> None:
        for aid, at in list(self.tombstones.items()):
            if now_ms - at > self.tombstone_keep_ms:
                del self.tombstones[aid]
                self._changes.tombstones[aid] = None
        for sid, s in list(self.silences.items()):
            if now_ms - s.ends_at > DAY_MS:
                del self.silences[sid], self._silence_matchers[sid]
                self._changes.silences[sid] = None
        for job_id, job in list(self.jobs.items()):
            if job.ended_at is not None and now_ms - job.ended_at > 7 * DAY_MS:
                del self.jobs[job_id]
                self._changes.jobs[job_id] = None
