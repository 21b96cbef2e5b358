"""The sink base's owed commits on the real broker: offsets delivered but not recorded in the
group (a commit that failed, a sink whose own state is ahead of Kafka's committed offsets) reach
the group by themselves, with no new message to carry a later commit. Without that, a quiet
partition (the last anomaly, the inventory) kept its lag for good and the chaos campaign's
"everything caught up" check failed while every row was stored."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, TopicPartition

from hpcinsight.core.consumer import Offsets, TopicSink
from hpcinsight.core.kafka import lag, new_consumer, new_producer
from hpcinsight.core.topics import create_topics

pytestmark = pytest.mark.kafka


class ListSink(TopicSink):
    """Delivers each message's value to a list; commits after each poll, through the consumer
    it was handed at delivery (as the ClickHouse sink's writer thread does)."""

    OWED_RETRY_S = 0.5

    def __init__(self, conf: dict[str, Any], topic: str, group: str, ahead: Offsets | None = None) -> None:
        super().__init__()
        self.conf, self.topic, self.group, self.ahead = conf, topic, group, ahead or {}
        self.delivered: list[bytes] = []
        self.commit_through: Consumer | None = None  # a consumer to commit through instead of the loop's
        self._done: Offsets = {}

    def new_consumer(self) -> Consumer:
        return new_consumer(self.conf, self.group, extra={"session.timeout.ms": 10_000})

    def take_partitions(self, consumer: Consumer, first: bool) -> None:
        consumer.assign([TopicPartition(self.topic, 0, self.ahead.get((self.topic, 0), 0))])
        self.owe(self.ahead)  # the sink's own state is ahead of the group: the group must learn it

    def decode(self, msg: Message) -> list[Any]:
        return [msg.value()]

    def deliver(self, batch: Sequence[tuple[Message, list[Any]]]) -> None:
        for msg, records in batch:
            self.delivered.extend(records)
            self._done[(msg.topic(), msg.partition())] = msg.offset() + 1

    def tick(self) -> None:
        if self._done:
            done, self._done = self._done, {}
            self.commit(done, self.commit_through)


@dataclass(frozen=True)
class _Spec:
    name: str
    partitions: int = 1
    retention_ms: int = 3_600_000
    compacted: bool = False

    def full_name(self, prefix: str) -> str:
        return f"{prefix}{self.name}"


def _topic(conf: dict[str, Any], count: int) -> str:
    topic = f"owed-{uuid.uuid4().hex[:8]}"
    create_topics(conf, [_Spec(topic)], "")
    producer = new_producer(conf)
    for i in range(count):
        producer.produce(topic, str(i).encode(), partition=0)
    assert producer.flush(30) == 0
    return topic


def _wait(sink: ListSink, conf: dict[str, Any], topic: str, group: str, until: float) -> int:
    left = lag(conf, group, [topic])
    while left and time.monotonic() < until:
        time.sleep(0.2)
        left = lag(conf, group, [topic])
    return left


def test_a_commit_that_failed_lands_later_without_a_new_message(kafka_bootstrap: str) -> None:
    conf = {"bootstrap.servers": kafka_bootstrap}
    topic, group = _topic(conf, 5), f"owed-{uuid.uuid4().hex[:8]}"
    sink = ListSink(conf, topic, group)
    dead = new_consumer(conf, group)
    dead.close()
    sink.commit_through = dead  # every delivery's commit fails, as one through a consumer replaced meanwhile
    stop = threading.Event()
    thread = threading.Thread(target=sink.run_loop, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(sink.delivered) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(sink.delivered) == 5
        assert sink.stats.commit_failures >= 1
        assert _wait(sink, conf, topic, group, time.monotonic() + 30) == 0  # the owed offsets landed
    finally:
        stop.set()
        thread.join(30)


def test_a_position_ahead_of_the_group_reaches_it_with_no_message_to_read(kafka_bootstrap: str) -> None:
    conf = {"bootstrap.servers": kafka_bootstrap}
    topic, group = _topic(conf, 3), f"owed-{uuid.uuid4().hex[:8]}"
    sink = ListSink(conf, topic, group, ahead={(topic, 0): 3})  # its own state: all three delivered before
    stop = threading.Event()
    thread = threading.Thread(target=sink.run_loop, args=(stop,), daemon=True)
    thread.start()
    try:
        assert _wait(sink, conf, topic, group, time.monotonic() + 30) == 0
        assert sink.delivered == []  # nothing read again, nothing new: the commit came from the owed offsets
    finally:
        stop.set()
        thread.join(30)
