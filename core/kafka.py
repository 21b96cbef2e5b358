"""Kafka helpers every component shares: questions to the broker asked again through its weather."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from hpcinsight.core.settings import KafkaSettings

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

T = TypeVar("T")
log = logging.getLogger(__name__)

#: where a client's connection settings come from: the settings themselves, or the dictionary
#: their ``client_config()`` made (what components that were handed one still pass on)
KafkaClientSource = KafkaSettings | Mapping[str, Any]


# -- client factory ---------------------------------------------------------------------------
# Every component builds its Kafka clients here, so the options they must agree on (offsets
# committed by the component, never automatically; only committed transactions read; a dead
# letter or a sample retried until the broker takes it) are written once.


def connection_config(kafka: KafkaClientSource) -> dict[str, Any]:
    """The broker address, security and logging options of ``kafka`` (a fresh dictionary)."""
    return kafka.client_config() if isinstance(kafka, KafkaSettings) else dict(kafka)


def consumer_config(
    kafka: KafkaClientSource,
    group_id: str,
    *,
    offset_reset: str = "earliest",
    instance_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A consumer's configuration: auto-commit off (each component commits what it has handled),
    read_committed, ``offset_reset`` where the group has no offset, static membership with
    ``instance_id``; ``extra`` last, for what is one component's own."""
    conf = {
        **connection_config(kafka),
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": offset_reset,
        "isolation.level": "read_committed",
    }
    if instance_id:
        conf["group.instance.id"] = instance_id
    conf.update(extra or {})
    return conf


