"""Malformed, mistyped, NaN and unknown-version messages become dead letters; the rest is stored."""

from __future__ import annotations

import json
import time

import pytest
from confluent_kafka import Producer

from schemas.catalog import GPU_SAMPLES_RAW
from schemas.events import GpuSample
from tests.conftest import Pipeline, stop

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

T0 = (int(time.time()) - 3 * 3600) * 1000  # recent: older rows fall to the tables' TTL


def good(k: int) -> bytes:
    return GPU_SAMPLES_RAW.codec.encode([GpuSample("n0", g, f"GPU-{g}", T0 + k * 1000, gpu_util=50.0 + g) for g in range(2)])


def envelope(record: dict, v: int = 1) -> bytes:
    return json.dumps({"schema": "gpu_sample", "v": v, "records": [record]}).encode()


BAD = {
    b"{not json at all": "malformed JSON",
    envelope({"node": "n0", "gpu_index": "zero", "gpu_uuid": "GPU-0", "ts": T0}): "Expected `int`, got `str`",
    envelope({"node": "n0", "gpu_index": 0, "gpu_uuid": "GPU-0", "ts": T0}).replace(b'"ts"', b'"gpu_util":NaN,"ts"'): "malformed JSON",
    envelope({"node": "n0", "gpu_index": 0, "gpu_uuid": "GPU-0", "ts": T0}, v=99): "unknown schema version 99",
    envelope({"node": "n0", "gpu_index": 0, "gpu_uuid": "GPU-0", "ts": T0, "temperature_c": -500.0}): "Expected `float` >= -100.0",
    envelope({"node": "n0", "gpu_index": 0, "gpu_uuid": "GPU-0", "ts": T0 + 2 * 86_400_000}): "clock skew",
}


def test_bad_messages_land_in_dead_letters_and_good_ones_are_stored(pipeline: Pipeline) -> None:
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "enable.idempotence": True})
    topic = pipeline.topic("gpu.samples.raw")
    k = 0
    for bad in BAD:
        producer.produce(topic, key=b"n0", value=good(k))
        producer.produce(topic, key=b"n0", value=bad)
        k += 1
    producer.produce(topic, key=b"n0", value=good(k))
    producer.produce(topic, key=b"n0", value=b"")  # an empty message too
    k += 1
    assert producer.flush(30) == 0

    worker = pipeline.start("worker", "worker", "--windows", "10s/5s")
    sink = pipeline.start("sink", "sink", "--batch-age", "0.3")
    try:
        pipeline.wait_caught_up("worker", ["gpu.samples.raw"])
        pipeline.wait_caught_up("clickhouse-sink", ["gpu.samples", "dead.letters"])
        assert worker.poll() is None, "the worker died of bad input:\n" + pipeline.log("worker")
    finally:
        assert stop(sink) == 0, pipeline.log("sink")
        stop(worker)

    stored = pipeline.sql("SELECT count() AS n FROM gpu_samples")[0]["n"]
    assert stored == 2 * k
    letters = pipeline.sql(
        "SELECT source_topic, stage, reason, raw FROM dead_letters ORDER BY source_offset"
    )
    assert len(letters) == len(BAD) + 1
    for letter, (raw, reason) in zip(letters, BAD.items()):
        assert letter["source_topic"] == topic and letter["stage"] == "validate"
        assert reason in letter["reason"], letter
        assert letter["raw"].encode() == raw  # kept whole
    assert letters[-1]["reason"] == "empty message"
