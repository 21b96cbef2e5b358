"""Incident state shared by every detector: when a condition opens an incident, folds into it, and resolves it.

A page that fires and resolves every time a noisy value crosses its threshold is a page operators
mute. Every detector therefore judges its subjects through one :class:`Incidents` table, which
applies the same hygiene to all of them (:class:`Hygiene`):

* **fire after**: the condition must hold for ``fire_after`` consecutive judgments, and for
  ``fire_after_ms`` of event time, before the incident opens (its start is the first of them);
* **hysteresis**: a judgment says whether the value is over the *fire* threshold (``fire``) and
  whether it is under the lower *resolve* threshold (``clear``); a value between the two holds:
  it neither builds a firing nor counts toward resolving;
* **resolve after / quiet time**: an open incident resolves after ``resolve_after`` consecutive
  clear judgments spanning ``resolve_after_ms``, and only once ``quiet_ms`` have passed since the
  condition last held;
* **fold**: a re-fire of the same subject while its incident is open (within the quiet time of
  its last firing judgment) is folded into it: no new page, the incident counts its ``episodes``;
* **gaps**: judgments further apart than ``max_gap_ms`` restart the runs (a subject not heard of
  for a while is not judged on stale counts);
* **restore**: after a worker restart, the incidents read back from the anomalies topic are taken
  back under their own id, so they resolve once and never fire twice.

The detector keeps what it measures; this table keeps only when to page. A detector uses it so:

* a table (``Incidents(self.kind, Hygiene.of(...))`` from its config; one per condition where conditions
  page under different rules), keyed by whatever names a subject there;
* at every observation, ``judge(key, subject, ts, fire=..., clear=...)``; a ``("firing" | "resolved",
  incident)`` it returns becomes one :class:`hpcinsight.schemas.events.Anomaly` with ``id=incident.id``
  and ``started_at=incident.started_at`` (the id is :func:`anomaly_id` of the kind, subject and start:
  the firing and the resolution of one incident carry the same id, and alerting deduplicates on it);
* ``close(key)`` when the subject goes away (its job ended, its node left) and the detector resolves it;
* in :meth:`hpcinsight.streams.detectors.Detector.restore`, ``restore(key, anomaly)`` for each firing
  record of its kind that it can map to a key.

That is the whole interface, with ``get``, ``building`` and ``open_items`` to look and ``forget`` to drop
a subject long gone: small on purpose, so a new detector needs nothing else to page like the others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from hpcinsight.schemas.events import Anomaly

K = TypeVar("K", bound=Hashable)
State = Literal["firing", "resolved"]
Severity = Literal["info", "warning", "critical"]


def anomaly_id(kind: str, subject: str, started_at_ms: int) -> str:
    """Stable id of one incident: the same for its firing and its resolved message."""
    return hashlib.sha1(f"{kind}|{subject}|{started_at_ms}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Hygiene:
    """When a condition opens and closes an incident (see the module's doc); times in ms of event time."""

    fire_after: int = 1
    fire_after_ms: int = 0
    resolve_after: int = 1
    resolve_after_ms: int = 0
    quiet_ms: int = 0
    max_gap_ms: int | None = None

    @classmethod
    def of(
        cls,
        fire_after: int = 1,
        fire_after_s: float = 0.0,
        resolve_after: int = 1,
        resolve_after_s: float = 0.0,
        quiet_s: float = 0.0,
        max_gap_s: float | None = None,
    ) -> Hygiene:
        """The same in seconds, as detector configs state it."""
        return cls(
            max(1, fire_after),
            round(fire_after_s * 1000),
            max(1, resolve_after),
            round(resolve_after_s * 1000),
            round(quiet_s * 1000),
            None if max_gap_s is None else round(max_gap_s * 1000),
        )


@dataclass
class Incident:
    """One open incident: its id (stable from firing to resolved), subject, start, severity, and how many
    episodes of the condition it holds (re-fires folded into it)."""

    id: str
    subject: str
    started_at: int
    severity: Severity = "warning"
    episodes: int = 1
    last_bad: int = 0  # event time the condition last held


@dataclass
class _Run:
    bad: int = 0
    bad_since: int | None = None
    good: int = 0
    good_since: int | None = None
    last_judged: int | None = None
    cleared: bool = False  # a clear judgment since the condition last held (a new episode if it comes back)
    open: Incident | None = None


@dataclass
class Incidents(Generic[K]):
    """The incidents of one detector, keyed by whatever names a subject there (a GPU, ``(gpu, condition)``...)."""

    kind: str
    hygiene: Hygiene = field(default_factory=Hygiene)
    _runs: dict[K, _Run] = field(default_factory=dict)

    def tracks(self, key: K) -> bool:
        """Whether ``key`` has anything building or open (a judgment that does not fire leaves
        an untracked key as it is: see :meth:`judge`)."""
        return key in self._runs

    def judge(
        self,
        key: K,
        subject: str,
        ts: int,
        *,
        fire: bool,
        clear: bool | None = None,
        since: int | None = None,
        severity: Severity = "warning",
    ) -> tuple[State, Incident] | None:
        """One judgment of ``key`` at event time ``ts``: ``fire`` when over the fire threshold, ``clear`` when
        under the resolve threshold (default: ``not fire``, no hysteresis band). ``since``: when the evidence
        of a firing judgment began (default ``ts``). Returns the transition, if this judgment makes one."""
        h = self.hygiene
        clear = (not fire) if clear is None else clear and not fire
        run = self._runs.get(key)
        if run is None:
            if not fire:
                return None  # the common case: nothing open, nothing building
            run = self._runs[key] = _Run()
        if h.max_gap_ms is not None and run.last_judged is not None and ts - run.last_judged > h.max_gap_ms:
            run.bad, run.bad_since, run.good, run.good_since = 0, None, 0, None
        run.last_judged = ts
        incident = run.open
        if fire:
            run.good, run.good_since = 0, None
            if run.bad == 0 or run.bad_since is None:
                run.bad_since = since if since is not None else ts
            run.bad += 1
            if incident is not None:
                if run.cleared:
                    incident.episodes += 1
                    run.cleared = False
                incident.last_bad = ts
                return None
            if run.bad >= h.fire_after and ts - run.bad_since >= h.fire_after_ms:
                started = run.bad_since
                run.open = Incident(anomaly_id(self.kind, subject, started), subject, started, severity, last_bad=ts)
                run.cleared = False
                return "firing", run.open
            return None
        run.bad, run.bad_since = 0, None
        if incident is None:
            del self._runs[key]
            return None
        if not clear:  # between the thresholds: hold
            run.good, run.good_since = 0, None
            return None
        run.cleared = True
        run.good += 1
        if run.good_since is None:
            run.good_since = ts
        if (
            run.good >= h.resolve_after
            and ts - run.good_since >= h.resolve_after_ms
            and (h.quiet_ms <= 0 or ts - incident.last_bad >= h.quiet_ms)
        ):
            del self._runs[key]
            return "resolved", incident
        return None

    def get(self, key: K) -> Incident | None:
        """The incident open for ``key``, if any."""
        run = self._runs.get(key)
        return run.open if run is not None else None

    def building(self, key: K) -> bool:
        """Whether ``key`` has a run of firing judgments not yet an incident."""
        run = self._runs.get(key)
        return run is not None and run.open is None and run.bad > 0

    def close(self, key: K) -> Incident | None:
        """Resolve ``key`` now whatever its runs say (its job ended, its node left): the incident, if one was open."""
        run = self._runs.pop(key, None)
        return run.open if run is not None else None

    def forget(self, key: K) -> None:
        """Drop whatever ``key`` has, open or building, without a resolution (a subject long gone)."""
        self._runs.pop(key, None)

    def restore(self, key: K, fired: Anomaly, subject: str | None = None) -> Incident:
        """Take back ``fired``, the firing record of an incident read back from the anomalies topic after a
        worker restart: ``key`` has it open again under its own id, start and severity, so it resolves once
        (the quiet time counted from the record's ``ts``) and never fires twice. ``subject``: the subject its
        id was made from, where that is not the record's (the default)."""
        incident = Incident(
            fired.id, fired.subject if subject is None else subject, fired.started_at, fired.severity, last_bad=fired.ts
        )
        run = self._runs.setdefault(key, _Run())
        run.open = incident
        return incident

    def open_items(self) -> Iterator[tuple[K, Incident]]:
        """Every open incident with its key (a snapshot: the table may change while this is read)."""
        for key, run in list(self._runs.items()):
            if run.open is not None:
                yield key, run.open
