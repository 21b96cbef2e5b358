"""Reading a topic to its end and producing through a full local queue (hpcinsight.core.kafka), against
a real broker."""

from __future__ import annotations

import time
import uuid
from contextlib import closing
from itertools import pairwise
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import NewTopic

from hpcinsight.core.kafka import (
    iter_to_end,
    new_admin,
    new_consumer,
    new_producer,
    produce_queued,
    read_range,
    read_to_end,
    watermarks,
)

pytestmark = pytest.mark.kafka


def _topic(conf: dict[str, Any], partitions: int = 3, **config: str) -> str:
    name = f"t{uuid.uuid4().hex[:10]}.read"
    admin = new_admin(conf)  # held until the topic exists: a client collected early cancels its futures
    for future in admin.create_topics([NewTopic(name, partitions, 1, config=config)]).values():
        future.result()
    return name


def _produce(conf: dict[str, Any], topic: str, messages: list[tuple[int, bytes]]) -> None:
    producer = new_producer(conf)
    for partition, value in messages:
        producer.produce(topic, value, partition=partition)
    assert producer.flush(30) == 0


@pytest.fixture
def conf(kafka_bootstrap: str) -> dict[str, Any]:
    return {"bootstrap.servers": kafka_bootstrap}


def test_iter_to_end_streams_what_read_to_end_holds_from_a_partitions_offset_on(conf: dict[str, Any]) -> None:
    topic = _topic(conf)
    sent = [(i % 3, b"m%d" % i) for i in range(3_000)]
    _produce(conf, topic, sent)
    streamed = iter_to_end(conf, topic, "test-read", idle_timeout=30)
    assert [m.value() for m in streamed] == [m.value() for m in read_to_end(conf, topic, "test-read", timeout=30)]
    got = [(m.partition(), m.offset()) for m in iter_to_end(conf, topic, "test-read", idle_timeout=30, after={1: 990})]
    assert got == [(p, o) for p in range(3) for o in range(1_000) if p != 1 or o >= 990]
    only = iter_to_end(conf, topic, "test-read", idle_timeout=30, after={2: 995}, partitions={2})
    assert [(m.partition(), m.offset()) for m in only] == [(2, o) for o in range(995, 1_000)]
    assert list(iter_to_end(conf, f"{topic}-absent", "test-read", idle_timeout=5)) == []


def test_iter_to_end_times_the_brokers_silence_not_its_callers_work(conf: dict[str, Any]) -> None:
    """A caller may spend longer on one message than the idle timeout (a redrive sends a batch of
    letters as it reads them): that is not the broker falling silent, and the read goes on."""
    topic = _topic(conf, partitions=1)
    _produce(conf, topic, [(0, b"m%d" % i) for i in range(3_000)])  # a consume returns 1,000 at most
    got = 0
    for _ in iter_to_end(conf, topic, "test-read", idle_timeout=10):
        if got == 0:
            time.sleep(11)  # the caller's work, longer than the timeout
        got += 1
    assert got == 3_000


def test_read_to_end_reads_what_was_there_in_partition_and_offset_order(conf: dict[str, Any]) -> None:
    topic = _topic(conf)
    sent = [(i % 3, b"m%d" % i) for i in range(30)]
    _produce(conf, topic, sent)
    got = read_to_end(conf, topic, "test-read", timeout=30)
    assert [(m.partition(), m.value()) for m in got] == sorted(sent, key=lambda pv: (pv[0], int(pv[1][1:])))
    assert all(a.offset() < b.offset() for a, b in pairwise(got) if a.partition() == b.partition())
    assert [m.value() for m in read_to_end(conf, topic, "test-read", partitions={1}, timeout=30)] == [
        v for p, v in sent if p == 1
    ]


def test_an_empty_or_missing_topic_is_nothing(conf: dict[str, Any]) -> None:
    assert read_to_end(conf, _topic(conf), "test-read", timeout=30) == []
    assert read_to_end(conf, f"t{uuid.uuid4().hex[:10]}.none", "test-read", timeout=10) == []


def test_a_transaction_marker_at_the_end_does_not_hold_the_read(conf: dict[str, Any]) -> None:
    """The last offset of a transactionally written partition is the commit marker, which no
    reader ever sees: the read still ends at once, not at its timeout."""
    topic = _topic(conf, partitions=1)
    producer = new_producer(conf, extra={"transactional.id": f"test-{uuid.uuid4().hex}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, b"t%d" % i, partition=0)
    producer.commit_transaction(30)
    with closing(new_consumer(conf, "test-read")) as c:  # read_committed: the end is where the markers are written
        while watermarks(c, TopicPartition(topic, 0), 10)[1] < 6:  # 5 messages, then the commit marker
            time.sleep(0.1)
    started = time.monotonic()
    got = read_to_end(conf, topic, "test-read", timeout=20)
    assert [m.value() for m in got] == [b"t%d" % i for i in range(5)]
    assert time.monotonic() - started < 10


def test_read_range_stops_at_the_stop_and_says_when_it_cannot_get_there(conf: dict[str, Any]) -> None:
    topic = _topic(conf, partitions=2)
    _produce(conf, topic, [(0, b"a%d" % i) for i in range(10)] + [(1, b"b%d" % i) for i in range(4)])
    consumer = new_consumer(conf, "test-range", extra={"enable.partition.eof": True})
    try:
        got = read_range(consumer, [TopicPartition(topic, 0, 3), TopicPartition(topic, 1, 0)], {0: 7, 1: 4}, 30)
        assert sorted((m.partition(), m.offset()) for m in got) == [(0, o) for o in range(3, 7)] + [(1, o) for o in range(4)]
        assert read_range(consumer, [TopicPartition(topic, 0, 5)], {0: 5}, 30) == []
    finally:
        consumer.close()
    consumer = new_consumer(conf, "test-range")  # no end-of-partition events: only the position tells
    try:
        with pytest.raises(TimeoutError, match=rf"could not read {topic} partitions \[0\] within 2 s"):
            read_range(consumer, [TopicPartition(topic, 0, 0)], {0: 20}, 2)
    finally:
        consumer.close()


def test_a_full_local_queue_waits_instead_of_dropping(conf: dict[str, Any]) -> None:
    topic = _topic(conf, partitions=1)
    producer = new_producer(conf, extra={"queue.buffering.max.messages": 5, "linger.ms": 50})
    delivered: list[bytes] = []
    for i in range(200):
        produce_queued(
            producer,
            topic,
            b"%d" % i,
            None,
            wait_s=0.05,
            on_delivery=lambda err, msg: delivered.append(msg.value()) if err is None else None,
        )
    assert producer.flush(30) == 0
    assert delivered == [b"%d" % i for i in range(200)]
    assert [m.value() for m in read_to_end(conf, topic, "test-read", timeout=30)] == delivered
