"""Which job (user, team, priority, zone) holds each GPU, at any time: built from the scheduler.

The table is fed with :class:`SchedulerEvent` and :class:`NodeInventory` records and answers
lookups by event time, so a sample stamped just before a job ended is still charged to that job
even if the ``finished`` event was processed first. Placements come in three precisions:

* GPU ids (``gpu_ids``: GPU UUIDs, indices, or ``node/gpuN``): exactly those GPUs;
* a node or a Slurm host list (``gpu[01-04]``) without GPU ids: the job holds GPUs on those
  nodes but we do not know which, so it is charged for the node's GPUs no finer placement claims;
* nothing: the job is known (user, team) but not where it runs; a sample whose agent stamped the
  job id itself (from the process cgroup) still gets the job's user and team.

Every worker holds the whole table (scheduler events are few: thousands per hour even on a large
cluster), so attribution never depends on how the sample topics are partitioned.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

from hpcinsight.schemas.events import Event, GpuSample, IbSample, NodeInventory, SchedulerEvent, StepMetric, relabelled

#: how many past holders of each GPU/node are kept for lookups by event time
HISTORY = 4
#: an ended job's user and team stay known this long (event time) for its late samples and steps
KEEP_ENDED_MS = 3_600_000
_RELEASE = frozenset({"finished", "deleted", "preempted"})
_PLACE = frozenset({"scheduled", "started"})


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    user: str | None = None
    team: str | None = None
    priority: str | None = None
    requested_gpus: float | None = None


@dataclass
class _Hold:
    job_id: str
    start_ms: int
    end_ms: int | None = None

    def covers(self, ts: int) -> bool:
        return self.start_ms <= ts and (self.end_ms is None or ts < self.end_ms)


@dataclass
class _Job:
    info: JobInfo
    gpu_keys: list[tuple[str, str]] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    ended_ms: int | None = None


def expand_hostlist(text: str) -> list[str]:
    """Slurm host list syntax: ``a[01-03,07],b5`` -> ``a01 a02 a03 a07 b5``."""
    out: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", text):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not m:
            out.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(","):
            lo, _, hi = r.partition("-")
            if hi and lo.isdigit() and hi.isdigit():
                width = len(lo)
                out.extend(f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1))
            elif lo:
                out.append(f"{prefix}{lo}{suffix}")
    return out


class Attribution:
    """The job-holds-GPU table. Feed it scheduler events and inventory; ask it about samples."""

    def __init__(self, history: int = HISTORY, keep_ended_ms: int = KEEP_ENDED_MS) -> None:
        self.history, self.keep_ended_ms = history, keep_ended_ms
        self._jobs: dict[str, _Job] = {}
        self._ended: deque[tuple[int, str]] = deque()  # (end, job) in arrival order: bounded memory
        self._by_gpu: dict[tuple[str, str], deque[_Hold]] = {}  # (node, gpu id) -> holders
        self._by_node: dict[str, deque[_Hold]] = {}  # node-level placements
        self._gpu_keys_of: dict[str, set[tuple[str, str]]] = {}  # node -> its keys in _by_gpu
        self._zone: dict[str, str | None] = {}
        self._model: dict[str, str | None] = {}
        self._capacity: dict[str, int] = {}
        self.events = 0

    # -- feeding ------------------------------------------------------------------------------

    def observe(self, event: Event) -> None:
        self.events += 1
        if isinstance(event, NodeInventory):
            self._zone[event.node] = event.zone or event.pool
            self._model[event.node] = event.gpu_model
            self._capacity[event.node] = event.gpu_count
        elif isinstance(event, SchedulerEvent):
            self._scheduler(event)

    def _scheduler(self, ev: SchedulerEvent) -> None:
        job = self._jobs.get(ev.job_id)
        if job is None:
            job = self._jobs[ev.job_id] = _Job(JobInfo(ev.job_id))
        old = job.info
        job.info = JobInfo(
            ev.job_id,
            ev.user or old.user,
            ev.team or old.team,
            ev.priority or old.priority,
            ev.requested_gpus if ev.requested_gpus is not None else old.requested_gpus,
        )
        if ev.kind in _PLACE and ev.node:
            nodes = expand_hostlist(ev.node)
            if ev.gpu_ids and len(nodes) == 1:
                for gid in ev.gpu_ids:
                    key = (nodes[0], gid)
                    if key not in job.gpu_keys:
                        job.gpu_keys.append(key)
                        self._hold(self._by_gpu.setdefault(key, deque(maxlen=self.history)), ev.job_id, ev.ts)
                        self._gpu_keys_of.setdefault(nodes[0], set()).add(key)
            else:
                for node in nodes:
                    if node not in job.nodes:
                        job.nodes.append(node)
                        self._hold(self._by_node.setdefault(node, deque(maxlen=self.history)), ev.job_id, ev.ts)
        elif ev.kind in _RELEASE:
            job.ended_ms = ev.ts
            self._ended.append((ev.ts, ev.job_id))
            self.forget_ended(ev.ts - self.keep_ended_ms)
            for key in job.gpu_keys:
                self._release(self._by_gpu.get(key), ev.job_id, ev.ts)
            for node in job.nodes:
                self._release(self._by_node.get(node), ev.job_id, ev.ts)
            job.gpu_keys, job.nodes = [], []

    @staticmethod
    def _hold(holders: deque[_Hold], job_id: str, ts: int) -> None:
        if not any(h.job_id == job_id and h.end_ms is None for h in holders):
            holders.append(_Hold(job_id, ts))

    @staticmethod
    def _release(holders: deque[_Hold] | None, job_id: str, ts: int) -> None:
        for h in holders or ():
            if h.job_id == job_id and h.end_ms is None:
                h.end_ms = ts

    def forget_ended(self, before_ms: int) -> int:
        """Drop jobs that ended before ``before_ms`` (their holds age out of the deques). Called on
        every job end with the ``keep_ended_ms`` horizon, so the table holds running jobs and the
        last hour's ended ones, not every job ever seen."""
        gone = 0
        while self._ended and self._ended[0][0] < before_ms:
            _, job_id = self._ended.popleft()
            job = self._jobs.get(job_id)
            if job is not None and job.ended_ms is not None and job.ended_ms < before_ms:  # not restarted since
                del self._jobs[job_id]
                gone += 1
        return gone

    # -- lookups ------------------------------------------------------------------------------

    def job(self, job_id: str | None) -> JobInfo | None:
        job = self._jobs.get(job_id) if job_id else None
        return job.info if job else None

    def zone(self, node: str) -> str | None:
        return self._zone.get(node)

    def gpu_holder(self, node: str, gpu_index: int, gpu_uuid: str, ts: int) -> str | None:
        """The job holding this GPU at ``ts`` by the scheduler's placement, if it says."""
        if not self._by_gpu and not self._by_node:
            return None  # no placement known at all (no scheduler adapter runs): the fast path
        if node in self._gpu_keys_of:  # some GPU of this node was placed by id (not only whole nodes)
            for gid in (gpu_uuid, str(gpu_index), f"{node}/gpu{gpu_index}"):
                holders = self._by_gpu.get((node, gid))
                if holders:
                    for h in reversed(holders):
                        if h.covers(ts):
                            return h.job_id
        return self._node_level(node, ts)

    def _node_level(self, node: str, ts: int) -> str | None:
        for h in reversed(self._by_node.get(node, ())):
            if h.covers(ts):
                return h.job_id
        return None

    def node_holder(self, node: str, ts: int) -> str | None:
        """The job holding the node (or most of its GPUs placed by id) at ``ts``."""
        job = self._node_level(node, ts)
        if job is not None:
            return job
        counts: dict[str, int] = {}
        for key in self._gpu_keys_of.get(node, ()):
            for h in self._by_gpu[key]:
                if h.covers(ts):
                    counts[h.job_id] = counts.get(h.job_id, 0) + 1
        return max(sorted(counts), key=lambda j: counts[j]) if counts else None

    # -- enrichment ---------------------------------------------------------------------------

    def enrich_gpu(self, s: GpuSample) -> GpuSample:
        """The sample with job, user, team, priority and zone filled in where known.

        The scheduler's placement wins over a job id the agent stamped; an agent's id is kept when
        the scheduler says nothing (e.g. no scheduler adapter runs)."""
        job_id = self.gpu_holder(s.node, s.gpu_index, s.gpu_uuid, s.ts) or s.job_id
        info = self.job(job_id)
        zone = self._zone.get(s.node)
        if job_id == s.job_id and info is None and zone is None:
            return s
        return relabelled(
            s,
            job_id=job_id,
            user=info.user if info else s.user,
            team=info.team if info else s.team,
            priority=info.priority if info else s.priority,
            zone=zone or s.zone,
        )

    def enrich_ib(self, s: IbSample) -> IbSample:
        job_id = self.node_holder(s.node, s.ts) or s.job_id
        info = self.job(job_id)
        if job_id == s.job_id and info is None:
            return s
        return relabelled(s, job_id=job_id, user=info.user if info else s.user, team=info.team if info else s.team)

    def enrich_step(self, s: StepMetric) -> StepMetric:
        """The step with its job's user and team, where the scheduler told them."""
        info = self.job(s.job_id)
        if info is None or (info.user is None and info.team is None):
            return s
        return relabelled(s, user=info.user or s.user, team=info.team or s.team)
