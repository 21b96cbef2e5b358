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
"""

from __future__ import annotations

from typing import ClassVar

from agents.base import Collector
from agents.gpu_sim import SimConfig
from schemas.catalog import NODE_INVENTORY, SCHEDULER_EVENTS, Topic
from schemas.events import Event, NodeInventory, SchedulerEvent

SOURCE = "sim"
GPU_MODEL = "H100-SXM"
USER, TEAM, PRIORITY = "alice", "llm", "high"
ZONES = ("sim-zone-a", "sim-zone-b")


def node_names(config: SimConfig) -> list[str]:
    """The sim nodes' names, as the GPU collector names them."""
    return [f"{config.node_prefix}{n:02d}" for n in range(config.nodes)]


def hostlist(config: SimConfig) -> str:
    """The sim nodes as one Slurm host list: ``sim-node-[00-03]``, or ``sim-node-[00-99,100-127]`` where
    the names grow a digit (a range's ends have the width of its names); one node is just its name."""
    if config.nodes == 1:
        return node_names(config)[0]
    ranges, lo = [], 0
    while lo < config.nodes:
        width = len(f"{lo:02d}")
        hi = min(config.nodes, 10**width) - 1
        ranges.append(f"{lo:0{width}d}-{hi:0{width}d}" if hi > lo else f"{lo:0{width}d}")
        lo = hi + 1
    return f"{config.node_prefix}[{','.join(ranges)}]"


class SimSchedulerCollector(Collector[SimConfig]):
    """Node inventory and the sim job's start, once, on the first tick."""

    topic = SCHEDULER_EVENTS
    #: NodeInventory records in :meth:`sample` belong on this topic, not on :attr:`topic`
    extra_topics: ClassVar[tuple[Topic, ...]] = (NODE_INVENTORY,)

    def __init__(self, config: SimConfig) -> None:
        if any(c in config.node_prefix for c in "[],"):
            raise ValueError(f"node prefix {config.node_prefix!r} cannot appear in a host list")
        super().__init__(config)
        self._sent = False

    def sample(self, now_ms: int) -> list[Event]:
        if self._sent:
            return []
        self._sent = True
        cfg = self.config
        half = (cfg.nodes + 1) // 2  # an odd node out goes to the first zone
        out: list[Event] = [
            NodeInventory(ts=now_ms, node=name, gpu_count=cfg.gpus_per_node, gpu_model=GPU_MODEL, zone=ZONES[n >= half])
            for n, name in enumerate(node_names(cfg))
        ]
        if cfg.job_id is None:
            return out  # a cluster with nothing scheduled on it
        job = {"ts": now_ms, "source": SOURCE, "job_id": cfg.job_id, "user": USER, "team": TEAM, "priority": PRIORITY,
               "requested_gpus": float(cfg.nodes * cfg.gpus_per_node), "gpu_model": GPU_MODEL, "name": cfg.job_id}
        out.append(SchedulerEvent(kind="submitted", **job))  # type: ignore[arg-type]
        out += [SchedulerEvent(kind=kind, node=hostlist(cfg), **job) for kind in ("scheduled", "started")]  # type: ignore[arg-type]
        return out
