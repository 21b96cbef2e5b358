"""Rebuild the worker's state after a restart from the topics themselves.

The stream state is small and derivable: a GPU's sliding windows depend only on its last
``window`` of samples, and a detector's open incidents are in the anomalies topic. So
instead of writing every window update to a changelog (as many messages again as samples),
a worker that is assigned a partition re-reads the raw samples from a little more than one
window before its committed offset (outputs suppressed), and reads back the incidents it
had left open. It then continues exactly where it stopped: the windows it emits are the
ones an uninterrupted worker would have emitted, and no incident fires twice.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from schemas.catalog import ANOMALIES
from schemas.codec import DecodeError
from schemas.events import Anomaly
from streams.processor import SampleProcessor

log = logging.getLogger(__name__)


def _consumer(client_config: dict[str, Any], group_id: str) -> Consumer:
    return Consumer({**client_config, "group.id": group_id, "enable.auto.commit": False, "enable.partition.eof": True})


def _read_range(consumer: Consumer, tps: list[TopicPartition], stop_at: dict[int, int], timeout: float) -> list[Any]:
    """Messages of ``tps`` from their offsets up to (not including) ``stop_at[partition]``."""
    out: list[Any] = []
    pending = {tp.partition for tp in tps if tp.offset < stop_at[tp.partition]}
    if not pending:
        return out
    consumer.assign([tp for tp in tps if tp.partition in pending])
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=1000, timeout=0.5):
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                continue
            if msg.offset() >= stop_at[msg.partition()]:
                pending.discard(msg.partition())
                continue
            out.append(msg)
            if msg.offset() + 1 >= stop_at[msg.partition()]:
                pending.discard(msg.partition())
    if pending:
        raise TimeoutError(f"could not re-read partitions {sorted(pending)} within {timeout:g} s")
    return out


def rebuild_windows(
    processor: SampleProcessor, client_config: dict[str, Any], group_id: str, topic: str, partitions: set[int],
    horizon_ms: int, timeout: float = 60.0,
) -> int:
    """Replay the last ``horizon_ms`` before the committed offset of each partition. Returns messages replayed."""
    processor.forget(partitions)
    consumer = _consumer(client_config, f"{group_id}-recovery")
    try:
        committed = Consumer({**client_config, "group.id": group_id, "enable.auto.commit": False})
        try:
            positions = committed.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout)
        finally:
            committed.close()
        stop_at = {tp.partition: tp.offset for tp in positions if tp.offset > 0}
        if not stop_at:
            return 0
        # the Kafka timestamp of the last handled message of each partition
        last = _read_range(consumer, [TopicPartition(topic, p, o - 1) for p, o in stop_at.items()], stop_at, timeout)
        since = {m.partition(): m.timestamp()[1] - horizon_ms for m in last}
        starts = consumer.offsets_for_times([TopicPartition(topic, p, ts) for p, ts in since.items()], timeout=timeout)
        tps = [TopicPartition(topic, tp.partition, tp.offset if tp.offset >= 0 else stop_at[tp.partition]) for tp in starts]
        messages = _read_range(consumer, tps, stop_at, timeout)
        for msg in sorted(messages, key=lambda m: (m.partition(), m.offset())):
            processor.replay(msg.partition(), msg.value())
        log.warning("rebuilt window state of partitions %s from %d messages", sorted(stop_at), len(messages))
        return len(messages)
    finally:
        consumer.close()


def open_incidents(client_config: dict[str, Any], topic: str, timeout: float = 60.0) -> list[Anomaly]:
    """The anomalies whose latest message in ``topic`` is 'firing'."""
    consumer = _consumer(client_config, "hpcinsight-recovery-anomalies")
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
        tps, stop_at = [], {}
        for p in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            tps.append(TopicPartition(topic, p, low))
            stop_at[p] = high
        latest: dict[str, Anomaly] = {}
        for msg in _read_range(consumer, tps, stop_at, timeout):
            try:
                for anomaly in ANOMALIES.codec.decode(msg.value()):
                    latest[anomaly.id] = anomaly
            except DecodeError:
                continue
        return [a for a in latest.values() if a.state == "firing"]
    finally:
        consumer.close()

