"""The catalog's topics as the broker creates them: retention, and compaction where a topic keeps
the latest message of each key."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka.admin import ConfigResource

from hpcinsight.core.kafka import new_admin
from hpcinsight.schemas.catalog import GPU_SAMPLES_RAW, STREAM_STATE, ensure_topics

pytestmark = pytest.mark.kafka


def test_the_checkpoints_topic_is_compacted_a_small_segment_at_a_time(kafka_bootstrap: str) -> None:
    """The worker's restart reads what the cleaner has not compacted yet: closed segments of
    128 MiB bound it to minutes of checkpoints at 10,240 GPUs (Kafka's default is 1 GiB)."""
    conf, prefix = {"bootstrap.servers": kafka_bootstrap}, f"t{uuid.uuid4().hex[:8]}."
    ensure_topics(conf, prefix)
    admin = new_admin(conf)
    state, raw = (ConfigResource(ConfigResource.Type.TOPIC, t.full_name(prefix)) for t in (STREAM_STATE, GPU_SAMPLES_RAW))
    got = {r: {k: v.value for k, v in f.result(30).items()} for r, f in admin.describe_configs([state, raw]).items()}
    assert got[state]["cleanup.policy"] == "compact" and got[state]["segment.bytes"] == str(128 << 20)
    assert got[state]["retention.ms"] == str(STREAM_STATE.retention_ms)
    assert got[raw]["cleanup.policy"] == "delete" and got[raw]["retention.ms"] == str(GPU_SAMPLES_RAW.retention_ms)
