"""The Kafka client factory (hpcinsight.core.kafka): the options every component must agree on are
set in one place, from the settings, and no component builds a client by hand."""

from __future__ import annotations

import re
from pathlib import Path

from hpcinsight.core.kafka import consumer_config, producer_config
from hpcinsight.core.settings import KafkaSettings, Secret

ROOT = Path(__file__).resolve().parents[1]


def test_a_consumer_commits_by_hand_and_reads_committed_transactions() -> None:
    conf = consumer_config(
        {"bootstrap.servers": "b:9092"}, "p.sink", instance_id="p.sink-0", extra={"session.timeout.ms": 15_000}
    )
    assert conf == {
        "bootstrap.servers": "b:9092",
        "group.id": "p.sink",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "group.instance.id": "p.sink-0",
        "session.timeout.ms": 15_000,
    }
    assert "group.instance.id" not in consumer_config({"bootstrap.servers": "b:9092"}, "g")
    assert consumer_config({"bootstrap.servers": "b:9092"}, "g", offset_reset="latest")["auto.offset.reset"] == "latest"


def test_clients_take_the_settings_security() -> None:
    kafka = KafkaSettings(
        bootstrap="b:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="u",
        sasl_password=Secret("pw"),
    )
    conf = consumer_config(kafka, "g")
    assert (conf["bootstrap.servers"], conf["security.protocol"], conf["sasl.mechanism"], conf["sasl.password"]) == (
        "b:9093",
        "sasl_ssl",
        "SCRAM-SHA-512",
        "pw",
    )
    assert producer_config(kafka)["sasl.username"] == "u"


def test_a_producer_is_idempotent_and_waits_for_every_replica() -> None:
    base = {"bootstrap.servers": "b:9092"}
    # one request in flight: with more, librdkafka can report a batch refused as not persisted
    # delivered (core.kafka.producer_config)
    assert producer_config(base) == {
        **base,
        "enable.idempotence": True,
        "acks": "all",
        "max.in.flight.requests.per.connection": 1,
    }
    assert producer_config(base, until_delivered=True)["message.timeout.ms"] == 0
    assert producer_config(base, extra={"linger.ms": 20})["linger.ms"] == 20
    assert base == {"bootstrap.servers": "b:9092"}  # the caller's dictionary is left as it was


def test_no_component_builds_a_kafka_client_by_hand() -> None:
    """Every component that runs from the settings builds its clients with the factory.
    (deploy/local/kafka.py, the broker launcher, is not one: it probes a broker it started.)"""
    built = re.compile(r"\b(Consumer|Producer|AdminClient)\(")
    found = []
    for room in ("core", "agents", "streams", "sinks", "web", "harness", "hpcinsight", "whatif"):
        for path in sorted((ROOT / room).rglob("*.py")):
            if path == ROOT / "core" / "kafka.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if built.search(line) and not line.lstrip().startswith("#"):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "build Kafka clients with hpcinsight.core.kafka.new_consumer/new_producer/new_admin:\n" + "\n".join(found)
