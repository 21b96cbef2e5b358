"""The sim scheduler reports the sim cluster's nodes and its job once, in a form attribution understands."""

from __future__ import annotations

import pytest

from hpcinsight.agents.base import Collector
from hpcinsight.agents.sim.gpu import SimConfig, SimGpuCollector
from hpcinsight.agents.sim.scheduler import SimSchedulerCollector, hostlist, node_names
from hpcinsight.schemas.catalog import NODE_INVENTORY, SCHEDULER_EVENTS
from hpcinsight.schemas.events import NodeInventory, SchedulerEvent

T0 = 1_764_000_000_000


def test_first_tick_reports_inventory_and_the_job_start_then_nothing() -> None:
    sched = SimSchedulerCollector(SimConfig(nodes=4, gpus_per_node=8))
    assert isinstance(sched, Collector) and sched.topic is SCHEDULER_EVENTS and sched.extra_topics == (NODE_INVENTORY,)
    first = sched.sample(T0)
    inventory = [r for r in first if isinstance(r, NodeInventory)]
    events = [r for r in first if isinstance(r, SchedulerEvent)]
    assert len(first) == len(inventory) + len(events)
    assert [(n.node, n.gpu_count, n.gpu_model, n.zone) for n in inventory] == [
        ("sim-node-00", 8, "H100-SXM", "sim-zone-a"),
        ("sim-node-01", 8, "H100-SXM", "sim-zone-a"),
        ("sim-node-02", 8, "H100-SXM", "sim-zone-b"),
        ("sim-node-03", 8, "H100-SXM", "sim-zone-b"),
    ]
    assert [e.kind for e in events] == ["submitted", "scheduled", "started"]
    for e in events:
        assert (e.job_id, e.user, e.team, e.priority, e.requested_gpus, e.source) == (
            "sim-job-0",
            "alice",
            "llm",
            "high",
            32.0,
            "sim",
        )
        assert e.ts == T0 and e.node == (None if e.kind == "submitted" else "sim-node-[00-03]")
    for record in first:  # each record goes to its own topic and survives its codec
        topic = sched.topic_for(record)
        assert topic.codec.decode(topic.codec.encode([record])) == [record]
    assert sched.sample(T0 + 1000) == [] and sched.sample(T0 + 60_000) == []


def test_zones_split_an_odd_cluster_and_a_jobless_one_reports_only_nodes() -> None:
    records = SimSchedulerCollector(SimConfig(nodes=3, job_id=None)).sample(T0)
    assert [(r.node, r.zone) for r in records if isinstance(r, NodeInventory)] == [
        ("sim-node-00", "sim-zone-a"),
        ("sim-node-01", "sim-zone-a"),
        ("sim-node-02", "sim-zone-b"),
    ]
    assert all(isinstance(r, NodeInventory) for r in records)


@pytest.mark.parametrize("nodes", [1, 2, 10, 11, 100, 101, 1234])
def test_the_host_list_names_exactly_the_sim_nodes(nodes: int) -> None:
    from hpcinsight.streams.attribution import expand_hostlist

    config = SimConfig(nodes=nodes, gpus_per_node=1)
    assert expand_hostlist(hostlist(config)) == node_names(config)
    assert node_names(config) == [s.node for s in SimGpuCollector(config).sample(T0)]  # one GPU each, in order


def test_attribution_charges_every_sim_gpu_to_alice_of_llm_in_its_zone() -> None:
    from hpcinsight.streams.attribution import Attribution

    config = SimConfig(nodes=4, gpus_per_node=2, job_id="sim-job-7")
    table = Attribution()
    for record in SimSchedulerCollector(config).sample(T0):
        table.observe(record)
    gpus = SimGpuCollector(config)
    samples = [table.enrich_gpu(s) for k in range(3) for s in gpus.sample(T0 + k * 1000)]
    assert {(s.job_id, s.user, s.team, s.priority) for s in samples} == {("sim-job-7", "alice", "llm", "high")}
    assert {(s.node, s.zone) for s in samples} == {
        ("sim-node-00", "sim-zone-a"),
        ("sim-node-01", "sim-zone-a"),
        ("sim-node-02", "sim-zone-b"),
        ("sim-node-03", "sim-zone-b"),
    }
    assert table.node_holder("sim-node-03", T0 + 1000) == "sim-job-7"  # IB samples of every node are the job's too


def test_a_prefix_that_breaks_host_lists_is_refused() -> None:
    with pytest.raises(ValueError, match="host list"):
        SimSchedulerCollector(SimConfig(node_prefix="rack[1]-"))