def new_consumer(
    kafka: KafkaClientSource,
    group_id: str,
    *,
    offset_reset: str = "earliest",
    instance_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Consumer:
    """A confluent-kafka consumer built by :func:`consumer_config`."""
    from confluent_kafka import Consumer

    return Consumer(consumer_config(kafka, group_id, offset_reset=offset_reset, instance_id=instance_id, extra=extra))


def producer_config(
    kafka: KafkaClientSource, *, until_delivered: bool = False, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A producer's configuration: idempotent, ``acks=all`` (no acknowledged message lost to a
    leader's change), one request in flight per broker; with ``until_delivered`` a message is
    retried for as long as it takes (``message.timeout.ms`` 0: the caller bounds its backlog and
    waits before committing).

    One request in flight: with more, a batch refused as not persisted (NOT_LEADER while a
    partition's leader is not yet serving, after a topic is made or a broker restarts) was
    reported delivered when a later batch of the partition succeeded, as librdkafka takes a later
    success to imply the earlier batch's; the broker had accepted that later batch's sequence from
    a producer id it had no state for. A test's producer lost 6 acknowledged messages that way
    (docs/guarantees.md, "Brokers")."""
    conf = {
        **connection_config(kafka),
        "enable.idempotence": True,
        "acks": "all",
        "max.in.flight.requests.per.connection": 1,
    }
    if until_delivered:
        conf["message.timeout.ms"] = 0
    conf.update(extra or {})
    return conf


def new_producer(
    kafka: KafkaClientSource, *, until_delivered: bool = False, extra: Mapping[str, Any] | None = None, **kwargs: Any
) -> Producer:
    """A confluent-kafka producer built by :func:`producer_config` (``kwargs``, e.g. ``logger``, go
    to the client as they are)."""
    from confluent_kafka import Producer

    return Producer(producer_config(kafka, until_delivered=until_delivered, extra=extra), **kwargs)


def new_admin(kafka: KafkaClientSource) -> AdminClient:
    """A confluent-kafka admin client for ``kafka``."""
    from confluent_kafka.admin import AdminClient

    return AdminClient(connection_config(kafka))


def broker_retry(call: Callable[[], T], timeout: float = 30.0) -> T:
    """``call()`` (a metadata or offsets request), asked again while the broker says "not yet".

    A partition just created has a leader in the metadata a moment before that leader answers
    offset requests (NOT_LEADER_FOR_PARTITION), and a group coordinator loads for a while after a
    broker starts. Every component asks such questions at start-up; they wait here, up to
    ``timeout``, instead of dying of it. A broker restarting or one node of a cluster lost
    (the connection torn down, every broker briefly unreachable, a request timed out) is the same
    weather (the chaos campaign killed workers with _TRANSPORT and _DESTROY_BROKER here). Any
    other error is raised at once."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except KafkaException as err:
            if not transient(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def transient(err: Exception) -> bool:
    """Whether ``err`` is broker weather (see :func:`broker_retry`): asked again, it may pass."""
    from confluent_kafka import KafkaError, KafkaException

    error = err.args[0] if isinstance(err, KafkaException) and err.args else None
    return isinstance(error, KafkaError) and (error.retriable() or error.code() in _transient_codes())


def _transient_codes() -> set[int]:
    from confluent_kafka import KafkaError

    return {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._DESTROY_BROKER,
        KafkaError._WAIT_COORD,
        KafkaError.REQUEST_TIMED_OUT,
        # a leader just moved (a node of a cluster restarted): the client's metadata is a step behind
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError.OFFSET_NOT_AVAILABLE,
    }


def while_broker_away(call: Callable[[], T], stop: threading.Event, what: str) -> T | None:
    """``call()``, tried again with backoff (1 s doubling to 30 s) for as long as the broker is away
    (:func:`transient`), until ``stop`` is set (then None). A component starting while the broker
    restarts waits for it instead of exiting: the chaos campaign found a sink restarted during a
    broker's restart exit after 30 s of it, under load. Any other error is raised."""
    from confluent_kafka import KafkaException

    delay = 1.0
    while True:
        try:
            return call()
        except KafkaException as err:
            if not transient(err):
                raise
            if stop.is_set():
                return None
            log.warning("%s: the broker does not answer (%s); trying again in %.0f s", what, err.args[0], delay)
            if stop.wait(delay):
                return None
            delay = min(30.0, delay * 2)


def watermarks(consumer: Any, tp: Any, timeout: float) -> tuple[int, int]:
    """A partition's (low, high) offsets, asked again while a new partition's leader is elected."""
    low, high = broker_retry(lambda: consumer.get_watermark_offsets(tp, timeout=timeout), timeout)
    return int(low), int(high)


def partition_counts(consumer: Any, topics: list[str], timeout: float = 30.0) -> dict[str, int]:
    """How many partitions the broker lists for each of ``topics`` that it has (those it does not
    list are left out): what the topics were created with, whatever the catalog's default."""
    metadata = broker_retry(lambda: consumer.list_topics(timeout=timeout), timeout)
    counts = {}
    for name in topics:
        topic = metadata.topics.get(name)
        if topic is not None and topic.error is None and topic.partitions:
            counts[name] = len(topic.partitions)
    return counts


@contextmanager
def offsets_consumer(client_config: dict[str, Any], group_id: str) -> Iterator[Any]:
    """A consumer used only for metadata and offsets: it never joins the group."""
    consumer = new_consumer(client_config, group_id, offset_reset="latest")
    try:
        yield consumer
    finally:
        consumer.close()


def committed_offsets(
    client_config: dict[str, Any], group_id: str, partitions: Iterable[tuple[str, int]], timeout: float = 10.0
) -> dict[tuple[str, int], int]:
    """Group ``group_id``'s committed offset (the next to handle) of each of ``partitions`` that has one."""
    from confluent_kafka import TopicPartition

    tps = [TopicPartition(topic, partition) for topic, partition in partitions]
    if not tps:
        return {}
    with offsets_consumer(client_config, group_id) as consumer:
        committed = broker_retry(lambda: consumer.committed(tps, timeout=timeout), timeout)
    return {(tp.topic, tp.partition): tp.offset for tp in committed if tp.offset >= 0}


def lag(client_config: dict[str, Any], group_id: str, topics: list[str], timeout: float = 10.0) -> int:
    """Messages in ``topics`` not yet committed by consumer group ``group_id``."""
    from confluent_kafka import TopicPartition

    with offsets_consumer(client_config, group_id) as consumer:
        metadata = consumer.list_topics(timeout=timeout)
        partitions = [TopicPartition(t, p) for t in topics for p in metadata.topics[t].partitions]
        committed = broker_retry(lambda: consumer.committed(partitions, timeout=timeout), timeout)
        total = 0
        for tp in committed:
            low, high = watermarks(consumer, tp, timeout)
            position = tp.offset if tp.offset >= 0 else low
            total += max(0, high - position)
        return total


def message_count(client_config: dict[str, Any], topics: list[str], timeout: float = 10.0) -> dict[str, int]:
    """Messages ever written to each topic (sum of high watermarks)."""
    from confluent_kafka import TopicPartition

    with offsets_consumer(client_config, "hpcinsight-watermarks") as consumer:
        metadata = consumer.list_topics(timeout=timeout)
        return {
            t: sum(watermarks(consumer, TopicPartition(t, p), timeout)[1] for p in metadata.topics[t].partitions) for t in topics
        }


# -- reading a topic to its end ----------------------------------------------------------------


def read_range(consumer: Consumer, starts: list[Any], stop_at: Mapping[int, int], timeout: float) -> list[Any]:
    """The messages of one topic's partitions from ``starts`` (TopicPartitions with offsets) up to,
    not including, ``stop_at[partition]``, in the order they came; ``TimeoutError`` if they are not
    all read by ``timeout``. A partition also ends at its end of data (``enable.partition.eof``) or
    when the consumer's position passes the stop: compaction or a transaction marker may leave the
    offset before the stop unreadable, which would otherwise wait out the timeout."""
    return list(_range(consumer, starts, stop_at, timeout, idle=False))


def iter_range(consumer: Consumer, starts: list[Any], stop_at: Mapping[int, int], idle_timeout: float) -> Iterator[Any]:
    """:func:`read_range` a message at a time, for a range too large to hold in memory: the
    ``TimeoutError`` comes when the broker gave no message for ``idle_timeout`` of asking, however
    long the whole takes and the caller spends on each."""
    return _range(consumer, starts, stop_at, idle_timeout, idle=True)


def _range(consumer: Consumer, starts: list[Any], stop_at: Mapping[int, int], timeout: float, idle: bool) -> Iterator[Any]:
    from confluent_kafka import KafkaError

    pending = {tp.partition for tp in starts if tp.offset < stop_at[tp.partition]}
    if not pending:
        return
    assigned = [tp for tp in starts if tp.partition in pending]
    topic = assigned[0].topic
    consumer.assign(assigned)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        messages = consumer.consume(num_messages=1000, timeout=0.5)
        for msg in messages:
            error, partition, offset = msg.error(), msg.partition(), msg.offset()
            if partition is None or offset is None:  # an error of the client, not of a partition
                continue
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(partition)
                continue
            if offset >= stop_at[partition]:
                pending.discard(partition)
                continue
            yield msg
            if offset + 1 >= stop_at[partition]:
                pending.discard(partition)
        if messages and idle:  # from here: the time the caller spent on them is not the broker's silence
            deadline = time.monotonic() + timeout
        if pending and not messages:
            for tp in consumer.position([tp for tp in assigned if tp.partition in pending]):
                if tp.offset >= stop_at[tp.partition]:
                    pending.discard(tp.partition)
    if pending:
        raise TimeoutError(f"could not read {topic} partitions {sorted(pending)} within {timeout:g} s")


def read_to_end(
    kafka: KafkaClientSource, topic: str, group_id: str, partitions: set[int] | None = None, timeout: float = 60.0
) -> list[Any]:
    """Every message of ``topic`` (or of its ``partitions``) written before the call, sorted by
    partition and offset; none if the topic does not exist. The ends are the high watermarks when
    asked, so a topic written meanwhile still ends. ``group_id`` only names the reader: it is
    assigned its partitions and commits nothing."""
    consumer = new_consumer(kafka, group_id, extra={"enable.partition.eof": True})
    try:
        starts, stop_at = _bounds(consumer, topic, partitions, timeout)
        return sorted(read_range(consumer, starts, stop_at, timeout), key=lambda m: (m.partition(), m.offset()))
    finally:
        consumer.close()


def iter_to_end(
    kafka: KafkaClientSource,
    topic: str,
    group_id: str,
    idle_timeout: float = 60.0,
    after: Mapping[int, int] | None = None,
    partitions: set[int] | None = None,
) -> Iterator[Any]:
    """:func:`read_to_end` a message at a time, a partition after another (each in order), for a
    topic too large to hold in memory; ``after``: a partition's first offset, where it is not its
    start; ``partitions``: only these."""
    consumer = new_consumer(kafka, group_id, extra={"enable.partition.eof": True})
    try:
        from confluent_kafka import TopicPartition

        starts, stop_at = _bounds(consumer, topic, partitions, idle_timeout)
        for tp in starts:
            first = TopicPartition(topic, tp.partition, max(tp.offset, (after or {}).get(tp.partition, 0)))
            yield from iter_range(consumer, [first], stop_at, idle_timeout)
    finally:
        consumer.close()


def _bounds(consumer: Consumer, topic: str, partitions: set[int] | None, timeout: float) -> tuple[list[Any], dict[int, int]]:
    """Each partition's start (its low watermark, as a TopicPartition) and end (high watermark) of
    ``topic``; none if the topic does not exist."""
    from confluent_kafka import TopicPartition

    metadata = broker_retry(lambda: consumer.list_topics(topic, timeout=timeout), timeout).topics.get(topic)
    starts: list[Any] = []
    stop_at: dict[int, int] = {}
    if metadata is None or metadata.error is not None:
        return starts, stop_at
    for p in sorted(metadata.partitions):
        if partitions is not None and p not in partitions:
            continue
        low, high = watermarks(consumer, TopicPartition(topic, p), timeout)
        starts.append(TopicPartition(topic, p, low))
        stop_at[p] = high
    return starts, stop_at


# -- producing through a full local queue ------------------------------------------------------


def produce_queued(
    producer: Producer, topic: str, value: bytes | None, key: bytes | None = None, wait_s: float = 0.5, **kwargs: Any
) -> None:
    """``producer.produce(...)``, waiting while the client's local queue is full (BufferError: the
    broker away or slower than us) instead of dropping the message; ``kwargs`` (``partition``,
    ``on_delivery``) go to ``produce``. (Dead letters: :class:`hpcinsight.core.consumer.DeadLetterOut`.)"""
    while True:
        try:
            producer.produce(topic, value, key, **kwargs)
            return
        except BufferError:
            producer.poll(wait_s)
