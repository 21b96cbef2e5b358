"""The sink killed with SIGKILL, between insert and commit and at random, loses and duplicates nothing."""

from __future__ import annotations

import json
import signal
import time

import pytest
from confluent_kafka import Producer

from hpcinsight.schemas.catalog import GPU_SAMPLES
from hpcinsight.schemas.events import GpuSample
from tests.conftest import Pipeline

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

T0 = (int(time.time()) - 3 * 3600) * 1000  # recent: older rows fall to the tables' TTL
MESSAGES, GPUS = 3000, 8


def test_sink_killed_mid_run_loses_and_duplicates_nothing(pipeline: Pipeline) -> None:
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "enable.idempotence": True, "linger.ms": 20})
    topic = pipeline.topic("gpu.samples")
    for k in range(MESSAGES):
        node = f"n{k % 4}"
        records = [GpuSample(node, g, f"GPU-{node}-{g}", T0 + k * 1000, gpu_util=float(g)) for g in range(GPUS)]
        producer.produce(topic, key=node.encode(), value=GPU_SAMPLES.codec.encode(records))
        producer.poll(0)
    assert producer.flush(30) == 0
    expected = MESSAGES * GPUS

    # 1) die right after the first insert, before committing offsets
    crashed = pipeline.start("sink-1", "sink", "--batch-rows", "2000", extra_env={"HPCINSIGHT_SINK_CRASH_AFTER_INSERT": "1"})
    assert crashed.wait(120) == -signal.SIGKILL, pipeline.log("sink-1")

    # 2) restart, then SIGKILL it again at an arbitrary moment mid-run
    second = pipeline.start("sink-2", "sink", "--batch-rows", "2000", "--batch-age", "0.2")
    time.sleep(4.0)
    second.send_signal(signal.SIGKILL)
    second.wait(30)

    # 3) a final run drains the topic and exits when idle
    final = pipeline.run("sink", "--batch-rows", "2000", "--idle-exit", "5")
    stats = json.loads(final.stdout.strip().splitlines()[-1])

    rows = pipeline.sql("SELECT count() AS n, uniqExact(gpu_uuid, ts) AS distinct_n FROM gpu_samples")[0]
    assert rows == {"n": expected, "distinct_n": expected}
    # the rollup views saw every row once too (a duplicate insert would count twice there, where
    # no ReplacingMergeTree collapses it)
    for rollup in ("gpu_rollup_1m", "gpu_rollup_1h"):
        assert pipeline.sql(f"SELECT sum(samples) AS n FROM {rollup}")[0] == {"n": expected}, rollup
    # the restarts really did resume from what ClickHouse held, ahead of Kafka's committed offsets
    log2 = pipeline.log("sink-2")
    assert "from ClickHouse" in log2 or stats["resumed_from_store"] > 0, log2
