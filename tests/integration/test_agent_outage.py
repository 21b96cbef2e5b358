"""The broker stopped for 30 s while the agent samples: afterwards every sample is in Kafka
exactly once and in order per node (the agent spilled to disk and drained)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from hpcinsight.deploy.local.kafka import LocalKafka
from hpcinsight.schemas.catalog import GPU_SAMPLES_RAW, ensure_topics
from tests.conftest import ROOT, sim_agent

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

NODES, GPUS, SPEED, TICKS = 3, 4, 4, 240  # 60 s of real time
OUTAGE_FROM_S, OUTAGE_S = 10, 30


def consume_all(bootstrap: str, topic: str) -> list[tuple[int, int, bytes, bytes]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "outage-check",
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    out, eof = [], set()
    deadline = time.monotonic() + 60
    while len(eof) < len(partitions) and time.monotonic() < deadline:
        for msg in consumer.consume(500, timeout=1.0):
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(msg.partition())
                continue
            out.append((msg.partition(), msg.offset(), msg.key(), msg.value()))
    consumer.close()
    return out


def test_broker_outage_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    workdir = tmp_path / "kafka"
    workdir.mkdir()
    kafka = LocalKafka(workdir=workdir)
    bootstrap = kafka.start()
    port = int(bootstrap.rsplit(":", 1)[1])
    prefix = "outage."
    agent = None
    try:
        ensure_topics({"bootstrap.servers": bootstrap}, prefix)
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP": bootstrap,
            "HPCINSIGHT_TOPIC_PREFIX": prefix,
            "HPCINSIGHT_DATA_DIR": str(tmp_path / "data"),
        }
        log = open(tmp_path / "agent.log", "wb")
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hpcinsight.cli",
                *sim_agent(NODES, GPUS, ticks=TICKS, speed=SPEED),
                "--metrics-port",
                "0",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=ROOT,
        )
        time.sleep(OUTAGE_FROM_S)
        kafka.stop()
        time.sleep(OUTAGE_S)
        assert agent.poll() is None, "the agent must keep sampling while the broker is down"
        spooled = sum(p.stat().st_size for p in (tmp_path / "data" / "spool" / "sim").glob("*.seg"))
        assert spooled > 0
        kafka = LocalKafka(workdir=workdir, port=port)
        kafka.start()
        out, _ = agent.communicate(timeout=240)
        summary = json.loads(out.decode().strip().splitlines()[-1])
        assert agent.returncode == 0, (tmp_path / "agent.log").read_text()[-3000:]
        assert summary["dropped"] == 0 and summary["drained"] and summary["spilled"] > 0

        messages = consume_all(bootstrap, GPU_SAMPLES_RAW.full_name(prefix))
        assert len(messages) == NODES * TICKS == summary["topics"]["gpu.samples.raw"]["messages"]
        seen: dict[str, list[int]] = {}
        for _partition, _offset, key, value in sorted(messages):
            records = GPU_SAMPLES_RAW.codec.decode(value)
            assert {r.node for r in records} == {key.decode()} and len(records) == GPUS
            seen.setdefault(key.decode(), []).append(records[0].ts)
        assert len(seen) == NODES
        for node, stamps in seen.items():
            assert stamps == sorted(stamps), f"{node}: out of order"
            assert len(stamps) == len(set(stamps)) == TICKS, f"{node}: lost or duplicated"
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
        kafka.stop()


def test_a_delivery_closed_and_started_again_on_its_spool_sends_each_message_once(kafka_bootstrap: str, tmp_path: Path) -> None:
    """close() drains, records every acknowledgement in the spool and ends its sender; a new
    Delivery on the same spool (the agent restarted) finds nothing left to send, and what it is
    given goes out once too."""
    from hpcinsight.agents.delivery import Delivery

    prefix = f"dl{os.getpid()}{time.monotonic_ns() % 100_000}."
    ensure_topics({"bootstrap.servers": kafka_bootstrap}, prefix)
    topic = GPU_SAMPLES_RAW.full_name(prefix)
    spool = tmp_path / "spool"
    first = Delivery({"bootstrap.servers": kafka_bootstrap}, spool)
    for i in range(500):
        first.send(topic, f"n{i % 7}", f"m{i}".encode())
    assert first.close(drain_timeout=60) is True and not first._thread.is_alive()
    again = Delivery({"bootstrap.servers": kafka_bootstrap}, spool)
    assert again.spool.read(10) == []  # every acknowledgement was recorded: nothing to send again
    for i in range(500, 600):
        again.send(topic, f"n{i % 7}", f"m{i}".encode())
    assert again.close(drain_timeout=60) is True
    values = sorted(int(v[1:]) for _, _, _, v in consume_all(kafka_bootstrap, topic))
    assert values == list(range(600))  # each once


def test_a_delivery_closed_while_the_broker_is_away_sends_everything_once_after_a_restart(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """close() with the broker unreachable gives up after its drain timeout and ends its sender:
    every message waits in the spool, and the next start on it sends each exactly once."""
    from hpcinsight.agents.delivery import Delivery
    from hpcinsight.deploy.local.kafka import free_ports

    prefix = f"dl{os.getpid()}{time.monotonic_ns() % 100_000}."
    ensure_topics({"bootstrap.servers": kafka_bootstrap}, prefix)
    topic = GPU_SAMPLES_RAW.full_name(prefix)
    spool = tmp_path / "spool"
    away = Delivery({"bootstrap.servers": f"127.0.0.1:{free_ports(1)[0]}", "log_level": 0}, spool)
    for i in range(300):
        away.send(topic, f"n{i % 5}", f"m{i}".encode())
    assert away.close(drain_timeout=1) is False and not away._thread.is_alive()
    back = Delivery({"bootstrap.servers": kafka_bootstrap}, spool)
    assert back.close(drain_timeout=60) is True
    values = sorted(int(v[1:]) for _, _, _, v in consume_all(kafka_bootstrap, topic))
    assert values == list(range(300))
