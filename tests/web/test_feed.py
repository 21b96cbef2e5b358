"""The service's Kafka feed on the real broker: a service started late still sees the anomaly
opened before it (look-back), then follows samples, quantiles, KPIs and the anomaly's resolution."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer

from hpcinsight.schemas.catalog import ANOMALIES, GPU_QUANTILES, GPU_SAMPLES, NODE_INVENTORY, SCHEDULING_KPIS
from hpcinsight.schemas.events import Anomaly, GpuQuantiles, GpuSample, NodeInventory, SchedulingKpi
from hpcinsight.web.feed import Feed
from hpcinsight.web.state import ClusterState, Filter
from tests.conftest import Pipeline

pytestmark = pytest.mark.kafka


def anomaly(state: str, ts: int) -> Anomaly:
    return Anomaly(
        id="a1",
        kind="gpu_xid",
        severity="critical",
        state=state,
        subject_type="gpu",
        subject="GPU-x",
        ts=ts,
        started_at=ts,
        window_start=ts,
        window_end=ts,
        message="XID 79",
        evidence={},
        node="n1",
        gpu_uuid="GPU-x",
        job_id="j1",
    )


def wait(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the feed did not get there"
        time.sleep(0.1)


def test_feed_looks_back_then_follows(pipeline: Pipeline) -> None:
    producer = Producer(pipeline.client_config())

    def send(topic, records) -> None:
        producer.produce(topic.full_name(pipeline.prefix), topic.codec.encode(records))
        producer.flush(10)

    now = int(time.time() * 1000)
    send(NODE_INVENTORY, [NodeInventory(ts=now, node="n1", gpu_count=2, gpu_model="H100", zone="z1", pool="p1")])
    send(ANOMALIES, [anomaly("firing", now - 3_600_000)])  # opened an hour ago, still open
    state = ClusterState()
    feed = Feed(state, pipeline.client_config(), pipeline.prefix).start()
    try:
        wait(lambda: "a1" in state.open and "n1" in state.nodes)
        sample = dict(
            node="n1",
            ts=now,
            gpu_util=93.0,
            power_w=400.0,
            temperature_c=60.0,
            mem_used_bytes=40,
            mem_total_bytes=80,
            job_id="j1",
            user="alice",
            team="llm",
            zone="z1",
        )
        send(
            GPU_SAMPLES, [GpuSample(gpu_index=0, gpu_uuid="GPU-x", **sample), GpuSample(gpu_index=1, gpu_uuid="GPU-y", **sample)]
        )
        send(
            GPU_QUANTILES,
            [
                GpuQuantiles(
                    node="n1",
                    gpu_index=0,
                    gpu_uuid="GPU-x",
                    metric="gpu_util",
                    window="since_start",
                    window_start=now - 60_000,
                    window_end=now,
                    count=60,
                    p25=80,
                    p50=90,
                    p95=97.4,
                    mean=88,
                    job_id="j1",
                )
            ],
        )
        send(SCHEDULING_KPIS, [SchedulingKpi(ts=now, kpi="allocation_rate", dimension="cluster", group="all", value=0.5)])
        wait(lambda: state.summary()["gpus"] == 2 and state.kpis and state.values["p95"][0] == 97)
        idx, layout = state.layout(Filter())
        assert [g[:6] for g in layout["gpus"]] == [["n1", 0, "GPU-x", "z1", "p1", "H100"], ["n1", 1, "GPU-y", "z1", "p1", "H100"]]
        frame = state.frame(idx)
        assert (
            frame["util"] == [93, 93] and frame["mem"] == [50, 50] and frame["anom"] == [1, 0] and frame["kinds"] == ["gpu_xid"]
        )
        send(ANOMALIES, [anomaly("resolved", now)])
        wait(lambda: not state.open)
        assert state.frame(idx)["anom"] == [0, 0]
    finally:
        feed.stop()
    assert not feed.thread.is_alive()


def test_one_bad_inventory_record_does_not_hide_the_other_nodes(pipeline: Pipeline) -> None:
    """A scheduler adapter's message of inventories with one bad record: the view shows the other
    nodes, as the worker and the sink use them, and counts the message as skipped (the sink
    dead-letters the bad record)."""
    now = int(time.time() * 1000)
    nodes = [NodeInventory(ts=now, node=f"n{k}", gpu_count=8, zone="z1") for k in range(3)]
    raw = NODE_INVENTORY.codec.encode(nodes).replace(b'"node":"n1"', b'"node":"n1","memory_bytes":"lots"')
    producer = Producer(pipeline.client_config())
    producer.produce(NODE_INVENTORY.full_name(pipeline.prefix), raw)
    producer.flush(10)
    state = ClusterState()
    feed = Feed(state, pipeline.client_config(), pipeline.prefix).start()
    try:
        wait(lambda: len(state.nodes) == 2)
        assert sorted(state.nodes) == ["n0", "n2"] and feed.skipped == 1
    finally:
        feed.stop()
