"""The worker's output producer on a real broker: an output the broker refuses for good becomes a
dead letter in the one dead-letter topic, and a refused dead letter is only logged."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from hpcinsight.core.kafka import new_admin, read_to_end
from hpcinsight.core.settings import load
from hpcinsight.schemas.catalog import ANOMALIES, DEAD_LETTERS, ensure_topics
from hpcinsight.streams.app import OutputProducer
from hpcinsight.streams.processor import Output

pytestmark = pytest.mark.kafka


def test_a_refused_output_becomes_a_dead_letter(kafka_bootstrap: str, tmp_path: Path) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    settings = load({"KAFKA_BOOTSTRAP": kafka_bootstrap, "HPCINSIGHT_TOPIC_PREFIX": prefix, "HPCINSIGHT_DATA_DIR": str(tmp_path)})
    conf = settings.kafka.client_config()
    ensure_topics(conf, prefix)
    admin = new_admin(conf)  # the anomalies topic takes no message over 2 kB; the dead letters' does
    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        ANOMALIES.full_name(prefix),
        incremental_configs=[ConfigEntry("max.message.bytes", "2000", incremental_operation=AlterConfigOpType.SET)],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result()
    described = ConfigResource(ConfigResource.Type.TOPIC, ANOMALIES.full_name(prefix))
    while admin.describe_configs([described])[described].result()["max.message.bytes"].value != "2000":
        time.sleep(0.1)  # the broker applies it a moment after the controller took it

    outputs = OutputProducer(settings)
    big = os.urandom(9600)  # random: zstd cannot shrink it below the limit
    outputs.send([Output(ANOMALIES, b"n1", b"small"), Output(ANOMALIES, b"n2", big)])
    outputs.flush(report_every_s=10)
    assert outputs.refused == 1

    letters = [
        r
        for m in read_to_end(conf, DEAD_LETTERS.full_name(prefix), "test-read", timeout=30)
        for r in DEAD_LETTERS.codec.decode(m.value())
    ]
    assert [(d.source_topic, d.stage, d.raw, d.key) for d in letters] == [
        (ANOMALIES.full_name(prefix), "worker.output", big, b"n2")
    ]
    assert "refused by the broker" in letters[0].reason
    assert [m.value() for m in read_to_end(conf, ANOMALIES.full_name(prefix), "test-read", timeout=30)] == [b"small"]
