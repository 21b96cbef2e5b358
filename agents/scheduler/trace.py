"""A replay of the Alibaba openb 2023 GPU-cluster trace as a live scheduler event stream.

The trace (USENIX ATC'23, "Beware of Fragmentation") lists 8,152 pods with their creation,
scheduling and deletion times in seconds from the trace start, and the cluster's GPU nodes.
Replaying it through the same interface as the Kubernetes and Slurm adapters gives the
pipeline a realistic, reproducible job stream without a cluster. Trace second ``t`` happens at
wall time ``start_ms + t * 1000 / speedup``; each :meth:`OpenbTraceCollector.sample` returns
the transitions that fell due since the previous call, in time order, each exactly once.

Mapping:

* ``creation_time`` -> ``submitted``; ``scheduled_time`` -> ``scheduled``, with the ``node`` and
  ``gpu_ids`` of the placement model below (the same ones again on the pod's ``finished``);
* ``deletion_time`` -> ``finished`` with ``status`` = ``pod_phase`` as recorded (``Succeeded``,
  ``Failed``, or ``Running`` for a pod deleted while it ran); a pod whose phase says it never
  ran (``Pending``) and that has no ``scheduled_time`` gets ``deleted`` instead;
* ``qos`` is kept as is, and :data:`PRIORITY_BY_QOS` ranks it: latency-sensitive (``LS``) and
  ``Guaranteed`` pods are ``high``, ``Burstable`` ``medium``, best-effort (``BE``) ``low``.

The trace records no node placement, so the replay *models* one (``TraceConfig.place``; off,
``scheduled`` carries no node): pods are bound in replay order against the GPU node list, and
a pod's GPUs are released at its ``finished``. The model is deterministic (ties go to the node,
then the GPU, listed first) and is not what Alibaba's scheduler did; it exists so that
placement-dependent views (allocation by model, fragmentation) have something realistic to show.

* a pod asking for whole GPUs (an integer >= 1) takes that many *fully free* GPUs of one node,
  chosen best fit: the node, among those of an allowed model (``gpu_spec``, '|'-separated; empty
  means any) with enough fully free GPUs, that is left with the fewest;
* a pod asking for a share of one GPU (``0 < gpus < 1``, tracked in thousandths) goes to the GPU
  with the least remaining share that still fits, which prefers GPUs already shared; if no shared
  GPU fits it opens a fully free GPU, on the node best fit for one whole GPU;
* CPU-only pods are not placed. A GPU pod that fits nowhere (or asks for a non-integer number
  above one, or for more GPUs than any one node has) is still emitted as ``scheduled``, without
  a node, and counted in :attr:`OpenbTraceCollector.unplaced`. Ids are ``f"{node}/gpu{i}"``.

A malformed row is skipped and counted in :attr:`OpenbTraceCollector.skipped_rows`: a replay
of a slightly damaged file is more useful than none.
"""

from __future__ import annotations

import bisect
import csv
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from hpcinsight.agents.base import Collector
from hpcinsight.agents.registry import check, collector_kind
from hpcinsight.schemas.catalog import NODE_INVENTORY, SCHEDULER_EVENTS, Topic
from hpcinsight.schemas.events import Event, NodeInventory, SchedulerEvent

log = logging.getLogger(__name__)

POD_FILE = "openb_pod_list_default.csv"
NODE_FILE = "openb_node_list_gpu_node.csv"
SOURCE = "openb"
MIB = 2**20
MILLI = 1000  # a GPU's share is tracked in thousandths, as the trace's gpu_milli
PRIORITY_BY_QOS = {"LS": "high", "Guaranteed": "high", "Burstable": "medium", "BE": "low"}
_NEVER_RAN = frozenset({"Pending"})
_ORDER = {"submitted": 0, "scheduled": 1, "finished": 2, "deleted": 2}  # ties at one instant


