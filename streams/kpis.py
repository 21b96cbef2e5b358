"""Scheduling KPIs (allocation, queue wait, GPU-hours, fragmentation) from the scheduler event stream.

:class:`SchedulingKpis` is pure state: feed it :class:`SchedulerEvent` and :class:`NodeInventory`
records in any roughly-ordered sequence and it returns :class:`SchedulingKpi` rows. The Faust
worker (or a test, or a notebook) owns the I/O; keeping the logic here makes every number
reproducible from the same list of events.

Time is event time, cut in tumbling intervals aligned to multiples of ``interval_s`` since the
epoch, so any re-computation in SQL agrees on the boundaries. The row stamped ``ts = b`` describes
the cluster as the events with ``ts < b`` left it (snapshot KPIs, ``interval_s = 0``), or the
interval ``[b - interval_s, b)`` (interval KPIs, ``interval_s`` set). Boundary ``b`` is closed once
an event at or after ``b + lateness_s`` arrives (or :meth:`SchedulingKpis.advance` is called):
until then events wait in a small heap and are applied in time order, so disorder within the
lateness is harmless. An event older than an interval already closed is applied when the next one
closes, at that instant (``late`` counts them); closed rows are never revised. A time gap of more
than ``max_catchup_intervals`` intervals is crossed without emitting the empty ones in between
(``skipped_intervals``), so one absurd timestamp cannot make millions of rows.

The unit of allocation is the pair ``(job_id, name)``: a Kubernetes Job's pods share a job id but
not a name, each pod holds its own GPUs. "Job" below means that unit. A job

* waits from its ``submitted`` (or its last ``preempted``) to its ``scheduled`` (or, if that was
  missed, ``started``); the wait is observed in the interval its scheduling is applied in;
* holds ``requested_gpus`` from ``scheduled``/``started`` to ``finished``/``deleted``/``preempted``,
  on its ``node`` (attributes as of scheduling); a share of a GPU counts as that share; a Slurm
  host list (``gpu[01-04]``) spreads them evenly over its nodes (the ``count`` of a group of nodes,
  such as a zone, counts the job once per node of it in the group);
* is forgotten at ``finished``/``deleted``/``preempted`` (bounded memory). The last
  ``max_ended`` ended jobs are remembered by their seen ``(kind, ts)`` only, so duplicates and late
  events of an ended job change nothing. After ``preempted`` a *new* ``scheduled`` (a Slurm
  requeue) starts another run, waiting since the preemption.

An event identical in ``(job_id, name, kind, ts)`` to one already applied is a duplicate of
at-least-once delivery and is dropped (``duplicates``). Nothing here raises on odd input: an end
for a job never seen is remembered so its late start is ignored; a ``submitted`` that arrives after
its ``scheduled`` still yields the wait.

GPU busy-ness (for fragmentation) comes from ``gpu_ids`` ("node/gpuN"; an id without "/" is on
the event's node): a GPU with any share held is busy, not free. A job on a node but without
``gpu_ids`` makes ``ceil(requested_gpus)`` of that node's GPUs busy (``ceil`` of its share on each
node of a host list). Free GPUs of a node =
``capacity - min(capacity, busy)``. Allocation is the scheduler's word (``requested_gpus``), so
``allocated + free`` need not equal ``total`` when jobs share GPUs or were bound without a node.

FGD's expected fragmentation (:mod:`hpcinsight.streams.fragmentation`; ``fgd_fragmentation_gpus`` per
cluster, zone, GPU model and held node, ``fgd_fragmentation_rate`` for the cluster) needs finer
state: each named GPU's held share in thousandths (a job's ``requested_gpus`` spread evenly over
its ``gpu_ids``; a job without ``gpu_ids`` takes whole GPUs, as above) and each node's CPU milli
(the inventory's ``cpus`` less the ``requested_cpus`` of the jobs on it, CPU-only jobs included;
no limit when the inventory does not say). The typical shapes are the requests of the last
``shape_window`` jobs, each counted once at the first event that gives its ``requested_gpus``.

Groups: ``gpu_model``/``zone`` of a job are its node's, as the node inventory says now (a node
re-inventoried with another model moves its allocation); ``unknown`` when the inventory leaves it
empty, ``unplaced`` when the job has no node or the node is not in the inventory. ``team``,
``user``, ``qos``, ``priority`` missing -> ``unknown``. ``gpu_bucket`` of requested GPUs ``g``:
``cpu`` (0 or none), ``frac`` (0<g<1), ``1`` (1<=g<2), ``2-4`` (2<=g<=4), ``5-8`` (4<g<=8),
``>8``; ``job_class``: ``small`` (g<=1), ``medium`` (1<g<=8), ``large`` (g>8), GPU jobs only.
Quantiles use numpy's default ('linear', Hyndman-Fan type 7), as :mod:`hpcinsight.streams.windows` does.
A job is *multi-node* (gang) if its host list or its ``gpu_ids`` name more than one node, or it
asks for more GPUs than the largest node in the inventory has.

Sums are kept as exact fractions (the floats' binary values), so an allocation that returns to
zero is zero and an independent re-computation agrees to rounding.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from hpcinsight.schemas.events import NodeInventory, SchedulerEvent, SchedulingKpi
from hpcinsight.streams.attribution import expand_hostlist
from hpcinsight.streams.fragmentation import MILLI, NO_CPU_LIMIT, ShapeWindow, access_matrix, fragmentation, task_shape

CLUSTER = ("cluster", "all")
HOUR_MS = 3_600_000
QUANTILES = {"p50": 0.5, "p95": 0.95}
_ORDER = {"inventory": 0, "submitted": 1, "scheduled": 2, "started": 3, "finished": 4, "deleted": 4, "preempted": 4}
_ENDS = frozenset({"finished", "deleted", "preempted"})
ZERO = Fraction(0)

Group = tuple[str, str]  # (dimension, group)
JobKey = tuple[str, str]  # (job_id, name)


@dataclass(frozen=True)
class KpiConfig:
    interval_s: float = 60.0  # length of the tumbling interval; a whole number of milliseconds
    lateness_s: float = 10.0  # how long a boundary waits for stragglers before it closes
    max_ended: int = 100_000  # ended jobs remembered to drop their duplicates and late events
    max_catchup_intervals: int = 10_000  # a longer gap is crossed without emitting the empty intervals
    shape_window: int = 10_000  # recent jobs whose shapes make FGD's typical workload

    def __post_init__(self) -> None:
        ms = self.interval_s * 1000
        if not (math.isfinite(ms) and ms >= 1 and ms == int(ms)):
            raise ValueError("interval_s must be a positive whole number of milliseconds")
        if not (math.isfinite(self.lateness_s) and self.lateness_s >= 0):
            raise ValueError("lateness_s must be >= 0")
        if self.max_ended < 0 or self.max_catchup_intervals < 1:
            raise ValueError("max_ended must be >= 0 and max_catchup_intervals >= 1")
        if self.shape_window < 1:
            raise ValueError("shape_window must be >= 1")


def gpu_bucket(gpus: float | None) -> str:
    """The request-size bucket of a wait: waits differ by size (a whole node is harder to find)."""
    g = gpus or 0
    if g <= 0:
        return "cpu"
    if g < 1:
        return "frac"
    if g < 2:
        return "1"
    return "2-4" if g <= 4 else "5-8" if g <= 8 else ">8"


def job_class(gpus: float) -> str:
    """Small (a GPU or a share of one), medium (within one 8-GPU node), large (more than a node)."""
    return "small" if gpus <= 1 else "medium" if gpus <= 8 else "large"


def quantiles(values: list[float]) -> dict[str, float]:
    """p50 and p95 by numpy's 'linear' method: ``x[floor(h)] + (h - floor(h)) * (x[floor(h)+1] - x[floor(h)])``, ``h = (n-1)q``."""
    got = np.quantile(np.asarray(values, dtype=np.float64), list(QUANTILES.values()), method="linear")
    return {name: float(v) for name, v in zip(QUANTILES, got, strict=True)}


