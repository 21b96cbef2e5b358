"""What a redrive run knows of earlier runs (``History``), from their batch records alone."""

from __future__ import annotations

import hashlib

from hpcinsight.schemas.events import DeadLetter, Redrive
from hpcinsight.sinks.redrive import History, Letter

BIG = 2**40 + 7  # an offset past 32 bits


def letter(
    partition: int, offset: int, raw: bytes, source_offset: int, index: int = 0, topic: str = "p.scheduler.events"
) -> Letter:
    d = DeadLetter.of(
        ts=1, source_topic=topic, source_partition=0, source_offset=source_offset, stage="sink", reason="r", raw=raw
    )
    return Letter(partition, offset, d, index)


def sent(*letters: Letter, went_to: list[str]) -> Redrive:
    return Redrive(
        batch="b",
        ts=1,
        by="ops",
        state="sent",
        letters=[x.key for x in letters],
        topics=[x.letter.source_topic for x in letters],
        sha256=[hashlib.sha256(x.letter.raw).hexdigest() for x in letters],
        sent=went_to,
    )


def test_a_letter_sent_back_is_known_by_its_place_and_index() -> None:
    history = History()
    assert not history
    history.add(sent(letter(1, BIG, b"a", 10), letter(1, BIG, b"b", 10, index=1), went_to=["p.scheduler.events:0:90"] * 2))
    assert history and history.starts == {1: BIG}
    assert history.sent(letter(1, BIG, b"other bytes", 99)) and history.sent(letter(1, BIG, b"b", 10, index=1))
    assert not history.sent(letter(1, BIG + 1, b"a", 10)) and not history.sent(letter(0, BIG, b"a", 10))
    assert not history.sent(letter(1, BIG, b"a", 10, index=2))


def test_a_letter_of_a_message_sent_back_came_back_whatever_its_bytes() -> None:
    history = History()
    history.add(sent(letter(0, 3, b"a", 10), went_to=["p.scheduler.events:2:" + str(BIG)]))
    came = letter(0, 9, b"salvaged: other bytes", 0)
    assert not history.came_back(came)  # its source is offset 0 of partition 0
    moved = DeadLetter.of(
        ts=1, source_topic="p.scheduler.events", source_partition=2, source_offset=BIG, stage="sink", reason="r", raw=b"x"
    )
    assert history.came_back(Letter(0, 9, moved))


def test_the_same_bytes_came_back_only_when_written_after_the_letter_sent() -> None:
    history = History()
    history.add(sent(letter(1, BIG, b"a", 10), went_to=["p.scheduler.events:0:90"]))
    assert history.came_back(letter(1, BIG + 1, b"a", 11))  # later in the same partition
    assert not history.came_back(letter(1, BIG - 1, b"a", 11))  # before it: another reader's, not a return
    assert not history.came_back(letter(0, BIG + 1, b"a", 11))  # another partition: no order to go by
    assert not history.came_back(letter(1, BIG + 1, b"a", 11, topic="p.other"))  # another topic's bytes
    assert not history.came_back(letter(1, BIG + 1, b"b", 11))
