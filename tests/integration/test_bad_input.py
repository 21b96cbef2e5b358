"""Malformed, mistyped, NaN and unknown-version messages become dead letters; the rest is stored."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from confluent_kafka import Producer

from hpcinsight.schemas.catalog import GPU_SAMPLES_RAW
from hpcinsight.schemas.events import DEAD_LETTER_RAW_MAX, GpuSample
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
    envelope({"node": "n0", "gpu_index": 0, "gpu_uuid": "GPU-0", "ts": T0}).replace(
        b'"ts"', b'"gpu_util":NaN,"ts"'
    ): "malformed JSON",
    envelope({"node": "n0", "gpu_index": 0, "gpu_uuid": "GPU-0", "ts": T0}, v=99): "unknown schema version 99",
    envelope(
        {"node": "n0", "gpu_index": 0, "gpu_uuid": "GPU-0", "ts": T0, "temperature_c": -500.0}
    ): "Expected `float` >= -100.0",
    envelope({"node": "n0", "gpu_index": 0, "gpu_uuid": "GPU-0", "ts": T0 + 2 * 86_400_000}): "clock skew",
    # issue 14: msgspec raised RecursionError (the worker's agent died, no dead letter)
    b'{"schema":"gpu_sample","v":1,"records":' + b"[" * 100_000 + b"]" * 100_000 + b"}": "nested too deeply",
    # issue 14: its dead letter (base64, 1.33 MB) was over the producer's limit; the agent died
    envelope({"node": "n" * 990_000, "gpu_index": 0, "gpu_uuid": "GPU-0", "ts": T0}): "length <= 256",
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
    # one bad record among good ones (a producer other than our agents): only it is left out
    mixed = [{"node": "n1", "gpu_index": g, "gpu_uuid": f"GPU-1-{g}", "ts": T0, "gpu_util": 40.0 + g} for g in range(3)]
    mixed[1]["power_w"] = -5.0
    mixed_raw = json.dumps({"schema": "gpu_sample", "v": 1, "records": mixed}).encode()
    producer.produce(topic, key=b"n0", value=mixed_raw)  # the same partition: the letters keep this order
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
    assert stored == 2 * k + 2
    assert pipeline.sql("SELECT gpu_index FROM gpu_samples WHERE node = 'n1' ORDER BY gpu_index") == [
        {"gpu_index": 0},
        {"gpu_index": 2},
    ]
    letters = pipeline.sql(
        "SELECT source_topic, stage, reason, raw, raw_size, raw_sha256 FROM dead_letters ORDER BY source_offset"
    )
    assert len(letters) == len(BAD) + 2
    salvaged = letters.pop()
    assert salvaged["stage"] == "validate" and salvaged["reason"].startswith(
        "records left out: 1 of 3, the other 2 used; record 1: "
    )
    assert json.loads(salvaged["raw"])["records"] == [mixed[1]]
    for letter, (raw, reason) in zip(letters, BAD.items()):
        assert letter["source_topic"] == topic and letter["stage"] == "validate"
        assert reason in letter["reason"], {k: str(v)[:300] for k, v in letter.items()}
        assert letter["raw"].encode() == raw[:DEAD_LETTER_RAW_MAX]  # whole up to the cap (only the 1 MB one is cut)
        assert letter["raw_size"] == len(raw) and letter["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert letters[-1]["reason"] == "empty message"


def test_a_stored_topic_written_by_a_foreign_producer_cannot_stop_the_sink(pipeline: Pipeline) -> None:
    """Issue 14: a deeply nested message on a stored topic killed the sink, and the restarted sink
    died again on the same offset: storage stopped for every table. Now it is a dead letter."""
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "enable.idempotence": True})
    topic = pipeline.topic("gpu.samples")
    hostile = [
        b'{"schema":"gpu_sample","v":1,"records":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b"[" * 200_000,
        b'{"schema":"gpu_sample","v":1,"records":[{"node":"n0","x":' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}]}",
    ]
    for k, bad in enumerate(hostile):
        producer.produce(topic, key=b"n0", value=good(2 * k))
        producer.produce(topic, key=b"n0", value=bad)
        producer.produce(topic, key=b"n0", value=good(2 * k + 1))
    assert producer.flush(30) == 0
    sink = pipeline.start("sink", "sink", "--batch-age", "0.3")
    try:
        pipeline.wait_caught_up("clickhouse-sink", ["gpu.samples", "dead.letters"])
        assert sink.poll() is None, "the sink died of bad input:\n" + pipeline.log("sink")
    finally:
        assert stop(sink) == 0, pipeline.log("sink")
    assert pipeline.sql("SELECT count() AS n FROM gpu_samples")[0]["n"] == 2 * 2 * len(hostile)
    letters = pipeline.sql("SELECT stage, reason, raw_size FROM dead_letters ORDER BY source_offset")
    assert [(d["stage"], d["raw_size"]) for d in letters] == [("sink", len(b)) for b in hostile]
    assert all(d["reason"] for d in letters)


def test_the_sink_stores_the_good_records_of_a_foreign_scheduler_message(pipeline: Pipeline) -> None:
    """A scheduler adapter that is not ours sends one bad event among good ones straight to a
    stored topic: the sink stores the good ones (as every worker's attribution uses them) and
    dead-letters the bad one alone, so the store and the stream agree on the cluster's jobs."""
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "enable.idempotence": True})
    topic = pipeline.topic("scheduler.events")
    events = [{"ts": T0, "source": "foreign", "job_id": f"j{k}", "kind": "started", "node": f"n{k}"} for k in range(3)]
    events[1]["kind"] = "exploded"
    producer.produce(topic, key=b"foreign", value=json.dumps({"schema": "scheduler_event", "v": 1, "records": events}).encode())
    assert producer.flush(30) == 0
    sink = pipeline.start("sink", "sink", "--batch-age", "0.3")
    try:
        pipeline.wait_caught_up("clickhouse-sink", ["scheduler.events", "dead.letters"])
    finally:
        assert stop(sink) == 0, pipeline.log("sink")
    assert pipeline.sql("SELECT job_id FROM scheduler_events ORDER BY job_id") == [{"job_id": "j0"}, {"job_id": "j2"}]
    [letter] = pipeline.sql("SELECT source_topic, stage, reason, raw FROM dead_letters")
    assert (letter["source_topic"], letter["stage"]) == (topic, "sink")
    assert letter["reason"].startswith("records left out: 1 of 3, the other 2 used; record 1: "), letter["reason"]
    assert json.loads(letter["raw"])["records"] == [events[1]]
