"""A replay of the Alibaba openb 2023 GPU-cluster trace as a live scheduler event stream.

The trace (USENIX ATC'23, "Beware of Fragmentation") lists 8,152 pods with their creation,
scheduling and deletion times in seconds from the trace start, and the cluster's GPU nodes.
Replaying it through the same interface as the Kubernetes and Slurm adapters gives the
pipeline a realistic, reproducible job stream without a cluster. Trace second ``t`` happens at
wall time ``start_ms + t * 1000 / speedup``; each :meth:`OpenbTraceCollector.sample` returns
the transitions that fell due since the previous call, in time order, each exactly once.

Mapping (the trace has no node assignment, so ``scheduled`` carries no node):

* ``creation_time`` -> ``submitted``; ``scheduled_time`` -> ``scheduled``;
* ``deletion_time`` -> ``finished`` with ``status`` = ``pod_phase`` as recorded (``Succeeded``,
  ``Failed``, or ``Running`` for a pod deleted while it ran); a pod whose phase says it never
  ran (``Pending``) and that has no ``scheduled_time`` gets ``deleted`` instead;
* ``qos`` is kept as is, and :data:`PRIORITY_BY_QOS` ranks it: latency-sensitive (``LS``) and
  ``Guaranteed`` pods are ``high``, ``Burstable`` ``medium``, best-effort (``BE``) ``low``.

A malformed row is skipped and counted in :attr:`OpenbTraceCollector.skipped_rows`: a replay
of a slightly damaged file is more useful than none.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from agents.base import Collector
from schemas.catalog import NODE_INVENTORY, SCHEDULER_EVENTS, Topic
from schemas.events import Event, NodeInventory, SchedulerEvent

log = logging.getLogger(__name__)

POD_FILE = "openb_pod_list_default.csv"
NODE_FILE = "openb_node_list_gpu_node.csv"
SOURCE = "openb"
MIB = 2**20
PRIORITY_BY_QOS = {"LS": "high", "Guaranteed": "high", "Burstable": "medium", "BE": "low"}
_NEVER_RAN = frozenset({"Pending"})
_ORDER = {"submitted": 0, "scheduled": 1, "finished": 2, "deleted": 2}  # ties at one instant


@dataclass(frozen=True)
class TraceConfig:
    data_dir: Path = Path("../shared/data/alibaba-openb-2023")
    speedup: float = 60.0  # trace seconds per wall second
    limit: int | None = None  # replay only the first ``limit`` pods of the file
    start_ms: int | None = None  # wall time of trace second 0; default: the first sample's tick

    def __post_init__(self) -> None:
        if not (math.isfinite(self.speedup) and self.speedup > 0):
            raise ValueError("speedup must be a positive number")
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must be >= 0")


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
        name=name, created_s=created, scheduled_s=scheduled, deleted_s=deleted,
        phase=_label(row.get("pod_phase")), qos=_label(row.get("qos")),
        cpus=None if cpu_milli is None else cpu_milli / 1000,
        memory_bytes=None if memory_mib is None else int(memory_mib * MIB),
        gpus=gpus, gpu_model=_label(row.get("gpu_spec")),
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
        ts=ts, node=name, gpu_count=int(gpus), gpu_model=_label(row.get("model")),
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


def to_event(step: TraceStep, ts: int) -> SchedulerEvent:
    """The :class:`SchedulerEvent` of ``step`` stamped at wall time ``ts`` (epoch ms)."""
    pod = step.pod
    return SchedulerEvent(
        ts=ts, source=SOURCE, job_id=pod.name, kind=step.kind,  # type: ignore[arg-type]
        priority=PRIORITY_BY_QOS.get(pod.qos or ""), qos=pod.qos,
        requested_gpus=pod.gpus, requested_cpus=pod.cpus, requested_memory_bytes=pod.memory_bytes,
        gpu_model=pod.gpu_model, name=pod.name,
        status=pod.phase if step.kind in ("finished", "deleted") else None,
    )


def wall_ms(t_s: float, start_ms: int, speedup: float) -> int:
    return start_ms + round(t_s * 1000 / speedup)


def events_between(steps: list[TraceStep], t0_s: float, t1_s: float, start_ms: int, speedup: float) -> list[SchedulerEvent]:
    """Pure helper: the events of ``steps`` with ``t0_s <= t < t1_s`` (trace seconds), in order."""
    return [to_event(s, wall_ms(s.t_s, start_ms, speedup)) for s in steps if t0_s <= s.t_s < t1_s]


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
        self._node_rows = _rows(node_path)
        self._steps = pod_steps(pods)
        self._next = 0
        self._start_ms: int | None = config.start_ms
        self._inventory_sent = False

    @property
    def done(self) -> bool:
        """Whether every transition of the trace has been emitted."""
        return self._next >= len(self._steps)

    def _inventory(self, now_ms: int) -> list[NodeInventory]:
        out: list[NodeInventory] = []
        for row in self._node_rows:
            try:
                out.append(parse_node(row, now_ms))
            except (ValueError, TypeError, AttributeError) as err:
                self.skipped_rows += 1
                log.debug("skipped node row %r: %s", row, err)
        return out

    def sample(self, now_ms: int) -> list[Event]:
        if self._start_ms is None:
            self._start_ms = now_ms
        out: list[Event] = []
        if not self._inventory_sent:
            self._inventory_sent = True
            out.extend(self._inventory(now_ms))
            if self.skipped_rows:
                log.warning("openb trace: skipped %d malformed rows", self.skipped_rows)
        steps, speedup = self._steps, self.config.speedup
        while self._next < len(steps):
            ts = wall_ms(steps[self._next].t_s, self._start_ms, speedup)
            if ts > now_ms:
                break
            out.append(to_event(steps[self._next], ts))
            self._next += 1
        return out
