"""The sink's consumer group catches up with what the store holds, with no new message to carry a
commit. A sink killed between insert and commit resumes from ClickHouse, ahead of the group's
offsets; on a partition nothing new comes to (the inventory, a scheduler topic, the last anomaly)
the group's lag, which monitoring and the chaos campaign read, stayed above zero for good
(Kafka 4.4.0 campaign, seed 1: 'resuming chaos.node.inventory[0] at 8 from ClickHouse (Kafka had
-1001)', then 300 s with the sink's group behind by 9 while every row was stored)."""

from __future__ import annotations

import signal
import time

import pytest
from confluent_kafka import Producer

from hpcinsight.core.kafka import lag
from hpcinsight.schemas.catalog import GPU_SAMPLES
from hpcinsight.schemas.events import GpuSample
from tests.conftest import Pipeline

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

T0 = (int(time.time()) - 3600) * 1000  # recent: older rows fall to the tables' TTL


def test_a_sink_resumed_from_the_store_brings_its_group_to_the_end(pipeline: Pipeline) -> None:
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "enable.idempotence": True})
    topic = pipeline.topic("gpu.samples")
    for k in range(20):
        records = [GpuSample("n0", g, f"GPU-n0-{g}", T0 + k * 1000, gpu_util=float(g)) for g in range(4)]
        producer.produce(topic, key=b"n0", value=GPU_SAMPLES.codec.encode(records))
    assert producer.flush(30) == 0

    crashed = pipeline.start("sink-1", "sink", extra_env={"HPCINSIGHT_SINK_CRASH_AFTER_INSERT": "1"})
    assert crashed.wait(120) == -signal.SIGKILL, pipeline.log("sink-1")  # inserted, never committed
    group = pipeline.topic("clickhouse-sink")
    assert lag(pipeline.client_config(), group, [topic]) == 20

    second = pipeline.start("sink-2", "sink")  # nothing new to read: only the store says where it is
    try:
        deadline, left = time.monotonic() + 60, 20
        while left and time.monotonic() < deadline:
            time.sleep(1.0)
            left = lag(pipeline.client_config(), group, [topic])
        log = pipeline.log("sink-2")
        assert "from ClickHouse" in log, log
        assert left == 0, log
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(60)
    assert pipeline.sql("SELECT count() AS n FROM gpu_samples")[0] == {"n": 80}