@dataclass
class _Acc:
    """A group's allocation now, and its integral (GPU-ms) and holders over the open interval."""

    last: int
    alloc: Fraction = ZERO
    holders: int = 0
    area: Fraction = ZERO
    touched: int = 0  # jobs that held GPUs in the group at some time in the open interval

    def change(self, t: int, gpus: Fraction, holders: int) -> None:
        self.area += self.alloc * (t - self.last)
        self.last = t
        self.alloc += gpus
        self.holders += holders
        if holders > 0:
            self.touched += holders


@dataclass
class _Node:
    """What one node has (from the inventory) and what jobs hold on it."""

    known: bool = False
    capacity: int = 0
    model: str | None = None
    zone: str | None = None
    alloc: Fraction = ZERO
    holders: int = 0
    gpu_refs: Counter[str] = field(default_factory=Counter)  # gpu id -> jobs holding a share of it
    anon: int = 0  # busy GPUs of jobs that named no gpu_ids
    gpu_used: dict[str, int] = field(default_factory=dict)  # gpu id -> thousandths of it held
    cpu_milli: int | None = None  # from the inventory; None: not said (CPU never limits)
    cpu_used: int = 0  # CPU milli held by the jobs on it

    def held(self) -> bool:
        return bool(self.holders or self.gpu_refs or self.anon or self.cpu_used)

    def left(self, width: int) -> tuple[np.ndarray, int]:
        """Free milli of each GPU (zero-padded to ``width``) and free CPU milli, for FGD: a named GPU
        has what its holders' shares leave; a job that named no GPU takes whole ones."""
        row = np.zeros(width, dtype=np.int64)
        cap = self.capacity
        row[:cap] = MILLI
        named = list(self.gpu_used.values())[:cap]
        for i, used in enumerate(named):
            row[i] = MILLI - min(MILLI, used)
        anon = min(self.anon, cap - len(named))
        row[len(named) : len(named) + anon] = 0
        return row, NO_CPU_LIMIT if self.cpu_milli is None else self.cpu_milli - self.cpu_used

    def groups(self) -> tuple[Group, Group]:
        if not self.known:
            return ("gpu_model", "unplaced"), ("zone", "unplaced")
        return ("gpu_model", self.model or "unknown"), ("zone", self.zone or "unknown")

    def fragments(self) -> tuple[int, int, int, int]:
        """(free GPUs, stranded GPUs, fragmented node, node with a free GPU) of this node."""
        if not self.known or self.capacity <= 0:
            return 0, 0, 0, 0
        free = self.capacity - min(self.capacity, len(self.gpu_refs) + self.anon)
        partly = 0 < free < self.capacity
        return free, free if partly else 0, int(partly), int(free > 0)


