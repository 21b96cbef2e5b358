"""Configuration is validated with clear errors, and secrets never show."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hpcinsight.core.settings import ConfigError, load

SECRET = "s3cr3t-Pa55"


def test_defaults_are_embedded_store_and_local_broker(tmp_path) -> None:
    s = load({"HPCINSIGHT_DATA_DIR": str(tmp_path)})
    assert s.kafka.bootstrap is None and s.clickhouse.embedded
    assert s.clickhouse.url == f"chdb://{tmp_path / 'clickhouse'}"


def test_credentials_in_the_url_move_to_a_secret() -> None:
    s = load({"CLICKHOUSE_URL": f"https://alice:{SECRET}@ch.example:8443/metrics"})
    assert s.clickhouse.url == "https://ch.example:8443/metrics"
    assert s.clickhouse.username == "alice" and s.clickhouse.password.reveal() == SECRET
    assert SECRET not in repr(s) and SECRET not in str(s.describe())


def test_secret_from_file(tmp_path) -> None:
    path = tmp_path / "pw"
    path.write_text(SECRET + "\n")
    s = load(
        {
            "KAFKA_BOOTSTRAP": "b:9092",
            "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "KAFKA_SASL_MECHANISM": "scram-sha-512",
            "KAFKA_SASL_USERNAME": "svc",
            "KAFKA_SASL_PASSWORD_FILE": str(path),
        }
    )
    assert s.kafka.client_config()["sasl.password"] == SECRET
    assert s.kafka.client_config()["security.protocol"] == "sasl_ssl"
    assert SECRET not in repr(s)


def test_config_file_with_env_override(tmp_path) -> None:
    path = tmp_path / "hpcinsight.toml"
    path.write_text('KAFKA_BOOTSTRAP = "file:9092"\nHPCINSIGHT_TOPIC_PREFIX = "prod."\n')
    s = load({"HPCINSIGHT_CONFIG": str(path), "KAFKA_BOOTSTRAP": "env:9092"})
    assert s.kafka.bootstrap == "env:9092" and s.kafka.topic_prefix == "prod."


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KAFKA_BOOTSTRAP": "no-port"}, "KAFKA_BOOTSTRAP"),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL must be one of"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "PLAIN"}, "KAFKA_SASL_USERNAME"),
        ({"KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "KAFKA_SSL_CAFILE"),
        ({"CLICKHOUSE_URL": f"ftp://bob:{SECRET}@h/x"}, "CLICKHOUSE_URL must start with"),
        ({"HPCINSIGHT_TOPIC_PREFIX": "a b"}, "HPCINSIGHT_TOPIC_PREFIX"),
        ({"HPCINSIGHT_TOPIC_PARTITIONS": "0"}, "HPCINSIGHT_TOPIC_PARTITIONS must be a whole number from 1 to 1000, got '0'"),
        ({"HPCINSIGHT_TOPIC_PARTITIONS": "six"}, "HPCINSIGHT_TOPIC_PARTITIONS must be a whole number"),
        ({"KAFKA_SASL_PASSWORD_FILE": "/nonexistent/pw"}, "cannot read"),
        ({"HPCINSIGHT_CONFIG": "/nonexistent/c.toml"}, "HPCINSIGHT_CONFIG"),
    ],
)
def test_bad_settings_are_named_and_secrets_not_echoed(env: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(env)
    assert message in str(err.value)
    assert SECRET not in str(err.value)


def test_cli_reports_config_errors_without_traceback_or_secret() -> None:
    env = {"PATH": "/usr/bin:/bin", "CLICKHOUSE_URL": f"ftp://bob:{SECRET}@h/x"}
    result = subprocess.run([sys.executable, "-m", "hpcinsight.cli", "query", "counts"], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "configuration error: CLICKHOUSE_URL" in result.stderr and "Traceback" not in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_help_lists_subcommands_and_no_secret() -> None:
    env = {"PATH": "/usr/bin:/bin", "KAFKA_SASL_PASSWORD": SECRET}
    result = subprocess.run([sys.executable, "-m", "hpcinsight.cli", "--help"], env=env, capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("demo", "topics", "agent", "worker", "sink", "query", "db", "kafka"):
        assert command in result.stdout
    assert SECRET not in result.stdout


def test_clickhouse_cluster_and_ttl_from_the_config_file(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[clickhouse]\ncluster = "gpu-prod"\n[clickhouse.ttl_days]\ngpu_samples = 14\nanomalies = 0\n')
    s = load({"HPCINSIGHT_CONFIG": str(path), "CLICKHOUSE_URL": "http://ch:8123"})
    assert s.clickhouse.cluster == "gpu-prod" and dict(s.clickhouse.ttl_days) == {"gpu_samples": 14, "anomalies": 0}
    assert load({"HPCINSIGHT_CONFIG": str(path), "CLICKHOUSE_CLUSTER": "other"}).clickhouse.cluster == "other"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[clickhouse.ttl_days]\ngpu_samples = -1\n", "whole days"),
        ('[clickhouse.ttl_days]\ngpu_samples = "30"\n', "whole days"),
        ('[clickhouse]\nclusterr = "x"\n', "unknown key"),
        ('[clickhouse]\ncluster = "x; DROP TABLE y"\n', "not a cluster name"),
    ],
)
def test_bad_clickhouse_settings_are_named(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load({"HPCINSIGHT_CONFIG": str(path)})


def test_broker_retry_waits_out_not_yet_and_raises_anything_else_at_once() -> None:
    from confluent_kafka import KafkaError, KafkaException

    from hpcinsight.core.kafka import broker_retry

    answers: list[object] = [
        KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION)),
        KafkaException(KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)),
        (0, 42),
    ]

    def offsets() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert broker_retry(offsets, timeout=10) == (0, 42) and not answers
    calls = []

    def denied() -> None:
        calls.append(1)
        raise KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))

    with pytest.raises(KafkaException):
        broker_retry(denied, timeout=10)
    assert len(calls) == 1


def test_a_repeated_kafka_log_line_goes_through_once_a_minute_with_a_count() -> None:
    import logging

    from hpcinsight.core.logs import RepeatFilter

    now = [0.0]
    f = RepeatFilter(every_s=60, clock=lambda: now[0])

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("hpcinsight.kafka", logging.ERROR, __file__, 1, msg, (), None)

    refused = "127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection refused (after {}ms in state CONNECT)"
    passed = []
    for k in range(1200):  # 20 a second for a minute: one line, then one with the count
        now[0] = k * 0.05
        r = record(refused.format(k % 3))
        if f.filter(r):
            passed.append(r.getMessage())
    assert passed == [refused.format(0)]
    now[0] = 60.0
    r = record(refused.format(1))
    assert f.filter(r) and r.getMessage().endswith("(1199 like it in the last 60 s)")
    assert f.filter(record("another message"))  # other messages are not held back


def test_topic_partitions_scale_the_keyed_topics_only() -> None:
    from hpcinsight.schemas.catalog import TOPICS, with_partitions

    assert load({}).kafka.topic_partitions is None and with_partitions(None) == list(TOPICS)
    assert load({"HPCINSIGHT_TOPIC_PARTITIONS": "24"}).kafka.topic_partitions == 24
    scaled = {t.name: t.partitions for t in with_partitions(24)}
    assert scaled == {t.name: 24 if t.partitions > 1 else 1 for t in TOPICS}
    assert scaled["gpu.samples.raw"] == scaled["gpu.samples"] == scaled["streams.state"] == 24  # read side by side
    assert scaled["node.inventory"] == scaled["scheduling.kpis"] == 1  # one reader by design
