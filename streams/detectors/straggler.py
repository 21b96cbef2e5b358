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

Incidents go through :class:`streams.detectors.incidents.Incidents`: a split or a straggler
resolves after ``window`` judged steps without it (hysteresis: a split must fall under
``group_effect_resolve``, a straggler under half its share) and ``quiet_s`` of event time.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

from schemas.events import Anomaly, Event, NodeInventory, StepMetric
from streams.detectors import Detector
from streams.detectors.incidents import Hygiene, Incident, Incidents


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


@dataclass
class _Job:
    world_size: int
    steps: dict[int, dict[int, StepMetric]] = field(default_factory=dict)
    judged: deque[_Judged] = field(default_factory=deque)
    node_of: dict[int, str] = field(default_factory=dict)
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
        out.append(ranks[start:c + 1])
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
        cfg = self.config
        durations = {r: m.duration_s for r, m in ranks.items() if m.duration_s > 0}
        if len(durations) < cfg.min_ranks:
            return []
        ts = max(m.ts for m in ranks.values())
        job.judged.append(_Judged(step, ts, durations, statistics.median(durations.values())))
        while len(job.judged) > max(cfg.window, cfg.group_window):
            job.judged.popleft()
        if len(job.judged) < cfg.window:
            return []
        recent = list(job.judged)[-cfg.window:]
        groups = self._groups(job_id, job)
        group_of = {r: i for i, g in enumerate(groups) for r in g}
        real = [g for g in groups if self._is_group(job, g)]
        # a member of a group is expected at its own place in it (a group of 1.5-2x ranks has a 2x rank);
        # a rank outside every group is expected at its home group's median
        expected: dict[int, float] = {}
        for g in real:
            mid = statistics.median(job.speeds[r] for r in g)
            expected |= {r: job.speeds[r] / mid if mid > 0 else 1.0 for r in g}
        # stragglers: each rank against its own group's median at each step
        slow_by: dict[int, list[float]] = {}
        for j in recent:
            by_group: dict[int, list[float]] = {}
            for r, d in j.durations.items():
                by_group.setdefault(self._home(r, group_of, groups, real), []).append(d)
            medians = {g: statistics.median(v) for g, v in by_group.items()}
            for r, d in j.durations.items():
                m = medians[self._home(r, group_of, groups, real)] * max(expected.get(r, 1.0), 1.0)
                slow_by.setdefault(r, []).append(d / m - 1 if m > 0 else 0.0)
        out: list[Event] = []
        shares = {r: sum(v > cfg.margin for v in values) / len(recent) for r, values in slow_by.items()}
        # ranks departing together that hold a whole node (or a large share of the job) are a new slow group,
        # not so many stragglers: the node is the finding
        departing = sorted(r for r, sh in shares.items() if sh >= cfg.share and self._incidents.get(f"{job_id}/rank-{r}") is None)
        if len(departing) >= cfg.min_group and self._is_group(job, departing):
            nodes = {job.node_of.get(r) for r in departing} - {None}  # their node-mates on the way there too
            departing = sorted(set(departing) | {r for r, sh in shares.items() if sh >= cfg.share / 2 and job.node_of.get(r) in nodes
                                                 and self._incidents.get(f"{job_id}/rank-{r}") is None})
            real = [[r for r in job.speeds if r not in departing] or [], departing]
            for r in departing:
                job.frozen.pop(r, None)
            slow_by = {r: v for r, v in slow_by.items() if r not in departing}
        stragglers = set()
        for r, values in sorted(slow_by.items()):
            share = shares[r]
            if share >= cfg.share / 2 or self._incidents.get(f"{job_id}/rank-{r}") is not None:
                stragglers.add(r)  # it explains the spread it causes: not imbalance
            subject = f"{job_id}/rank-{r}"
            if share >= cfg.share or self._incidents.get(subject) is not None:
                got = self._incidents.judge(subject, subject, ts, fire=share >= cfg.share, clear=share < cfg.share / 2,
                                            since=recent[0].ts)
                if got is not None:
                    slow = [v for v in values if v > cfg.margin]
                    evidence = {"rank": float(r), "slowest_share": share, "slower_than_median": statistics.fmean(slow) if slow else 0.0,
                                "group": float(self._home(r, group_of, groups, real)), "groups": float(len(real))}
                    out.append(self._anomaly(job_id, job, got, ts, recent, evidence, rank=r))
        # a split into speed groups, or jitter with no culprit
        evidence = self._split_evidence(recent, real)
        split = len(real) >= 2 and evidence["factor"] - 1 >= cfg.group_effect
        split_left = len(real) >= 2 and evidence["factor"] - 1 >= cfg.group_effect_resolve
        covs = []
        for j in recent:
            values = [d for r, d in j.durations.items() if r not in stragglers]
            mean = statistics.fmean(values) if values else 0.0
            covs.append(statistics.pstdev(values) / mean if len(values) > 1 and mean > 0 else 0.0)
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
        got = self._incidents.judge(subject, subject, ts, fire=split or jitter,
                                    clear=not split_left and median_cov < cfg.cov_threshold * 0.7, since=recent[0].ts)
        if got is not None:
            evidence |= {"mean_cov": mean_cov, "median_cov": median_cov, "split": float(split)}
            out.append(self._anomaly(job_id, job, got, ts, recent, evidence, real=real))
        return out

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
        return all(r in ranks for r, n in job.node_of.items() if n in nodes)

    @staticmethod
    def _home(rank: int, group_of: dict[int, int], groups: list[list[int]], real: list[list[int]]) -> int:
        """The group a rank is judged against: its own if it is a real group, else the nearest real one below it
        (a lone slow rank is a straggler of the group it left), else everyone (-1)."""
        i = group_of.get(rank)
        if i is None or not real:
            return -1
        if groups[i] in real:
            return i
        below = [k for k in range(i, -1, -1) if groups[k] in real]
        return below[0] if below else next(k for k, g in enumerate(groups) if g in real)

    def _groups(self, job_id: str, job: _Job) -> list[list[int]]:
        """The job's speed groups over the group window (fastest first); recomputed every fifth step."""
        cfg = self.config
        if job.groups and len(job.judged) % 5:
            return job.groups
        ratios: dict[int, list[float]] = {}
        for j in list(job.judged)[-cfg.group_window:]:
            for r, d in j.durations.items():
                ratios.setdefault(r, []).append(d / j.median if j.median > 0 else 1.0)
        speeds = {r: statistics.median(v) for r, v in ratios.items() if len(v) >= cfg.window // 2}
        for r in speeds:
            if r in job.frozen and self._incidents.get(f"{job_id}/rank-{r}") is not None:
                speeds[r] = job.frozen[r]
            else:
                job.frozen[r] = speeds[r]
        job.groups = speed_groups(speeds, cfg.group_effect, cfg.group_gap_ratio, cfg.min_group) if speeds else []
        job.speeds = speeds
        return job.groups

    @staticmethod
    def _split_evidence(recent: list[_Judged], real: list[list[int]]) -> dict[str, float]:
        """The slow group's factor over the fastest: the median, over the recent steps, of the ratio of their
        median step times."""
        if len(real) < 2 or not real[0] or not real[-1]:
            return {"factor": 1.0, "groups": float(len(real))}
        ratios = []
        for j in recent:
            fast = [j.durations[r] for r in real[0] if r in j.durations]
            slow = [j.durations[r] for r in real[-1] if r in j.durations]
            if fast and slow and statistics.median(fast) > 0:
                ratios.append(statistics.median(slow) / statistics.median(fast))
        return {"factor": statistics.median(ratios) if ratios else 1.0, "groups": float(len(real)),
                "slow_ranks": float(len(real[-1])), "fast_ranks": float(len(real[0]))}

    def _shared(self, job: _Job, ranks: list[int]) -> list[str]:
        """What the ranks of a group have in common by placement: one node, a GPU model, a zone, a switch."""
        nodes = {job.node_of.get(r) for r in ranks}
        out = []
        if len(nodes) == 1 and None not in nodes:
            out.append(f"all on node {next(iter(nodes))}")
        elif None not in nodes:
            out.append(f"on node{'s' if len(nodes) > 1 else ''} {', '.join(sorted(nodes))}")  # type: ignore[arg-type]
        inventories = [self._nodes.get(n) for n in nodes if n is not None]
        if inventories and all(i is not None for i in inventories):
            for what, read in (("GPU model", lambda i: i.gpu_model), ("zone", lambda i: i.zone),
                               ("switch", lambda i: i.labels.get("ib_switch"))):
                values = {read(i) for i in inventories}
                if len(values) == 1 and None not in values:
                    out.append(f"{what} {next(iter(values))}")
        return out

    def restore(self, open_incidents: list[Anomaly]) -> None:
        for a in open_incidents:
            if a.job_id is not None:
                self._incidents.restore(a.subject, a.id, a.subject, a.started_at, a.ts, a.severity)

    def _anomaly(self, job_id: str, job: _Job, got: tuple[str, Incident], ts: int, recent: list[_Judged],
                 evidence: dict[str, float], rank: int | None = None, real: list[list[int]] | None = None) -> Anomaly:
        state, incident = got
        steps = f"steps {recent[0].step}-{recent[-1].step}"
        evidence = {**evidence, "world_size": float(job.world_size), "steps": float(len(recent)),
                    "first_step": float(recent[0].step), "last_step": float(recent[-1].step),
                    "median_step_s": statistics.median(j.median for j in recent), "episodes": float(incident.episodes)}
        node = None
        if rank is not None:
            where = f"rank {rank} of job {job_id}"
            node = job.node_of.get(rank)
            group = "its group" if evidence.get("groups", 0) >= 2 else "the median rank"
            what = (f"is the straggler: slower than {group} by more than {100 * self.config.margin:.0f}% in "
                    f"{evidence['slowest_share']:.0%} of the last {len(recent)} steps, "
                    f"{100 * evidence['slower_than_median']:.0f}% slower on those ({steps})")
            if state == "resolved":
                what = f"is back in step with its peers ({steps})"
            subject_type = "rank"
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
                what = (f"runs in {len(real)} speed groups {since}: ranks {_ranks(slow)} take {evidence['factor']:.2f}x the "
                        f"step time of ranks {_ranks(sorted(real[0]))}" + (f" ({'; '.join(shared)})" if shared else "")
                        + "; the job runs at the slow group's pace")
            else:
                what = f"is persistently imbalanced: step-time CoV {evidence['mean_cov']:.2f} across ranks, no group or single culprit ({steps})"
        return Anomaly(
            id=incident.id, kind=self.kind, severity="warning", state=state,  # type: ignore[arg-type]
            subject_type=subject_type, subject=incident.subject, ts=ts, started_at=incident.started_at,  # type: ignore[arg-type]
            window_start=recent[0].ts, window_end=ts, message=f"{where} {what}", evidence=evidence, node=node, job_id=job_id,
        )


def _ranks(ranks: list[int]) -> str:
    """``0-4, 7``: ranks as runs."""
    out: list[str] = []
    start = prev = None
    for r in ranks + [None]:  # type: ignore[list-item]
        if start is not None and (r is None or r != prev + 1):  # type: ignore[operator]
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = None
        if r is not None and start is None:
            start = r
        prev = r
    return ", ".join(out)
