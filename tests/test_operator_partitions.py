"""Topics an operator created with other partition counts than the catalog's (their own tooling,
a larger cluster): the worker goes by what the broker lists.

The scheduler feed reads every partition (with the catalog's count, the jobs placed in the others
went unattributed, without a word), and the samples are forwarded to the raw partition's twin
only where the stored topic has as many (librdkafka refuses a message for a partition the topic
lacks, and the stage would fail on every batch).
A state topic with fewer partitions than the raw samples cannot work: the worker says so. One
worker publishes the KPIs however many partitions the inventory topic has."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer, TopicPartition

from hpcinsight.core.settings import load
from hpcinsight.core.topics import create_topics
from hpcinsight.schemas.catalog import GPU_SAMPLES, GPU_SAMPLES_RAW, SCHEDULER_EVENTS, STREAM_STATE, ensure_topics
from hpcinsight.schemas.events import GpuSample, SchedulerEvent
from hpcinsight.streams.app import SchedulerFeed, leads_kpis, samples_co_partitioned
from hpcinsight.streams.processor import SampleProcessor

T0 = 1_764_000_000_000
MORE = SCHEDULER_EVENTS.partitions + 3


@pytest.mark.kafka
def test_a_placement_in_a_partition_past_the_catalog_s_count_is_attributed(tmp_path: Path, kafka_bootstrap: str) -> None:
    prefix = f"feed{uuid.uuid4().hex[:6]}."
    conf = {"bootstrap.servers": kafka_bootstrap}
    create_topics(conf, [dataclasses.replace(SCHEDULER_EVENTS, partitions=MORE)], prefix)
    ensure_topics(conf, prefix)  # the others, at the catalog's counts
    events = [
        SchedulerEvent(ts=T0, source="test", job_id="j-last", kind="submitted", user="alice", team="llm"),
        SchedulerEvent(ts=T0 + 1_000, source="test", job_id="j-last", kind="scheduled", node="n0", gpu_ids=["0"]),
    ]
    producer = Producer(conf)
    producer.produce(
        SCHEDULER_EVENTS.full_name(prefix), key=b"j-last", value=SCHEDULER_EVENTS.codec.encode(events), partition=MORE - 1
    )
    assert producer.flush(30) == 0
    settings = load({"KAFKA_BOOTSTRAP": kafka_bootstrap, "HPCINSIGHT_TOPIC_PREFIX": prefix, "HPCINSIGHT_DATA_DIR": str(tmp_path)})
    processor = SampleProcessor()
    feed = SchedulerFeed(settings, processor)
    feed.catch_up(timeout=30)
    got = processor.attribution.enrich_gpu(GpuSample("n0", 0, "GPU-0", T0 + 5_000, gpu_util=90.0))
    assert (got.job_id, got.user, got.team) == ("j-last", "alice", "llm")


@pytest.mark.kafka
@pytest.mark.parametrize("stored", [GPU_SAMPLES.partitions, GPU_SAMPLES.partitions // 2], ids=["as many", "fewer"])
def test_samples_go_to_the_raw_partition_s_twin_only_where_there_is_one(
    stored: int, tmp_path: Path, kafka_bootstrap: str
) -> None:
    prefix = f"twin{uuid.uuid4().hex[:6]}."
    conf = {"bootstrap.servers": kafka_bootstrap}
    create_topics(conf, [dataclasses.replace(GPU_SAMPLES, partitions=stored)], prefix)
    ensure_topics(conf, prefix)
    settings = load({"KAFKA_BOOTSTRAP": kafka_bootstrap, "HPCINSIGHT_TOPIC_PREFIX": prefix, "HPCINSIGHT_DATA_DIR": str(tmp_path)})
    twins = samples_co_partitioned(settings)
    assert twins is (stored == GPU_SAMPLES_RAW.partitions)
    processor = SampleProcessor()
    processor.samples_by_partition = twins
    raw = GPU_SAMPLES_RAW.codec.encode([GpuSample("n0", 0, "GPU-0", T0, gpu_util=90.0)])
    out = [o for o in processor.handle_batch([("raw", 5, 0, b"n0", raw)]) if o.topic is GPU_SAMPLES]
    assert [(o.key, o.partition) for o in out] == ([(b"", 5)] if twins else [(b"n0", None)])


@pytest.mark.kafka
def test_a_state_topic_with_fewer_partitions_than_the_raw_samples_is_refused_in_words(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    prefix = f"state{uuid.uuid4().hex[:6]}."
    conf = {"bootstrap.servers": kafka_bootstrap}
    create_topics(conf, [dataclasses.replace(STREAM_STATE, partitions=GPU_SAMPLES_RAW.partitions - 1)], prefix)
    ensure_topics(conf, prefix)
    env = {"KAFKA_BOOTSTRAP": kafka_bootstrap, "HPCINSIGHT_TOPIC_PREFIX": prefix, "HPCINSIGHT_DATA_DIR": str(tmp_path)}
    with pytest.raises(ValueError, match=rf"streams.state has {GPU_SAMPLES_RAW.partitions - 1} partitions, fewer than"):
        samples_co_partitioned(load(env))
    samples_co_partitioned(load({**env, "HPCINSIGHT_TOPIC_PREFIX": f"other{uuid.uuid4().hex[:6]}."}))  # none yet: the catalog's


def test_one_worker_leads_the_kpis_however_many_inventory_partitions_there_are() -> None:
    """With the inventory created with three partitions and two workers sharing them, exactly one
    publishes the KPIs (owning any of them made both publishers, each row sent twice)."""
    inventory = "p.node.inventory"
    first = {TopicPartition(inventory, 0), TopicPartition(inventory, 2), TopicPartition("p.gpu.samples.raw", 0)}
    second = {TopicPartition(inventory, 1), TopicPartition("p.gpu.samples.raw", 1)}
    assert [leads_kpis(first, inventory), leads_kpis(second, inventory)] == [True, False]
    assert leads_kpis({TopicPartition(inventory, 0)}, inventory) and not leads_kpis(set(), inventory)


@pytest.mark.kafka
def test_topics_create_says_which_existing_topics_keep_another_count(tmp_path: Path, kafka_bootstrap: str) -> None:
    """Topics are created, never resized (keys would move): asking for 9 partitions where the
    topics exist with 6 leaves them, and says so by name."""
    prefix = f"resize{uuid.uuid4().hex[:6]}."
    ensure_topics({"bootstrap.servers": kafka_bootstrap}, prefix)
    env = {"KAFKA_BOOTSTRAP": kafka_bootstrap, "HPCINSIGHT_TOPIC_PREFIX": prefix, "HPCINSIGHT_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "hpcinsight.cli", "topics", "--create", "--partitions", "9", "--format", "json"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    said = [line for line in done.stderr.splitlines() if "left as it is" in line]
    assert f"hpcinsight topics: {prefix}gpu.samples.raw exists with 6 partitions, not 9: left as it is" in said
    assert not [line for line in said if "node.inventory" in line]  # single by design: asked 1, has 1
