"""Real-broker tests for hpcinsight.deploy.local.kafka: a KRaft Kafka JVM, no Docker, no mocks.

Needs java and (for the first run) mvn; the jars are cached afterwards. The type: ignore on
the admin import is because confluent_kafka re-exports NewTopic from cimpl without stubs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from hpcinsight.deploy.local.kafka import KafkaLaunchError, LocalKafka, LocalKafkaCluster, ensure_jars, free_ports

ROOT = Path(__file__).resolve().parent.parent

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

        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"g-{topic}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
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


def test_ensure_jars_without_tools_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(KafkaLaunchError, match="java not found"):
        ensure_jars(tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.jar"))


def _consume(bootstrap: str, topic: str, n: int, timeout: float = 60) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    received: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(received) < n and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                received.append(msg.value() or b"")
    finally:
        consumer.close()
    return received


def _kafka_run(*args: str) -> tuple[subprocess.Popen[str], str]:
    """``hpcinsight kafka run ARGS`` as a user starts it; returns it and its bootstrap line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpcinsight.cli", "kafka", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("KAFKA_BOOTSTRAP="):
            return proc, line.strip().split("=", 1)[1]
    raise AssertionError(f"kafka run exited {proc.wait()} without a bootstrap line")


def test_cli_broker_restarted_on_its_data_dir_keeps_its_messages(tmp_path: Path) -> None:
    """`hpcinsight kafka run --data-dir D --port P`, messages produced, SIGTERM, run again on D and
    P: the messages are still there (the broker used to delete its data on stop)."""
    port = free_ports(1)[0]
    data = tmp_path / "kafka"
    proc, bootstrap = _kafka_run("--data-dir", str(data), "--port", str(port))
    topic = f"kept-{uuid.uuid4().hex[:8]}"
    payloads = [f"m{i}".encode() for i in range(20)]
    try:
        assert bootstrap == f"127.0.0.1:{port}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
        for p in payloads:
            producer.produce(topic, value=p)
        assert producer.flush(30) == 0
    finally:
        proc.terminate()
        assert proc.wait(60) == 0
    assert _port_closed(port) and (data / "data" / "meta.properties").is_file()

    proc, bootstrap = _kafka_run("--data-dir", str(data), "--port", str(port))
    try:
        assert _consume(bootstrap, topic, len(payloads)) == payloads
    finally:
        proc.terminate()
        assert proc.wait(60) == 0
    assert data.is_dir()


def test_killed_broker_started_again_on_its_workdir_reuses_port_and_data(tmp_path: Path) -> None:
    """kill -9 (no clean shutdown) then start: the same port, without being told, and the log."""
    kafka = LocalKafka(workdir=tmp_path / "k", heap="256m")
    bootstrap = kafka.start()
    try:
        topic = f"crash-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
        for i in range(10):
            producer.produce(topic, value=b"%d" % i)
        assert producer.flush(30) == 0
        kafka.kill()
        assert _port_closed(int(bootstrap.rsplit(":", 1)[1]))
        again = LocalKafka(workdir=tmp_path / "k", heap="256m")
        assert again.start() == bootstrap
        kafka = again
        assert _consume(bootstrap, topic, 10) == [b"%d" % i for i in range(10)]
    finally:
        kafka.stop()


def test_three_node_cluster_rides_out_one_node_killed_paused_and_restarted(tmp_path: Path) -> None:
    """Three KRaft nodes: the catalog's topics get replication 3 and min.insync.replicas 2 from the
    cluster; with one node killed, then another paused, acks=all producing goes on; the killed node
    comes back on its data, and everything produced is read back once."""
    from hpcinsight.schemas.catalog import ensure_topics

    cluster = LocalKafkaCluster(3, tmp_path / "cluster")
    bootstrap = cluster.start()
    try:
        conf = {"bootstrap.servers": bootstrap}
        names = ensure_topics(conf, "c3.")
        admin = AdminClient(conf)
        deadline = time.monotonic() + 30
        while True:  # each node learns of new topics from the controller in its own time
            meta = admin.list_topics(timeout=10)
            if all(n in meta.topics for n in names) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert len(meta.brokers) == 3
        assert all(len(p.replicas) == 3 for n in names for p in meta.topics[n].partitions.values())
        from confluent_kafka.admin import ConfigResource

        resource = ConfigResource(ConfigResource.Type.TOPIC, names[0])
        assert admin.describe_configs([resource])[resource].result(30)["min.insync.replicas"].value == "2"

        topic = f"r3-{uuid.uuid4().hex[:8]}"
        admin.create_topics([NewTopic(topic, num_partitions=3)])[topic].result(30)
        # short request timeouts: a request to a paused node is given up after 10 s (default 30 s)
        producer = Producer(
            {**conf, "acks": "all", "enable.idempotence": True, "request.timeout.ms": 10_000, "socket.timeout.ms": 10_000}
        )
        sent: list[bytes] = []

        def produce(n: int) -> None:
            for _ in range(n):
                sent.append(f"v{len(sent)}".encode())
                producer.produce(topic, value=sent[-1])
            assert producer.flush(120) == 0

        produce(50)
        cluster.kill(0)
        produce(50)
        cluster.restart(0)
        cluster.pause(1)
        produce(50)
        cluster.resume(1)
        produce(50)
        assert sorted(_consume(bootstrap, topic, len(sent))) == sorted(sent)
    finally:
        cluster.stop()
    assert (tmp_path / "cluster" / "node-0" / "data" / "meta.properties").is_file()  # a given workdir is kept
