"""Real-broker tests for deploy.local.kafka: a KRaft Kafka JVM, no Docker, no mocks.

Needs java and (for the first run) mvn; the jars are cached afterwards. The type: ignore on
the admin import is because confluent_kafka re-exports NewTopic from cimpl without stubs.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from deploy.local.kafka import KafkaLaunchError, LocalKafka, ensure_jars

pytestmark = pytest.mark.kafka


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _port_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_round_trip_and_clean_stop() -> None:
    kafka = LocalKafka()
    bootstrap = kafka.start()
    pid, workdir = kafka.pid, kafka.workdir
    assert pid is not None and workdir is not None
    port = int(bootstrap.rsplit(":", 1)[1])
    try:
        assert bootstrap == kafka.bootstrap and bootstrap.startswith("127.0.0.1:")
        topic = f"roundtrip-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        new = NewTopic(topic, num_partitions=1, replication_factor=1)
        admin.create_topics([new])[topic].result(30)

        payloads = [f"message-{i}-{uuid.uuid4().hex}".encode() for i in range(10)]
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
        for p in payloads:
            producer.produce(topic, value=p)
        assert producer.flush(30) == 0

        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{topic}",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        consumer.subscribe([topic])
        received: list[bytes] = []
        deadline = time.monotonic() + 60
        try:
            while len(received) < len(payloads) and time.monotonic() < deadline:
                msg = consumer.poll(1.0)
                if msg is None:
                    continue
                assert msg.error() is None, msg.error()
                value = msg.value()
                assert value is not None
                received.append(value)
        finally:
            consumer.close()
        assert received == payloads  # one partition: exact payloads, in order
    finally:
        kafka.stop()

    assert _process_gone(pid)
    assert _port_closed(port)
    assert not workdir.exists()  # a tempdir the launcher created is cleaned up


def test_stop_is_idempotent(tmp_path: Path) -> None:
    LocalKafka().stop()  # never started: a no-op
    kafka = LocalKafka(workdir=tmp_path / "kafka")
    kafka.start()
    pid = kafka.pid
    assert pid is not None
    kafka.stop()
    kafka.stop()
    assert kafka.pid is None and _process_gone(pid)
    assert (tmp_path / "kafka" / "kafka.log").is_file()  # caller-owned workdir is kept


def test_ensure_jars_without_tools_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(KafkaLaunchError, match="java not found"):
        ensure_jars(tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.jar"))