@dataclass(frozen=True)
class _Part:
    """A job's share on one of its nodes (None: a job placed on no node)."""

    node: str | None
    gpus: Fraction
    anon: int  # busy GPUs of this node, when the job named no gpu_ids
    cpus: int = 0  # CPU milli it holds on this node


@dataclass(frozen=True)
class _Hold:
    """What a running job took, frozen at its start, so that its end gives back exactly that."""

    gpus: Fraction
    parts: tuple[_Part, ...]  # one per node of its placement (a Slurm host list names several)
    busy: tuple[tuple[str | None, str], ...]  # (node, gpu id) of each busy GPU named
    groups: tuple[Group, ...]  # the static groups (cluster, team, user, job class, priority)
    gpu_milli: int = 0  # thousandths of each busy GPU named that it holds (FGD's per-GPU free share)

    @property
    def nodes(self) -> set[str]:
        return {p.node for p in self.parts if p.node is not None} | {n for n, _ in self.busy if n is not None}


@dataclass
class _Job:
    """A job not yet ended: its seen transitions (for dedup), queue state, hold and latest attributes."""

    seen: set[tuple[str, int]] = field(default_factory=set)
    queued_since: int | None = None
    scheduled_at: int | None = None
    waited: bool = False
    hold: _Hold | None = None
    user: str | None = None
    team: str | None = None
    priority: str | None = None
    qos: str | None = None
    gpus: float | None = None
    cpus: float | None = None
    node: str | None = None
    shaped: bool = False  # its shape is in the FGD shape window


@dataclass(frozen=True)
class _Ended:
    """What is kept of an ended job: enough to drop its duplicates and late events, nothing more."""

    ts: int
    final: bool  # finished/deleted: the job is over; preempted: it may run again
    seen: frozenset[tuple[str, int]]


