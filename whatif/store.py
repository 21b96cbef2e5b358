"""Scheduler events and node inventory (the store's records) as simulator jobs and nodes.

The CLI floor reads ``scheduler_events`` and ``node_inventory`` for a time range and hands the
rows here as :class:`hpcinsight.schemas.events.SchedulerEvent` / :class:`~hpcinsight.schemas.events.NodeInventory`.
A job is the pair ``(job_id, name)``, as the live scheduling KPIs count it: it is submitted at
its first ``submitted`` (else when first seen), starts at ``scheduled``/``started``, ends at
``finished``/``deleted``/``preempted``. Pods sharing a ``job_id`` under several names form a gang.
Requested GPUs ``g`` become one GPU shared at ``g * 1000`` thousandths when ``g < 1``, else
``ceil(g)`` whole GPUs; CPUs become milli-CPUs, bytes MiB. Times are seconds.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

from hpcinsight.schemas.events import NodeInventory, SchedulerEvent
from hpcinsight.whatif.model import MILLI, Job, Node, WhatifError

MIB = 2**20
_START = ("scheduled", "started")
_END = ("finished", "deleted", "preempted")


def nodes_from_inventory(rows: Iterable[NodeInventory]) -> list[Node]:
    """The latest inventory of each node."""
    latest: dict[str, NodeInventory] = {}
    for inv in rows:
        if inv.node not in latest or inv.ts >= latest[inv.node].ts:
            latest[inv.node] = inv
    nodes = []
    for name, inv in sorted(latest.items()):
        cpus = inv.cpus if inv.cpus is not None else 0.0
        mem = inv.memory_bytes if inv.memory_bytes is not None else 0
        nodes.append(
            Node(
                name=name,
                cpu_milli=int(round(cpus * 1000)),
                memory_mib=int(mem // MIB),
                gpus=int(inv.gpu_count),
                model=(inv.gpu_model or "") if inv.gpu_count else "",
                zone=inv.zone or "",
            )
        )
    if not nodes:
        raise WhatifError("the store has no node inventory in that range: the cluster is empty")
    # a node whose inventory leaves CPU or memory out is not limited by it
    if any(n.cpu_milli == 0 or n.memory_mib == 0 for n in nodes):
        big_cpu = max(n.cpu_milli for n in nodes) or 10**9
        big_mem = max(n.memory_mib for n in nodes) or 10**12
        nodes = [Node(n.name, n.cpu_milli or big_cpu, n.memory_mib or big_mem, n.gpus, n.model, n.zone) for n in nodes]
    return nodes


def jobs_from_events(events: Iterable[SchedulerEvent], max_node_gpus: int | None = None) -> list[Job]:
    """One job per ``(job_id, name)``; a job asking more GPUs than ``max_node_gpus`` (a multi-node
    job the scheduler reports as one) becomes a gang of equal tasks, one a node."""
    by_key: dict[tuple[str, str], list[SchedulerEvent]] = defaultdict(list)
    for e in events:
        by_key[(e.job_id, e.name or "")].append(e)
    names_per_job: dict[str, set[str]] = defaultdict(set)
    for job_id, name in by_key:
        names_per_job[job_id].add(name)
    jobs = []
    for (job_id, name), evs in by_key.items():
        evs.sort(key=lambda e: e.ts)
        first = evs[0]
        submit = next((e.ts for e in evs if e.kind == "submitted"), first.ts) / 1000
        start = next((e.ts / 1000 for e in evs if e.kind in _START), None)
        end = next((e.ts / 1000 for e in evs if e.kind in _END), None)
        attrs = {}
        for e in evs:  # the latest non-empty value of each attribute wins
            for f in (
                "requested_gpus",
                "requested_cpus",
                "requested_memory_bytes",
                "gpu_model",
                "team",
                "user",
                "priority",
                "qos",
                "node",
            ):
                v = getattr(e, f)
                if v is not None:
                    attrs[f] = v
        g = float(attrs.get("requested_gpus") or 0.0)
        if g <= 0:
            num, milli = 0, 0
        elif g < 1:
            num, milli = 1, int(round(g * MILLI))
        else:
            num, milli = int(math.ceil(g)), MILLI
        gang = job_id if len(names_per_job[job_id]) > 1 else ""
        tasks = 1
        if max_node_gpus and num > max_node_gpus:
            tasks = math.ceil(num / max_node_gpus)
            num = math.ceil(num / tasks)
            gang = gang or f"{job_id}/{name}"
        cpu = int(round(float(attrs.get("requested_cpus") or 0) * 1000)) // tasks
        mem = int((attrs.get("requested_memory_bytes") or 0) // MIB) // tasks
        base = f"{job_id}/{name}" if name else job_id
        for k in range(tasks):
            jobs.append(
                Job(
                    name=base if tasks == 1 else f"{base}#{k}",
                    cpu_milli=cpu,
                    memory_mib=mem,
                    num_gpu=num,
                    gpu_milli=milli,
                    gpu_spec="",
                    qos=attrs.get("qos", ""),
                    submit=submit,
                    start=start,
                    end=end,
                    team=attrs.get("team", ""),
                    user=attrs.get("user", ""),
                    priority=attrs.get("priority", ""),
                    gang=gang,
                    gang_size=max(tasks, len(names_per_job[job_id])),
                    node=attrs.get("node", ""),
                )
            )
    jobs.sort(key=lambda j: (j.submit or 0.0, j.name))
    return jobs
