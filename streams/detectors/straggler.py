"""Stragglers and imbalance in data-parallel training, from per-rank step times.

A step is judged once every rank has reported it (ranks ship their steps in batches, so a
rank may be many steps ahead of another in the stream; a step still incomplete when
``max_pending`` newer ones wait is judged with the ranks it has).
For each step: the slowest rank, the median duration, and the coefficient of variation (CoV)
across ranks. Over the last ``window`` judged steps:

* a rank that was the slowest in at least ``share`` of them, each time slower than the median
  by more than ``margin`` (relative), is a straggler: the whole job waits for it at every
  collective;
* a mean CoV above ``cov_threshold`` with no single culprit is persistent imbalance (uneven
  data, a noisy neighbour on several nodes, a skewed pipeline stage).
Both resolve when the condition has been absent for a full window.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

from schemas.events import Anomaly, Event, StepMetric
from streams.detectors import Detector, anomaly_id


@dataclass(frozen=True)
class StragglerConfig:
    window: int = 20
    share: float = 0.6
    margin: float = 0.15
    cov_threshold: float = 0.10
    min_ranks: int = 2
    #: steps kept waiting for their last ranks (ranks report in batches, not in lockstep)
    max_pending: int = 2000


@dataclass
class _Judged:
    step: int
    ts: int
    slowest: int
    slow_by: float
    cov: float
    median: float


@dataclass
class _Job:
    world_size: int
    steps: dict[int, dict[int, StepMetric]] = field(default_factory=dict)
    judged: deque[_Judged] = field(default_factory=deque)
    open: dict[str, tuple[str, int]] = field(default_factory=dict)  # subject -> (id, started_at)
    quiet: dict[str, int] = field(default_factory=dict)


class StragglerDetector(Detector[StragglerConfig]):
    kind = "straggler"
    inputs = (StepMetric,)
    config_type = StragglerConfig

    def __init__(self, config: StragglerConfig | None = None) -> None:
        super().__init__(config)
        self._jobs: dict[str, _Job] = {}

    def observe(self, event: Event) -> list[Event]:
        if not isinstance(event, StepMetric) or event.world_size < self.config.min_ranks:
            return []
        job = self._jobs.setdefault(event.job_id, _Job(event.world_size))
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

    def _judge(self, job_id: str, job: _Job, step: int, ranks: dict[int, StepMetric]) -> list[Event]:
        cfg = self.config
        durations = {r: m.duration_s for r, m in ranks.items()}
        median = statistics.median(durations.values())
        slowest = max(durations, key=lambda r: durations[r])
        mean = statistics.fmean(durations.values())
        cov = statistics.pstdev(durations.values()) / mean if mean > 0 else 0.0
        ts = max(m.ts for m in ranks.values())
        job.judged.append(_Judged(step, ts, slowest, durations[slowest] / median - 1 if median > 0 else 0.0, cov, median))
        while len(job.judged) > cfg.window:
            job.judged.popleft()
        if len(job.judged) < cfg.window:
            return []
        recent = list(job.judged)
        culprits = [j.slowest for j in recent if j.slow_by > cfg.margin]
        out: list[Event] = []
        straggler = max(set(culprits), key=culprits.count) if culprits else None
        if straggler is not None and culprits.count(straggler) < cfg.share * len(recent):
            straggler = None
        mean_cov = statistics.fmean(j.cov for j in recent)
        current = {f"{job_id}/rank-{straggler}"} if straggler is not None else set()
        if straggler is None and mean_cov > cfg.cov_threshold:
            current.add(f"{job_id}/imbalance")
        evidence_base = {"mean_cov": mean_cov, "steps": float(len(recent)), "first_step": float(recent[0].step),
                         "last_step": float(recent[-1].step), "median_step_s": statistics.median(j.median for j in recent)}
        for subject in current - set(job.open):
            started = recent[0].ts
            job.open[subject] = (anomaly_id(self.kind, subject, started), started)
            out.append(self._anomaly(job_id, subject, "firing", ts, recent, evidence_base, straggler, ranks))
        for subject in set(job.open) - current:
            job.quiet[subject] = job.quiet.get(subject, 0) + 1
            if job.quiet[subject] >= cfg.window:
                out.append(self._anomaly(job_id, subject, "resolved", ts, recent, evidence_base, None, ranks))
                del job.open[subject], job.quiet[subject]
        for subject in current:
            job.quiet.pop(subject, None)
        return out

    def restore(self, open_incidents: list[Anomaly]) -> None:
        for a in open_incidents:
            if a.job_id is not None:
                job = self._jobs.setdefault(a.job_id, _Job(int(a.evidence.get("world_size", 0)) or 1))
                job.open[a.subject] = (a.id, a.started_at)

    def _anomaly(self, job_id: str, subject: str, state: str, ts: int, recent: list[_Judged],
                 base: dict[str, float], straggler: int | None, ranks: dict[int, StepMetric]) -> Anomaly:
        job = self._jobs[job_id]
        anomaly, started = job.open[subject]
        rank_no = int(subject.rsplit("-", 1)[1]) if "/rank-" in subject else None
        evidence = {**base, "world_size": float(job.world_size)}
        if rank_no is not None:
            slow = [j.slow_by for j in recent if j.slowest == rank_no]
            evidence |= {"rank": float(rank_no), "slowest_share": len(slow) / len(recent),
                         "slower_than_median": statistics.fmean(slow) if slow else 0.0}
            where = f"rank {rank_no} of job {job_id}"
            what = (f"is the straggler: slowest in {len(slow)} of the last {len(recent)} steps, "
                    f"{100 * evidence['slower_than_median']:.0f}% slower than the median rank")
        else:
            where, what = f"job {job_id}", f"is persistently imbalanced: step-time CoV {base['mean_cov']:.2f} across ranks"
        if state == "resolved":
            what = "is back in step with its peers"
        node = ranks[rank_no].node if rank_no is not None and rank_no in ranks else None
        return Anomaly(
            id=anomaly, kind=self.kind,
            severity="warning", state=state,  # type: ignore[arg-type]
            subject_type="rank" if rank_no is not None else "job", subject=subject, ts=ts, started_at=started,
            window_start=recent[0].ts, window_end=ts,
            message=f"{where} {what} (steps {recent[0].step}-{recent[-1].step})", evidence=evidence, node=node, job_id=job_id,
        )
