"""The whole path on topics created with more partitions than the catalog's, as an operator with a
larger cluster creates them (``hpcinsight topics --create --partitions``): every sample is stored
once and summed into windows, with no dead letter. (Attribution from every partition of the
scheduler topics: tests/test_operator_partitions.py.)"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from hpcinsight.core.kafka import offsets_consumer, partition_counts
from hpcinsight.schemas.catalog import TOPICS
from tests.conftest import Pipeline, sim_agent, stop

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

PARTITIONS = 9  # the catalog's 6 and then some: nodes land in partitions the catalog has not
NODES, GPUS, TICKS = 8, 2, 40


def test_a_pipeline_on_nine_partitions(kafka_bootstrap: str, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    pipeline = Pipeline(kafka_bootstrap, f"p{uuid.uuid4().hex[:10]}.", tmp_path / "data" / "clickhouse", logs)
    pipeline.run("topics", "--create", "--partitions", str(PARTITIONS))
    names = [pipeline.topic(t.name) for t in TOPICS]
    with offsets_consumer(pipeline.client_config(), "test-partitions") as consumer:
        counts = partition_counts(consumer, names)
    assert counts == {pipeline.topic(t.name): PARTITIONS if t.partitions > 1 else 1 for t in TOPICS}

    worker = pipeline.start("worker", "worker", "--windows", "10s/5s", "--since-start-every", "20s", "--job-wait", "2s")
    sink = pipeline.start("sink", "sink", "--batch-age", "0.5")
    try:
        agent = pipeline.run(
            *sim_agent(NODES, GPUS, ticks=TICKS, speed=10),
        )
        summary = json.loads(agent.stdout.strip().splitlines()[-1])
        produced = summary["topics"]["gpu.samples.raw"]["records"]
        assert produced == NODES * GPUS * TICKS
        pipeline.wait_caught_up("worker", ["gpu.samples.raw", "gpu.sketches"])
        pipeline.poll(pipeline.job_stage_settled, worker, sink)
        pipeline.wait_caught_up("clickhouse-sink", ["gpu.samples", "gpu.quantiles", "job.quantiles", "dead.letters"])
        stored = pipeline.sql("SELECT count() AS n, uniqExact(gpu_uuid, ts) AS d FROM gpu_samples")
        assert stored == [{"n": produced, "d": produced}]  # each once
        quantiles = pipeline.sql("SELECT uniqExact(gpu_uuid) AS gpus FROM gpu_quantiles WHERE metric = 'gpu_util'")
        assert quantiles == [{"gpus": NODES * GPUS}]
        assert pipeline.sql("SELECT count() AS n FROM dead_letters") == [{"n": 0}]
    finally:
        assert stop(sink) == 0, pipeline.log("sink")
        stop(worker)
    assert "Traceback" not in pipeline.log("worker"), pipeline.log("worker")[-3000:]
    with offsets_consumer(pipeline.client_config(), "test-partitions") as consumer:
        raw = pipeline.topic("gpu.samples.raw")
        used = [p for p in range(PARTITIONS) if consumer.get_watermark_offsets(TopicPartition(raw, p), timeout=10)[1] > 0]
    assert max(used) >= 6  # some nodes' samples came through partitions past the catalog's
