"""Every stage handles a partition's messages in order and once, whatever Faust's fetch delivers.

The guard's rules (streams.offsets), one message at a time: what was handled already is skipped,
a hole asks for one seek back, the messages past it wait for it, the first message the broker gives
from the seek is handled and the offsets it skipped are the only gap confirmed.
"""

from __future__ import annotations

from hpcinsight.streams.offsets import AGAIN, HANDLE, LATER, Check, OffsetGuard


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _guard() -> tuple[OffsetGuard, Clock]:
    clock = Clock()
    guard = OffsetGuard(reprobe_s=5.0, clock=clock)
    guard.rebalanced({("raw", 0), ("raw", 1), ("ib", 0)})
    return guard, clock


def test_a_hole_is_sought_back_and_the_messages_past_it_wait_for_it() -> None:
    guard, _ = _guard()
    assert [guard.check("raw", 0, o) for o in range(10)] == [HANDLE] * 10
    # the fetch skipped 10-13: seek back once, leave 14-16 to come again
    assert guard.check("raw", 0, 14) == Check(False, later=True, seek=10)
    assert [guard.check("raw", 0, o) for o in (15, 16)] == [LATER, LATER]
    # the fetch from 10 brings them all, in order
    assert [guard.check("raw", 0, o) for o in range(10, 18)] == [HANDLE] * 8
    assert guard.holes == 1 and guard.absent == 0
    assert guard.overdue() == []


def test_offsets_the_broker_skips_after_the_seek_are_the_only_gap() -> None:
    guard, _ = _guard()
    for o in range(5):
        guard.check("raw", 1, o)
    assert guard.check("raw", 1, 9).seek == 5
    # from 5 the broker gives 8 first (5-7 compacted away or aborted): 8 is handled, 5-7 confirmed absent
    assert guard.check("raw", 1, 8) == Check(True, gap=(5, 7))
    assert guard.check("raw", 1, 9) == HANDLE
    assert guard.absent == 3


def test_what_was_handled_comes_again_after_a_rebalance_and_is_skipped() -> None:
    guard, _ = _guard()
    for o in range(10):
        guard.check("raw", 0, o)
    guard.check("ib", 0, 3)
    # a rebalance: raw 0 and ib 0 kept, raw 1 taken by another worker; Faust seeks back to the commits
    guard.rebalanced({("raw", 0), ("ib", 0)})
    assert [guard.check("raw", 0, o) for o in range(6, 12)] == [AGAIN] * 4 + [HANDLE] * 2
    assert guard.check("ib", 0, 3) == AGAIN and guard.check("ib", 0, 4) == HANDLE


def test_a_partition_new_to_the_worker_starts_at_the_groups_commit() -> None:
    guard, _ = _guard()
    guard.check("raw", 1, 0)
    guard.rebalanced({("raw", 0), ("raw", 1), ("raw", 2)}, committed={("raw", 2): 40, ("raw", 0): 99, ("raw", 1): 30})
    # raw 2 is new: a first message past its commit is a hole, not a start
    assert guard.check("raw", 2, 45).seek == 40
    assert guard.check("raw", 2, 40) == HANDLE
    # raw 0 was kept with nothing handled: its commit is where it starts too
    assert guard.check("raw", 0, 100).seek == 99
    # raw 1 was kept with offset 0 handled: its own account stands, not the commit
    assert guard.check("raw", 1, 1) == HANDLE
    # a partition the group has no commit for starts wherever its first message is
    guard.rebalanced({("raw", 0), ("raw", 2), ("raw", 3)}, committed={})
    assert guard.check("raw", 3, 7) == HANDLE


def test_the_same_offset_is_handled_once_per_topic_and_partition() -> None:
    guard, _ = _guard()
    assert guard.check("raw", 0, 7) == HANDLE and guard.check("ib", 0, 7) == HANDLE
    assert guard.check("raw", 0, 7) == AGAIN and guard.check("raw", 0, 6) == AGAIN


def test_a_seek_back_that_brings_nothing_is_made_again_and_a_rebalance_drops_it() -> None:
    guard, clock = _guard()
    for o in range(3):
        guard.check("raw", 0, o)
    guard.check("raw", 0, 9)  # hole: seek to 3
    clock.now = 4.0
    assert guard.overdue() == []
    assert guard.check("raw", 0, 10) == LATER  # fetched before the seek: the messages fetched again were dropped
    clock.now = 5.5
    assert guard.overdue() == [("raw", 0, 3)]
    assert guard.overdue() == []  # once per period
    clock.now = 11.0
    assert guard.overdue() == [("raw", 0, 3)]
    guard.rebalanced({("raw", 1)})
    clock.now = 30.0
    assert guard.overdue() == []


def test_offsets_deleted_before_they_were_handled_are_a_gap_from_the_partitions_first_offset() -> None:
    guard, _ = _guard()
    for o in range(3):
        guard.check("raw", 0, o)
    guard.check("raw", 0, 50)  # hole: seek to 3
    assert guard.gone_before("raw", 0, 2) is None  # nothing deleted that was not handled
    assert guard.gone_before("raw", 0, 60) == (3, 59)  # retention took 3-59 meanwhile
    assert guard.check("raw", 0, 60) == HANDLE
    assert guard.absent == 57
    assert guard.gone_before("raw", 1, 10) is None  # no hole there
