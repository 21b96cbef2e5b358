"""A sink fenced by another member with its static id replaces its consumer and goes on storing
(chaos finding: the fatal "Static consumer fenced" error reached the sink as _FATAL, whose fatal()
said False; the sink retried a dead consumer and stored nothing for 10 minutes)."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Producer

from hpcinsight.schemas.catalog import GPU_SAMPLES
from hpcinsight.schemas.events import GpuSample
from tests.conftest import Pipeline, stop

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

T0 = (int(time.time()) - 3600) * 1000


def produce(pipeline: Pipeline, start: int, n: int) -> None:
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "enable.idempotence": True})
    for k in range(start, start + n):
        producer.produce(
            pipeline.topic(GPU_SAMPLES.name),
            key=b"n0",
            value=GPU_SAMPLES.codec.encode([GpuSample("n0", 0, "GPU-0", T0 + k * 1000, gpu_util=1.0)]),
        )
    assert producer.flush(30) == 0


def test_a_fenced_sink_takes_a_new_consumer_and_loses_nothing(pipeline: Pipeline) -> None:
    sink = pipeline.start("sink", "-v", "sink", "--batch-age", "0.3")
    try:
        produce(pipeline, 0, 50)
        pipeline.wait_caught_up("clickhouse-sink", ["gpu.samples"])
        rogue = Consumer(
            {
                "bootstrap.servers": pipeline.bootstrap,
                "group.id": f"{pipeline.prefix}clickhouse-sink",
                "group.instance.id": f"{pipeline.prefix}clickhouse-sink-0",
                "enable.auto.commit": False,
                "session.timeout.ms": 10_000,
            }
        )
        rogue.subscribe([pipeline.topic(GPU_SAMPLES.name)])
        deadline = time.monotonic() + 60
        while "starting a new one" not in pipeline.log("sink"):
            rogue.poll(0.5)
            assert time.monotonic() < deadline and sink.poll() is None, pipeline.log("sink")[-3000:]
        rogue.close()
        produce(pipeline, 50, 50)
        pipeline.wait_caught_up("clickhouse-sink", ["gpu.samples"], timeout=180)
        assert sink.poll() is None, pipeline.log("sink")[-3000:]
    finally:
        assert stop(sink) == 0, pipeline.log("sink")[-3000:]
    assert pipeline.sql("SELECT count() AS n FROM gpu_samples FINAL")[0]["n"] == 100
