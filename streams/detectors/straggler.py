"""Stragglers, speed groups and imbalance in data-parallel training, from per-rank step times.

A step is judged once every rank has reported it (ranks ship their steps in batches, so a
rank may be many steps ahead of another in the stream; a step still incomplete when
``max_pending`` newer ones wait is judged with the ranks it has). A job that changes its world
size (an elastic job scaling) starts afresh with its new ranks.

**Speed groups.** Each rank's *speed* is the median, over the last ``group_window`` judged steps,
of its step time relative to the step's median rank. Sorted by speed, the ranks split wherever
two neighbours are more than ``group_effect`` apart (relative) *and* that gap is at least
``group_gap_ratio`` times the largest gap inside the clusters it separates (a real gap, not the
widest spot of one noisy spread). Clusters of at least ``min_group`` ranks that hold every rank of
their nodes, or ``group_share`` of the job, are *groups* (two GPU generations, an uneven data split,
one slow node's ranks); smaller ones are left to the straggler test. Two or more groups are a persistent split: **one** ``<job>/imbalance`` incident for as long as
it lasts, naming the slow group, its factor over the fastest group, and what its members share
(node, GPU model, zone, switch, from the scheduler's node inventory).

**Stragglers.** A rank departs from its *own* group when its step takes more than ``margin``
longer than its group's median at that step; doing so in at least ``share`` of the last
``window`` steps makes it a straggler (``<job>/rank-<r>``). Every rank is judged on its own, so
two slow ranks are two stragglers, not one alternating culprit.

**Imbalance without groups.** With no split, a coefficient of variation across ranks (the
stragglers left out: a straggler fully explains the spread it causes) above ``cov_threshold`` in
the median step of the window is imbalance with no culprit (uneven batches, jitter on many nodes).

Incidents go through :class:`hpcinsight.streams.detectors.incidents.Incidents`: a split or a straggler
resolves after ``window`` judged steps without it (hysteresis: a split must fall under
``group_effect_resolve``, a straggler under half its share) and ``quiet_s`` of event time.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hpcinsight.schemas.events import Anomaly, Event, NodeInventory, StepMetric, SubjectType
from hpcinsight.streams.detectors import Detector
from hpcinsight.streams.detectors.incidents import Hygiene, Incident, Incidents, State


@dataclass(frozen=True)
class StragglerConfig:
    window: int = 20
    share: float = 0.6
    margin: float = 0.15
    cov_threshold: float = 0.10
    min_ranks: int = 2
    #: steps whose per-rank speeds make the groups (longer than window: groups are persistent)
    group_window: int = 30
    #: neighbours this far apart in speed (relative) may be two groups ...
    group_effect: float = 0.2
    #: ... when the gap is this many times the largest gap within the clusters it separates
    group_gap_ratio: float = 2.5
    #: an open split resolves once the groups are closer than this
    group_effect_resolve: float = 0.1
    #: fewest ranks of a group (fewer: stragglers) ...
    min_group: int = 2
    #: ... and a group is all the job's ranks on its nodes, or at least this share of the ranks (fewer ranks
    #: departing together are stragglers each: two slow ranks of a group are two stragglers, not a group)
    group_share: float = 0.25
    #: and no judgment with the condition for this long (a re-fire within it is folded)
    quiet_s: float = 60.0
    #: steps kept waiting for their last ranks (ranks report in batches, not in lockstep)
    max_pending: int = 2000


@dataclass
class _Judged:
    step: int
    ts: int
    durations: dict[int, float]
    median: float
    slow: dict[int, float] = field(default_factory=dict)  # rank -> how much slower than its group (and place) it was
    cov: float = 0.0  # step-time CoV across ranks, the stragglers of the moment left out


@dataclass
class _Job:
    world_size: int
    steps: dict[int, dict[int, StepMetric]] = field(default_factory=dict)
    judged: deque[_Judged] = field(default_factory=deque)  # the group window
    recent: deque[_Judged] = field(default_factory=deque)  # the straggler window
    counts: dict[int, int] = field(default_factory=dict)  # rank -> steps of the straggler window it was slow in
    open_ranks: set[int] = field(default_factory=set)  # ranks with an open straggler incident
    home: dict[int, int] = field(default_factory=dict)  # rank -> the group it is judged against (-1: all ranks)
    real: list[list[int]] = field(default_factory=list)  # the speed groups, fastest first
    expected: dict[int, float] = field(default_factory=dict)  # rank -> its usual place in its group (>= 1)
    node_of: dict[int, str] = field(default_factory=dict)
    judged_steps: int = 0
    departed: set[int] = field(default_factory=set)  # a slow group found departing, until the speed groups show it
    groups: list[list[int]] = field(default_factory=list)  # fastest first
    speeds: dict[int, float] = field(default_factory=dict)  # rank -> median step time relative to the step's median
    #: rank -> its speed before it became a straggler: it is judged against the group it left, and a
    #: late episode of two ranks does not make them a group of their own
    frozen: dict[int, float] = field(default_factory=dict)
    split_since: int | None = None  # first step of the current split


def speed_groups(speeds: dict[int, float], effect: float, gap_ratio: float, min_group: int) -> list[list[int]]:
    """Ranks clustered by speed (fastest cluster first): split at every gap wider than ``effect`` (relative)
    and ``gap_ratio`` times the widest gap inside its neighbouring clusters. Clusters of any size."""
    ranks = sorted(speeds, key=lambda r: speeds[r])
    if len(ranks) < 2:
        return [ranks]
    logs = [math.log(max(speeds[r], 1e-9)) for r in ranks]
    gaps = [b - a for a, b in zip(logs, logs[1:])]
    cuts = [i for i, g in enumerate(gaps) if g >= math.log1p(effect)]
    # keep a cut only if it stands out against the spread inside the clusters on either side
    changed = True
    while changed:
        changed = False
        for c in list(cuts):
            lo = max([x for x in cuts if x < c], default=-1) + 1
            hi = min([x for x in cuts if x > c], default=len(gaps))
            inside = [gaps[i] for i in range(lo, hi) if i != c]
            if gaps[c] < gap_ratio * max(inside, default=0.0) or gaps[c] < gap_ratio * 0.01:
                cuts.remove(c)
                changed = True
    out, start = [], 0
    for c in sorted(cuts):
        out.append(ranks[start : c + 1])
        start = c + 1
    out.append(ranks[start:])
    return out


class StragglerDetector(Detector[StragglerConfig]):
    kind = "straggler"
    inputs = (StepMetric, NodeInventory)
    config_type = StragglerConfig

    def __init__(self, config: StragglerConfig | None = None) -> None:
        super().__init__(config)
        self._jobs: dict[str, _Job] = {}
        self._nodes: dict[str, NodeInventory] = {}
        cfg = self.config
        self._incidents: Incidents[str] = Incidents(self.kind, Hygiene.of(resolve_after=cfg.window, quiet_s=cfg.quiet_s))

    def observe(self, event: Event) -> list[Event]:
        if isinstance(event, NodeInventory):
            self._nodes[event.node] = event
            return []
        if not isinstance(event, StepMetric) or event.world_size < self.config.min_ranks:
            return []
        job = self._jobs.get(event.job_id)
        if job is None or job.world_size != event.world_size:  # new, or scaled: its ranks are new
            job = self._jobs[event.job_id] = _Job(event.world_size)
            prefix = f"{event.job_id}/rank-"
            job.open_ranks = {
                int(i.subject[len(prefix) :]) for _, i in self._incidents.open_items() if i.subject.startswith(prefix)
            }
        if event.node:
            job.node_of[event.rank] = event.node
        ranks = job.steps.setdefault(event.step, {})
        ranks[event.rank] = event
        out: list[Event] = []
        if len(ranks) >= job.world_size:  # every rank has reported this step
            del job.steps[event.step]
            out.extend(self._judge(event.job_id, job, event.step, ranks))
        while len(job.steps) > self.config.max_pending:  # a rank went silent: judge what came
            oldest = min(job.steps)
            partial = job.steps.pop(oldest)
            if len(partial) >= self.config.min_ranks:
                out.extend(self._judge(event.job_id, job, oldest, partial))
        return out

    # --- judging -------------------------------------------------------------------------------
    def _judge(self, job_id: str, job: _Job, step: int, ranks: dict[int, StepMetric]) -> list[Event]:
        """One complete step: O(ranks), plus the speed groups again every fifth step (O(ranks x group_window))."""
        cfg = self.config
        durations = {r: m.duration_s for r, m in ranks.items() if m.duration_s > 0}
        if len(durations) < cfg.min_ranks:
            return []
        ts = max(m.ts for m in ranks.values())
        j = _Judged(step, ts, durations, statistics.median(durations.values()))
        job.judged.append(j)
        while len(job.judged) > max(cfg.window, cfg.group_window):
            job.judged.popleft()
        job.judged_steps += 1
        if job.judged_steps % 5 == 1:  # the speed groups move slowly: every fifth step is enough
            self._structure(job_id, job)
        # this step: each rank against its own group's median (and its own place in the group)
        self._slow_by(job, j)
        for r, v in j.slow.items():
            if v > cfg.margin:
                job.counts[r] = job.counts.get(r, 0) + 1
        job.recent.append(j)
        while len(job.recent) > cfg.window:
            for r, v in job.recent.popleft().slow.items():
                if v > cfg.margin:
                    job.counts[r] -= 1
                    if not job.counts[r]:
                        del job.counts[r]
        n = len(job.recent)
        # a straggler explains the spread it causes: its steps are left out of the CoV (no imbalance beside it)
        explained = {r for r, c in job.counts.items() if c >= cfg.share / 2 * cfg.window} | job.open_ranks
        values = [d for r, d in durations.items() if r not in explained]
        mean = statistics.fmean(values) if values else 0.0
        j.cov = statistics.pstdev(values) / mean if len(values) > 1 and mean > 0 else 0.0
        if n < cfg.window:
            return []
        recent = list(job.recent)
        shares = {r: c / n for r, c in job.counts.items()}
        real = job.real
        # ranks departing together that hold a whole node (or a large share of the job) are a new slow group,
        # not so many stragglers: the node is the finding
        departing = sorted(r for r, sh in shares.items() if sh >= cfg.share and r not in job.open_ranks)
        if job.departed:  # a group found departing stays one while its ranks stay slow, until the speed groups show it
            kept = sorted(r for r in job.departed if shares.get(r, 0.0) >= cfg.share / 2)
            shown = any(job.departed <= set(g) for g in job.real[1:])
            job.departed = set() if shown or len(kept) < cfg.min_group or not self._is_group(job, kept) else set(kept)
            if job.departed:
                departing = sorted(job.departed | set(departing))
        factor: float | None = None
        if len(departing) >= cfg.min_group and self._is_group(job, departing):
            nodes = {job.node_of.get(r) for r in departing} - {None}  # their node-mates on the way there too
            departing = sorted(
                set(departing)
                | {
                    r
                    for r, sh in shares.items()
                    if sh >= cfg.share / 2 and job.node_of.get(r) in nodes and r not in job.open_ranks
                }
            )
            gone = job.departed = set(departing)
            real = [[r for r in job.speeds if r not in gone], departing]
            for r in departing:
                job.frozen.pop(r, None)
            factor = self._recent_factor(recent, real)
        else:
            gone = set()
        out: list[Event] = []
        for r in sorted((set(r for r, sh in shares.items() if sh >= cfg.share) | job.open_ranks) - gone):
            share = shares.get(r, 0.0)
            subject = f"{job_id}/rank-{r}"
            got = self._incidents.judge(
                subject, subject, ts, fire=share >= cfg.share, clear=share < cfg.share / 2, since=recent[0].ts
            )
            if got is None:
                continue
            if got[0] == "firing":
                job.open_ranks.add(r)
            else:
                job.open_ranks.discard(r)
            slow = [jj.slow[r] for jj in recent if jj.slow.get(r, 0.0) > cfg.margin]
            evidence = {
                "rank": float(r),
                "slowest_share": share,
                "slower_than_median": statistics.fmean(slow) if slow else 0.0,
                "group": float(job.home.get(r, -1)),
                "groups": float(len(real)),
            }
            out.append(self._anomaly(job_id, job, got, ts, recent, evidence, rank=r))
        # a split into speed groups, or jitter with no culprit
        evidence = self._split_evidence(job, real, factor)
        split = len(real) >= 2 and evidence["factor"] - 1 >= cfg.group_effect
        split_left = len(real) >= 2 and evidence["factor"] - 1 >= cfg.group_effect_resolve
        covs = [jj.cov for jj in recent]
        mean_cov = statistics.fmean(covs)
        # the median step's CoV: a few steps of a departure that has only begun (a node starting to stall)
        # are not imbalance with no culprit; steady jitter is high in most steps
        median_cov = statistics.median(covs)
        jitter = not split and median_cov > cfg.cov_threshold
        if split and job.split_since is None:
            job.split_since = recent[0].step
        elif not split_left:
            job.split_since = None
        subject = f"{job_id}/imbalance"
        got = self._incidents.judge(
            subject,
            subject,
            ts,
            fire=split or jitter,
            clear=not split_left and median_cov < cfg.cov_threshold * 0.7,
            since=recent[0].ts,
        )
        if got is not None:
            if got[0] == "firing" and split and factor is None:  # the message names the factor seen in these steps
                evidence["factor"] = self._recent_factor(recent, real)
            evidence |= {"mean_cov": mean_cov, "median_cov": median_cov, "split": float(split)}
            out.append(self._anomaly(job_id, job, got, ts, recent, evidence, real=real))
        return out

    def _slow_by(self, job: _Job, j: _Judged) -> None:
        """How much slower than its home group's median (and its own place in the group) each rank was at step ``j``."""
        by_home: dict[int, list[float]] = {}
        home = job.home
        for r, d in j.durations.items():
            by_home.setdefault(home.get(r, -1), []).append(d)
        medians = {g: statistics.median(v) for g, v in by_home.items()}
        j.slow = {}
        for r, d in j.durations.items():
            m = medians[home.get(r, -1)] * job.expected.get(r, 1.0)
            j.slow[r] = d / m - 1 if m > 0 else 0.0

    def _structure(self, job_id: str, job: _Job) -> None:
        """The speed groups over the group window, each rank's home group and its usual place in it; when they
        changed, the straggler window is judged again against them (stragglers are judged against today's groups)."""
        cfg = self.config
        before = (job.home, job.expected)
        groups = self._groups(job_id, job)
        real_idx = [i for i, g in enumerate(groups) if self._is_group(job, g)]
        job.real = [groups[i] for i in real_idx]
        job.home, job.expected = {}, {}
        if not real_idx:
            if before != ({}, {}) and job.recent:
                job.counts = {}
                for old in job.recent:
                    self._slow_by(job, old)
                    for r, v in old.slow.items():
                        if v > cfg.margin:
                            job.counts[r] = job.counts.get(r, 0) + 1
            return
        for i, g in enumerate(groups):
            if i in real_idx:
                home = i
            else:  # a lone slow rank is judged against the nearest group below it (the one it left)
                home = max((k for k in real_idx if k < i), default=real_idx[0])
            for r in g:
                job.home[r] = home
        for i in real_idx:
            mid = statistics.median(job.speeds[r] for r in groups[i])
            for r in groups[i]:
                job.expected[r] = max(1.0, job.speeds[r] / mid) if mid > 0 else 1.0
        if (job.home, job.expected) != before and job.recent:
            job.counts = {}
            for old in job.recent:
                self._slow_by(job, old)
                for r, v in old.slow.items():
                    if v > cfg.margin:
                        job.counts[r] = job.counts.get(r, 0) + 1

    @staticmethod
    def _recent_factor(recent: list[_Judged], real: list[list[int]]) -> float:
        """The slow group's factor over the fastest: the median, over the recent steps, of the ratio of their
        median step times."""
        ratios = []
        for j in recent:
            fast = [j.durations[r] for r in real[0] if r in j.durations]
            slow = [j.durations[r] for r in real[-1] if r in j.durations]
            if fast and slow and statistics.median(fast) > 0:
                ratios.append(statistics.median(slow) / statistics.median(fast))
        return statistics.median(ratios) if ratios else 1.0

    def _is_group(self, job: _Job, ranks: list[int]) -> bool:
        """Enough ranks to be a speed group: at least ``min_group``, and all of the job's ranks on their nodes
        (a slow node, a GPU model) or at least ``group_share`` of the job."""
        cfg = self.config
        if len(ranks) < cfg.min_group:
            return False
        if len(ranks) >= cfg.group_share * len(job.speeds):
            return True
        nodes = {job.node_of.get(r) for r in ranks}
        if None in nodes:
            return False
        members = set(ranks)
        return all(r in members for r, n in job.node_of.items() if n in nodes)

    def _groups(self, job_id: str, job: _Job) -> list[list[int]]:
        """The job's speed groups over the group window (fastest first)."""
        cfg = self.config
        ratios: dict[int, list[float]] = {}
        for j in list(job.judged)[-cfg.group_window :]:
            for r, d in j.durations.items():
                ratios.setdefault(r, []).append(d / j.median if j.median > 0 else 1.0)
        speeds = {r: statistics.median(v) for r, v in ratios.items() if len(v) >= cfg.window // 2}
        for r in speeds:
            if r in job.frozen and r in job.open_ranks:
                speeds[r] = job.frozen[r]
            else:
                job.frozen[r] = speeds[r]
        job.groups = speed_groups(speeds, cfg.group_effect, cfg.group_gap_ratio, cfg.min_group) if speeds else []
        job.speeds = speeds
        return job.groups

    @staticmethod
    def _split_evidence(job: _Job, real: list[list[int]], factor: float | None) -> dict[str, float]:
        """The split's size and the slow group's factor over the fastest (from the ranks' speeds, or as given)."""
        if len(real) < 2 or not real[0] or not real[-1]:
            return {"factor": 1.0, "groups": float(len(real))}
        if factor is None:
            fast = statistics.median(job.speeds[r] for r in real[0])
            factor = statistics.median(job.speeds[r] for r in real[-1]) / fast if fast > 0 else 1.0
        return {
            "factor": factor,
            "groups": float(len(real)),
            "slow_ranks": float(len(real[-1])),
            "fast_ranks": float(len(real[0])),
        }

    def _shared(self, job: _Job, ranks: list[int]) -> list[str]:
        """What the ranks of a group have in common by placement: one node, a GPU model, a zone, a switch."""
        nodes = {job.node_of.get(r) for r in ranks}
        out = []
        if len(nodes) == 1 and None not in nodes:
            out.append(f"all on node {next(iter(nodes))}")
        elif None not in nodes:
            out.append(f"on node{'s' if len(nodes) > 1 else ''} {', '.join(sorted(nodes))}")  # type: ignore[arg-type]  # None not in nodes (tested just above)
        inventories = [self._nodes.get(n) for n in nodes if n is not None]
        known = [i for i in inventories if i is not None]
        if inventories and len(known) == len(inventories):
            readers: tuple[tuple[str, Callable[[NodeInventory], str | None]], ...] = (
                ("GPU model", lambda i: i.gpu_model),
                ("zone", lambda i: i.zone),
                ("switch", lambda i: i.labels.get("ib_switch")),
            )
            for what, read in readers:
                values = {read(i) for i in known}
                if len(values) == 1 and None not in values:
                    out.append(f"{what} {next(iter(values))}")
        return out

    def restore(self, open_incidents: list[Anomaly]) -> None:
        for a in open_incidents:
            if a.job_id is not None:
                self._incidents.restore(a.subject, a)

    def _anomaly(
        self,
        job_id: str,
        job: _Job,
        got: tuple[State, Incident],
        ts: int,
        recent: list[_Judged],
        evidence: dict[str, float],
        rank: int | None = None,
        real: list[list[int]] | None = None,
    ) -> Anomaly:
        state, incident = got
        steps = f"steps {recent[0].step}-{recent[-1].step}"
        evidence = {
            **evidence,
            "world_size": float(job.world_size),
            "steps": float(len(recent)),
            "first_step": float(recent[0].step),
            "last_step": float(recent[-1].step),
            "median_step_s": statistics.median(j.median for j in recent),
            "episodes": float(incident.episodes),
        }
        node = None
        if rank is not None:
            where = f"rank {rank} of job {job_id}"
            node = job.node_of.get(rank)
            group = "its group" if evidence.get("groups", 0) >= 2 else "the median rank"
            what = (
                f"is the straggler: slower than {group} by more than {100 * self.config.margin:.0f}% in "
                f"{evidence['slowest_share']:.0%} of the last {len(recent)} steps, "
                f"{100 * evidence['slower_than_median']:.0f}% slower on those ({steps})"
            )
            if state == "resolved":
                what = f"is back in step with its peers ({steps})"
            subject_type: SubjectType = "rank"
        else:
            where, subject_type = f"job {job_id}", "job"
            if state == "resolved":
                what = f"is back in step: no speed groups and step-time CoV {evidence['mean_cov']:.2f} ({steps})"
            elif real is not None and len(real) >= 2:
                slow = sorted(real[-1])
                shared = self._shared(job, slow)
                for r in slow:
                    evidence[f"slow_rank_{r}"] = 1.0
                since = f"since step {job.split_since}" if job.split_since is not None else steps
                what = (
                    f"runs in {len(real)} speed groups {since}: ranks {_ranks(slow)} take {evidence['factor']:.2f}x the "
                    f"step time of ranks {_ranks(sorted(real[0]))}"
                    + (f" ({'; '.join(shared)})" if shared else "")
                    + "; the job runs at the slow group's pace"
                )
            else:
                what = f"is persistently imbalanced: step-time CoV {evidence['mean_cov']:.2f} across ranks, no group or single culprit ({steps})"
        return Anomaly(
            id=incident.id,
            kind=self.kind,
            severity="warning",
            state=state,
            subject_type=subject_type,
            subject=incident.subject,
            ts=ts,
            started_at=incident.started_at,
            window_start=recent[0].ts,
            window_end=ts,
            message=f"{where} {what}",
            evidence=evidence,
            node=node,
            job_id=job_id,
        )


def _ranks(ranks: list[int]) -> str:
    """``0-4, 7``: ranks as runs."""
    out: list[str] = []
    start = prev = None
    for r in ranks + [None]:
        if start is not None and (r is None or r != prev + 1):  # type: ignore[operator]  # prev is set whenever start is
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = None
        if r is not None and start is None:
            start = r
        prev = r
    return ", ".join(out)