@dataclass(frozen=True)
class TraceConfig:
    data_dir: Path = Path("../shared/data/alibaba-openb-2023")
    speedup: float = 60.0  # trace seconds per wall second
    limit: int | None = None  # replay only the first ``limit`` pods of the file
    start_ms: int | None = None  # wall time of trace second 0; default: the first sample's tick
    place: bool = True  # model a node placement for GPU pods (the trace has none); see the module doc

    def __post_init__(self) -> None:
        check(math.isfinite(self.speedup) and self.speedup > 0, "speedup", "must be a positive number")
        check(self.limit is None or self.limit >= 0, "limit", "must be >= 0")


@dataclass(frozen=True)
class TracePod:
    """One pod row, parsed and checked; times are trace seconds."""

    name: str
    created_s: float
    scheduled_s: float | None
    deleted_s: float | None
    phase: str | None
    qos: str | None
    cpus: float | None
    memory_bytes: int | None
    gpus: float | None
    gpu_model: str | None


@dataclass(frozen=True, order=True)
class TraceStep:
    """One transition of one pod at trace second ``t_s``; sorts in replay order."""

    t_s: float
    order: int
    seq: int
    kind: str = field(compare=False)
    pod: TracePod = field(compare=False)


def _num(text: str | None, what: str) -> float | None:
    """An empty cell is a missing value; anything else must be a finite, non-negative number."""
    text = (text or "").strip()
    if not text:
        return None
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} is {text!r}")
    return value


def _label(text: str | None) -> str | None:
    text = (text or "").strip()
    return text[:256] or None


def parse_pod(row: dict[str, str]) -> TracePod:
    """A pod row as a :class:`TracePod`; raises ``ValueError`` (or ``TypeError``) if malformed."""
    name = _label(row.get("name"))
    created = _num(row.get("creation_time"), "creation_time")
    if name is None or created is None:
        raise ValueError("a pod needs a name and a creation_time")
    scheduled = _num(row.get("scheduled_time"), "scheduled_time")
    deleted = _num(row.get("deletion_time"), "deletion_time")
    if (scheduled is not None and scheduled < created) or (deleted is not None and deleted < max(created, scheduled or 0)):
        raise ValueError(f"pod {name}: times out of order")
    cpu_milli = _num(row.get("cpu_milli"), "cpu_milli")
    memory_mib = _num(row.get("memory_mib"), "memory_mib")
    num_gpu = _num(row.get("num_gpu"), "num_gpu")
    gpu_milli = _num(row.get("gpu_milli"), "gpu_milli")
    gpus = num_gpu
    if num_gpu == 1 and gpu_milli is not None and 0 < gpu_milli < 1000:  # a share of one GPU
        gpus = gpu_milli / 1000
    return TracePod(
        name=name,
        created_s=created,
        scheduled_s=scheduled,
        deleted_s=deleted,
        phase=_label(row.get("pod_phase")),
        qos=_label(row.get("qos")),
        cpus=None if cpu_milli is None else cpu_milli / 1000,
        memory_bytes=None if memory_mib is None else int(memory_mib * MIB),
        gpus=gpus,
        gpu_model=_label(row.get("gpu_spec")),
    )


def parse_node(row: dict[str, str], ts: int) -> NodeInventory:
    """A GPU node row as a :class:`NodeInventory` at ``ts``; raises ``ValueError`` if malformed."""
    name = _label(row.get("sn"))
    gpus = _num(row.get("gpu"), "gpu")
    if name is None or gpus is None or gpus != int(gpus):
        raise ValueError("a node needs a name and a whole GPU count")
    cpu_milli = _num(row.get("cpu_milli"), "cpu_milli")
    memory_mib = _num(row.get("memory_mib"), "memory_mib")
    return NodeInventory(
        ts=ts,
        node=name,
        gpu_count=int(gpus),
        gpu_model=_label(row.get("model")),
        cpus=None if cpu_milli is None else cpu_milli / 1000,
        memory_bytes=None if memory_mib is None else int(memory_mib * MIB),
    )


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        return list(csv.DictReader(f))


