"""The scheduler's view of the simulated cluster: its nodes and the one job that runs on all of them.

With ``hpcinsight agent --backend sim --scheduler sim`` the pipeline gets what a Slurm or
Kubernetes adapter would report for the sim cluster, so attribution (user, team, zone), the job
stage and the job-level detectors run on sim data exactly as on a real cluster. On its first tick
the collector reports every node (:class:`NodeInventory`: its GPUs, model ``H100-SXM``, zone
``sim-zone-a`` for the first half of the nodes and ``sim-zone-b`` for the rest) and the sim job's
``submitted``, ``scheduled`` and ``started`` (user ``alice``, team ``llm``, priority ``high``, every GPU
of the cluster, placed by node as a Slurm host list such as ``sim-node-[00-03]``). The job runs
for as long as the agent does, so nothing follows.

Everything is stamped with the first tick's time, the time of the GPUs' first samples: the
placement then covers every sample of the run (attribution looks placements up by event time).

With a :class:`hpcinsight.agents.sim.workload.Workload` the collector reports its jobs instead: each one's
``submitted``, ``scheduled`` and ``started`` at the first tick at or after its start (its nodes as a
host list; a job holding part of one node names its GPUs by UUID), and ``finished`` at the first
tick at or after its end, or when the workload's duration is over.
"""

from __future__ import annotations

from typing import Any, ClassVar

from hpcinsight.agents.base import Collector
from hpcinsight.agents.registry import collector_kind
from hpcinsight.agents.sim.gpu import SimClusterConfig, SimConfig, gpu_uuid
from hpcinsight.agents.sim.workload import SimJob, Workload
from hpcinsight.schemas.catalog import NODE_INVENTORY, SCHEDULER_EVENTS, Topic
from hpcinsight.schemas.events import Event, NodeInventory, SchedulerEvent

SOURCE = "sim"
GPU_MODEL = "H100-SXM"
USER, TEAM, PRIORITY = "alice", "llm", "high"
ZONES = ("sim-zone-a", "sim-zone-b")
#: nodes under one InfiniBand leaf switch (the node inventory's ``ib_switch`` label)
LEAF_NODES = 4


def node_names(config: SimConfig) -> list[str]:
    """The sim nodes' names, as the GPU collector names them."""
    return [f"{config.node_prefix}{n:02d}" for n in range(config.nodes)]


def hostlist(config: SimConfig, nodes: list[int] | None = None) -> str:
    """The sim nodes (``nodes``, default all) as one Slurm host list: ``sim-node-[00-03]``, or
    ``sim-node-[00-99,100-127]`` where the names grow a digit (a range's ends have the width of its
    names), ``sim-node-[01,04-05]`` for a set with gaps; one node is just its name."""
    numbers = sorted(set(range(config.nodes) if nodes is None else nodes))
    if len(numbers) == 1:
        return f"{config.node_prefix}{numbers[0]:02d}"
    ranges: list[str] = []
    i = 0
    while i < len(numbers):
        lo = numbers[i]
        width = len(f"{lo:02d}")
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1 and len(f"{numbers[j + 1]:02d}") == width:
            j += 1
        hi = numbers[j]
        ranges.append(f"{lo:0{width}d}-{hi:0{width}d}" if hi > lo else f"{lo:0{width}d}")
        i = j + 1
    return f"{config.node_prefix}[{','.join(ranges)}]"


class SimSchedulerCollector(Collector[SimConfig]):
    """Node inventory and the sim job's start, once, on the first tick (or the workload's jobs as they come and go)."""

    topic = SCHEDULER_EVENTS
    #: NodeInventory records in :meth:`sample` belong on this topic, not on :attr:`topic`
    extra_topics: ClassVar[tuple[Topic, ...]] = (NODE_INVENTORY,)

    def __init__(self, config: SimConfig) -> None:
        if any(c in config.node_prefix for c in "[],"):
            raise ValueError(f"node prefix {config.node_prefix!r} cannot appear in a host list")
        super().__init__(config)
        self._sent = False
        self._start_ms: int | None = None
        self._started: set[str] = set()
        self._finished: set[str] = set()

    def sample(self, now_ms: int) -> list[Event]:
        if self.config.workload is not None:
            return self._workload_events(self.config.workload, now_ms)
        if self._sent:
            return []
        self._sent = True
        cfg = self.config
        out = self._inventory(now_ms)
        if cfg.job_id is None:
            return out  # a cluster with nothing scheduled on it
        job = {
            "ts": now_ms,
            "source": SOURCE,
            "job_id": cfg.job_id,
            "user": USER,
            "team": TEAM,
            "priority": PRIORITY,
            "requested_gpus": float(cfg.nodes * cfg.gpus_per_node),
            "gpu_model": GPU_MODEL,
            "name": cfg.job_id,
        }
        out.append(SchedulerEvent(kind="submitted", **job))
        out += [SchedulerEvent(kind=kind, node=hostlist(cfg), **job) for kind in ("scheduled", "started")]
        return out

    def _inventory(self, now_ms: int) -> list[Event]:
        cfg = self.config
        half = (cfg.nodes + 1) // 2  # an odd node out goes to the first zone
        models = cfg.workload.node_models if cfg.workload is not None else ()
        return [
            NodeInventory(
                ts=now_ms,
                node=name,
                gpu_count=cfg.gpus_per_node,
                gpu_model=models[n] if models else GPU_MODEL,
                zone=ZONES[n >= half],
                labels={"ib_switch": f"leaf-{n // LEAF_NODES}"},
            )
            for n, name in enumerate(node_names(cfg))
        ]

    def _workload_events(self, workload: Workload, now_ms: int) -> list[Event]:
        out: list[Event] = []
        if self._start_ms is None:
            self._start_ms = now_ms
            out += self._inventory(now_ms)
        t_s = (now_ms - self._start_ms) / 1000.0
        for job in workload.jobs:
            if job.job_id not in self._started and job.start_s <= t_s and not workload.over(job.start_s):
                self._started.add(job.job_id)
                out += self._job_events(job, ("submitted", "scheduled", "started"), now_ms)
            if job.job_id in self._started and job.job_id not in self._finished and (t_s >= job.end_s or workload.over(t_s)):
                self._finished.add(job.job_id)
                out += self._job_events(job, ("finished",), now_ms)
        return out

    def _job_events(self, job: SimJob, kinds: tuple[str, ...], now_ms: int) -> list[Event]:
        cfg = self.config
        common = {
            "ts": now_ms,
            "source": SOURCE,
            "job_id": job.job_id,
            "user": job.user,
            "team": job.team,
            "priority": job.priority,
            "requested_gpus": float(Workload.world_size(job, cfg.gpus_per_node)),
            "gpu_model": GPU_MODEL,
            "name": job.job_id,
        }
        where = {"node": hostlist(cfg, list(job.nodes))}
        if job.gpus:
            where["gpu_ids"] = [gpu_uuid(cfg.seed, node_names(cfg)[job.nodes[0]], g) for g in job.gpus]
        return [SchedulerEvent(kind=kind, **common, **({} if kind == "submitted" else where)) for kind in kinds]


@collector_kind("scheduler_sim", SimClusterConfig)
def scheduler_sim(config: SimClusterConfig) -> list[Collector[Any]]:
    """What a scheduler would say about the sim cluster: its nodes, and its job (or its workload's jobs)."""
    return [SimSchedulerCollector(config.sim())]
