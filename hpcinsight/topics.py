"""Create the catalog's topics on the broker, with their partitions and retention."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from hpcinsight.config import broker_retry
from schemas.catalog import TOPICS


def ensure_topics(client_config: dict[str, Any], prefix: str, replication: int | None = None, timeout: float = 30.0) -> list[str]:
    """Create missing topics (existing ones are left as they are). Returns all full names.

    ``replication`` None leaves the replication factor (and ``min.insync.replicas``) to the
    cluster's ``default.replication.factor``: 1 on a single local broker, what the operator
    chose on a real cluster (3 on ``hpcinsight kafka run --brokers 3``)."""
    admin = AdminClient(client_config)
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [
        NewTopic(
            t.full_name(prefix),
            num_partitions=t.partitions,
            replication_factor=-1 if replication is None else replication,  # -1: the broker's default
            config={
                "retention.ms": str(t.retention_ms), "compression.type": "producer",
                **({"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1", "segment.ms": str(3_600_000)} if t.compacted else {}),
            },
        )
        for t in TOPICS
        if t.full_name(prefix) not in existing
    ]
    if wanted:
        for name, future in admin.create_topics(wanted, operation_timeout=timeout).items():
            try:
                future.result()
            except KafkaException as err:
                if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    names = [t.full_name(prefix) for t in TOPICS]
    _wait_for_leaders(admin, names, timeout)
    return names


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout: float) -> None:
    """Block until every partition of ``names`` has a leader: a new topic is not usable before."""
    deadline = time.monotonic() + timeout
    while True:
        topics = admin.list_topics(timeout=timeout).topics
        pending = [
            n for n in names
            if n not in topics or topics[n].error is not None
            or not topics[n].partitions or any(p.leader < 0 or p.error is not None for p in topics[n].partitions.values())
        ]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise KafkaException(f"topics without a partition leader after {timeout:g} s: {', '.join(pending)}")
        time.sleep(0.2)


def _watermarks(consumer: Any, tp: Any, timeout: float) -> tuple[int, int]:
    return broker_retry(lambda: consumer.get_watermark_offsets(tp, timeout=timeout), timeout)


@contextmanager
def _consumer(client_config: dict[str, Any], group_id: str) -> Iterator[Consumer]:
    """A consumer used only for metadata and offsets: it never joins the group."""
    consumer = Consumer({**client_config, "group.id": group_id, "enable.auto.commit": False})
    try:
        yield consumer
    finally:
        consumer.close()


def lag(client_config: dict[str, Any], group_id: str, topics: list[str], timeout: float = 10.0) -> int:
    """Messages in ``topics`` not yet committed by consumer group ``group_id``."""
    with _consumer(client_config, group_id) as consumer:
        metadata = consumer.list_topics(timeout=timeout)
        partitions = [TopicPartition(t, p) for t in topics for p in metadata.topics[t].partitions]
        committed = broker_retry(lambda: consumer.committed(partitions, timeout=timeout), timeout)
        total = 0
        for tp in committed:
            low, high = _watermarks(consumer, tp, timeout)
            position = tp.offset if tp.offset >= 0 else low
            total += max(0, high - position)
        return total


def message_count(client_config: dict[str, Any], topics: list[str], timeout: float = 10.0) -> dict[str, int]:
    """Messages ever written to each topic (sum of high watermarks)."""
    with _consumer(client_config, "hpcinsight-watermarks") as consumer:
        metadata = consumer.list_topics(timeout=timeout)
        return {
            t: sum(_watermarks(consumer, TopicPartition(t, p), timeout)[1] for p in metadata.topics[t].partitions)
            for t in topics
        }
