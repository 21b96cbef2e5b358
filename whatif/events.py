"""Event-driven replay: jobs arrive at their submit time, wait in a queue, run, and leave.

Each job (or gang: the tasks of one distributed job) is a request. It arrives at its submit
time; at every instant something changes, a scheduling pass offers the waiting requests to the
placement policy in the queue discipline's order (:mod:`hpcinsight.whatif.queueing`). A placed request
runs for its recorded run time (``end - start``); one that never ran in reality (no start) runs,
if placed, until it was deleted, and is withdrawn then if still waiting.

* **Gangs**, all-or-nothing within a zone (``gang="zone"``): every task is placed inside one
  zone or none is. Without it (``gang="none"``) tasks are placed as they fit and hold their
  GPUs idle until the last one is placed; when partial gangs hold resources and nothing is
  running that could ever free any, that is a **deadlock**: it is counted, and all partial
  gangs but the oldest are evicted back to the queue so the run can go on.
* **Reservations** (``reserve_gpus=N``): a waiting request asking at least N GPUs that does not
  fit gets the nodes that free up for it soonest (known from the running jobs' recorded ends,
  as a scheduler with accurate wall-time estimates would know them); until then those nodes
  take only jobs that end before the reservation starts (EASY backfilling). Up to
  ``max_reservations`` at a time, in queue order.
* A request that could not fit even in the empty cluster is **unschedulable**: reported, never
  retried.

Zones are the nodes' ``zone`` (NSML's pods), else their GPU model.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from hpcinsight.whatif import queueing
from hpcinsight.whatif.engine import Placer
from hpcinsight.whatif.indicators import gpu_bucket, job_class, quantiles, shares, waits_by
from hpcinsight.whatif.model import MILLI, Job, Node, WhatifError
from hpcinsight.whatif.policies import make_policy
from hpcinsight.whatif.policies.fgd import fragmentation
from hpcinsight.whatif.profiles import profile_filter
from hpcinsight.whatif.state import ClusterState, Shape
from hpcinsight.whatif.typical import typical_shapes

PRIORITY_BY_QOS = {"LS": "high", "Guaranteed": "high", "Burstable": "medium", "BE": "low"}
_END, _WITHDRAW, _WEIGHTS, _ARRIVE = 0, 1, 2, 3
METRIC_SAMPLES = 1000  # stranded GPUs and fragmentation are refreshed at most this often over a run


@dataclass
class Request:
    seq: int
    name: str
    tasks: list[Job]
    shapes: list[Shape]
    submit: float
    duration: float | None  # run time once placed; None: until withdraw_at (or the horizon)
    withdraw_at: float | None
    qos: str
    priority: str
    team: str
    user: str
    gang: bool
    gpus: float = 0.0
    urgent: bool = False
    placed: list[tuple[int, int, list[int]]] = field(default_factory=list)  # (task, node, gpus)
    start: float | None = None
    end: float | None = None
    held_since: float | None = None  # first task of a partial gang placed
    ran_on: list[tuple[int, int, list[int]]] = field(default_factory=list)  # where it ran (kept after the end)
    status: str = "pending"  # pending, waiting, running, done, withdrawn, unschedulable

    def runtime_from(self, t: float) -> float:
        if self.duration is not None:
            return self.duration
        if self.withdraw_at is not None:
            return max(self.withdraw_at - t, 0.0)
        return math.inf


def requests_from(jobs: Sequence[Job]) -> list[Request]:
    """Jobs to requests: a gang's tasks become one request; times come from the records."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.gang or f"\0{job.name}", []).append(job)
    out = []
    for seq, tasks in enumerate(groups.values()):
        submit = min((t.submit or 0.0) for t in tasks)
        starts = [t.start for t in tasks if t.start is not None]
        ends = [t.end for t in tasks if t.end is not None]
        duration = withdraw = None
        if starts and ends:
            duration = max(max(ends) - min(starts), 0.0)
        elif ends:
            withdraw = max(ends)
        first = tasks[0]
        gpus = sum(t.total_gpu_milli for t in tasks) / MILLI
        out.append(
            Request(
                seq=seq,
                name=first.gang or first.name,
                tasks=tasks,
                shapes=[Shape.of(t) for t in tasks],
                submit=submit,
                duration=duration,
                withdraw_at=withdraw,
                qos=first.qos,
                priority=first.priority or PRIORITY_BY_QOS.get(first.qos, ""),
                team=first.team or "unknown",
                user=first.user or "unknown",
                gang=bool(first.gang) and len(tasks) > 1,
                gpus=gpus,
                urgent=first.priority == "urgent",
            )
        )
    return out


