"""Per-rank step times from the training client -> Kafka -> worker -> a straggler anomaly in ClickHouse."""

from __future__ import annotations

import random

import pytest

from hpcinsight.agents.steps import StepRecorder, kafka_sink
from hpcinsight.core.settings import load
from tests.conftest import Pipeline, stop

pytestmark = [pytest.mark.kafka, pytest.mark.integration]


def test_slow_rank_is_flagged(pipeline: Pipeline) -> None:
    worker = pipeline.start("worker", "worker", "--windows", "10s/5s")
    sink = pipeline.start("sink", "sink", "--batch-age", "0.3")
    try:
        settings = load(pipeline.env)
        rng = random.Random(5)
        recorders = [
            StepRecorder(job_id="llm-7b", rank=r, world_size=4, node=f"n{r}", sink=kafka_sink(settings)) for r in range(4)
        ]
        for step in range(60):
            for r, rec in enumerate(recorders):
                rec.record(step, rng.gauss(0.5, 0.01) * (1.4 if r == 2 else 1.0))
        for rec in recorders:
            rec.close()
            assert rec.dropped == 0
        pipeline.wait_caught_up("worker", ["step.metrics.raw"])
        pipeline.wait_caught_up("clickhouse-sink", ["step.metrics", "anomalies"])
    finally:
        assert stop(sink) == 0, pipeline.log("sink")
        stop(worker)
    assert pipeline.sql("SELECT count() AS n FROM step_metrics FINAL") == [{"n": 240}]
    flags = pipeline.sql("SELECT subject, state, node, evidence['rank'] AS rank FROM anomalies FINAL WHERE kind = 'straggler'")
    assert flags == [{"subject": "llm-7b/rank-2", "state": "firing", "node": "n2", "rank": 2}]
