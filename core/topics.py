"""Topic admin: create topics on the broker with their partitions and retention (the catalog in
``schemas`` says which; see :func:`hpcinsight.schemas.catalog.ensure_topics`)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # the stubs import NewTopic without re-exporting it

from hpcinsight.core.kafka import new_admin


class TopicSpec(Protocol):
    """What the admin needs of a topic's definition (``schemas.catalog.Topic`` is one)."""

    @property
    def partitions(self) -> int: ...
    @property
    def retention_ms(self) -> int: ...
    @property
    def compacted(self) -> bool: ...

    def full_name(self, prefix: str) -> str: ...


#: A compacted topic is cleaned a closed segment at a time; until then it holds every message.
#: ``stream.state`` takes a checkpoint a series a minute (13 KB; 67 MB a minute a partition at
#: 10,240 GPUs), and a worker's restart reads what is not yet cleaned: segments of 128 MiB (not
#: Kafka's 1 GiB) keep that to a few minutes of checkpoints.
COMPACTED = {
    "cleanup.policy": "compact",
    "min.cleanable.dirty.ratio": "0.1",
    "segment.ms": str(3_600_000),
    "segment.bytes": str(128 << 20),
}


def create_topics(
    client_config: dict[str, Any], topics: Iterable[TopicSpec], prefix: str, replication: int | None = None, timeout: float = 30.0
) -> list[str]:
    """Create missing topics (existing ones are left as they are). Returns all full names.

    ``replication`` None leaves the replication factor (and ``min.insync.replicas``) to the
    cluster's ``default.replication.factor``: 1 on a single local broker, what the operator
    chose on a real cluster (3 on ``hpcinsight kafka run --brokers 3``)."""
    topics = list(topics)
    admin = new_admin(client_config)
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [
        NewTopic(
            t.full_name(prefix),
            num_partitions=t.partitions,
            replication_factor=-1 if replication is None else replication,  # -1: the broker's default
            config={
                "retention.ms": str(t.retention_ms),
                "compression.type": "producer",
                **(COMPACTED if t.compacted else {}),
            },
        )
        for t in topics
        if t.full_name(prefix) not in existing
    ]
    if wanted:
        for future in admin.create_topics(wanted, operation_timeout=timeout).values():
            try:
                future.result()
            except KafkaException as err:
                if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    names = [t.full_name(prefix) for t in topics]
    wait_for_leaders(admin, names, timeout)
    return names


def wait_for_leaders(admin: AdminClient, names: list[str], timeout: float) -> None:
    """Block until every partition of ``names`` has a leader: a new topic is not usable before."""
    deadline = time.monotonic() + timeout
    while True:
        topics = admin.list_topics(timeout=timeout).topics
        pending = [
            n
            for n in names
            if n not in topics
            or topics[n].error is not None
            or not topics[n].partitions
            or any(p.leader < 0 or p.error is not None for p in topics[n].partitions.values())
        ]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise KafkaException(f"topics without a partition leader after {timeout:g} s: {', '.join(pending)}")
        time.sleep(0.2)
