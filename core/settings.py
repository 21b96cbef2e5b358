"""One configuration for every component: Kafka and ClickHouse settings.

Values come from environment variables, or from a TOML file named by ``HPCINSIGHT_CONFIG``
(environment wins). Everything is validated when a component starts, with errors that name
the setting. Secrets (SASL password, ClickHouse password) are read from the environment or
from a file (``*_FILE`` variables, as container secrets are mounted) and are wrapped in
:class:`Secret`, whose repr never shows the value; URLs are shown with passwords redacted.

Environment variables::

    KAFKA_BOOTSTRAP                host:port[,host:port]; unset: the CLI starts a local broker
    KAFKA_SECURITY_PROTOCOL        PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    KAFKA_SASL_MECHANISM           PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    KAFKA_SASL_USERNAME
    KAFKA_SASL_PASSWORD[_FILE]
    KAFKA_SSL_CAFILE               CA bundle to verify the brokers
    HPCINSIGHT_TOPIC_PREFIX        prefix of every topic (default "hpcinsight.")
    HPCINSIGHT_TOPIC_PARTITIONS    partitions of the keyed topics hpcinsight creates (default: the catalog's, 6)
    CLICKHOUSE_URL                 chdb:///dir (embedded, default) or http(s)://[user@]host:port/db
    CLICKHOUSE_USER
    CLICKHOUSE_PASSWORD[_FILE]
    CLICKHOUSE_CLUSTER             cluster name: Replicated + Distributed tables, DDL ON CLUSTER

The config file may also hold ``[clickhouse]`` (``cluster``, ``replica_path``, ``replica_name``,
and ``[clickhouse.ttl_days]``: days to keep each table, 0 = forever), ``[detectors.<kind>]`` and
``[agent.collectors.<kind>]`` (the agent's collectors and their settings).
    HPCINSIGHT_DATA_DIR            where the embedded store lives (default ./.hpcinsight)
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from hpcinsight.core.logs import kafka_logger

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names it and never contains a secret."""


