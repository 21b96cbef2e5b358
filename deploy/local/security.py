"""A local broker with the security clusters really use: SASL_SSL (SCRAM) and mutual TLS.

Settings for SASL and TLS that no test ever used are settings nobody knows work. This module makes
a throwaway certificate authority (``openssl``: a CA, the broker's certificate for 127.0.0.1 and
localhost, and a client certificate), and the broker properties for one extra listener on
127.0.0.1 speaking ``SASL_SSL`` with SCRAM-SHA-512 users created at format time, or ``SSL`` that
requires a client certificate. The broker keeps a PLAINTEXT listener between its own parts; clients
use only the secure one. :meth:`SecureListener.client_env` is what a component then needs in its
environment (the variables of docs/configuration.md).

Kafka reads PEM files directly (``ssl.keystore.type=PEM``), so no Java keystore is made.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hpcinsight.deploy.local.kafka import free_ports


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate (clients and the broker trust it)
    broker_keystore: Path  # the broker's PKCS#8 key and certificate chain, one PEM file
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()[-500:]}")


def make_pki(folder: Path, days: int = 2) -> Pki:
    """A new CA in ``folder`` and the certificates it signs (RSA 2048, valid ``days``)."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        str(days),
        "-subj",
        "/CN=hpcinsight test CA",
        cwd=folder,
    )
    for name, cn, ext in (
        ("broker", "localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth"),
        ("client", "hpcinsight-client", "extendedKeyUsage=clientAuth"),
    ):
        (folder / f"{name}.ext").write_text(ext + "\n")
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={cn}",
            cwd=folder,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            str(days),
            "-extfile",
            f"{name}.ext",
            cwd=folder,
        )
        _openssl("pkcs8", "-topk8", "-nocrypt", "-in", f"{name}.key", "-out", f"{name}.pk8", cwd=folder)
    keystore = folder / "broker-keystore.pem"
    keystore.write_text(
        (folder / "broker.pk8").read_text() + (folder / "broker.pem").read_text() + (folder / "ca.pem").read_text()
    )
    for path in folder.iterdir():
        path.chmod(0o600)
    return Pki(folder / "ca.pem", keystore, folder / "client.pem", folder / "client.pk8")


@dataclass(frozen=True)
class SecureListener:
    """One secure listener of a local broker: its broker settings and what clients need."""

    protocol: str  # SASL_SSL or SSL (mutual TLS)
    port: int
    pki: Pki
    username: str = ""
    password: str = ""

    @classmethod
    def sasl_ssl(cls, pki: Pki, username: str = "hpcinsight") -> SecureListener:
        return cls("SASL_SSL", free_ports(1)[0], pki, username, secrets.token_urlsafe(18))

    @classmethod
    def mutual_tls(cls, pki: Pki) -> SecureListener:
        return cls("SSL", free_ports(1)[0], pki)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def broker_overrides(self, plain_port: int, controller_port: int) -> dict[str, str]:
        """Properties of a single-node LocalKafka with this listener beside its PLAINTEXT one."""
        props = {
            "listeners": f"PLAINTEXT://127.0.0.1:{plain_port},SECURE://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{plain_port},SECURE://127.0.0.1:{self.port}",
            "listener.security.protocol.map": f"PLAINTEXT:PLAINTEXT,SECURE:{self.protocol},CONTROLLER:PLAINTEXT",
            "listener.name.secure.ssl.keystore.type": "PEM",
            "listener.name.secure.ssl.keystore.location": str(self.pki.broker_keystore),
            "listener.name.secure.ssl.truststore.type": "PEM",
            "listener.name.secure.ssl.truststore.location": str(self.pki.ca),
        }
        if self.protocol == "SSL":
            props["listener.name.secure.ssl.client.auth"] = "required"
        else:
            props["listener.name.secure.sasl.enabled.mechanisms"] = "SCRAM-SHA-512"
            props["listener.name.secure.scram-sha-512.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            )
        return props

    def format_args(self) -> tuple[str, ...]:
        """``kafka-storage format`` arguments creating the SCRAM user (KRaft keeps users in metadata)."""
        if self.protocol != "SASL_SSL":
            return ()
        return ("--add-scram", f"SCRAM-SHA-512=[name={self.username},password={self.password}]")

    def client_env(self) -> dict[str, str]:
        """The environment of a component connecting through this listener."""
        env = {"KAFKA_BOOTSTRAP": self.bootstrap, "KAFKA_SECURITY_PROTOCOL": self.protocol, "KAFKA_SSL_CAFILE": str(self.pki.ca)}
        if self.protocol == "SASL_SSL":
            env.update(KAFKA_SASL_MECHANISM="SCRAM-SHA-512", KAFKA_SASL_USERNAME=self.username, KAFKA_SASL_PASSWORD=self.password)
        else:
            env.update(KAFKA_SSL_CERTFILE=str(self.pki.client_cert), KAFKA_SSL_KEYFILE=str(self.pki.client_key))
        return env
