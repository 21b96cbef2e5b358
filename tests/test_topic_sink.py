"""The sink base (hpcinsight.core.consumer.TopicSink) on the real broker, through the smallest sink
there is: a bad message is dead-lettered with its reason and the loop goes on; offsets are
committed only after delivery; a sink restarted in the same group reads again exactly what was
not delivered, nothing twice and nothing lost."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from hpcinsight.core.consumer import DeadLetterOut, Offsets, TopicSink
from hpcinsight.core.kafka import new_consumer, new_producer
from hpcinsight.core.topics import create_topics

pytestmark = pytest.mark.kafka


@dataclass(frozen=True)
class Spec:
    name: str
    partitions: int = 2
    retention_ms: int = 3_600_000
    compacted: bool = False

    def full_name(self, prefix: str) -> str:
        return f"{prefix}{self.name}"


class IntSink(TopicSink):
    """Decodes each message as an integer, delivers it to a list, commits after each poll's
    delivery; with ``deliver_at_most`` it stops after delivering that many (the rest of that poll
    is left undelivered, as a sink killed in the middle of a batch)."""

    def __init__(
        self, conf: dict[str, Any], prefix: str, deliver_at_most: int | None = None, instance_id: str | None = None
    ) -> None:
        super().__init__()
        self.instance_id = instance_id
        self.conf, self.topic, self.group = conf, f"{prefix}numbers", f"{prefix}int-sink"
        self.dead_letter_out = DeadLetterOut(new_producer(conf, until_delivered=True), f"{prefix}dead")
        self.delivered: list[tuple[int, int, int]] = []  # (partition, offset, value)
        self.deliver_at_most = deliver_at_most
        self.commits: list[Offsets] = []
        self._done: Offsets = {}

    def new_consumer(self) -> Consumer:
        return new_consumer(self.conf, self.group, instance_id=self.instance_id, extra={"session.timeout.ms": 10_000})

    def take_partitions(self, consumer: Consumer, first: bool) -> None:
        consumer.subscribe([self.topic])

    def decode(self, msg: Message) -> list[Any]:
        return [int(msg.value())]

    def letter(self, msg: Message, reason: str, raw: bytes | None = None) -> bytes:
        return json.dumps({"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(), "reason": reason}).encode()

    def deliver(self, batch: Sequence[tuple[Message, list[Any]]]) -> None:
        for msg, records in batch:
            if self.deliver_at_most is not None and len(self.delivered) >= self.deliver_at_most:
                self.stop_event.set()
                return
            self.delivered.extend((msg.partition(), msg.offset(), r) for r in records)
            self._done[(msg.topic(), msg.partition())] = msg.offset() + 1  # a refused message's offset advances too

    def tick(self) -> None:
        self._commit()

    def finish(self) -> None:
        self._commit()

    def _commit(self) -> None:
        if self._done and self.commit(self._done):
            self.commits.append(self._done)
            self._done = {}


def produce(conf: dict[str, Any], topic: str, values: list[bytes]) -> None:
    producer = new_producer(conf)
    for i, value in enumerate(values):
        producer.produce(topic, key=str(i).encode(), value=value)
    assert producer.flush(30) == 0


def run_until(sink: IntSink, condition: Any, timeout: float = 60) -> threading.Thread:
    stop = sink.stop_event = threading.Event()
    thread = threading.Thread(target=sink.run_loop, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not condition() and thread.is_alive():
        assert time.monotonic() < deadline, "the sink did not get there"
        time.sleep(0.1)
    stop.set()
    thread.join(60)
    assert not thread.is_alive()
    return thread


def read_all(conf: dict[str, Any], topic: str, partitions: int) -> list[Message]:
    consumer = new_consumer(conf, f"read-{uuid.uuid4().hex[:8]}", extra={"enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    out, ended, deadline = [], set(), time.monotonic() + 30
    while len(ended) < partitions and time.monotonic() < deadline:
        for msg in consumer.consume(100, timeout=0.5):
            if msg.error():
                ended.add(msg.partition())
            else:
                out.append(msg)
    consumer.close()
    return out


def committed(conf: dict[str, Any], sink: IntSink) -> dict[int, int]:
    consumer = new_consumer(conf, sink.group)
    offsets = consumer.committed([TopicPartition(sink.topic, p) for p in range(2)], timeout=30)
    consumer.close()
    return {tp.partition: tp.offset for tp in offsets}


@pytest.fixture
def topics(kafka_bootstrap: str) -> tuple[dict[str, Any], str]:
    conf, prefix = {"bootstrap.servers": kafka_bootstrap}, f"ts{uuid.uuid4().hex[:8]}."
    create_topics(conf, [Spec("numbers"), Spec("dead", partitions=1)], prefix)
    return conf, prefix


def test_a_bad_message_is_dead_lettered_with_its_reason_and_the_loop_goes_on(topics: tuple[dict[str, Any], str]) -> None:
    conf, prefix = topics
    produce(conf, f"{prefix}numbers", [b"1", b"2", b"three", b"4"])
    sink = IntSink(conf, prefix)
    run_until(sink, lambda: len(sink.delivered) == 3 and sink.commits and not sink._done)
    assert sorted(v for _, _, v in sink.delivered) == [1, 2, 4]
    assert sink.stats.dead_letters == 1 and sink.stats.skipped == 0
    letters = [json.loads(m.value()) for m in read_all(conf, f"{prefix}dead", 1)]
    assert len(letters) == 1 and letters[0]["topic"] == f"{prefix}numbers"
    assert "invalid literal for int()" in letters[0]["reason"] and "three" in letters[0]["reason"]
    # the bad message's offset is committed too: it was handled (dead-lettered), not skipped silently
    written = {(m.partition(), m.offset()) for m in read_all(conf, f"{prefix}numbers", 2)}
    ends = {p: max(o for q, o in written if q == p) + 1 for p, _ in written}
    assert {p: o for p, o in committed(conf, sink).items() if p in ends} == ends


def test_offsets_are_committed_only_after_delivery_and_a_restart_reads_only_the_rest(topics: tuple[dict[str, Any], str]) -> None:
    conf, prefix = topics
    values = list(range(40))
    produce(conf, f"{prefix}numbers", [str(v).encode() for v in values])
    first = IntSink(conf, prefix, deliver_at_most=15)
    run_until(first, lambda: first.stop_event.is_set())
    assert len(first.delivered) == 15
    # what the group committed is exactly what was delivered, partition by partition
    delivered_next = {p: max(o for q, o, _ in first.delivered if q == p) + 1 for p, _, _ in first.delivered}
    assert {p: o for p, o in committed(conf, first).items() if o >= 0} == delivered_next

    second = IntSink(conf, prefix)
    run_until(second, lambda: len(first.delivered) + len(second.delivered) >= len(values))
    got_first = {(p, o) for p, o, _ in first.delivered}
    got_second = {(p, o) for p, o, _ in second.delivered}
    assert not got_first & got_second, "a delivered message was read again after the restart"
    assert sorted(v for *_, v in first.delivered + second.delivered) == values


def test_a_fenced_consumer_is_replaced_and_nothing_is_lost(topics: tuple[dict[str, Any], str]) -> None:
    """A member with the sink's static id fences it (a fatal error): the base replaces the consumer
    and the sink goes on; every message is delivered (again, where its commit was lost)."""
    conf, prefix = topics
    produce(conf, f"{prefix}numbers", [str(v).encode() for v in range(20)])
    sink = IntSink(conf, prefix, instance_id=f"{prefix}int-sink-0")
    stop = sink.stop_event = threading.Event()
    thread = threading.Thread(target=sink.run_loop, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(sink.delivered) < 20:
            assert time.monotonic() < deadline and thread.is_alive(), "the sink did not deliver the first messages"
            time.sleep(0.1)
        rogue = new_consumer(conf, sink.group, instance_id=f"{prefix}int-sink-0", extra={"session.timeout.ms": 10_000})
        rogue.subscribe([sink.topic])
        while sink.stats.consumer_restarts == 0:
            assert time.monotonic() < deadline + 60 and thread.is_alive(), "the fenced consumer was not replaced"
            rogue.poll(0.5)
        rogue.close()
        produce(conf, f"{prefix}numbers", [str(v).encode() for v in range(20, 40)])
        while {v for *_, v in sink.delivered} != set(range(40)):
            assert time.monotonic() < deadline + 180 and thread.is_alive(), "the new consumer did not deliver the rest"
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive() and sink.stats.consumer_restarts >= 1


class SlowStoreSink(IntSink):
    """Its store stays busy over its first delivery for ``hold_turns`` turns of the loop, and
    consumption stays paused meanwhile, as the ClickHouse sink pauses while its inserts are behind.
    The idle rule's clock is the loop's turns (``TURN_S`` each), not the machine's seconds."""

    POLL_MESSAGES = 25
    TURN_S = 0.1

    def __init__(self, conf: dict[str, Any], prefix: str, hold_turns: int) -> None:
        super().__init__(conf, prefix)
        self.hold_turns = hold_turns
        self.turns = 0
        self.idle_clock = lambda: self.turns * self.TURN_S
        self.busy_until: int | None = None
        self.was_paused = False

    def deliver(self, batch: Sequence[tuple[Message, list[Any]]]) -> None:
        super().deliver(batch)
        if self.busy_until is None:
            self.busy_until = self.turns + self.hold_turns

    def tick(self) -> None:
        self.turns += 1
        self.hold(self.busy_until is not None and self.turns < self.busy_until)
        self.was_paused |= self.paused
        super().tick()

    def idle(self, last_data: float, idle_exit_s: float) -> bool:
        return bool(self.delivered) and super().idle(last_data, idle_exit_s)  # not while the group forms


def test_a_reader_paused_by_its_slow_store_is_behind_not_idle(topics: tuple[dict[str, Any], str]) -> None:
    """``--idle-exit`` ends a loop that got nothing for that long; a paused one gets nothing
    because it asked for nothing, with the topic still full (the sink exited 0 with a backlog unread)."""
    conf, prefix = topics
    produce(conf, f"{prefix}numbers", [str(i).encode() for i in range(50)])
    sink = SlowStoreSink(conf, prefix, hold_turns=40)  # 4 s of the idle rule's clock, paused
    stop = sink.stop_event = threading.Event()
    thread = threading.Thread(target=sink.run_loop, args=(stop, 2.0), daemon=True)  # idle for 2 s: exit
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "the sink never found itself idle"
    assert sink.was_paused
    assert sorted(v for _, _, v in sink.delivered) == list(range(50))
