"""hpcinsight.core.group_lock against a real broker: one holder at a time, the holder named to the
one refused, the lock passed on when let go or when its holder stops answering."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import uuid
from typing import Any

import pytest
from confluent_kafka.admin import NewTopic

from hpcinsight.core.group_lock import GroupLock, LockHeld, LockUnanswered
from hpcinsight.core.kafka import new_admin, new_producer
from tests.conftest import ROOT

pytestmark = pytest.mark.kafka


@pytest.fixture
def held(kafka_bootstrap: str) -> tuple[dict[str, Any], str, str]:
    """A broker's config, a one-partition topic and a group of this test's own."""
    conf = {"bootstrap.servers": kafka_bootstrap}
    topic = f"t{uuid.uuid4().hex[:10]}.lock"
    admin = new_admin(conf)
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result()
    return conf, topic, f"g{uuid.uuid4().hex[:8]}"


def test_a_second_member_is_refused_and_told_the_holder_then_takes_it_when_let_go(
    held: tuple[dict[str, Any], str, str],
) -> None:
    conf, topic, group = held
    first = GroupLock(conf, topic, group, holder="first@host-a", session_ms=6_000)
    first.acquire()
    try:
        with pytest.raises(LockHeld, match="held by first@host-a"):
            GroupLock(conf, topic, group, holder="second@host-b", session_ms=6_000).acquire()
        first.check()  # the refused member's join and leave did not move it
    finally:
        first.release()
    with GroupLock(conf, topic, group, holder="second@host-b", session_ms=6_000) as second:
        second.check()


def test_the_holder_reads_nothing_of_the_topic_it_holds(held: tuple[dict[str, Any], str, str]) -> None:
    """The topic is only the thing held: what is written to it (the redrive's batch records) must
    not pile up in the holder's fetch queue for the length of a run."""
    conf, topic, group = held
    with GroupLock(conf, topic, group, holder="reader", session_ms=6_000) as lock:
        producer = new_producer(conf)
        for _ in range(50):
            producer.produce(topic, b"a batch record")
        assert producer.flush(30) == 0
        for _ in range(10):
            lock.check()
            assert lock._consumer.poll(0.2) is None  # paused: nothing fetched


def test_no_broker_is_said_as_such_not_as_a_holder() -> None:
    with socket.create_server(("127.0.0.1", 0)) as mute:  # held by the test, so no broker takes the port; never answers
        port = mute.getsockname()[1]
        lock = GroupLock({"bootstrap.servers": f"127.0.0.1:{port}"}, "t", "g", holder="x", session_ms=6_000, timeout=2)
        with pytest.raises(LockUnanswered, match="is Kafka reachable"):
            lock.acquire()


#: a holder that checks its lock twice a second and says when it has lost it
HOLDER = """
import sys, time
from hpcinsight.core.group_lock import GroupLock, LockLost
lock = GroupLock({"bootstrap.servers": sys.argv[1]}, sys.argv[2], sys.argv[3], holder="stopped", session_ms=6_000)
lock.acquire()
print("holding", flush=True)
try:
    while True:
        time.sleep(0.5)
        lock.check()
except LockLost as err:
    print("lost:", err, flush=True)
"""


def test_a_holder_stopped_past_its_session_loses_the_lock_and_learns_so_at_its_next_check(
    held: tuple[dict[str, Any], str, str],
) -> None:
    conf, topic, group = held
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, conf["bootstrap.servers"], topic, group],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        holder.send_signal(signal.SIGSTOP)  # no heartbeat: its session ends
        with GroupLock(conf, topic, group, holder="next", session_ms=6_000) as taken:  # once that session ended
            holder.send_signal(signal.SIGCONT)
            out, _ = holder.communicate(timeout=60)
            assert out.startswith("lost:"), out
            taken.check()  # and the next holder keeps it
    finally:
        holder.kill()
