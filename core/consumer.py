"""One base for every component that reads topics to do something with each message (a sink).

The ClickHouse sink, the alert router and the live view each carried their own copy of the same
loop: consume, decode, deliver, commit, and dead-letter what cannot be decoded; and each copy had
to learn the same lessons (docs/guarantees.md): no message stops the loop, it is delivered or
dead-lettered with its reason (or, by a reader that does not own the topic, skipped and counted);
a dead letter is in Kafka before an offset past it is committed; a failed commit is counted, never
fatal; a consumer that failed for good (fenced by the group) is replaced, not retried for ever;
the broker's weather is logged, not raised. :class:`TopicSink` owns that loop; a subclass keeps
what is its own: how it takes its partitions, how it decodes and delivers, and when it commits.

The ground imports nothing above it, so a dead letter's encoding (a schema) is the subclass's:
:meth:`TopicSink.letter` returns the bytes to send, or None for a reader that only skips.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from hpcinsight.core.kafka import produce_queued


class Salvaging(Protocol):
    """What :meth:`TopicSink.decode_salvaging` needs of a codec (``hpcinsight.schemas.codec.Codec``):
    the records, and what salvage left out of a refused message (``reason``, ``left_out``) or None."""

    def decode_salvaging(self, raw: bytes | None) -> tuple[list[Any], Any]: ...


log = logging.getLogger(__name__)

#: (topic, partition) -> the next offset to read (what a commit records)
Offsets = dict[tuple[str, int], int]


@dataclass
class ConsumerStats:
    """What the loop counts, whoever the sink is."""

    dead_letters: int = 0  # messages dead-lettered
    skipped: int = 0  # messages a reader that does not own the topic skipped (its owner dead-letters them)
    commit_failures: int = 0  # offset commits that failed (the sink's own state covers them)
    consumer_restarts: int = 0  # consumers replaced after a fatal error (e.g. fenced by the group)
    paused: int = 0  # times consumption paused while delivery was behind


def is_fatal(err: Any) -> bool:
    """True for a consumer error no retry will mend. A fatal error reaches messages as the _FATAL
    code, whose own ``fatal()`` may say False (the chaos campaign: "Static consumer fenced by
    other consumer with same group.instance.id" left the sink retrying a dead consumer for 10
    minutes)."""
    if not isinstance(err, KafkaError):
        return False
    return bool(err.fatal()) or err.code() == KafkaError._FATAL


def failure_reason(err: BaseException) -> str:
    """The reason stored with a dead letter: a decoder's refusal says it all (``DecodeError`` is a
    ``ValueError``); anything else is named with its type."""
    if isinstance(err, ValueError) and str(err):
        return str(err)
    return f"undecodable: {type(err).__name__}: {err}"


class DeadLetterOut:
    """Dead letters to one topic, each retried until the broker takes it (the producer has
    ``message.timeout.ms`` 0); :meth:`flush` waits for them before an offset past them is committed."""

    def __init__(self, producer: Producer, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        #: set by the loop's stop: a flush without a deadline then gives up
        self.stop = threading.Event()

    def send(self, key: bytes | None, value: bytes) -> None:
        produce_queued(self.producer, self.topic, value, key)  # waits while the local queue is full
        self.producer.poll(0)

    def flush(self, deadline_s: float | None = None) -> bool:
        """Wait until every dead letter is in Kafka; False if that could not be done by the deadline
        or, without one, before a stop (then the offsets behind them stay uncommitted)."""
        started = time.monotonic()
        while self.producer.flush(5):
            waited = time.monotonic() - started
            if (deadline_s is not None and waited > deadline_s) or (deadline_s is None and self.stop.is_set()):
                log.warning("%d dead letters not acknowledged; their offsets stay uncommitted", len(self.producer))
                return False
            log.warning("waiting for the broker to take %d dead letters (%.0f s)", len(self.producer), waited)
        return True


class TopicSink:
    """The consume -> decode -> deliver -> commit -> dead-letter loop (see the module's docstring).

    A subclass builds its consumer (:meth:`new_consumer`, with :func:`hpcinsight.core.kafka.new_consumer`),
    takes its partitions (:meth:`take_partitions`: subscribe, or assign from its own offsets),
    decodes (:meth:`decode`) and delivers (:meth:`deliver`), and commits in :meth:`tick` (with
    :meth:`commit`, after its delivery is safe). :meth:`run` drives it until a stop."""

    #: messages asked of one consume() call, and how long it may wait for them
    POLL_MESSAGES = 1000
    POLL_TIMEOUT_S = 0.2
    #: how long to wait after consume() itself failed (the broker away) before asking again
    WEATHER_WAIT_S = 0.0
    #: a weather report (not fatal) is logged at most this often
    WEATHER_LOG_EVERY_S = 10.0
    #: how often offsets whose commit failed are committed again (see :meth:`owe`)
    OWED_RETRY_S = 5.0

    def __init__(self, stats: ConsumerStats | None = None) -> None:
        self.stats = stats if stats is not None else ConsumerStats()
        self.dead_letter_out: DeadLetterOut | None = None
        self.stop_event = threading.Event()
        self.consumer: Consumer | None = None
        #: set when the consumer failed for good: the loop replaces it before going on
        self.replace_requested = False
        self.paused = False
        #: the clock of the idle rule (``--idle-exit``): a test drives it by loop turns, not seconds
        self.idle_clock: Callable[[], float] = time.monotonic
        self._active_at = 0.0  # when consumption last stood paused (see idle)
        self._last_weather_log = 0.0
        #: offsets delivered whose commit has not landed yet, and the newest ones that did
        self._owed: Offsets = {}
        self._landed: Offsets = {}
        self._owed_tried = 0.0
        self._commit_lock = threading.RLock()  # a sink may commit from its writer thread

    # -- what a subclass says ------------------------------------------------------------------
    def new_consumer(self) -> Consumer:
        raise NotImplementedError

    def take_partitions(self, consumer: Consumer, first: bool) -> None:
        """Subscribe ``consumer`` or assign it its partitions (``first``: the loop's first consumer;
        later ones replace a consumer that failed)."""
        raise NotImplementedError

    def decode(self, msg: Message) -> list[Any]:
        """The records of one message; any exception refuses the message (:meth:`refuse`)."""
        raise NotImplementedError

    def decode_salvaging(self, msg: Message, codec: Salvaging) -> list[Any]:
        """A :meth:`decode` with ``codec``: the message's records, or of a refused one those that
        decode alone, the others refused (:meth:`refuse` with the records left out) as the worker
        dead-letters them; the codec's error where nothing is usable."""
        records, salvaged = codec.decode_salvaging(msg.value())
        if salvaged is not None:
            self.refuse(msg, salvaged.reason, salvaged.left_out)
        return records

    def deliver(self, batch: Sequence[tuple[Message, list[Any]]]) -> None:
        """Hand on one poll's messages, in order, each with its records (none for a refused one)."""
        raise NotImplementedError

    def letter(self, msg: Message, reason: str, raw: bytes | None = None) -> bytes | None:
        """The dead letter for ``msg`` (encoded; ``raw``: what it keeps of the message where not the
        whole, e.g. the records left out), or None: this reader does not own the topic and skips it
        (counted in ``stats.skipped``)."""
        return None

    def tick(self) -> None:
        """After each poll: flush, commit, whatever the sink's own policy wants done now."""

    def finish(self) -> None:
        """On a stop, before the consumer closes: deliver and commit what is held."""

    def release(self) -> None:
        """Last, even after a failure: the sink's own resources (before the dead letters' last
        flush and the consumer's close)."""

    def on_replace(self) -> None:
        """Before a failed consumer is replaced: drop (or finish) what was read and not delivered;
        the new consumer reads it again from the committed offsets."""

    def poll_timeout(self) -> float:
        return self.POLL_TIMEOUT_S

    def idle(self, last_data: float, idle_exit_s: float) -> bool:
        """True when the loop may end for ``idle_exit_s``: no message since ``last_data``, nor since
        consumption last stood paused. A reader paused for its own slow delivery gets no message
        while the topic still holds some: it is behind, not idle (the sink left a backlog unread
        when a slow store paused it past ``--idle-exit``)."""
        now = self.idle_clock()
        if self.paused:
            self._active_at = now
            return False
        return now - max(last_data, self._active_at) > idle_exit_s

    # -- the loop --------------------------------------------------------------------------------
    def run_loop(self, stop: threading.Event, idle_exit_s: float | None = None) -> None:
        """Consume until ``stop`` is set or, with ``idle_exit_s``, until :meth:`idle` says so."""
        self.stop_event = stop
        if self.dead_letter_out is not None:
            self.dead_letter_out.stop = stop
        self.consumer = self.new_consumer()
        try:
            self.take_partitions(self.consumer, True)
            last_data = self.idle_clock()
            while not stop.is_set():
                messages = self.poll()
                if messages:
                    last_data = self.idle_clock()
                    self.take(messages)
                if self.replace_requested:
                    self.replace_consumer()
                    continue
                self.tick()
                self.settle_owed()
                if idle_exit_s is not None and self.idle(last_data, idle_exit_s):
                    break
            self.finish()
        finally:
            try:
                self.release()
            finally:
                if self.dead_letter_out is not None:
                    self.dead_letter_out.flush(deadline_s=30)
                self.consumer.close()

    def poll(self) -> list[Message]:
        """One consume(): the messages, without the errors (reported to :meth:`kafka_fault`)."""
        assert self.consumer is not None
        try:
            messages = self.consumer.consume(num_messages=self.POLL_MESSAGES, timeout=self.poll_timeout())
        except KafkaException as err:
            self.kafka_fault(err.args[0] if err.args else err)
            if self.WEATHER_WAIT_S:
                self.stop_event.wait(self.WEATHER_WAIT_S)
            return []
        good = []
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    self.kafka_fault(error)
                continue
            good.append(msg)
        return good

    def take(self, messages: Sequence[Message]) -> None:
        """Decode each message (a refused one is dead-lettered or skipped, and stays in the batch
        with no records, so its offset advances) and deliver the batch."""
        batch = []
        for msg in messages:
            try:
                records = self.decode(msg)
            except Exception as err:  # noqa: BLE001 - no message stops the loop: it is refused with its reason
                self.refuse(msg, failure_reason(err))
                records = []
            batch.append((msg, records))
        self.deliver(batch)

    def refuse(self, msg: Message, reason: str, raw: bytes | None = None) -> None:
        """A message (or, with ``raw``, those of its records) that cannot be delivered:
        dead-lettered with ``reason`` (key: its topic), or skipped and counted by a reader that
        does not own the topic."""
        value = self.letter(msg, reason, raw)
        if value is None or self.dead_letter_out is None:
            self.stats.skipped += 1
            log.warning("skipped a message of %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), reason)
            return
        self.dead_letter_out.send((msg.topic() or "").encode(), value)
        self.stats.dead_letters += 1

    def commit(self, offsets: Offsets, consumer: Consumer | None = None, asynchronous: bool = False) -> bool:
        """Commit ``offsets`` (the next offset of each partition) once every dead letter is in Kafka.
        A failure is counted and logged, never raised (the sink's own state covers it); a fatal one
        has the consumer replaced. False if nothing was committed."""
        out = self.dead_letter_out
        if out is not None and not out.flush():
            return False
        if not offsets:
            return True
        target = consumer if consumer is not None else self.consumer
        assert target is not None
        with self._commit_lock:
            try:
                tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
                if asynchronous:
                    target.commit(offsets=tps, asynchronous=True)
                    return True
                target.commit(offsets=tps, asynchronous=False)
            except Exception as err:  # noqa: BLE001 - counted, never fatal
                self.stats.commit_failures += 1
                log.warning(
                    "offset commit failed (%s); the sink's own state covers it, tried again in %.0f s", err, self.OWED_RETRY_S
                )
                self.owe(offsets)
                error = err.args[0] if isinstance(err, KafkaException) and err.args else None
                if is_fatal(error):
                    self.replace_requested = True
                return False
            for key, offset in offsets.items():
                self._landed[key] = max(offset, self._landed.get(key, offset))
                if self._owed.get(key, offset) <= offset:
                    self._owed.pop(key, None)
            return True

    def owe(self, offsets: Offsets) -> None:
        """Offsets delivered but not recorded in the group (a commit that failed, a position the
        sink's own state is ahead of Kafka with): :meth:`settle_owed` commits them until one lands.
        Without this the group's offsets, which lag monitoring reads, stay behind for good on a
        partition that gets no new message to carry a later commit (the inventory, the last
        anomaly): a lag that never clears, though everything was delivered."""
        with self._commit_lock:
            for key, offset in offsets.items():
                if offset > max(self._owed.get(key, -1), self._landed.get(key, -1)):
                    self._owed[key] = offset

    def settle_owed(self) -> None:
        """Every ``OWED_RETRY_S`` while some are owed: commit the owed offsets of the partitions
        this consumer still holds (a partition gone to another member is its to commit)."""
        if not self._owed or time.monotonic() - self._owed_tried < self.OWED_RETRY_S or self.consumer is None:
            return
        self._owed_tried = time.monotonic()
        try:
            held = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        except KafkaException:
            return  # the consumer is being replaced or closed: the next try asks again
        with self._commit_lock:
            for key in [k for k in self._owed if k not in held]:
                del self._owed[key]
            owed = dict(self._owed)
        if owed:
            self.commit(owed)

    def hold(self, behind: bool) -> None:
        """Pause every assigned partition while delivery is ``behind`` (heartbeats go on, memory
        stays bounded), resume once it is not."""
        if behind == self.paused or self.consumer is None:
            return
        try:
            assignment = self.consumer.assignment()
            if behind:
                self.consumer.pause(assignment)
                self.stats.paused += 1
                log.warning("delivery is behind: consumption paused")
            else:
                self.consumer.resume(assignment)
                log.warning("consumption resumed")
            self.paused = behind
        except KafkaException as err:
            self.kafka_fault(err.args[0] if err.args else err)

    def kafka_fault(self, err: Any) -> None:
        """A consumer error: a fatal one has the consumer replaced; the rest are librdkafka's weather
        reports, logged at most every :attr:`WEATHER_LOG_EVERY_S`."""
        if is_fatal(err):
            log.error("Kafka consumer failed for good (%s); starting a new one", err)
            self.replace_requested = True
            return
        now = time.monotonic()
        if now - self._last_weather_log > self.WEATHER_LOG_EVERY_S:
            log.warning("Kafka: %s (retrying)", err)
            self._last_weather_log = now

    def replace_consumer(self) -> None:
        """A new consumer in place of one that failed for good; what the old one read and the sink
        did not deliver is read again (see :meth:`on_replace`)."""
        self.replace_requested = False
        self.stats.consumer_restarts += 1
        self.on_replace()
        try:
            if self.consumer is not None:
                self.consumer.close()
        except Exception as err:  # noqa: BLE001 - it failed already
            log.debug("closing the failed consumer: %s", err)
        self.consumer = self.new_consumer()
        self.paused = False
        self.take_partitions(self.consumer, False)
