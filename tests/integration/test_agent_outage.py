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

from deploy.local.kafka import LocalKafka
from hpcinsight.topics import ensure_topics
from schemas.catalog import GPU_SAMPLES_RAW
from tests.conftest import ROOT

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

NODES, GPUS, SPEED, TICKS = 3, 4, 4, 240  # 60 s of real time
OUTAGE_FROM_S, OUTAGE_S = 10, 30


def consume_all(bootstrap: str, topic: str) -> list[tuple[int, int, bytes, bytes]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "outage-check", "enable.partition.eof": True,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
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
        env = {**os.environ, "KAFKA_BOOTSTRAP": bootstrap, "HPCINSIGHT_TOPIC_PREFIX": prefix,
               "HPCINSIGHT_DATA_DIR": str(tmp_path / "data")}
        log = open(tmp_path / "agent.log", "wb")
        agent = subprocess.Popen(
            [sys.executable, "-m", "hpcinsight.cli", "agent", "--backend", "sim", "--nodes", str(NODES), "--gpus", str(GPUS),
             "--ticks", str(TICKS), "--speed", str(SPEED), "--metrics-port", "0"],
            env=env, stdout=subprocess.PIPE, stderr=log, cwd=ROOT,
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
