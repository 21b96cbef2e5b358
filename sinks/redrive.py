"""Dead letters sent back to their topics, once their cause is fixed (``hpcinsight dead-letters``).

A letter is refused input kept with its reason: a producer that wrote a schema version before the
consumers knew it, a foreign adapter's bad record, a worker bug fixed since. Sending one back means
producing its ``raw`` bytes, with its key, to the topic it came from. Each letter goes back at most
once: every batch is recorded on the compacted ``dead.letters.redriven`` before and after it is
sent (:class:`~hpcinsight.schemas.events.Redrive`), and a batch left half sent by a killed run is
found again by its messages' header. No transaction: a Kafka transaction left open by a killed
run would hold every reader of committed messages back, and the Faust worker, which reads
uncommitted ones, would see an aborted batch's messages and then their second sending. One run
at a time: a run holds a group lock (:class:`~hpcinsight.core.group_lock.GroupLock`) from its first
read to its last record, and a second is refused, told who holds it.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import msgspec
from confluent_kafka import KafkaException, TopicPartition

from hpcinsight.core.group_lock import GroupLock, holder_of
from hpcinsight.core.kafka import (
    iter_range,
    iter_to_end,
    new_producer,
    offsets_consumer,
    partition_counts,
    watermarks,
)
from hpcinsight.schemas.catalog import DEAD_LETTERS, DEAD_LETTERS_REDRIVEN, TOPICS
from hpcinsight.schemas.codec import DecodeError
from hpcinsight.schemas.events import DeadLetter, Redrive

#: the header naming the letter a message was sent back from: ``<dead-letter topic>:<partition>:<offset>``
REDRIVE_HEADER = "hpcinsight-redrive-of"


@dataclass(frozen=True)
class Letter:
    """A dead letter where Kafka holds it."""

    partition: int
    offset: int
    letter: DeadLetter
    index: int = 0  # in its message (every component writes one letter a message)

    @property
    def key(self) -> str:
        """Its place in the dead-letter topic, as the redrive records name it."""
        return f"{self.partition}:{self.offset}" + (f"/{self.index}" if self.index else "")

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.letter.raw).hexdigest()

    @property
    def input(self) -> tuple[str, int, int, str]:
        """The refused input: several readers of a topic (the sink, the worker, the alert router)
        each write a letter of the same message, which is sent back once, for all of them."""
        d = self.letter
        return d.source_topic, d.source_partition, d.source_offset, self.sha256

    @property
    def whole(self) -> bool:
        """Whether ``raw`` is the whole message (a large one keeps only its first bytes)."""
        size = self.letter.raw_size
        return size is None or size == len(self.letter.raw)


@dataclass(frozen=True)
class Selection:
    """Which letters to send back: every given condition holds (None: any)."""

    topics: frozenset[str] | None = None  # catalog names, without the prefix
    stages: frozenset[str] | None = None
    reason: str | None = None  # a part of the reason, any case
    since_ms: int | None = None  # letters written at or after

    def matches(self, letter: Letter, prefix: str) -> bool:
        d = letter.letter
        if self.topics is not None and d.source_topic not in {f"{prefix}{t}" for t in self.topics}:
            return False
        if self.stages is not None and d.stage not in self.stages:
            return False
        if self.reason is not None and self.reason.lower() not in d.reason.lower():
            return False
        return self.since_ms is None or d.ts >= self.since_ms


@dataclass
class Report:
    """What a run did, or would do (``dry_run``), and how many letters it left and why (counts:
    a flood of letters is streamed, never held)."""

    sent: int = 0
    to_send: int = 0  # a dry run's
    already: int = 0  # sent back by an earlier run, or with another reader's letter of the same message
    came_back: int = 0  # refused again after an earlier run sent it back (or the same bytes): its cause is not fixed
    cut: int = 0  # only the first bytes kept: cannot be sent back
    foreign: int = 0  # about a topic not of this prefix's catalog
    recovered: int = 0  # letters a killed run had sent without recording them, found by their header
    unreadable: int = 0  # messages of dead.letters that are not letters (never written by hpcinsight)
    topics: set[str] = field(default_factory=set)  # of the letters sent (or to send)


def read_letters(
    client_config: dict[str, Any],
    prefix: str,
    report: Report | None = None,
    timeout: float = 60.0,
    after: dict[int, int] | None = None,
) -> Iterator[Letter]:
    """Every letter Kafka holds, in order, one message at a time; given ``after`` (a partition's
    first offset), only those partitions', from there. ``report`` counts the messages that are not
    letters."""
    topic, group = DEAD_LETTERS.full_name(prefix), f"{prefix}dead-letters-cli"
    partitions = None if after is None else set(after)
    for msg in iter_to_end(client_config, topic, group, timeout, after, partitions):
        try:
            records = DEAD_LETTERS.codec.decode(msg.value())
        except DecodeError:
            if report is not None:
                report.unreadable += 1
            continue
        for i, d in enumerate(records):
            yield Letter(msg.partition(), msg.offset(), d, i)


class History:
    """What earlier runs sent back, folded from their batch records as they are read: a run that
    sent millions of letters leaves millions of entries, so each is a digest, not the record's strings
    (bench ``redrive``)."""

    def __init__(self) -> None:
        self._letters: set[bytes] = set()  # the letters sent, by their place in dead.letters
        self._went_to: set[bytes] = set()  # where their messages went: (topic, partition, offset)
        self._first: dict[bytes, int] = {}  # (topic, SHA-256 of the bytes) -> the first such letter's place (_code)
        #: each dead.letters partition's first letter sent: where a search for them starts
        self.starts: dict[int, int] = {}

    def add(self, b: Redrive) -> None:
        """Fold in a batch recorded as sent."""
        for key, topic, sha in zip(b.letters, b.topics, b.sha256, strict=True):
            self._letters.add(_digest(key))
            partition, offset = _place(key)
            first, place = _digest(topic, sha), _code(partition, offset)
            self._first[first] = min(self._first.get(first, place), place)
            self.starts[partition] = min(self.starts.get(partition, offset), offset)
        self._went_to.update(_digest(*_position(place)) for place in b.sent)

    def __bool__(self) -> bool:
        return bool(self._letters)

    def sent(self, letter: Letter) -> bool:
        """Whether ``letter`` itself was sent back."""
        return bool(self) and _digest(letter.key) in self._letters  # a first run hashes nothing

    def came_back(self, letter: Letter) -> bool:
        """Whether ``letter`` is of a message sent back (its bytes may differ: a salvaged message's
        letter holds its bad records re-encoded), or of the same bytes as a letter sent back before
        it: either way its cause is not fixed."""
        d = letter.letter
        if _digest(d.source_topic, d.source_partition, d.source_offset) in self._went_to:
            return True
        first = self._first.get(_digest(d.source_topic, letter.sha256))
        # written after that letter: by offsets, not clocks (the refusing component may run on another host)
        return first is not None and first >> 48 == letter.partition and letter.offset > first & _OFFSET_MASK


def read_history(client_config: dict[str, Any], prefix: str, timeout: float = 60.0) -> tuple[History, list[Redrive]]:
    """What earlier runs sent, and the batches a killed run left recorded as sending (in order)."""
    history, sending = History(), dict[str, Redrive]()
    topic = DEAD_LETTERS_REDRIVEN.full_name(prefix)
    for msg in iter_to_end(client_config, topic, f"{prefix}dead-letters-cli", timeout):
        try:
            records = DEAD_LETTERS_REDRIVEN.codec.decode(msg.value())
        except DecodeError:
            continue  # not ours: it names no letter
        for r in records:
            if r.state == "sent":
                sending.pop(r.batch, None)
                history.add(r)
            else:
                sending[r.batch] = r
    return history, list(sending.values())


def _digest(*parts: object) -> bytes:
    """16 bytes for what ``parts`` name, in a run's sets."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).digest()