@dataclass(frozen=True)
class EventConfig:
    policy: str = "fgd"
    queue: str = "fifo"
    weights: queueing.WeightSchedule = field(default_factory=queueing.WeightSchedule)
    gang: str = "zone"  # zone | none
    reserve_gpus: int = 0  # 0: no reservations
    max_reservations: int = 1
    seed: int = 42
    horizon: float | None = None


class EventSim:
    """One policy and queue discipline over one workload."""

    def __init__(self, nodes: Sequence[Node], jobs: Sequence[Job], config: EventConfig) -> None:
        if not nodes:
            raise WhatifError("the cluster is empty (no nodes)")
        if config.gang not in ("zone", "none"):
            raise WhatifError(f"gang mode must be zone or none, not {config.gang!r}")
        self.cfg = config
        self.state = ClusterState(nodes)
        self.rng = np.random.default_rng(config.seed)
        ranks = self.rng.permutation(len(nodes))
        self.placer = Placer(
            self.state,
            make_policy(config.policy, jobs, self.rng),
            ranks,
            self.rng,
            allowed=profile_filter(config.policy, self.state),
        )
        self.requests = requests_from(jobs)
        zones = [n.zone or n.model or "all" for n in nodes]
        self.zone_of = np.array(zones)
        self.zones = {z: self.zone_of == z for z in sorted(set(zones))}
        self.on_node: list[set[int]] = [set() for _ in nodes]  # request seqs holding each node
        self.by_seq = {r.seq: r for r in self.requests}
        self.waiting: dict[int, Request] = {}
        self.running: set[int] = set()
        self.deadlocks = 0
        self.reservations_made = 0
        self.evictions = 0
        # time-weighted measures
        self.typical = typical_shapes(jobs)
        gpu_jobs = [j for j in jobs if j.num_gpu > 0 and j.gpu_milli > 0]
        self.min_gpu_cpu = min((j.cpu_milli for j in gpu_jobs), default=0)
        self.min_gpu_mem = min((j.memory_mib for j in gpu_jobs), default=0)
        acc_cols = [self.state.access(s) for s in self.typical.spec]
        self._typ_access = np.stack(acc_cols, axis=1) if acc_cols else np.zeros((len(nodes), 0), dtype=bool)
        self.node_frag = np.zeros(len(nodes))
        self.node_stranded = np.zeros(len(nodes))
        self._metric_stamp = np.full(len(nodes), -1, dtype=np.int64)
        self._cap_milli = float(self.state.gpu_cap_milli.sum())
        self._fits_cache: dict[Shape, bool] = {}
        self._update_node_metrics()
        self.t_last: float | None = None
        self.integral = defaultdict(float)
        self.series: list[tuple[float, float]] = []
        self.node_gpu_s = np.zeros(len(nodes))
        self.zone_class_s: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.held_idle_gpu_s = 0.0

    # -- per-node measures ---------------------------------------------------------------
    def _update_node_metrics(self) -> None:
        st = self.state
        dirty = np.flatnonzero(st.stamp > self._metric_stamp)
        if len(dirty) == 0:
            return
        if len(self.typical):
            self.node_frag[dirty] = fragmentation(st.cpu_left[dirty], st.gpu_left[dirty], self._typ_access[dirty], self.typical)
        free = st.gpu_left[dirty].sum(axis=1)
        starved = (st.cpu_left[dirty] < self.min_gpu_cpu) | (st.mem_left[dirty] < self.min_gpu_mem)
        self.node_stranded[dirty] = np.where(starved, free, 0)
        self._metric_stamp[dirty] = st.clock
        self._stranded_total = float(self.node_stranded.sum())
        self._frag_total = float(self.node_frag.sum())

    def _advance(self, t: float) -> None:
        if self.t_last is not None and t > self.t_last:
            dt = t - self.t_last
            st = self.state
            alloc = st.allocated_milli()
            self.integral["alloc"] += alloc * dt
            self.integral["free"] += (self._cap_milli - alloc) * dt
            self.integral["stranded"] += self._stranded_total * dt
            self.integral["frag"] += self._frag_total * dt
            self.integral["time"] += dt
            if self.cfg.gang == "none":
                held = sum(r.shapes[k].total_milli for r in self.waiting.values() for k, _, _ in r.placed)
                self.held_idle_gpu_s += held / MILLI * dt
        self.t_last = t

    # -- placement -----------------------------------------------------------------------
    def _fits_empty(self, req: Request) -> bool:
        if not all(self._shape_fits_empty(s) for s in req.shapes):
            return False
        if not req.gang or self.cfg.gang == "none":
            return True
        for mask in self.zones.values():
            scratch = ClusterState([self.state.nodes[i] for i in np.flatnonzero(mask)])
            rng = np.random.default_rng(0)
            p = Placer(scratch, make_policy("bestfit", [], rng), np.arange(len(scratch)), rng)
            if all(p.place(s) is not None for s in req.shapes):
                return True
        return False

    def _shape_fits_empty(self, shape: Shape) -> bool:
        got = self._fits_cache.get(shape)
        if got is None:
            got = self._fits_cache[shape] = self.state.fits_empty(shape)
        return got

    def _unbind_all(self, req: Request) -> None:
        for task, node, gpus in req.placed:
            self.state.release(req.shapes[task], node, gpus)
            self.on_node[node].discard(req.seq)
        req.placed = []

    def _try(self, req: Request, mask: np.ndarray | None) -> bool:
        if not req.gang:
            got = self.placer.place(req.shapes[0], mask)
            if got is None:
                return False
            req.placed.append((0, got.node, got.gpus))
            self.on_node[got.node].add(req.seq)
            return True
        if self.cfg.gang == "zone":
            for zmask in self.zones.values():
                m = zmask if mask is None else (zmask & mask)
                ok = True
                for task, shape in enumerate(req.shapes):
                    got = self.placer.place(shape, m)
                    if got is None:
                        ok = False
                        break
                    req.placed.append((task, got.node, got.gpus))
                    self.on_node[got.node].add(req.seq)
                if ok:
                    return True
                self._unbind_all(req)
            return False
        # no gang scheduling: one task per call (the caller interleaves gangs, as a pod-by-pod
        # scheduler does), held until the last one is placed
        done = {task for task, _, _ in req.placed}
        for task, shape in enumerate(req.shapes):
            if task in done:
                continue
            got = self.placer.place(shape, mask)
            if got is not None:
                req.placed.append((task, got.node, got.gpus))
                self.on_node[got.node].add(req.seq)
                self._progress = True
            break
        return len(req.placed) == len(req.shapes)

    def _start(self, req: Request, t: float, heap: list) -> None:
        req.status = "running"
        req.start = t
        req.ran_on = list(req.placed)
        req.held_since = None
        self.waiting.pop(req.seq, None)
        self.running.add(req.seq)
        runtime = req.runtime_from(t)
        if math.isfinite(runtime):
            heapq.heappush(heap, (t + runtime, _END, req.seq))

    # -- reservations --------------------------------------------------------------------
    def _free_time(self, shape: Shape, node: int, t: float) -> float:
        """When ``shape`` would fit on ``node`` as its running requests end (inf: never)."""
        st = self.state
        cpu, mem, gl = int(st.cpu_left[node]), int(st.mem_left[node]), st.gpu_left[node].copy()

        def fits() -> bool:
            if cpu < shape.cpu or mem < shape.mem:
                return False
            return not shape.wants_gpu or int((gl >= shape.milli).sum()) >= shape.num_gpu

        if fits():
            return t
        ends = []
        for seq in self.on_node[node]:
            r = self.by_seq[seq]
            if r.status != "running" or r.start is None:
                continue
            rt = r.runtime_from(r.start)
            ends.append((r.start + rt, seq))
        for end, seq in sorted(ends):
            if not math.isfinite(end):
                break
            for task, n, gpus in self.by_seq[seq].placed:
                if n != node:
                    continue
                s = self.by_seq[seq].shapes[task]
                cpu += s.cpu
                mem += s.mem
                for g in gpus:
                    gl[g] += s.milli
            if fits():
                return end
        return math.inf

    def _reserve(self, req: Request, t: float, res_start: np.ndarray, res_owner: np.ndarray) -> bool:
        shape = max(req.shapes, key=lambda s: s.total_milli)
        k = len(req.shapes) if req.gang else 1
        best: tuple[float, np.ndarray] | None = None
        zones = self.zones.values() if req.gang and self.cfg.gang == "zone" else [np.ones(len(self.state), dtype=bool)]
        cap_ok = (self.state.cpu_cap >= shape.cpu) & (self.state.mem_cap >= shape.mem)
        if shape.wants_gpu:
            cap_ok &= (self.state.ngpu >= shape.num_gpu) & self.state.access(shape.spec)
        for zmask in zones:
            cand = np.flatnonzero(zmask & cap_ok & ~np.isfinite(res_start))
            if len(cand) < k:
                continue
            times = np.array([self._free_time(shape, int(n), t) for n in cand])
            order = np.argsort(times, kind="stable")[:k]
            when = float(times[order[-1]])
            if math.isfinite(when) and (best is None or when < best[0]):
                best = (when, cand[order])
        if best is None:
            return False
        res_start[best[1]] = best[0]
        res_owner[best[1]] = req.seq
        self.reservations_made += 1
        return True

    # -- the pass ------------------------------------------------------------------------
    def _pass(self, t: float, heap: list) -> None:
        if not self.waiting:
            return
        cfg = self.cfg
        reqs = list(self.waiting.values())
        ordered = queueing.order(cfg.queue, reqs, t, cfg.weights, self.rng)
        n = len(self.state)
        res_start = np.full(n, np.inf)
        res_owner = np.full(n, -1, dtype=np.int64)
        failed: set[tuple] = set()
        n_res = 0
        interleave = cfg.gang == "none"
        self._progress = False
        pending = ordered
        while pending:
            again = self._offer(pending, t, heap, res_start, res_owner, failed, n_res)
            n_res = again[1]
            # partial gangs get another round while any of their tasks found room
            pending = [r for r in again[0] if r.gang and r.status == "waiting"] if interleave and self._progress else []
            self._progress = False
        if cfg.gang == "none":
            self._deadlock(t, heap)

    def _offer(
        self,
        ordered: list[Request],
        t: float,
        heap: list,
        res_start: np.ndarray,
        res_owner: np.ndarray,
        failed: set[tuple],
        n_res: int,
    ) -> tuple[list[Request], int]:
        cfg = self.cfg
        for req in ordered:
            mask = None
            sig: tuple = ()
            if n_res:
                runtime = req.runtime_from(t)
                usable = (~np.isfinite(res_start)) | (t + runtime <= res_start) | (res_owner == req.seq)
                mask = usable
                sig = tuple(np.unique(res_start[~usable]).tolist())
            key = (tuple(req.shapes), req.gang, sig)
            placed = False
            if req.gang and cfg.gang == "none":
                placed = self._try(req, mask)
            elif key not in failed:
                placed = self._try(req, mask)
                if not placed:
                    failed.add(key)
            if placed:
                self._start(req, t, heap)
            else:
                if req.placed and req.held_since is None:
                    req.held_since = t
                if cfg.reserve_gpus > 0 and req.gpus >= cfg.reserve_gpus and n_res < cfg.max_reservations and not req.placed:
                    if self._reserve(req, t, res_start, res_owner):
                        n_res += 1
        return ordered, n_res

    def _deadlock(self, t: float, heap: list) -> None:
        partial = [r for r in self.waiting.values() if r.placed]
        if not partial or self.running:
            return
        self.deadlocks += 1
        partial.sort(key=lambda r: (r.submit, r.seq))
        for r in partial[1:]:
            self._release_held(r, t)
            self._unbind_all(r)
            r.held_since = None
            self.evictions += 1
        self._pass_again = True

    def _release_held(self, r: Request, t: float) -> None:
        r.held_since = None  # the idle hold was integrated as time went (see _advance)

    # -- the run -------------------------------------------------------------------------
    def run(self, tick: Callable[[float], None] | None = None) -> dict:
        heap: list[tuple[float, int, int]] = []
        for r in self.requests:
            heapq.heappush(heap, (r.submit, _ARRIVE, r.seq))
            if r.withdraw_at is not None:
                heapq.heappush(heap, (r.withdraw_at, _WITHDRAW, r.seq))
        for start, _ in self.cfg.weights.steps[1:]:
            heapq.heappush(heap, (start, _WEIGHTS, -1))
        # without a horizon the run goes on until the queue drains; a job with no recorded end
        # runs until the trace's last instant (or the last event, if later)
        trace_end = max(
            [r.submit for r in self.requests]
            + [r.withdraw_at or 0 for r in self.requests]
            + [r.submit + (r.duration or 0) for r in self.requests]
            + [0.0]
        )
        horizon = self.cfg.horizon if self.cfg.horizon is not None else math.inf
        metric_step = (min(trace_end, horizon) - min((r.submit for r in self.requests), default=0.0)) / METRIC_SAMPLES
        self._metric_due = -math.inf
        events = 0
        while heap and heap[0][0] <= horizon:
            t = heap[0][0]
            self._advance(t)
            changed = False
            while heap and heap[0][0] == t:
                _, kind, seq = heapq.heappop(heap)
                changed = True
                if kind == _WEIGHTS:
                    continue
                req = self.by_seq[seq]
                if kind == _END and req.status == "running":
                    self._finish(req, t)
                elif kind == _WITHDRAW and req.status == "waiting":
                    self._release_held(req, t)
                    self._unbind_all(req)
                    req.status = "withdrawn"
                    self.waiting.pop(seq, None)
                elif kind == _ARRIVE:
                    if req.withdraw_at is not None and req.withdraw_at <= t:
                        req.status = "withdrawn"  # deleted the instant it came
                    elif not self._fits_empty(req):
                        req.status = "unschedulable"
                    else:
                        req.status = "waiting"
                        self.waiting[seq] = req
            if changed:
                self._pass_again = True
                rounds = 0
                while self._pass_again and rounds < 4:
                    self._pass_again = False
                    self._pass(t, heap)
                    rounds += 1
            if t >= self._metric_due:  # per-node measures sampled, not recomputed at every event
                self._update_node_metrics()
                self._metric_due = t + metric_step
            self.series.append((t, self.state.allocated_milli() / max(self.state.total_gpus, 1) / 10))
            events += 1
            if tick is not None and events % 500 == 0:
                tick(min(t / trace_end, 1.0) if trace_end else 1.0)
        if not math.isfinite(horizon):
            horizon = max(trace_end, self.t_last or 0.0)
        self._advance(horizon)
        for seq in list(self.running):
            self._finish(self.by_seq[seq], horizon, ended=False)
        for r in self.waiting.values():
            self._release_held(r, horizon)
        return self.report(horizon)

    def _finish(self, req: Request, t: float, ended: bool = True) -> None:
        run_s = t - (req.start if req.start is not None else t)
        cls = job_class(req.gpus)
        for task, node, _ in req.placed:
            used = req.shapes[task].total_milli / MILLI * run_s
            self.node_gpu_s[node] += used
            self.zone_class_s[str(self.zone_of[node])][cls] += used
        if ended:
            self._unbind_all(req)
            req.status = "done"
        req.end = t
        self.running.discard(req.seq)

    # -- the indicators ------------------------------------------------------------------
    def report(self, horizon: float) -> dict:
        st = self.state
        span = self.integral["time"] or 1.0
        total_milli = float(st.gpu_cap_milli.sum()) or 1.0
        placed = [r for r in self.requests if r.start is not None]
        waits = []
        team_h: dict[str, float] = defaultdict(float)
        user_h: dict[str, float] = defaultdict(float)
        low_small = all_h = 0.0
        for r in placed:
            models = sorted({st.models[node] or "cpu" for _, node, _ in r.ran_on})
            groups = {
                "cluster": "all",
                "gpu_bucket": gpu_bucket(r.gpus),
                "job_class": job_class(r.gpus),
                "gpu_model": models[0] if len(models) == 1 else "mixed",
                "qos": r.qos or "unknown",
                "priority": r.priority or "unknown",
                "gang": "gang" if r.gang else "single",
            }
            waits.append((groups, r.start - r.submit))
            hours = r.gpus * ((r.end if r.end is not None else horizon) - r.start) / 3600
            team_h[r.team] += hours
            user_h[r.user] += hours
            all_h += hours
            if r.priority == "low" and r.gpus <= 1:
                low_small += hours
        zone_util = {}
        for z, mask in self.zones.items():
            cap = float(st.gpu_cap_milli[mask].sum()) / MILLI * span
            if cap > 0:
                zone_util[z] = round(100 * float(self.node_gpu_s[mask].sum()) / cap, 2)
        status = defaultdict(int)
        for r in self.requests:
            status[r.status] += 1
        never = [r for r in self.requests if r.start is None]
        free_mean = self.integral["free"] / span
        return {
            "policy": self.cfg.policy,
            "queue": self.cfg.queue,
            "gang": self.cfg.gang,
            "reserve_gpus": self.cfg.reserve_gpus,
            "seed": self.cfg.seed,
            "requests": len(self.requests),
            "placed": len(placed),
            "never_placed": len(never),
            "unschedulable": status["unschedulable"],
            "withdrawn_waiting": status["withdrawn"],
            "still_waiting": status["waiting"],
            "horizon_s": horizon,
            "gpu_alloc_pct": round(100 * self.integral["alloc"] / span / total_milli, 2),
            "unallocated_gpus": round(free_mean / MILLI, 1),
            "stranded_gpus": round(self.integral["stranded"] / span / MILLI, 1),
            "frag_rate_pct": round(100 * self.integral["frag"] / self.integral["free"], 2) if self.integral["free"] else 0.0,
            "wait_s": quantiles(w for _, w in waits),
            "wait_by": waits_by(waits),
            "gpu_hours": round(all_h, 1),
            "gpu_hours_by_team": shares(team_h, 1),
            "gpu_hours_by_user": shares(user_h, 1),
            "zone_util_pct": zone_util,
            "zone_use_by_class_pct": {
                z: {c: round(100 * v / sum(by.values()), 1) for c, v in sorted(by.items())}
                for z, by in sorted(self.zone_class_s.items())
                if sum(by.values()) > 0
            },
            "low_priority_small_share_pct": round(100 * low_small / all_h, 2) if all_h else 0.0,
            "gang_deadlocks": self.deadlocks,
            "gang_evictions": self.evictions,
            "gang_held_idle_gpu_hours": round(self.held_idle_gpu_s / 3600, 1),
            "reservations": self.reservations_made,
            "_waits": [(g["gpu_bucket"], w) for g, w in waits],
        }


def run_events(
    nodes: Sequence[Node], jobs: Sequence[Job], config: EventConfig, tick: Callable[[float], None] | None = None
) -> tuple[dict, list[tuple[float, float]]]:
    sim = EventSim(nodes, jobs, config)
    rep = sim.run(tick)
    return rep, sim.series