def pod_steps(pods: list[TracePod]) -> list[TraceStep]:
    """Every transition of ``pods``, sorted by trace time (then lifecycle order, then file order)."""
    steps: list[TraceStep] = []
    for seq, pod in enumerate(pods):
        steps.append(TraceStep(pod.created_s, _ORDER["submitted"], seq, "submitted", pod))
        if pod.scheduled_s is not None:
            steps.append(TraceStep(pod.scheduled_s, _ORDER["scheduled"], seq, "scheduled", pod))
        if pod.deleted_s is not None:
            never_ran = pod.scheduled_s is None and pod.phase in _NEVER_RAN
            kind = "deleted" if never_ran else "finished"
            steps.append(TraceStep(pod.deleted_s, _ORDER[kind], seq, kind, pod))
    steps.sort()
    return steps


@dataclass(frozen=True)
class Placement:
    """Where the model bound one pod: a node, the GPUs it holds there and the share of each."""

    node: str
    gpu_ids: tuple[str, ...]
    node_index: int
    gpu_indexes: tuple[int, ...]
    milli: int  # thousandths of a GPU held on each of ``gpu_indexes``


def allowed_models(spec: str | None) -> frozenset[str] | None:
    """The models a ``gpu_spec`` allows ('|'-separated); None (any model) when it is empty."""
    models = frozenset(m.strip() for m in (spec or "").split("|") if m.strip())
    return models or None


class PlacementModel:
    """Best-fit binding of pods to GPUs, fast enough to run over the whole trace at start-up.

    Two indexes keep each decision cheap instead of scanning 1,213 nodes per pod: per GPU model,
    the nodes grouped by how many fully free GPUs they have (whole-GPU best fit looks in the
    smallest group that is large enough), and the partly shared GPUs sorted by remaining share
    (a fractional pod bisects for the tightest fit).
    """

    def __init__(self, nodes: Iterable[NodeInventory]) -> None:
        self._names: list[str] = []
        self._models: list[str] = []
        self._used: list[list[int]] = []  # per node, per GPU: thousandths allocated
        self._free: list[int] = []  # per node: fully free GPUs
        self._by_free: dict[str, dict[int, set[int]]] = {}  # model -> free count -> node indexes
        self._shared: dict[str, list[tuple[int, int, int]]] = {}  # model -> sorted (remaining, node, gpu)
        seen: set[str] = set()
        for inv in nodes:
            if inv.gpu_count <= 0 or inv.node in seen:
                continue
            seen.add(inv.node)
            i, model = len(self._names), inv.gpu_model or ""
            self._names.append(inv.node)
            self._models.append(model)
            self._used.append([0] * inv.gpu_count)
            self._free.append(inv.gpu_count)
            self._by_free.setdefault(model, {}).setdefault(inv.gpu_count, set()).add(i)
            self._shared.setdefault(model, [])
        self.largest = max((len(u) for u in self._used), default=0)

    def _models_for(self, spec: str | None) -> list[str]:
        allowed = allowed_models(spec)
        return sorted(self._by_free) if allowed is None else sorted(m for m in allowed if m in self._by_free)

    def _best_node(self, need: int, models: list[str]) -> int | None:
        """The node with at least ``need`` fully free GPUs that keeps the fewest; lowest index on ties."""
        for free in range(need, self.largest + 1):
            found = [min(group) for m in models if (group := self._by_free[m].get(free))]
            if found:
                return min(found)
        return None

    def _set_used(self, node: int, gpu: int, milli: int) -> None:
        """Change one GPU's allocation and keep both indexes in step."""
        model, old = self._models[node], self._used[node][gpu]
        shared = self._shared[model]
        if 0 < old < MILLI:
            del shared[bisect.bisect_left(shared, (MILLI - old, node, gpu))]
        if 0 < milli < MILLI:
            bisect.insort(shared, (MILLI - milli, node, gpu))
        free_delta = (milli == 0) - (old == 0)
        if free_delta:
            groups = self._by_free[model]
            groups[self._free[node]].discard(node)
            self._free[node] += free_delta
            groups.setdefault(self._free[node], set()).add(node)
        self._used[node][gpu] = milli

    def _placement(self, node: int, gpus: list[int], milli: int) -> Placement:
        for g in gpus:
            self._set_used(node, g, self._used[node][g] + milli)
        name = self._names[node]
        return Placement(name, tuple(f"{name}/gpu{g}" for g in gpus), node, tuple(gpus), milli)

    def place(self, gpus: float | None, spec: str | None) -> Placement | None:
        """Bind a pod asking for ``gpus`` of a model ``spec`` allows; None if it fits nowhere (or asks for none)."""
        models = self._models_for(spec)
        if gpus is None or gpus <= 0 or not models:
            return None
        if gpus < 1:
            return self._place_share(min(MILLI - 1, max(1, round(gpus * MILLI))), models)
        if gpus != int(gpus):
            return None
        node = self._best_node(int(gpus), models)
        if node is None:
            return None
        free = [g for g, used in enumerate(self._used[node]) if used == 0][: int(gpus)]
        return self._placement(node, free, MILLI)

    def _place_share(self, need: int, models: list[str]) -> Placement | None:
        """A share of ``need`` thousandths: the tightest shared GPU that fits, else a fresh GPU."""
        fits = []
        for m in models:
            shared = self._shared[m]
            k = bisect.bisect_left(shared, (need, -1, -1))
            if k < len(shared):
                fits.append(shared[k])
        if fits:
            _, node, gpu = min(fits)
            return self._placement(node, [gpu], need)
        fresh = self._best_node(1, models)
        return None if fresh is None else self._placement(fresh, [self._used[fresh].index(0)], need)

    def release(self, placement: Placement) -> None:
        """Give back what :meth:`place` bound."""
        for g in placement.gpu_indexes:
            self._set_used(placement.node_index, g, self._used[placement.node_index][g] - placement.milli)