class Secret:
    """A secret value that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def redact_url(url: str) -> str:
    """The URL with any password replaced, fit for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:********@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str | None = None
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_cafile: Path | None = None
    #: this client's certificate and key (PEM), for brokers that require mutual TLS
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    topic_prefix: str = "hpcinsight."
    #: partitions of the keyed topics created (those the catalog gives more than one); None: the
    #: catalog's. More partitions let more workers and sinks share a cluster's topics.
    topic_partitions: int | None = None

    def validate(self) -> None:
        if self.bootstrap is not None:
            for hostport in self.bootstrap.split(","):
                if not re.fullmatch(r"\[?[A-Za-z0-9_.:-]+\]?:\d{1,5}", hostport.strip()):
                    raise ConfigError(f"KAFKA_BOOTSTRAP: {hostport!r} is not host:port")
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(
                f"KAFKA_SECURITY_PROTOCOL must be one of {', '.join(SECURITY_PROTOCOLS)}, got {self.security_protocol!r}"
            )
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ConfigError(
                    f"KAFKA_SASL_MECHANISM must be one of {', '.join(SASL_MECHANISMS)} with {self.security_protocol}"
                )
            if not self.sasl_username or self.sasl_password is None:
                raise ConfigError(
                    "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD (or KAFKA_SASL_PASSWORD_FILE) are required with SASL"
                )
        for name, path in (
            ("KAFKA_SSL_CAFILE", self.ssl_cafile),
            ("KAFKA_SSL_CERTFILE", self.ssl_certfile),
            ("KAFKA_SSL_KEYFILE", self.ssl_keyfile),
        ):
            if path is not None and not path.is_file():
                raise ConfigError(f"{name}: no such file {str(path)!r}")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ConfigError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together (a client certificate and its key)")
        if self.ssl_certfile is not None and self.security_protocol not in ("SSL", "SASL_SSL"):
            raise ConfigError(f"KAFKA_SSL_CERTFILE needs KAFKA_SECURITY_PROTOCOL SSL or SASL_SSL, not {self.security_protocol}")
        if not re.fullmatch(r"[A-Za-z0-9._-]*", self.topic_prefix):
            raise ConfigError(
                f"HPCINSIGHT_TOPIC_PREFIX may hold only letters, digits, '.', '_' and '-', got {self.topic_prefix!r}"
            )

    def require_bootstrap(self) -> str:
        if not self.bootstrap:
            raise ConfigError(
                "KAFKA_BOOTSTRAP is not set: point it at a broker, or use `hpcinsight demo`/`hpcinsight kafka run` to start one"
            )
        return self.bootstrap

    def client_config(self) -> dict[str, Any]:
        """Settings for confluent-kafka (librdkafka) producers, consumers and admin clients.

        Their logs go through Python logging (``hpcinsight.kafka``), where a message repeated
        within a minute is held back: a broker that is down makes librdkafka report every
        reconnection attempt, many a second, which buried everything else a component said."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.require_bootstrap(),
            "security.protocol": self.security_protocol.lower(),
            "logger": kafka_logger(),
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = self.sasl_password.reveal() if self.sasl_password else None
        if self.ssl_cafile:
            conf["ssl.ca.location"] = str(self.ssl_cafile)
        if self.ssl_certfile and self.ssl_keyfile:
            conf["ssl.certificate.location"] = str(self.ssl_certfile)
            conf["ssl.key.location"] = str(self.ssl_keyfile)
        return conf

    def faust_options(self) -> dict[str, Any]:
        """Broker URL and credentials for a Faust (aiokafka) app."""
        import ssl

        import faust

        brokers = ";".join(f"kafka://{hp.strip()}" for hp in self.require_bootstrap().split(","))
        options: dict[str, Any] = {"broker": brokers}
        context = None
        if self.security_protocol in ("SSL", "SASL_SSL"):
            context = ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
            if self.ssl_certfile and self.ssl_keyfile:
                context.load_cert_chain(str(self.ssl_certfile), str(self.ssl_keyfile))
        if self.security_protocol.startswith("SASL"):
            password = self.sasl_password.reveal() if self.sasl_password else ""
            if self.sasl_mechanism == "PLAIN":
                options["broker_credentials"] = faust.SASLCredentials(
                    username=self.sasl_username, password=password, ssl_context=context
                )
            else:
                options["broker_credentials"] = faust.SASLCredentials(
                    username=self.sasl_username, password=password, ssl_context=context, mechanism=self.sasl_mechanism
                )
        elif context is not None:
            options["broker_credentials"] = faust.SSLCredentials(context)
        return options


@dataclass(frozen=True)
class ClickHouseSettings:
    url: str
    username: str | None = None
    password: Secret | None = None
    #: a cluster name from the server's remote_servers: tables become Replicated*MergeTree
    #: with a Distributed table in front, and DDL runs ON CLUSTER (see hpcinsight.sinks.storage)
    cluster: str | None = None
    replica_path: str = "/clickhouse/tables/{shard}/{database}/{table}"
    replica_name: str = "{replica}"
    #: days to keep each table (by table name), overriding the catalog's defaults; 0 = forever
    ttl_days: Mapping[str, int] = field(default_factory=dict)

    @property
    def embedded(self) -> bool:
        return self.url.startswith("chdb://")

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    def validate(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("chdb", "http", "https"):
            raise ConfigError(f"CLICKHOUSE_URL must start with chdb://, http:// or https://, got {redact_url(self.url)!r}")
        if parts.scheme == "chdb" and not parts.path:
            raise ConfigError("CLICKHOUSE_URL: chdb:// needs a directory, e.g. chdb:///var/lib/hpcinsight/clickhouse")
        if parts.scheme != "chdb" and not parts.hostname:
            raise ConfigError(f"CLICKHOUSE_URL: no host in {redact_url(self.url)!r}")


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings
    clickhouse: ClickHouseSettings
    data_dir: Path = field(default_factory=lambda: Path(".hpcinsight"))
    #: detector settings from the config file's ``[detectors.<kind>]`` tables, checked by the worker
    detectors: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: the agent's collectors from the config file's ``[agent.collectors.<kind>]`` tables, checked by the agent
    collectors: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def with_bootstrap(self, bootstrap: str) -> Settings:
        return replace(self, kafka=replace(self.kafka, bootstrap=bootstrap))

    def topic(self, logical_name: str) -> str:
        return f"{self.kafka.topic_prefix}{logical_name}"

    def describe(self) -> dict[str, str]:
        """What the components will connect to, safe to print."""
        return {
            "kafka": self.kafka.bootstrap or "(local broker started by hpcinsight)",
            "kafka security": self.kafka.security_protocol,
            "topic prefix": self.kafka.topic_prefix,
            "clickhouse": self.clickhouse.display_url,
        }


def read_secret(env: Mapping[str, str], file_conf: Mapping[str, Any], name: str) -> Secret | None:
    if env.get(name):
        return Secret(env[name])
    path = env.get(f"{name}_FILE") or file_conf.get(f"{name.lower()}_file")
    if path:
        try:
            return Secret(Path(path).read_text().strip())
        except OSError as err:
            raise ConfigError(f"{name}_FILE: cannot read {path!r}: {err.strerror}") from None
    if name.lower() in file_conf:
        return Secret(str(file_conf[name.lower()]))
    return None


#: the most partitions a topic is created with here (Kafka's own limits are per broker, not this)
MAX_TOPIC_PARTITIONS = 1000


def topic_partitions(text: str | None, setting: str = "HPCINSIGHT_TOPIC_PARTITIONS") -> int | None:
    """A partition count as ``setting`` states it (None: not set); :class:`ConfigError` naming it."""
    if text is None:
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_TOPIC_PARTITIONS:
        raise ConfigError(f"{setting} must be a whole number from 1 to {MAX_TOPIC_PARTITIONS}, got {text!r}")
    return n


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the settings; raises :class:`ConfigError`."""
    env = os.environ if env is None else env
    file_conf: dict[str, Any] = {}
    if env.get("HPCINSIGHT_CONFIG"):
        path = Path(env["HPCINSIGHT_CONFIG"])
        try:
            file_conf = {k.lower(): v for k, v in tomllib.loads(path.read_text()).items()}
        except OSError as err:
            raise ConfigError(f"HPCINSIGHT_CONFIG: cannot read {str(path)!r}: {err.strerror}") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"HPCINSIGHT_CONFIG: {str(path)!r} is not valid TOML: {err}") from None

    def get(name: str, default: str | None = None) -> str | None:
        value = env.get(name)
        if value is None:
            value = file_conf.get(name.lower())
        return default if value in (None, "") else str(value)

    data_dir = Path(get("HPCINSIGHT_DATA_DIR") or ".hpcinsight").resolve()
    kafka = KafkaSettings(
        bootstrap=get("KAFKA_BOOTSTRAP"),
        security_protocol=(get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT") or "").upper(),
        sasl_mechanism=(get("KAFKA_SASL_MECHANISM") or "").upper() or None,
        sasl_username=get("KAFKA_SASL_USERNAME"),
        sasl_password=read_secret(env, file_conf, "KAFKA_SASL_PASSWORD"),
        ssl_cafile=Path(p) if (p := get("KAFKA_SSL_CAFILE")) else None,
        ssl_certfile=Path(p) if (p := get("KAFKA_SSL_CERTFILE")) else None,
        ssl_keyfile=Path(p) if (p := get("KAFKA_SSL_KEYFILE")) else None,
        topic_prefix=get("HPCINSIGHT_TOPIC_PREFIX", "hpcinsight.") or "",
        topic_partitions=topic_partitions(get("HPCINSIGHT_TOPIC_PARTITIONS")),
    )
    url = get("CLICKHOUSE_URL", f"chdb://{data_dir / 'clickhouse'}") or ""
    username, password = get("CLICKHOUSE_USER"), read_secret(env, file_conf, "CLICKHOUSE_PASSWORD")
    parts = urlsplit(url)
    if parts.password is not None or parts.username is not None:
        # Credentials in the URL move into their own fields, so the URL itself is safe to print.
        username = username or parts.username
        password = password or (Secret(parts.password) if parts.password is not None else None)
        netloc = parts.hostname or ""
        netloc = f"[{netloc}]" if ":" in netloc else netloc
        url = urlunsplit(parts._replace(netloc=netloc + (f":{parts.port}" if parts.port else "")))
    ch_conf = file_conf.get("clickhouse", {})
    if not isinstance(ch_conf, dict):
        raise ConfigError("[clickhouse] in HPCINSIGHT_CONFIG must be a table")
    unknown = set(ch_conf) - {"cluster", "replica_path", "replica_name", "ttl_days"}
    if unknown:
        raise ConfigError(
            f"[clickhouse] in HPCINSIGHT_CONFIG: unknown key(s) {', '.join(sorted(unknown))}; "
            "known: cluster, replica_path, replica_name, ttl_days"
        )
    ttl_days = ch_conf.get("ttl_days", {})
    if not isinstance(ttl_days, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 36_500 for v in ttl_days.values()
    ):
        raise ConfigError("[clickhouse.ttl_days] must map table names to whole days between 0 (keep forever) and 36500")
    cluster = env.get("CLICKHOUSE_CLUSTER") or ch_conf.get("cluster") or None
    if cluster is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", str(cluster)):
        raise ConfigError(f"CLICKHOUSE_CLUSTER: {cluster!r} is not a cluster name (letters, digits, _ . -)")
    clickhouse = ClickHouseSettings(
        url=url,
        username=username,
        password=password,
        cluster=cluster,
        ttl_days=ttl_days,
        replica_path=str(ch_conf.get("replica_path", ClickHouseSettings.replica_path)),
        replica_name=str(ch_conf.get("replica_name", ClickHouseSettings.replica_name)),
    )
    kafka.validate()
    clickhouse.validate()
    detectors = file_conf.get("detectors", {})
    if not isinstance(detectors, dict) or not all(isinstance(v, dict) for v in detectors.values()):
        raise ConfigError("[detectors] in HPCINSIGHT_CONFIG must hold one table per detector, e.g. [detectors.job_underused]")
    agent = file_conf.get("agent", {})
    if not isinstance(agent, dict) or set(agent) - {"collectors"}:
        raise ConfigError("[agent] in HPCINSIGHT_CONFIG may hold only [agent.collectors.<kind>] tables")
    collectors = agent.get("collectors", {})
    if not isinstance(collectors, dict) or not all(isinstance(v, dict) for v in collectors.values()):
        raise ConfigError(
            "[agent.collectors] in HPCINSIGHT_CONFIG must hold one table per collector kind, e.g. [agent.collectors.gpu_nvml]"
        )
    return Settings(kafka=kafka, clickhouse=clickhouse, data_dir=data_dir, detectors=detectors, collectors=collectors)
