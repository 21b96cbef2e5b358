"""What a worker skips after a rebalance: the offsets it handled since the last commit, in the
partitions it kept, and nothing in a partition that moved away and came back (rebuilt from its commit)."""

from __future__ import annotations

from hpcinsight.streams.app import HandledOffsets


def test_a_kept_partition_skips_what_was_handled_and_a_returning_one_starts_over() -> None:
    handled = HandledOffsets()
    handled.rebalanced({("raw", 0), ("raw", 1), ("ib", 0)})
    assert all(handled.fresh("raw", 0, o) for o in range(10))
    assert all(handled.fresh("raw", 1, o) for o in range(5))
    assert handled.fresh("ib", 0, 3)

    # a rebalance: raw 0 and ib 0 kept, raw 1 taken by another worker; Faust seeks back to the commits
    handled.rebalanced({("raw", 0), ("ib", 0)})
    assert [o for o in range(6, 14) if handled.fresh("raw", 0, o)] == [10, 11, 12, 13]
    assert not handled.fresh("ib", 0, 3) and handled.fresh("ib", 0, 4)

    # raw 1 comes back: rebuilt from its commit, so everything from there is handled again
    handled.rebalanced({("raw", 0), ("raw", 1), ("ib", 0)})
    assert handled.fresh("raw", 1, 2)
    assert not handled.fresh("raw", 0, 13) and handled.fresh("raw", 0, 14)


def test_the_same_offset_is_handled_once_per_topic_and_partition() -> None:
    handled = HandledOffsets()
    handled.rebalanced({("a", 0), ("b", 0)})
    assert handled.fresh("a", 0, 7) and handled.fresh("b", 0, 7)
    assert not handled.fresh("a", 0, 7) and not handled.fresh("a", 0, 6)