_OFFSET_MASK = (1 << 48) - 1


def _code(partition: int, offset: int) -> int:
    """A letter's place in dead.letters as one integer (a tuple weighs three)."""
    return partition << 48 | offset


def redrive(
    client_config: dict[str, Any],
    prefix: str,
    selection: Selection,
    by: str,
    *,
    batch: int = 500,
    dry_run: bool = False,
    timeout: float = 60.0,
    on_batch: Callable[[int], None] | None = None,
) -> Report:
    """Send the selected letters back to their topics, each at most once, ``batch`` letters at a
    time; ``on_batch`` is told the count sent so far after each batch. One run at a time: another
    run's lock raises :class:`~hpcinsight.core.group_lock.LockHeld` before anything is read.

    The letters are weighed and sent as they are read, a batch held at a time; what the run keeps
    a letter is a digest (bench ``redrive``). Where earlier runs sent letters, a first pass over the
    partitions holding those finds the messages they were letters of."""
    lock = None if dry_run else redrive_lock(client_config, prefix, by, timeout)
    with lock or nullcontext(), offsets_consumer(client_config, f"{prefix}dead-letters-cli") as offsets:
        producer = None if dry_run else new_producer(client_config)
        keep = _Keeper(lock)
        return _redrive(client_config, offsets, producer, prefix, selection, by, batch, timeout, on_batch, keep)


def run_under_way(client_config: dict[str, Any], prefix: str, timeout: float = 10.0) -> str | None:
    """The holder of the sending runs' lock while a run is under way (for ``list``; it decides nothing)."""
    return holder_of(client_config, DEAD_LETTERS_REDRIVEN.full_name(prefix), f"{prefix}dead-letters-redrive", timeout)


