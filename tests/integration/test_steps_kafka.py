"""Step metrics of two ranks reach the step.metrics.raw topic through a real broker, each exactly once."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError

from hpcinsight.agents.steps import StepRecorder, kafka_sink
from hpcinsight.core.settings import load
from hpcinsight.schemas.catalog import STEP_METRICS_RAW
from hpcinsight.schemas.events import StepMetric
from tests.conftest import Pipeline

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

RANKS, STEPS = 2, 50


def consume_all(pipeline: Pipeline, expected: int, timeout: float = 60) -> list[tuple[bytes | None, StepMetric]]:
    """Everything on the topic: read until ``expected`` records came and then a quiet spell, so a
    duplicate arriving late would still be seen."""
    consumer = Consumer(
        {
            "bootstrap.servers": pipeline.bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([pipeline.topic(STEP_METRICS_RAW.name)])
    out: list[tuple[bytes | None, StepMetric]] = []
    deadline, quiet_since = time.monotonic() + timeout, None
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                if len(out) >= expected:
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since > 3:
                        break
                continue
            quiet_since = None
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                continue
            out.extend((msg.key(), r) for r in STEP_METRICS_RAW.codec.decode(msg.value()))
    finally:
        consumer.close()
    return out


def test_two_ranks_reach_kafka_exactly_once(pipeline: Pipeline) -> None:
    settings = load(pipeline.env)
    job = f"job-{uuid.uuid4().hex[:8]}"
    start_ms = time.time_ns() // 1_000_000
    recorders = [
        StepRecorder(
            job_id=job, rank=r, world_size=RANKS, local_rank=r, node="gpu-n01", sink=kafka_sink(settings), flush_interval_s=0.2
        )
        for r in range(RANKS)
    ]
    for _ in range(STEPS):
        for rec in recorders:
            with rec.step():
                with rec.phase("forward"):
                    time.sleep(0.001)
                with rec.phase("backward"):
                    pass
    for rec in recorders:
        rec.close(timeout=30)
        assert rec.dropped == 0
    end_ms = time.time_ns() // 1_000_000

    got = consume_all(pipeline, RANKS * STEPS)
    assert sorted((r.rank, r.step) for _, r in got) == [(rank, step) for rank in range(RANKS) for step in range(STEPS)]
    for key, r in got:
        assert key == job.encode()
        assert (r.job_id, r.world_size, r.node, r.local_rank) == (job, RANKS, "gpu-n01", r.rank)
        assert start_ms <= r.ts <= end_ms
        assert set(r.phases) == {"forward", "backward"} and r.phases["forward"] >= 0.001
        assert r.duration_s >= r.phases["forward"] + r.phases["backward"]
