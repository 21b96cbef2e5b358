"""Scheduler adapters: what the job scheduler says about jobs and nodes, as events.

Every source (a Kubernetes watch, Slurm's ``squeue``/``sacct``, a replayed research trace)
is a :class:`hpcinsight.agents.base.Collector` producing :class:`hpcinsight.schemas.events.SchedulerEvent` (one
record per job transition: submitted, scheduled, started, finished, preempted, deleted) and,
where the source knows its nodes, :class:`hpcinsight.schemas.events.NodeInventory`. Sources report
states; the adapters turn them into transitions, each emitted once, so the consumers never
need to know which scheduler ran the job.

Collectors return both record types from ``sample``; ``NodeInventory`` records belong on
``extra_topics`` (``node.inventory``), the job events on ``topic`` (``scheduler.events``).
The submodules import nothing beyond the standard library and :mod:`schemas` at import time.
"""

from hpcinsight.agents.scheduler.kubernetes import K8sConfig, KubernetesCollector, LabelConfig, node_to_inventory, pod_to_events
from hpcinsight.agents.scheduler.slurm import SlurmCollector, SlurmConfig, nodes_to_inventory, sacct_to_events, squeue_to_events
from hpcinsight.agents.scheduler.trace import OpenbTraceCollector, TraceConfig, events_between

__all__ = [
    "K8sConfig",
    "KubernetesCollector",
    "LabelConfig",
    "OpenbTraceCollector",
    "SlurmCollector",
    "SlurmConfig",
    "TraceConfig",
    "events_between",
    "node_to_inventory",
    "nodes_to_inventory",
    "pod_to_events",
    "sacct_to_events",
    "squeue_to_events",
]