def place_pods(steps: list[TraceStep], nodes: Iterable[NodeInventory]) -> tuple[dict[int, Placement], list[str]]:
    """The placement of every GPU pod of ``steps`` (by pod ``seq``), and the names of those that fit nowhere.

    Steps are taken in replay order: a pod is bound at its ``scheduled`` step and releases its GPUs
    at its ``finished`` step, so at any instant the model agrees with the event stream.
    """
    model = PlacementModel(nodes)
    placed: dict[int, Placement] = {}
    unplaced: list[str] = []
    for step in steps:
        gpus = step.pod.gpus
        if step.kind == "scheduled" and gpus:
            if (where := model.place(gpus, step.pod.gpu_model)) is None:
                unplaced.append(step.pod.name)
            else:
                placed[step.seq] = where
        elif step.kind in ("finished", "deleted") and step.seq in placed:
            model.release(placed[step.seq])
    return placed, unplaced


def to_event(step: TraceStep, ts: int, placement: Placement | None = None) -> SchedulerEvent:
    """The :class:`SchedulerEvent` of ``step`` stamped at wall time ``ts`` (epoch ms), placed where ``placement`` says."""
    pod = step.pod
    where = {} if placement is None or step.kind == "submitted" else {"node": placement.node, "gpu_ids": list(placement.gpu_ids)}
    return SchedulerEvent(
        ts=ts,
        source=SOURCE,
        job_id=pod.name,
        kind=step.kind,
        priority=PRIORITY_BY_QOS.get(pod.qos or ""),
        qos=pod.qos,
        requested_gpus=pod.gpus,
        requested_cpus=pod.cpus,
        requested_memory_bytes=pod.memory_bytes,
        gpu_model=pod.gpu_model,
        name=pod.name,
        status=pod.phase if step.kind in ("finished", "deleted") else None,
        **where,
    )


def wall_ms(t_s: float, start_ms: int, speedup: float) -> int:
    return start_ms + round(t_s * 1000 / speedup)


