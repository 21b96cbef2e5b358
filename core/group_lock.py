"""One holder at a time, by Kafka group membership, for a run that must not overlap another of its
kind (``hpcinsight dead-letters redrive``).

The holder is the member of a group of its own that is assigned a one-partition topic's partition.
The cooperative-sticky assignor never takes a partition from a live member, so a second run joins,
is given nothing, and stops, naming the holder. A holder killed outright keeps the partition until
its session ends (``session_ms``); a run started meanwhile waits that long. This is not a fence: a
holder stopped past its session loses the partition and learns so only at its next
:meth:`GroupLock.check`, which it makes before each step that must not overlap.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaException

from hpcinsight.core.kafka import KafkaClientSource, new_admin, new_consumer


class LockHeld(RuntimeError):
    """Another member holds the lock."""


class LockLost(RuntimeError):
    """The lock was taken from this member (its session ended while it did not answer)."""


class LockUnanswered(RuntimeError):
    """The group never told this member its assignment: no broker, or no coordinator, answered."""


class GroupLock:
    """``with GroupLock(kafka, topic, group, holder="ops@host pid 7"):`` the run holds ``group``'s
    lock on ``topic`` (one partition), or :class:`LockHeld` says who does."""

    def __init__(
        self,
        kafka: KafkaClientSource,
        topic: str,
        group_id: str,
        *,
        holder: str,
        session_ms: int = 10_000,
        timeout: float = 60.0,
    ) -> None:
        self.kafka, self.topic, self.group_id, self.holder = kafka, topic, group_id, holder
        self.session_ms, self.timeout = session_ms, timeout
        self._consumer: Any = None
        self._told = False  # the group has told this member its assignment at least once
        self._held = False

    def acquire(self) -> None:
        """Join the group and wait to be told the assignment; :class:`LockHeld` if it is not ours,
        :class:`LockUnanswered` if none comes."""
        self._consumer = new_consumer(
            self.kafka,
            self.group_id,
            offset_reset="latest",  # nothing is read: the topic is only the thing held
            extra={
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": self.session_ms,
                "heartbeat.interval.ms": max(1_000, self.session_ms // 5),
                "client.id": self.holder,
                "enable.auto.offset.store": False,
            },
        )
        self._consumer.subscribe([self.topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked)
        deadline = time.monotonic() + self.timeout + self.session_ms / 1000
        while not self._told and time.monotonic() < deadline:
            self._consumer.poll(0.2)
        if not self._told:
            self.release()
            waited = self.timeout + self.session_ms / 1000
            raise LockUnanswered(f"the group {self.group_id} gave no assignment in {waited:.0f} s: is Kafka reachable?")
        if not self._held:
            who = holder_of(self.kafka, self.topic, self.group_id, self.timeout)
            self.release()
            raise LockHeld(f"held by {who or 'another member'} (group {self.group_id})")
        self._consumer.pause(self._consumer.assignment())  # held, not read: nothing piles up in memory

    def check(self) -> None:
        """Answer the group (a rebalance waits for every member), then :class:`LockLost` if the
        lock is no longer this member's."""
        self._consumer.poll(0)
        if not self._held:
            raise LockLost(f"the lock of group {self.group_id} was lost (no answer within {self.session_ms} ms)")

    def release(self) -> None:
        """Leave the group (at once: the next run does not wait for this session to end)."""
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            consumer.close()
        self._held = False

    def _assigned(self, consumer: Any, partitions: list[Any]) -> None:
        self._told = True
        self._held = self._held or any(p.topic == self.topic for p in partitions)

    def _revoked(self, consumer: Any, partitions: list[Any]) -> None:
        if any(p.topic == self.topic for p in partitions):
            self._held = False

    def __enter__(self) -> GroupLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def holder_of(kafka: KafkaClientSource, topic: str, group_id: str, timeout: float = 10.0) -> str | None:
    """Who holds ``group_id``'s lock on ``topic``, as the broker tells it (client id and host);
    None if no one does, or the broker does not say (this only ever names, it decides nothing)."""
    admin = new_admin(kafka)
    try:
        group = admin.describe_consumer_groups([group_id])[group_id].result(timeout=timeout)
    except (KafkaException, TimeoutError):
        return None
    for member in group.members:
        assigned = member.assignment.topic_partitions if member.assignment else []
        if any(tp.topic == topic for tp in assigned):
            return f"{member.client_id} on {member.host.lstrip('/')}"
    return None