def redrive_lock(client_config: dict[str, Any], prefix: str, by: str, timeout: float = 60.0) -> GroupLock:
    """The lock every sending run holds: its group's member that is given the batch records' topic.
    The holder is named by who runs it, where, and its process id."""
    holder = f"hpcinsight-redrive:{by}@{socket.gethostname()}:{os.getpid()}"
    topic = DEAD_LETTERS_REDRIVEN.full_name(prefix)
    return GroupLock(client_config, topic, f"{prefix}dead-letters-redrive", holder=holder, timeout=timeout)


class _Keeper:
    """The run's side of its lock from inside its loops: the group is answered at most once a
    second, and before each batch the lock is checked (:class:`~hpcinsight.core.group_lock.LockLost`
    stops the run before it sends another)."""

    def __init__(self, lock: GroupLock | None) -> None:
        self.lock = lock
        self._at = time.monotonic()

    def __call__(self, now: bool = False) -> None:
        if self.lock is not None and (now or time.monotonic() - self._at >= 1.0):
            self.lock.check()
            self._at = time.monotonic()


def _redrive(
    client_config: dict[str, Any],
    offsets: Any,
    producer: Any | None,
    prefix: str,
    selection: Selection,
    by: str,
    batch: int,
    timeout: float,
    on_batch: Callable[[int], None] | None,
    keep: Callable[..., None],
) -> Report:
    """:func:`redrive` with its clients (no ``producer``: a dry run) and its lock's ``keep``."""
    report = Report()
    history, sending = read_history(client_config, prefix, timeout)
    for b in sending:
        keep(now=True)
        finished = _recover(offsets, producer, prefix, b, timeout)
        history.add(finished)
        report.recovered += len(finished.letters)
    # the messages whose letters went back: another reader's letter of one goes back with it
    gone: set[bytes] = set()
    if history:
        for letter in read_letters(client_config, prefix, None, timeout, after=history.starts):
            keep()
            if history.sent(letter):
                gone.add(_digest(*letter.input))
    ours = {t.full_name(prefix) for t in TOPICS if t not in (DEAD_LETTERS, DEAD_LETTERS_REDRIVEN)}
    chunk: list[Letter] = []
    for letter in read_letters(client_config, prefix, report, timeout):
        keep()
        chosen = selection.matches(letter, prefix)
        if history.sent(letter):
            report.already += chosen
            continue
        if not chosen:
            continue
        given = _digest(*letter.input)
        if given in gone:
            report.already += 1  # another reader's letter of the same message went back
        elif history.came_back(letter):
            report.came_back += 1
        elif letter.letter.source_topic not in ours:
            report.foreign += 1
        elif not letter.whole:
            report.cut += 1
        else:
            gone.add(given)  # another reader's letter of the same message goes with this one
            report.topics.add(letter.letter.source_topic)
            if producer is None:
                report.to_send += 1
                continue
            chunk.append(letter)
            if len(chunk) == batch:
                report.sent += _flush(offsets, producer, prefix, chunk, by, timeout, keep, on_batch, report.sent)
                chunk = []
    if chunk:
        report.sent += _flush(offsets, producer, prefix, chunk, by, timeout, keep, on_batch, report.sent)
    return report


def _flush(
    offsets: Any,
    producer: Any,
    prefix: str,
    chunk: list[Letter],
    by: str,
    timeout: float,
    keep: Callable[..., None],
    on_batch: Callable[[int], None] | None,
    sent_before: int,
) -> int:
    """One batch sent, the lock checked first; ``on_batch`` told the run's count after it."""
    keep(now=True)
    sent = _send(offsets, producer, prefix, chunk, by, timeout)
    if on_batch is not None:
        on_batch(sent_before + sent)
    return sent


def _position(entry: str) -> tuple[str, int, int]:
    """(topic, partition, offset) of a batch record's ``<topic>:<partition>:<offset>``."""
    topic, partition, offset = entry.rsplit(":", 2)
    return topic, int(partition), int(offset)


def _place(key: str) -> tuple[int, int]:
    """A letter's (partition, offset) from its key."""
    partition, offset = key.split("/")[0].split(":")
    return int(partition), int(offset)


