"""The ClickHouse sink: Kafka topics into tables, in Arrow batches, exactly once.

Batches close by size or by age, whichever comes first. A batch is inserted with
``insert_arrow`` and only then are its offsets committed to Kafka. Every row carries its
Kafka partition and offset (``_partition``, ``_offset``), so when the sink restarts after a
crash between insert and commit, it asks ClickHouse for the highest offset already stored
per partition and resumes after it: the batch is neither lost nor inserted twice. Inserts
also carry a deterministic deduplication token, which covers a retried insert.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from schemas.catalog import DEAD_LETTERS, STORED, Topic
from schemas.codec import DecodeError
from schemas.derive import to_arrow
from schemas.events import DeadLetter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SinkOptions:
    batch_rows: int = 50_000
    batch_age_s: float = 1.0
    group_id: str = "clickhouse-sink"
    #: static group membership: a sink restarted with the same id takes its partitions back at
    #: once instead of waiting for the dead member's session to time out
    instance_id: str | None = "0"


@dataclass
class SinkStats:
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    batches: int = 0
    dead_letters: int = 0
    resumed_from_store: int = 0


@dataclass
class _Pending:
    """Rows waiting for one table, with the Kafka positions they came from."""

    records: list[Any] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)


class ClickHouseSink:
    def __init__(self, client: Client, consumer_config: dict[str, Any], topic_prefix: str, options: SinkOptions) -> None:
        self.client = client
        self.options = options
        self.prefix = topic_prefix
        self.stats = SinkStats()
        self._topics: dict[str, Topic] = {f"{topic_prefix}{t.name}": t for t in STORED}
        self._consumer = Consumer(
            {
                **consumer_config,
                "group.id": f"{topic_prefix}{options.group_id}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                **({"group.instance.id": f"{topic_prefix}{options.group_id}-{options.instance_id}"} if options.instance_id else {}),
                "session.timeout.ms": 15_000,
            }
        )
        self._producer = Producer({**consumer_config, "enable.idempotence": True, "acks": "all"})
        self._pending: dict[str, _Pending] = defaultdict(_Pending)
        self._positions: dict[tuple[str, int], int] = {}
        self._batch_started: float | None = None
        self._pending_rows = 0
        self._assigned_at: float | None = None

    # -- partition assignment ------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        committed = consumer.committed(partitions, timeout=30)
        for tp in committed:
            stored = self._stored_max_offset(tp.topic, tp.partition, max(tp.offset, 0))
            if stored is not None and stored + 1 > tp.offset:
                log.warning("resuming %s[%d] at %d from ClickHouse (Kafka had %d)", tp.topic, tp.partition, stored + 1, tp.offset)
                tp.offset = stored + 1
                self.stats.resumed_from_store += 1
        consumer.assign(committed)
        self._assigned_at = time.monotonic()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.flush()

    def _stored_max_offset(self, topic: str, partition: int, at_least: int) -> int | None:
        table = self._topics[topic].table
        assert table is not None
        result = self.client.query(
            f"SELECT max(_offset), count() FROM `{table.name}` WHERE _partition = {{p:UInt32}} AND _offset >= {{o:UInt64}}",
            parameters={"p": partition, "o": at_least},
        )
        max_offset, count = result.result_rows[0]
        return int(max_offset) if count else None

    # -- main loop -----------------------------------------------------------------------
    def run(self, stop: threading.Event, idle_exit_s: float | None = None) -> SinkStats:
        """Consume until ``stop`` is set, or with ``idle_exit_s``, until partitions are assigned
        and no message has come for that long."""
        self._consumer.subscribe(list(self._topics), on_assign=self._on_assign, on_revoke=self._on_revoke)
        last_data = time.monotonic()
        try:
            while not stop.is_set():
                messages = self._consumer.consume(num_messages=2000, timeout=0.2)
                for msg in messages:
                    self._add(msg)
                if messages:
                    last_data = time.monotonic()
                if self._due():
                    self.flush()
                if idle_exit_s is not None and self._assigned_at is not None:
                    if time.monotonic() - max(last_data, self._assigned_at) > idle_exit_s:
                        break
            self.flush()
        finally:
            self._producer.flush(30)
            self._consumer.close()
        return self.stats

    def _add(self, msg: Message) -> None:
        if msg.error():
            if msg.error().code() != KafkaError._PARTITION_EOF:
                log.error("consume error: %s", msg.error())
            return
        topic = self._topics[msg.topic()]
        self._positions[(msg.topic(), msg.partition())] = msg.offset()
        try:
            records = topic.codec.decode(msg.value())
        except DecodeError as err:
            # Upstream stages validate; this guards against a foreign producer. The bad message
            # goes to the dead-letter topic and its offset still advances.
            self._dead_letter(msg, str(err))
            return
        pending = self._pending[msg.topic()]
        pending.records.extend(records)
        pending.partitions.extend([msg.partition()] * len(records))
        pending.offsets.extend([msg.offset()] * len(records))
        self._pending_rows += len(records)
        if self._batch_started is None:
            self._batch_started = time.monotonic()

    def _dead_letter(self, msg: Message, reason: str) -> None:
        if msg.topic() == f"{self.prefix}{DEAD_LETTERS.name}":
            log.error("undecodable dead letter at %s[%d]@%d dropped from storage: %s", msg.topic(), msg.partition(), msg.offset(), reason)
            return
        letter = DeadLetter(
            ts=int(time.time() * 1000), source_topic=msg.topic(), source_partition=msg.partition(),
            source_offset=msg.offset(), stage="sink", reason=reason, raw=msg.value() or b"", key=msg.key(),
        )
        self._producer.produce(f"{self.prefix}{DEAD_LETTERS.name}", key=msg.topic().encode(), value=DEAD_LETTERS.codec.encode([letter]))
        self._producer.poll(0)
        self.stats.dead_letters += 1

    def _due(self) -> bool:
        if self._batch_started is None:
            return False
        return self._pending_rows >= self.options.batch_rows or time.monotonic() - self._batch_started >= self.options.batch_age_s

    def flush(self) -> None:
        """Insert every pending batch, then commit the offsets of everything consumed."""
        if self._pending_rows:
            for topic_name, pending in list(self._pending.items()):
                if pending.records:
                    self._insert(self._topics[topic_name], pending)
            self.stats.batches += 1
        if os.environ.get("HPCINSIGHT_SINK_CRASH_AFTER_INSERT") == "1" and self._pending_rows:
            # Fault injection for the exactly-once test: die between insert and commit.
            os.kill(os.getpid(), signal.SIGKILL)
        if self._positions:
            self._producer.flush(30)  # dead letters reach Kafka before their source offset is committed
            offsets = [TopicPartition(t, p, o + 1) for (t, p), o in self._positions.items()]
            self._consumer.commit(offsets=offsets, asynchronous=False)
            self._positions.clear()
        self._pending.clear()
        self._pending_rows = 0
        self._batch_started = None

    def _insert(self, topic: Topic, pending: _Pending) -> None:
        assert topic.table is not None
        extra = {
            "_partition": pa.array(pending.partitions, pa.uint32()),
            "_offset": pa.array(pending.offsets, pa.uint64()),
        }
        table = to_arrow(topic.event, pending.records, extra)
        spans: dict[int, list[int]] = {}
        for p, o in zip(pending.partitions, pending.offsets):
            span = spans.setdefault(p, [o, o])
            span[0], span[1] = min(span[0], o), max(span[1], o)
        token = topic.name + "/" + ",".join(f"{p}:{lo}-{hi}" for p, (lo, hi) in sorted(spans.items()))
        self.client.insert_arrow(topic.table.name, table, settings={"insert_deduplication_token": token})
        self.stats.rows[topic.table.name] += table.num_rows
