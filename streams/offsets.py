"""Which offsets a stage hands on, so that every message of a partition is handled in order, once.

Faust's fetch can skip messages (records fetched at an old position reach the stream after a seek,
and its read position then drops the messages fetched again) and may commit past them. So each
stage keeps its own account, the last offset it handled per partition, and seeks back at a hole. docs/guarantees.md ("Ordered and
complete") has the rules and the finding.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

Key = tuple[str, int]


class Check(NamedTuple):
    """What to do with one message."""

    handle: bool
    #: the message comes again after a seek back: no commit may count it now
    later: bool = False
    #: seek the partition back to this offset (a hole was found); None: no seek
    seek: int | None = None
    #: offsets (first, last) the broker does not have, confirmed by a seek: never handled, commit past them
    gap: tuple[int, int] | None = None


HANDLE, AGAIN, LATER = Check(True), Check(False), Check(False, later=True)


@dataclass
class _Probe:
    """A seek back to ``next`` is under way; ``hole_at`` is the first message seen past the hole."""

    next: int
    hole_at: int
    since: float


class OffsetGuard:
    """Every stage's account of the offsets it handled, per topic and partition (see the module)."""

    def __init__(self, reprobe_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._last: dict[Key, int] = {}
        self._probes: dict[Key, _Probe] = {}
        self._assigned: set[Key] = set()
        self._reprobe_s = reprobe_s
        self._clock = clock
        #: holes found (each a seek back), and offsets confirmed absent, since the start
        self.holes = 0
        self.absent = 0

    def rebalanced(self, assigned: set[Key], committed: dict[Key, int] | None = None) -> None:
        """Keep the account of the partitions kept through a rebalance; one with no account (new to
        this worker, or nothing handled yet) starts at its committed offset (``committed``, the next
        to handle), or at whatever its first message is where the group has none."""
        kept = assigned & self._assigned
        self._last = {k: v for k, v in self._last.items() if k in kept}
        self._probes = {k: v for k, v in self._probes.items() if k in kept}
        for key, offset in (committed or {}).items():
            if key in assigned and key not in self._last and offset >= 0:
                self._last[key] = offset - 1
        self._assigned = set(assigned)

    def check(self, topic: str, partition: int, offset: int) -> Check:
        """Whether to handle this message now; a hole asks for a seek back (see :class:`Check`)."""
        key = (topic, partition)
        last = self._last.get(key)
        if last is None or offset == last + 1:
            self._last[key] = offset
            self._probes.pop(key, None)
            return HANDLE
        if offset <= last:
            return AGAIN  # handled already: Faust's fetch from the commit after a rebalance
        probe = self._probes.get(key)
        if probe is not None and offset <= probe.hole_at:
            # the first message the broker gives from the seek: the offsets before it are not there
            self._last[key] = offset
            del self._probes[key]
            self.absent += offset - (last + 1)
            return Check(True, gap=(last + 1, offset - 1))
        if probe is None:
            self.holes += 1
            self._probes[key] = _Probe(last + 1, offset, self._clock())
            return Check(False, later=True, seek=last + 1)
        return LATER  # past the hole, fetched before the seek: it comes again after the hole

    def overdue(self) -> list[tuple[str, int, int]]:
        """Partitions whose seek back brought nothing for ``reprobe_s`` (the messages fetched again
        were dropped by a read position still ahead): (topic, partition, offset) to seek to again."""
        now = self._clock()
        due = []
        for (topic, partition), probe in self._probes.items():
            if now - probe.since >= self._reprobe_s:
                probe.since = now
                due.append((topic, partition, probe.next))
        return due

    def gone_before(self, topic: str, partition: int, earliest: int) -> tuple[int, int] | None:
        """The log of a partition with a hole now starts at ``earliest`` (retention deleted the
        rest): the offsets before it that were never handled are a confirmed gap, returned."""
        key = (topic, partition)
        probe, last = self._probes.get(key), self._last.get(key)
        if probe is None or last is None or earliest <= probe.next:
            return None
        self._last[key] = earliest - 1
        probe.next = earliest
        self.absent += earliest - (last + 1)
        return (last + 1, earliest - 1)
