"""Rebuild the worker's state after a restart from the topics themselves.

Per-GPU stage: every series (one GPU, one metric) checkpoints its sketches to the compacted
``streams.state`` topic once a minute of event time, in the partition of its samples. A worker
assigned raw partition p reads back the latest checkpoint of each series of p and replays the raw
samples from just before the oldest of them up to its committed offset, outputs suppressed: the
series then hold exactly the samples an uninterrupted worker's would, and the detectors have seen
the same recent windows. Job stage: the pending merges are rebuilt by replaying the last minutes of
``gpu.sketches``. Open incidents are read back from the anomalies topic, so none fires twice.

Why not Faust tables: a table's changelog is recovered by Faust on its own schedule, while our
replay must run after the checkpoints are loaded and before the first new message; owning the
ordering (here, inside the partition-assignment callback, while the partitions are paused) is
simpler than coordinating with Faust's recovery service, and the topic is the same thing a Faust
changelog is: compacted, co-partitioned with the input.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from hpcinsight.core.kafka import broker_retry, iter_range, iter_to_end, new_consumer, read_range, watermarks
from hpcinsight.schemas.catalog import ANOMALIES, STREAM_STATE
from hpcinsight.schemas.codec import DecodeError
from hpcinsight.schemas.events import Anomaly, StateCheckpoint
from hpcinsight.streams.processor import SampleProcessor

log = logging.getLogger(__name__)


def _consumer(client_config: dict[str, Any], group_id: str) -> Consumer:
    return new_consumer(client_config, group_id, offset_reset="latest", extra={"enable.partition.eof": True})


def replay_committed(
    client_config: dict[str, Any],
    group_id: str,
    topic: str,
    partitions: set[int],
    horizon_ms: int,
    handle: Callable[[int, bytes | None], None],
    not_after_ms: dict[int, int] | None = None,
    timeout: float = 60.0,
    reach_ms: int | None = None,
) -> int:
    """Hand ``handle`` the messages of ``partitions`` from ``horizon_ms`` (Kafka time) before the last
    committed one up to it, so state can be rebuilt without outputs. ``not_after_ms`` moves the start of
    a partition earlier (e.g. to its oldest checkpoint), never more than ``reach_ms`` before the last
    committed one. Returns messages replayed."""
    consumer = _consumer(client_config, f"{group_id}-recovery")
    try:
        committed = new_consumer(client_config, group_id, offset_reset="latest")
        try:
            positions = committed.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout)
        finally:
            committed.close()
        stop_at = {tp.partition: tp.offset for tp in positions if tp.offset > 0}
        if not stop_at:
            return 0
        # the Kafka timestamp of the last handled message of each partition
        last = read_range(consumer, [TopicPartition(topic, p, o - 1) for p, o in stop_at.items()], stop_at, timeout)
        last_ts = {m.partition(): m.timestamp()[1] for m in last}
        since = {p: ts - horizon_ms for p, ts in last_ts.items()}
        for p, ts in (not_after_ms or {}).items():
            if p in since:
                since[p] = min(since[p], ts)
                if reach_ms is not None and since[p] < last_ts[p] - reach_ms:
                    log.warning(
                        "%s[%d]: a checkpoint is %.0f s older than the last message handled; replaying the last %.0f s only",
                        topic,
                        p,
                        (last_ts[p] - ts) / 1000,
                        reach_ms / 1000,
                    )
                    since[p] = last_ts[p] - reach_ms
        starts = broker_retry(
            lambda: consumer.offsets_for_times([TopicPartition(topic, p, ts) for p, ts in since.items()], timeout=timeout),
            timeout,
        )
        tps = [TopicPartition(topic, tp.partition, tp.offset if tp.offset >= 0 else stop_at[tp.partition]) for tp in starts]
        replayed = 0
        for tp in sorted(tps, key=lambda tp: tp.partition):  # a partition at a time, each in order, none held
            for msg in iter_range(consumer, [tp], stop_at, timeout):
                handle(msg.partition(), msg.value())
                replayed += 1
        log.warning("rebuilt state of %s partitions %s from %d messages", topic, sorted(stop_at), replayed)
        return replayed
    finally:
        consumer.close()


def rebuild_gpu_stage(
    processor: SampleProcessor,
    client_config: dict[str, Any],
    group_id: str,
    raw_topic: str,
    state_topic: str,
    partitions: set[int],
    timeout: float = 60.0,
) -> tuple[int, int]:
    """Take back the series of ``partitions`` from their checkpoints, then replay the raw samples
    after them. Returns (series restored, messages replayed)."""
    processor.forget(partitions)
    oldest: dict[int, int] = {}
    restored: dict[str, tuple[int, StateCheckpoint]] = {}
    # streamed, the latest of each series kept: until the cleaner runs, the topic holds a checkpoint
    # a series a minute (13 KB each; 1.8 million an hour at 10,240 GPUs)
    for msg in iter_to_end(client_config, state_topic, "hpcinsight-recovery-read", timeout, partitions=partitions):
        try:
            for record in STREAM_STATE.codec.decode(msg.value()):
                restored[record.series] = (msg.partition(), record)  # compaction keeps the latest; so do we
        except DecodeError:
            continue
    for partition, record in restored.values():
        processor.restore_series(partition, record)
        oldest[partition] = min(oldest.get(partition, record.ts), record.ts)
    config = processor.config
    horizon = config.replay_needs_ms
    margin = horizon - config.checkpoint_every_ms
    not_after = {p: ts - margin for p, ts in oldest.items()}
    replayed = replay_committed(
        client_config,
        group_id,
        raw_topic,
        partitions,
        horizon,
        processor.replay,
        not_after,
        timeout,
        reach_ms=config.replay_reach,
    )
    log.warning(
        "restored %d series of partitions %s from checkpoints, then replayed %d messages",
        len(restored),
        sorted(partitions),
        replayed,
    )
    return len(restored), replayed


def rebuild_job_stage(
    processor: SampleProcessor,
    client_config: dict[str, Any],
    group_id: str,
    topic: str,
    partitions: set[int],
    timeout: float = 60.0,
) -> int:
    """Rebuild the pending job merges (and job detectors' recent view) from the sketches topic."""
    processor.jobs.forget()
    horizon = 2 * processor.config.jobs.grace_ms + 60_000
    return replay_committed(
        client_config, group_id, topic, partitions, horizon, lambda _p, v: processor.replay_sketches(v), timeout=timeout
    )


def last_message(client_config: dict[str, Any], topic: str, catalog_topic: Any, timeout: float = 30.0) -> list[Any]:
    """The records of the newest message of each partition of ``topic`` (undecodable: none)."""
    consumer = _consumer(client_config, "hpcinsight-recovery-last")
    try:
        metadata = broker_retry(lambda: consumer.list_topics(topic, timeout=timeout), timeout).topics[topic]
        tps, stop_at = [], {}
        for p in metadata.partitions:
            _low, high = watermarks(consumer, TopicPartition(topic, p), timeout)
            if high > 0:
                tps.append(TopicPartition(topic, p, high - 1))
                stop_at[p] = high
        records: list[Any] = []
        for msg in read_range(consumer, tps, stop_at, timeout):
            try:
                records.extend(catalog_topic.codec.decode(msg.value()))
            except DecodeError:
                continue
        return records
    finally:
        consumer.close()


def open_incidents(client_config: dict[str, Any], topic: str, timeout: float = 60.0) -> list[Anomaly]:
    """The anomalies whose latest message in ``topic`` is 'firing': the topic streamed (it keeps
    30 days), only the incidents open so far held."""
    firing: dict[str, Anomaly] = {}
    for msg in iter_to_end(client_config, topic, "hpcinsight-recovery-read", timeout):
        try:
            for anomaly in ANOMALIES.codec.decode(msg.value()):
                if anomaly.state == "firing":
                    firing[anomaly.id] = anomaly
                else:
                    firing.pop(anomaly.id, None)
        except DecodeError:
            continue
    return list(firing.values())