def events_between(
    steps: list[TraceStep],
    t0_s: float,
    t1_s: float,
    start_ms: int,
    speedup: float,
    placements: dict[int, Placement] | None = None,
) -> list[SchedulerEvent]:
    """Pure helper: the events of ``steps`` with ``t0_s <= t < t1_s`` (trace seconds), in order."""
    where = placements or {}
    return [to_event(s, wall_ms(s.t_s, start_ms, speedup), where.get(s.seq)) for s in steps if t0_s <= s.t_s < t1_s]


class OpenbTraceCollector(Collector[TraceConfig]):
    """Replays the openb trace: node inventory on the first sample, then pod transitions as they fall due."""

    topic = SCHEDULER_EVENTS
    #: NodeInventory records in :meth:`sample` belong on this topic, not on :attr:`topic`
    extra_topics: ClassVar[tuple[Topic, ...]] = (NODE_INVENTORY,)

    def __init__(self, config: TraceConfig) -> None:
        super().__init__(config)
        pod_path, node_path = config.data_dir / POD_FILE, config.data_dir / NODE_FILE
        for path in (pod_path, node_path):
            if not path.is_file():
                raise FileNotFoundError(f"openb trace file {path} not found; set TraceConfig.data_dir to the trace folder")
        self.skipped_rows = 0
        pods: list[TracePod] = []
        for row in _rows(pod_path):
            if config.limit is not None and len(pods) >= config.limit:
                break
            try:
                pods.append(parse_pod(row))
            except (ValueError, TypeError, AttributeError) as err:
                self.skipped_rows += 1
                log.debug("skipped pod row %r: %s", row, err)
        self.pods = pods
        self.nodes = self._parse_nodes(_rows(node_path))
        self._steps = pod_steps(pods)
        #: pod ``seq`` -> where the model bound it; and the GPU pods it could not bind (see the module doc)
        self.placements: dict[int, Placement] = {}
        self.unplaced_pods: list[str] = []
        if config.place:
            self.placements, self.unplaced_pods = place_pods(self._steps, self.nodes)
        self._next = 0
        self._start_ms: int | None = config.start_ms
        self._inventory_sent = False

    @property
    def done(self) -> bool:
        """Whether every transition of the trace has been emitted."""
        return self._next >= len(self._steps)

    @property
    def unplaced(self) -> int:
        """How many GPU pods the placement model could bind nowhere (emitted without a node)."""
        return len(self.unplaced_pods)

    def _parse_nodes(self, rows: list[dict[str, str]]) -> list[NodeInventory]:
        out: list[NodeInventory] = []
        for row in rows:
            try:
                out.append(parse_node(row, 0))  # stamped when sent
            except (ValueError, TypeError, AttributeError) as err:
                self.skipped_rows += 1
                log.debug("skipped node row %r: %s", row, err)
        return out

    def _inventory(self, now_ms: int) -> list[NodeInventory]:
        return [msgspec.structs.replace(n, ts=now_ms) for n in self.nodes]

    def sample(self, now_ms: int) -> list[Event]:
        if self._start_ms is None:
            self._start_ms = now_ms
        out: list[Event] = []
        if not self._inventory_sent:
            self._inventory_sent = True
            out.extend(self._inventory(now_ms))
            if self.skipped_rows:
                log.warning("openb trace: skipped %d malformed rows", self.skipped_rows)
            if self.unplaced:
                log.info("openb trace: the placement model found no room for %d GPU pods", self.unplaced)
        steps, speedup = self._steps, self.config.speedup
        while self._next < len(steps):
            ts = wall_ms(steps[self._next].t_s, self._start_ms, speedup)
            if ts > now_ms:
                break
            out.append(to_event(steps[self._next], ts, self.placements.get(steps[self._next].seq)))
            self._next += 1
        return out


@collector_kind("scheduler_trace", TraceConfig)
def scheduler_trace(config: TraceConfig) -> list[Collector[Any]]:
    """The openb trace replayed as scheduler events (``[agent.collectors.scheduler_trace]``)."""
    return [OpenbTraceCollector(config)]