class SchedulingKpis:
    """Cluster scheduling state, folded from events, cut into KPI rows at interval boundaries."""

    def __init__(self, config: KpiConfig | None = None) -> None:
        self.config = config or KpiConfig()
        self._interval_ms = int(self.config.interval_s * 1000)
        self._lateness_ms = int(self.config.lateness_s * 1000)
        self._pending: list[tuple[int, int, int, SchedulerEvent | NodeInventory]] = []
        self._seq = 0
        self._next: int | None = None  # the next boundary to close
        self._max_ts: int | None = None
        self._clock = 0
        self._jobs: dict[JobKey, _Job] = {}
        self._usage: dict[str, float] = {}  # job id -> mean GPU utilisation since it started (job stage)
        self._ended: OrderedDict[JobKey, _Ended] = OrderedDict()
        self._nodes: dict[str | None, _Node] = {}
        self._accs: dict[Group, _Acc] = {}
        self._capacity: dict[Group, list[int]] = {}  # group -> [GPUs, nodes with GPUs]
        self._capacities: Counter[int] = Counter()  # node GPU count -> nodes
        self._fragments = [0, 0, 0, 0]
        self._shapes = ShapeWindow(self.config.shape_window)
        self._fgd_layout: tuple[list[str], dict[str, int], np.ndarray, np.ndarray, list[str | None]] | None = (
            None  # GPU nodes, rows
        )
        self._fgd_dirty: set[str | None] = set()
        self._fgd_access: dict[str, np.ndarray] = {}
        self._fgd_groups: list[tuple[Group, np.ndarray]] = []  # zone and model groups: their rows of the layout
        self._fgd_held: set[int] = set()  # rows of the layout with something held on the node
        self._fgd_idle = np.zeros(0, dtype=np.int64)  # layout row -> its idle kind (capacity, model, CPUs)
        self._fgd_idle_first = np.zeros(0, dtype=np.int64)  # idle kind -> a layout row of that kind
        self._fgd_last: tuple[object, np.ndarray] | None = None  # (typical, fragmentation per node) last measured
        self._fgd_idle_frag: tuple[object, np.ndarray] | None = None  # (typical, fragmentation of each idle kind)
        self._queued = 0
        self._waits: list[tuple[float, tuple[Group, ...], bool]] = []
        #: counters of odd input, for the worker's metrics
        self.duplicates = 0
        self.late = 0
        self.ignored = 0
        self.skipped_intervals = 0

    # -- input -------------------------------------------------------------------------------

    def observe(self, event: SchedulerEvent | NodeInventory) -> list[SchedulingKpi]:
        """Take one event; returns the rows of every boundary this event lets close."""
        if not isinstance(event, (SchedulerEvent, NodeInventory)):
            self.ignored += 1
            return []
        ts = int(event.ts)
        # The first boundary is fixed when the first one closes, from the earliest event waiting
        # then: events of several partitions arrive interleaved, and the first to arrive need not
        # be the earliest.
        if self._next is not None and ts < self._next - self._interval_ms:
            self.late += 1
        order = _ORDER.get("inventory" if isinstance(event, NodeInventory) else event.kind, 4)
        heapq.heappush(self._pending, (ts, order, self._seq, event))
        self._seq += 1
        self._max_ts = ts if self._max_ts is None else max(self._max_ts, ts)
        return self.advance(self._max_ts - self._lateness_ms)

    def observe_usage(self, job_id: str, mean_util_pct: float) -> None:
        """The job stage's latest since-start mean utilisation of a job (used at the next boundary)."""
        self._usage[job_id] = mean_util_pct

    def advance(self, watermark_ms: int) -> list[SchedulingKpi]:
        """Close every boundary at or before ``watermark_ms`` (e.g. from a timer when events stop)."""
        out: list[SchedulingKpi] = []
        if self._next is None:
            if not self._pending:
                return out
            first = self._pending[0][0]
            if watermark_ms < (first // self._interval_ms + 1) * self._interval_ms:
                return out  # nothing closes yet: an earlier event may still come
            self._next = (first // self._interval_ms + 1) * self._interval_ms
            self._clock = first
        if watermark_ms < self._next:
            return out
        crossing = (watermark_ms - self._next) // self._interval_ms + 1
        if crossing > self.config.max_catchup_intervals:
            self._skip_to(self._next + (crossing - self.config.max_catchup_intervals) * self._interval_ms)
        while self._next <= watermark_ms:
            self._apply_before(self._next)
            out.extend(self._close(self._next))
            self._next += self._interval_ms
        return out

    def _apply_before(self, boundary: int) -> None:
        while self._pending and self._pending[0][0] < boundary:
            ts, _, _, event = heapq.heappop(self._pending)
            self._clock = max(self._clock, ts)
            if isinstance(event, NodeInventory):
                self._inventory(event, self._clock)
            else:
                self._job_event(event, self._clock)

    def _skip_to(self, boundary: int) -> None:
        """Cross a long gap: apply what came before it, drop the interval state of the skipped intervals."""
        assert self._next is not None
        start = boundary - self._interval_ms
        self._apply_before(start)
        self.skipped_intervals += (boundary - self._next) // self._interval_ms
        self._clock = max(self._clock, start)
        for acc in self._accs.values():
            acc.area, acc.last, acc.touched = ZERO, start, acc.holders
        self._waits.clear()
        self._next = boundary

    # -- state -------------------------------------------------------------------------------

    def _change(self, group: Group, t: int, gpus: Fraction, holders: int) -> None:
        acc = self._accs.get(group)
        if acc is None:
            acc = self._accs[group] = _Acc(last=t)
        acc.change(t, gpus, holders)

    def _node(self, name: str | None) -> _Node:
        node = self._nodes.get(name)
        if node is None:
            node = self._nodes[name] = _Node()
        return node

    def _add_fragments(self, node: _Node, sign: int) -> None:
        for i, v in enumerate(node.fragments()):
            self._fragments[i] += sign * v

    def _inventory(self, inv: NodeInventory, t: int) -> None:
        node = self._node(inv.node)
        self._add_fragments(node, -1)
        old_groups = node.groups()
        if node.known and node.capacity > 0:
            self._capacities[node.capacity] -= 1
            for g in old_groups:
                self._capacity[g][0] -= node.capacity
                self._capacity[g][1] -= 1
        node.known, node.capacity, node.model, node.zone = True, max(0, int(inv.gpu_count)), inv.gpu_model, inv.zone
        node.cpu_milli = round(inv.cpus * MILLI) if inv.cpus is not None else None
        self._fgd_layout = None  # node list, models or capacities may have changed: rebuilt at the next boundary
        if node.capacity > 0:
            self._capacities[node.capacity] += 1
            for g in node.groups():
                cap = self._capacity.setdefault(g, [0, 0])
                cap[0] += node.capacity
                cap[1] += 1
        if node.holders and node.groups() != old_groups:
            for old, new in zip(old_groups, node.groups(), strict=True):
                self._change(old, t, -node.alloc, -node.holders)
                self._change(new, t, node.alloc, node.holders)
        self._add_fragments(node, +1)

    def _job_event(self, e: SchedulerEvent, t: int) -> None:
        key, sig = (e.job_id, e.name or ""), (e.kind, int(e.ts))
        ended = self._ended.get(key)
        if ended is not None:
            if sig in ended.seen:
                self.duplicates += 1
                return
            if ended.final or e.ts < ended.ts or e.kind in _ENDS:
                self.ignored += 1
                return
            del self._ended[key]  # a new run after a preemption, queued since then
            job = self._jobs[key] = _Job(seen=set(ended.seen), queued_since=ended.ts)
            self._queued += 1
        elif (job_or_none := self._jobs.get(key)) is None:
            job = self._jobs[key] = _Job()
        elif sig in job_or_none.seen:
            self.duplicates += 1
            return
        else:
            job = job_or_none
        job.seen.add(sig)
        for name in ("user", "team", "priority", "qos", "node"):
            if (value := getattr(e, name)) is not None:
                setattr(job, name, value)
        if e.requested_gpus is not None:
            job.gpus = max(0.0, e.requested_gpus)
        if e.requested_cpus is not None:
            job.cpus = max(0.0, e.requested_cpus)
        if not job.shaped and e.requested_gpus is not None:  # a job's shape counts once, when first said
            job.shaped = True
            self._shapes.add(task_shape(e.requested_gpus, e.requested_cpus, e.gpu_model))
        if e.kind == "submitted":
            if job.hold is None and job.queued_since is None:
                job.queued_since = int(e.ts)
                self._queued += 1
            elif job.hold is not None and not job.waited and job.scheduled_at is not None:  # arrived after its start
                job.queued_since = int(e.ts)
                self._wait(job, job.scheduled_at)
                job.queued_since = None
        elif e.kind in ("scheduled", "started"):
            if job.hold is None:
                self._start(job, e, t)
        elif e.kind in _ENDS:
            self._end(key, job, e, t)

    def _start(self, job: _Job, e: SchedulerEvent, t: int) -> None:
        job.scheduled_at = int(e.ts)
        gpus = Fraction(job.gpus or 0.0)
        nodes = list(dict.fromkeys(expand_hostlist(job.node))) if job.node else []
        node_name = nodes[0] if len(nodes) == 1 else None  # where a gpu id without "node/" is
        busy = tuple((gid.split("/", 1)[0] if "/" in gid else node_name, gid) for gid in dict.fromkeys(e.gpu_ids))
        if not nodes:
            parts: tuple[_Part, ...] = (_Part(None, gpus, 0),)
        else:  # a gang job on a host list: its GPUs (and CPUs) spread evenly over its nodes
            share = gpus / len(nodes)
            cpus = round((job.cpus or 0.0) * MILLI / len(nodes))
            parts = tuple(_Part(n, share, math.ceil(share) if share > 0 and not busy else 0, cpus) for n in nodes)
        groups = (
            (
                CLUSTER,
                ("team", job.team or "unknown"),
                ("user", job.user or "unknown"),
                ("job_class", job_class(float(gpus))),
                ("priority", job.priority or "unknown"),
            )
            if gpus > 0
            else ()
        )
        job.hold = _Hold(gpus, parts, busy, groups, round(float(gpus) * MILLI / len(busy)) if busy else 0)
        if job.queued_since is not None:
            self._wait(job, job.scheduled_at)
            job.queued_since = None
            self._queued -= 1
        if gpus > 0:
            self._hold(job.hold, t, +1)
        self._hold_cpu(job.hold, +1)

    def _hold(self, hold: _Hold, t: int, sign: int) -> None:
        """Add (``sign`` = 1) or remove (-1) a job's GPUs from its groups and its nodes."""
        for g in hold.groups:
            self._change(g, t, sign * hold.gpus, sign)
        touched = {n for n, _ in hold.busy if n is not None} | {p.node for p in hold.parts if p.node is not None and p.anon}
        for name in touched:
            self._add_fragments(self._node(name), -1)
        # a model or zone group counts placements: a gang job once per node of it in the group (so a
        # node re-inventoried into another zone takes exactly its own share and count along)
        for part in hold.parts:
            node = self._node(part.node)
            node.alloc += sign * part.gpus
            node.holders += sign
            node.anon += sign * part.anon
            for g in node.groups():
                self._change(g, t, sign * part.gpus, sign)
        for name, gid in hold.busy:
            node = self._node(name)
            refs = node.gpu_refs
            refs[gid] += sign
            node.gpu_used[gid] = node.gpu_used.get(gid, 0) + sign * hold.gpu_milli
            if refs[gid] <= 0:
                del refs[gid]
                node.gpu_used.pop(gid, None)
        self._fgd_dirty.update(touched, (p.node for p in hold.parts))
        for name in touched:
            self._add_fragments(self._node(name), +1)
        for name in {*(p.node for p in hold.parts), *touched}:  # forget nodes the inventory never named once nothing is on them
            n = self._nodes.get(name)
            if n is not None and not n.known and not n.held():
                del self._nodes[name]

    def _hold_cpu(self, hold: _Hold, sign: int) -> None:
        """Add or remove a job's CPUs on its nodes (a CPU-only job too: it still takes a GPU node's CPUs)."""
        for part in hold.parts:
            if part.node is None or not part.cpus:
                continue
            node = self._node(part.node)
            node.cpu_used += sign * part.cpus
            self._fgd_dirty.add(part.node)
            if not node.known and not node.held():
                del self._nodes[part.node]

    def _end(self, key: JobKey, job: _Job, e: SchedulerEvent, t: int) -> None:
        if job.hold is not None and job.hold.gpus > 0:
            self._hold(job.hold, t, -1)
        if job.hold is not None:
            self._hold_cpu(job.hold, -1)
        if job.hold is None and job.queued_since is not None:
            self._queued -= 1
        del self._jobs[key]
        self._ended[key] = _Ended(int(e.ts), e.kind != "preempted", frozenset(job.seen))
        while len(self._ended) > self.config.max_ended:
            self._ended.popitem(last=False)

    def _wait(self, job: _Job, scheduled_at: int) -> None:
        assert job.queued_since is not None
        job.waited = True
        hold = job.hold
        node = self._nodes.get(hold.parts[0].node if hold else None)
        model = node.groups()[0][1] if node is not None else "unplaced"
        groups = (
            CLUSTER,
            ("gpu_bucket", gpu_bucket(job.gpus)),
            ("gpu_model", model),
            ("qos", job.qos or "unknown"),
            ("priority", job.priority or "unknown"),
        )
        largest = max((c for c, n in self._capacities.items() if n > 0), default=None)
        spans = len(hold.nodes) > 1 if hold else False
        gang = spans or (largest is not None and (job.gpus or 0) > largest)
        self._waits.append((max(0, scheduled_at - job.queued_since) / 1000, groups, gang))

    # -- output ------------------------------------------------------------------------------

    def _close(self, b: int) -> list[SchedulingKpi]:
        """The rows of boundary ``b``, then a fresh interval."""
        rows: list[SchedulingKpi] = []
        interval_s = self.config.interval_s

        def row(kpi: str, group: Group, value: float | Fraction, count: int, interval: float = 0.0) -> None:
            rows.append(
                SchedulingKpi(
                    ts=b,
                    kpi=kpi,
                    dimension=group[0],
                    group=group[1],
                    value=float(value),
                    count=max(0, count),
                    interval_s=interval,
                )
            )

        for acc in self._accs.values():
            acc.area += acc.alloc * (b - acc.last)
            acc.last = b
        empty = _Acc(last=b)
        acc = self._accs.get
        cluster = acc(CLUSTER, empty)
        total = self._capacity_of(CLUSTER)
        row("allocated_gpus", CLUSTER, cluster.alloc, cluster.holders)
        row("total_gpus", CLUSTER, total[0], total[1])
        if total[0] > 0:
            row("allocation_rate", CLUSTER, cluster.alloc / total[0], cluster.holders)
        row("gpu_hours", CLUSTER, cluster.area / HOUR_MS, cluster.touched, interval_s)
        for dim in ("gpu_model", "zone"):
            names = {g for (d, g), c in self._capacity.items() if d == dim and c[0] > 0}
            names |= {g for (d, g), a in self._accs.items() if d == dim and a.holders > 0}
            for name in sorted(names):
                a, cap = acc((dim, name), empty), self._capacity.get((dim, name), [0, 0])
                row("allocated_gpus", (dim, name), a.alloc, a.holders)
                row("total_gpus", (dim, name), cap[0], cap[1])
                if cap[0] > 0:
                    row("allocation_rate", (dim, name), a.alloc / cap[0], a.holders)
        for dim in ("team", "user"):
            for (d, name), a in sorted(self._accs.items()):
                if d != dim:
                    continue
                if a.holders > 0:
                    row("allocated_gpus", (dim, name), a.alloc, a.holders)
                if a.touched > 0:
                    row("gpu_hours", (dim, name), a.area / HOUR_MS, a.touched, interval_s)
        for name in ("small", "medium", "large"):
            a = acc(("job_class", name), empty)
            row("allocated_gpus", ("job_class", name), a.alloc, a.holders)
        priorities = {g for (d, g), a in self._accs.items() if d == "priority" and a.holders > 0} | {"low"}
        for name in sorted(priorities):
            a = acc(("priority", name), empty)
            row("allocated_gpus", ("priority", name), a.alloc, a.holders)
            row("allocation_share", ("priority", name), a.alloc / cluster.alloc if cluster.alloc else 0, a.holders)
        # utilisation of what is held: the GPU-weighted mean of the since-start utilisation of the
        # jobs holding GPUs now, per job class, team and user (jobs the job stage has not yet
        # summarised are left out; ``count`` says how many jobs it rests on)
        used: dict[Group, list[float]] = {}
        live = {job_id for job_id, _name in self._jobs}
        for gone in [j for j in self._usage if j not in live]:  # ended jobs: forget, once per boundary
            del self._usage[gone]
        for (job_id, _name), job in self._jobs.items():
            util = self._usage.get(job_id)
            if util is None or job.hold is None or not job.hold.gpus:
                continue
            for group in job.hold.groups:
                if group[0] in ("job_class", "team", "user", "cluster"):
                    acc_u = used.setdefault(group, [0.0, 0.0, 0.0])
                    acc_u[0] += float(job.hold.gpus) * util
                    acc_u[1] += float(job.hold.gpus)
                    acc_u[2] += 1
        for group, (weighted, gpus, jobs) in sorted(used.items()):
            row("gpu_util_mean_pct", group, weighted / gpus, int(jobs))
        free, stranded, fragmented, with_free = self._fragments
        row("free_gpus", CLUSTER, free, with_free)
        row("stranded_gpus", CLUSTER, stranded, fragmented)
        row("stranded_share", CLUSTER, Fraction(stranded, free) if free else 0, fragmented)
        row("fragmented_nodes", CLUSTER, fragmented, fragmented)
        row("queued_jobs", CLUSTER, self._queued, self._queued)
        self._fgd_rows(row)
        by_group: dict[Group, list[float]] = {}
        gang: list[float] = []
        for wait, groups, multi_node in self._waits:
            for g in groups:
                by_group.setdefault(g, []).append(wait)
            if multi_node:
                gang.append(wait)
        for prefix, series in (("queue_wait", sorted(by_group.items())), ("gang_wait", [(CLUSTER, gang)] if gang else [])):
            for g, waits in series:
                for name, value in quantiles(waits).items():
                    row(f"{prefix}_{name}_s", g, value, len(waits), interval_s)
        self._new_interval(b)
        return rows

    def _fgd_rows(self, row: Callable[[str, Group, float | Fraction, int], None]) -> None:
        """FGD's expected fragmentation (:mod:`hpcinsight.streams.fragmentation`), in GPUs: the cluster, each zone and
        GPU model, and each node with something held on it (an idle node's figure follows from its capacity
        and model alone, and one row per node per interval would multiply the table by the node count);
        ``fgd_fragmentation_rate`` is the cluster's share of its free GPU capacity. Nothing before a job
        has said its shape."""
        typical = self._shapes.typical()
        if not typical.shapes:
            return
        if self._fgd_layout is None:
            names = [n for n, node in self._nodes.items() if n is not None and node.known and node.capacity > 0]
            width = max((self._nodes[n].capacity for n in names), default=1)
            self._fgd_layout = (
                names,
                {n: i for i, n in enumerate(names)},
                np.zeros((len(names), width), dtype=np.int64),
                np.zeros(len(names), dtype=np.int64),
                [self._nodes[n].model for n in names],
            )
            members: dict[Group, list[int]] = {}
            for i, n in enumerate(names):
                for g in self._nodes[n].groups():
                    members.setdefault(g, []).append(i)
            self._fgd_groups = [(g, np.array(ix, dtype=np.int64)) for g, ix in sorted(members.items())]
            self._fgd_access = {}
            # an idle node is in the state of every idle node of its capacity, model and CPUs: measured once
            idle: dict[tuple[int, str | None, int | None], int] = {}
            self._fgd_idle = np.array(
                [
                    idle.setdefault((node.capacity, node.model, node.cpu_milli), len(idle))
                    for node in (self._nodes[n] for n in names)
                ],
                dtype=np.int64,
            )
            first: dict[int, int] = {}
            for i, kind in enumerate(self._fgd_idle.tolist()):
                first.setdefault(kind, i)
            self._fgd_idle_first = np.array([first[k] for k in range(len(first))], dtype=np.int64)
            self._fgd_held = set()
            self._fgd_idle_frag = None
            self._fgd_dirty = set(names)
        names, index, left, cpu, models = self._fgd_layout
        for name in self._fgd_dirty:
            if (i := index.get(name)) is not None:
                node = self._nodes[name]
                left[i], cpu[i] = node.left(left.shape[1])
                if node.held():
                    self._fgd_held.add(i)
                else:
                    self._fgd_held.discard(i)
        changed = bool(self._fgd_dirty)
        self._fgd_dirty = set()
        if not names:
            return
        if changed or self._fgd_last is None or self._fgd_last[0] is not typical:
            access = access_matrix(models, typical, self._fgd_access)
            held = np.array(sorted(self._fgd_held), dtype=np.int64)
            if self._fgd_idle_frag is None or self._fgd_idle_frag[0] is not typical:
                reps = self._fgd_idle_first  # one node of each idle kind, by kind id; idle left and CPU rebuilt from it
                caps = np.array([self._nodes[names[i]].capacity for i in reps])
                idle_left = ((np.arange(left.shape[1])[None, :] < caps[:, None]) * MILLI).astype(np.int64)
                idle_cpu = np.array(
                    [NO_CPU_LIMIT if (c := self._nodes[names[i]].cpu_milli) is None else c for i in reps], dtype=np.int64
                )
                self._fgd_idle_frag = (typical, fragmentation(idle_left, idle_cpu, access[reps], typical))
            frag = self._fgd_idle_frag[1][self._fgd_idle]
            if len(held):
                frag[held] = fragmentation(left[held], cpu[held], access[held], typical)
            self._fgd_last = (typical, frag)
        frag = self._fgd_last[1]
        free = int(left.sum())
        total = float(frag.sum())
        row("fgd_fragmentation_gpus", CLUSTER, total / MILLI, len(names))
        row("fgd_fragmentation_rate", CLUSTER, total / free if free else 0.0, len(names))
        for g, ix in self._fgd_groups:
            row("fgd_fragmentation_gpus", g, float(frag[ix].sum()) / MILLI, len(ix))
        for i in sorted(self._fgd_held):
            row("fgd_fragmentation_gpus", ("node", names[i]), float(frag[i]) / MILLI, 1)

    def _capacity_of(self, group: Group) -> tuple[int, int]:
        if group == CLUSTER:
            return sum(c * n for c, n in self._capacities.items()), sum(self._capacities.values())
        cap = self._capacity.get(group, [0, 0])
        return cap[0], cap[1]

    def _new_interval(self, b: int) -> None:
        self._waits.clear()
        self._clock = max(self._clock, b)
        for group in [g for g, a in self._accs.items() if not a.holders]:
            del self._accs[group]  # nothing held there now: an idle team or user costs no memory
        for a in self._accs.values():
            a.area, a.touched = ZERO, a.holders

    # -- for tests and metrics ---------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Jobs submitted and not yet scheduled or ended, as of the events applied so far."""
        return self._queued

    @property
    def tracked_jobs(self) -> int:
        """Jobs held in memory (queued or running); ended ones are forgotten."""
        return len(self._jobs)