def _send(offsets: Any, producer: Any, prefix: str, letters: list[Letter], by: str, timeout: float) -> int:
    """One batch: recorded as sending (with where its topics end), its messages, recorded as sent; its size."""
    topics = sorted({x.letter.source_topic for x in letters})
    sending = Redrive(
        batch=uuid.uuid4().hex,
        ts=int(time.time() * 1000),
        by=by,
        state="sending",
        letters=[x.key for x in letters],
        topics=[x.letter.source_topic for x in letters],
        sha256=[x.sha256 for x in letters],
        starts=[f"{t}:{p}:{end}" for t, ends in _ends(offsets, topics, timeout).items() for p, end in ends.items()],
    )
    _record(producer, prefix, sending, timeout)
    placed: dict[int, str] = {}
    errors: list[str] = []

    def delivered(i: int) -> Callable[[Any, Any], None]:
        def report(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                placed[i] = f"{msg.topic()}:{msg.partition()}:{msg.offset()}"

        return report

    dlq = DEAD_LETTERS.full_name(prefix)
    for i, letter in enumerate(letters):
        d = letter.letter
        headers = [(REDRIVE_HEADER, f"{dlq}:{letter.key}".encode())]
        producer.produce(d.source_topic, value=d.raw, key=d.key, headers=headers, on_delivery=delivered(i))
        producer.poll(0)
    if producer.flush(timeout) or errors or len(placed) != len(letters):
        # recorded as sending: the next run finds what of it was delivered
        raise KafkaException(f"letters not all sent back: {'; '.join(errors[:3]) or 'timed out'}; run again to finish")
    sent = msgspec.structs.replace(sending, state="sent", sent=[placed[i] for i in range(len(letters))])
    _record(producer, prefix, sent, timeout)
    return len(letters)


def _recover(offsets: Any, producer: Any | None, prefix: str, b: Redrive, timeout: float) -> Redrive:
    """A batch a killed run left as sending: its messages found from where their topics ended before
    it, by their header, and the batch recorded as sent with the letters found (not by a dry run,
    which has no ``producer``)."""
    dlq = DEAD_LETTERS.full_name(prefix)
    wanted = {f"{dlq}:{key}".encode(): i for i, key in enumerate(b.letters)}
    starts: dict[str, dict[int, int]] = {}
    for topic, partition, offset in map(_position, b.starts):
        starts.setdefault(topic, {})[partition] = offset
    found: dict[int, str] = {}
    for topic, ends in _ends(offsets, sorted(starts), timeout).items():
        begin = [TopicPartition(topic, p, starts[topic].get(p, 0)) for p in ends]
        for msg in iter_range(offsets, begin, ends, timeout):
            i = wanted.get(dict(msg.headers() or []).get(REDRIVE_HEADER, b""))
            if i is not None:
                found.setdefault(i, f"{topic}:{msg.partition()}:{msg.offset()}")
    keep = sorted(found)
    finished = msgspec.structs.replace(
        b,
        ts=int(time.time() * 1000),
        state="sent",
        letters=[b.letters[i] for i in keep],
        topics=[b.topics[i] for i in keep],
        sha256=[b.sha256[i] for i in keep],
        sent=[found[i] for i in keep],
    )
    if producer is not None:
        _record(producer, prefix, finished, timeout)
    return finished


def _ends(offsets: Any, topics: list[str], timeout: float) -> dict[str, dict[int, int]]:
    """Each partition's end (high watermark) of each of ``topics``."""
    counts = partition_counts(offsets, topics, timeout)
    return {t: {p: watermarks(offsets, TopicPartition(t, p), timeout)[1] for p in range(counts.get(t, 0))} for t in topics}


def _record(producer: Any, prefix: str, record: Redrive, timeout: float) -> None:
    errors: list[str] = []
    producer.produce(
        DEAD_LETTERS_REDRIVEN.full_name(prefix),
        value=DEAD_LETTERS_REDRIVEN.codec.encode([record]),
        key=record.batch.encode(),
        on_delivery=lambda err, _msg: errors.append(str(err)) if err else None,
    )
    if producer.flush(timeout) or errors:
        raise KafkaException(f"a redrive record was not written: {'; '.join(errors) or 'timed out'}")


def summary(letters: Iterable[Letter], history: History, prefix: str) -> list[dict[str, Any]]:
    """Letters counted by source topic, stage and the reason's first words, newest first, with how
    many of them were sent back already: what an operator reads before choosing what to send."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for letter in letters:
        d = letter.letter
        topic = d.source_topic.removeprefix(prefix)
        gist = _gist(d.reason)
        row = groups.setdefault(
            (topic, d.stage, gist),
            {"topic": topic, "stage": d.stage, "reason": gist, "letters": 0, "sent_back": 0, "cut": 0, "last_ts": 0},
        )
        row["letters"] += 1
        row["sent_back"] += history.sent(letter)
        row["cut"] += not letter.whole
        row["last_ts"] = max(row["last_ts"], d.ts)
    return sorted(groups.values(), key=lambda r: -r["last_ts"])


def _gist(reason: str) -> str:
    """A reason without what differs from letter to letter (values, record numbers): up to its first colon."""
    return reason.split(":", 1)[0].strip()[:80]
