"""A broker outage longer than the group's session is weather for the sink (issue 14, item 3).

On main before this test, a 36 s outage killed the sink twice in two tries: a synchronous offset
commit raised on FENCED_INSTANCE_ID, then on _WAIT_COORD, and the process exited. Here a broker of
the test's own (its data kept) is stopped for 40 s while a producer keeps writing, then started
again on the same data and port: the sink must still run, and every row be stored exactly once.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer

from hpcinsight.core.kafka import producer_config
from hpcinsight.deploy.local.kafka import LocalKafka
from hpcinsight.schemas.catalog import GPU_SAMPLES
from hpcinsight.schemas.events import GpuSample
from tests.conftest import Pipeline, stop

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

T0 = (int(time.time()) - 3600) * 1000
GPUS = 4


def test_the_sink_rides_out_a_broker_outage_longer_than_its_session(tmp_path: Path) -> None:
    from hpcinsight.schemas.catalog import ensure_topics

    broker = LocalKafka(tmp_path / "kafka", heap="384m", keep_data=True)
    broker.start()
    logs = tmp_path / "logs"
    logs.mkdir()
    pipeline = Pipeline(broker.bootstrap, f"o{uuid.uuid4().hex[:8]}.", tmp_path / "data" / "clickhouse", logs)
    ensure_topics(pipeline.client_config(), pipeline.prefix)
    # librdkafka's own account, kept for a failure: once, in many CI runs, this producer
    # delivered nothing after the broker came back, and logged nothing at its default level
    client_log = logging.getLogger(f"outage-producer-{uuid.uuid4().hex[:6]}")
    client_log.propagate = False
    client_log.setLevel(logging.DEBUG)
    handler = logging.FileHandler(logs / "producer.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    client_log.addHandler(handler)
    # the agents' producer settings (idempotent, acks=all, one request in flight: with five, this
    # producer once lost 6 acknowledged messages while the new topics' leaders were not yet serving)
    producer = Producer(
        producer_config(
            {"bootstrap.servers": broker.bootstrap},
            extra={"message.timeout.ms": 300_000, "linger.ms": 5, "debug": "eos,broker,topic,metadata,msg"},
        ),
        logger=client_log,
    )
    sent = 0
    failed: list[str] = []  # deliveries librdkafka gave up on: never on the topic, so not the sink's to store
    writing = threading.Event()
    writing.set()

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            failed.append(str(err))

    def write() -> None:  # one message a tick per 'node', through the outage (librdkafka buffers)
        nonlocal sent
        while writing.is_set():
            node = f"n{sent % 3}"
            batch = [GpuSample(node, g, f"GPU-{node}-{g}", T0 + sent * 1000, gpu_util=float(g)) for g in range(GPUS)]
            producer.produce(
                pipeline.topic(GPU_SAMPLES.name),
                key=node.encode(),
                value=GPU_SAMPLES.codec.encode(batch),
                on_delivery=delivered,
            )
            producer.poll(0)
            sent += 1
            time.sleep(0.05)

    writer = threading.Thread(target=write, daemon=True)
    sink = pipeline.start("sink", "-v", "sink", "--batch-age", "0.5")
    try:
        writer.start()
        time.sleep(8)  # the sink is storing
        assert sink.poll() is None, pipeline.log("sink")
        broker.stop()  # clean stop: its data stays
        time.sleep(40)  # longer than the sink's 15 s session: its static membership expires
        assert sink.poll() is None, "the sink died while the broker was away:\n" + pipeline.log("sink")[-3000:]
        broker.start()
        time.sleep(15)
        writing.clear()
        writer.join(10)
        left = producer.flush(120)
        assert left == 0, f"{left} messages not delivered; the producer's account:\n{_account(logs / 'producer.log')}"
        pipeline.wait_caught_up("clickhouse-sink", ["gpu.samples"], timeout=180)
        assert sink.poll() is None, "the sink died after the broker came back:\n" + pipeline.log("sink")[-3000:]
        on_topic = _messages_on(broker.bootstrap, pipeline.topic(GPU_SAMPLES.name), GPU_SAMPLES.partitions)
    finally:
        writing.clear()
        code = stop(sink)
        broker.stop()
        client_log.removeHandler(handler)
        handler.close()
    assert code == 0, pipeline.log("sink")[-3000:]
    sink_log = pipeline.log("sink")
    assert "Traceback" not in sink_log, sink_log[-3000:]
    rows = pipeline.sql("SELECT count() AS n, uniqExact(node, gpu_index, ts) AS keys FROM gpu_samples FINAL")[0]
    # every message the broker holds is stored once; the producer's own losses (if any) are told apart
    assert rows == {"n": on_topic * GPUS, "keys": on_topic * GPUS}, (rows, on_topic, sent, failed)
    assert on_topic == sent - len(failed), (on_topic, sent, failed)


def _messages_on(bootstrap: str, topic: str, partitions: int) -> int:
    """How many messages ``topic`` holds (no transactions here: offsets are messages)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"count-{uuid.uuid4().hex[:6]}"})
    try:
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in range(partitions))
    finally:
        consumer.close()


def _account(path: Path) -> str:
    """The producer's idempotence and connection states, then its last words (the file keeps all)."""
    lines = path.read_text(errors="replace").splitlines()
    said = ("IDEMPSTATE", "GETPID", "DRAIN", "changed state")
    states = [x for x in lines if any(w in x for w in said) and "/bootstrap:" not in x]  # the broker's own connection
    return "\n".join([*states[-60:], "...", *lines[-20:]])
