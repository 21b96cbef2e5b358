"""The whole pipeline over the security real clusters use (issue 16, item 6): SASL_SSL with SCRAM
users, and mutual TLS. A broker of the test's own gets one secure listener and a throwaway CA
(deploy/local/security.py); the agent, worker, sink, alert router and service reach it only
through that listener, with the settings of docs/configuration.md."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpcinsight.deploy.local.kafka import LocalKafka, free_ports
from hpcinsight.deploy.local.security import SecureListener, make_pki
from tests.alerts_receiver import LocalReceiver
from tests.conftest import Pipeline, sim_agent, stop

pytestmark = [pytest.mark.kafka, pytest.mark.integration]


class SecurePipeline(Pipeline):
    listener: SecureListener

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, **self.listener.client_env()}

    def client_config(self) -> dict[str, Any]:
        from hpcinsight.core.settings import load

        return load(self.env).kafka.client_config()


@pytest.mark.parametrize("protocol", ["SASL_SSL", "mutual TLS"])
def test_the_pipeline_runs_over_a_secure_listener(protocol: str, tmp_path: Path) -> None:
    from hpcinsight.schemas.catalog import ensure_topics

    pki = make_pki(tmp_path / "pki")
    listener = SecureListener.sasl_ssl(pki) if protocol == "SASL_SSL" else SecureListener.mutual_tls(pki)
    plain, controller = free_ports(2)
    broker = LocalKafka(
        tmp_path / "kafka",
        port=plain,
        controller_port=controller,
        heap="384m",
        overrides=listener.broker_overrides(plain, controller),
        format_args=listener.format_args(),
    )
    broker.start()
    logs = tmp_path / "logs"
    logs.mkdir()
    pipeline = SecurePipeline(listener.bootstrap, f"s{uuid.uuid4().hex[:8]}.", tmp_path / "data" / "clickhouse", logs)
    pipeline.listener = listener
    receiver = LocalReceiver()
    procs = {}
    try:
        ensure_topics(pipeline.client_config(), pipeline.prefix)
        config = tmp_path / "alerts.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "route": {"receiver": "hook", "group_by": ["kind"], "group_wait": "1s", "group_interval": "2s"},
                    "receivers": [{"name": "hook", "webhook_configs": [{"url": receiver.url()}]}],
                }
            )
        )
        api = free_ports(1)[0]
        procs = {
            "worker": pipeline.start(
                "worker", "worker", "--windows", "10s/5s", "--since-start-every", "10s", "--checkpoint-every", "10s"
            ),
            "sink": pipeline.start("sink", "sink", "--batch-age", "0.5"),
            "alerts": pipeline.start("alerts", "alerts", "--config", str(config)),
            "serve": pipeline.start("serve", "serve", "--port", str(api), "--no-store"),
            "agent": pipeline.start(
                "agent",
                *sim_agent(2, 2, speed=3),
                "--scheduler",
                "sim",
                "--idle",
                "0:1",
            ),
        }
        receiver.wait_for(1, timeout=150)  # the idle GPU's anomaly went worker -> topic -> router -> webhook

        def following() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api}/api/cluster", timeout=5) as r:
                    body = json.loads(r.read())
                return bool(body["feed"]["following"]) and body.get("gpus", 0) >= 4
            except OSError:
                return False

        pipeline.poll(following, *procs.values())

        def stored_every_gpu() -> bool:  # through the sink's store share, while it runs
            return pipeline.sql("SELECT uniqExact(node, gpu_index) AS gpus FROM gpu_samples")[0]["gpus"] == 4

        pipeline.poll(stored_every_gpu, *procs.values())
    finally:
        for proc in procs.values():
            stop(proc)
        receiver.stop()
        broker.stop()
    assert receiver.bodies()[0]["alerts"][0]["labels"]["kind"] == "gpu_underused"
    stored = pipeline.sql("SELECT count() AS n, uniqExact(node, gpu_index) AS gpus FROM gpu_samples")[0]
    assert stored["n"] > 0 and stored["gpus"] == 4
    for name in procs:
        assert "SSL handshake failed" not in pipeline.log(name) and "Authentication failed" not in pipeline.log(name)


def test_a_client_without_its_certificate_is_refused_by_the_mutual_tls_listener(tmp_path: Path) -> None:
    from confluent_kafka.admin import AdminClient

    pki = make_pki(tmp_path / "pki")
    listener = SecureListener.mutual_tls(pki)
    plain, controller = free_ports(2)
    with LocalKafka(
        tmp_path / "kafka",
        port=plain,
        controller_port=controller,
        heap="384m",
        overrides=listener.broker_overrides(plain, controller),
    ) as _:
        admin = AdminClient({"bootstrap.servers": listener.bootstrap, "security.protocol": "ssl", "ssl.ca.location": str(pki.ca)})
        with pytest.raises(Exception):
            admin.list_topics(timeout=8)
        good = AdminClient(
            {
                "bootstrap.servers": listener.bootstrap,
                "security.protocol": "ssl",
                "ssl.ca.location": str(pki.ca),
                "ssl.certificate.location": str(pki.client_cert),
                "ssl.key.location": str(pki.client_key),
            }
        )
        assert good.list_topics(timeout=30).brokers
        time.sleep(0)
