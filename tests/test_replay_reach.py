"""A worker's restart replays at most ``replay_reach_ms`` of raw samples, whatever checkpoint a
long-silent GPU left behind (``recovery.rebuild_gpu_stage`` on a real broker)."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, Producer, TopicPartition

from hpcinsight.agents.sim.gpu import SimConfig, SimGpuCollector
from hpcinsight.core.kafka import new_admin
from hpcinsight.schemas.catalog import GPU_SAMPLES_RAW, STREAM_STATE, ensure_topics
from hpcinsight.streams.processor import ProcessorConfig, SampleProcessor
from hpcinsight.streams.recovery import rebuild_gpu_stage

pytestmark = pytest.mark.kafka

MINUTES, SILENT_AFTER = 12, 3  # node n1 falls silent after its third minute


def test_a_gpu_silent_for_long_does_not_make_the_restart_replay_back_to_it(kafka_bootstrap: str) -> None:
    conf, prefix = {"bootstrap.servers": kafka_bootstrap}, f"t{uuid.uuid4().hex[:8]}."
    ensure_topics(conf, prefix)
    raw, state, group = GPU_SAMPLES_RAW.full_name(prefix), STREAM_STATE.full_name(prefix), f"{prefix}worker"
    sim, live = SimGpuCollector(SimConfig(nodes=2, gpus_per_node=8)), SampleProcessor()
    t0 = (int(time.time()) - (MINUTES + 5) * 60) * 1000  # recent: within the raw topic's day
    producer = Producer({**conf, "enable.idempotence": True})
    times: list[int] = []
    for k in range(MINUTES * 60):
        ts = t0 + k * 1000
        samples = sim.sample(ts)
        nodes = 2 if k < SILENT_AFTER * 60 else 1
        batch = [(raw, 0, 0, b"n%d" % n, GPU_SAMPLES_RAW.codec.encode(samples[n * 8 : (n + 1) * 8])) for n in range(nodes)]
        for _, _, _, key, value in batch:
            producer.produce(raw, key=key, value=value, partition=0, timestamp=ts)
            times.append(ts)
        for out in live.handle_batch(batch):
            if out.topic is STREAM_STATE:
                producer.produce(state, key=out.key, value=out.value, partition=0)
        producer.poll(0)
    assert producer.flush(60) == 0
    commit_for(conf, group, TopicPartition(raw, 0, len(times)))  # as if the worker had handled every raw message

    processor = SampleProcessor()
    reach = processor.config.replay_reach
    restored, replayed = rebuild_gpu_stage(processor, conf, group, raw, state, {0})
    assert restored == 16 * 3  # the silent node's series too, from their last checkpoints
    # from the reach before the last message on, not from the silent node's checkpoints (minute 3)
    assert replayed == sum(ts >= times[-1] - reach for ts in times)
    assert replayed < len(times) // 2


def commit_for(conf: dict[str, str], group: str, position: TopicPartition) -> None:
    """Commit ``position`` for ``group``, once its coordinator answers (a new group's may not yet)."""
    admin = new_admin(conf)
    for _ in range(120):
        try:
            got = admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, [position])])[group].result(30)
            if all(tp.error is None for tp in got.topic_partitions):
                return
        except KafkaException:
            pass
        time.sleep(0.5)
    pytest.fail(f"the coordinator of {group} took no offset")


def test_the_reach_covers_what_a_restart_needs() -> None:
    """5 minutes by default; longer where the checkpoint period asks it (``hpcinsight replay`` of
    one sample a minute checkpoints every 5 minutes); never shorter than that, when given."""
    assert ProcessorConfig().replay_reach == 5 * 60_000
    slow = ProcessorConfig(checkpoint_every_ms=300_000)
    assert slow.replay_reach == slow.replay_needs_ms > 300_000
    with pytest.raises(ValueError, match="reach"):
        ProcessorConfig(replay_reach_ms=60_000)
    with pytest.raises(ValueError, match="reach"):
        ProcessorConfig(checkpoint_every_ms=300_000, replay_reach_ms=300_000)
