"""The router pushes to a real Prometheus Alertmanager (v0.35, built by the set-up from the Go
module proxy) and loses nothing while it is down (issue 16, item 5). Read back through its API."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpcinsight.deploy.local.kafka import free_ports
from hpcinsight.deploy.tools.go import require
from tests.conftest import Pipeline, stop
from tests.integration.test_alerts_router import anomaly, produce, start_router

pytestmark = [pytest.mark.kafka, pytest.mark.integration]


class Alertmanager:
    def __init__(self, tmp: Path, port: int) -> None:
        self.port, self.tmp = port, tmp
        (tmp / "am.yml").write_text(yaml.safe_dump({"route": {"receiver": "null"}, "receivers": [{"name": "null"}]}))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log = open(self.tmp / "alertmanager.log", "ab")
        self.proc = subprocess.Popen(
            [
                str(require("alertmanager")),
                f"--config.file={self.tmp / 'am.yml'}",
                f"--storage.path={self.tmp / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2).read()
                return
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, (self.tmp / "alertmanager.log").read_text()
                time.sleep(0.3)

    def alerts(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v2/alerts", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(20)
            self.log.close()


def test_alerts_reach_the_operators_alertmanager_and_survive_it_being_down(pipeline: Pipeline, tmp_path: Path) -> None:
    am_port = free_ports(1)[0]
    am = Alertmanager(tmp_path, am_port)
    config = tmp_path / "alerts.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {
                    "dashboard_url": "https://grafana.example/d/gpu?var-node={node}&from={from_ms}&to={to_ms}",
                    "retry": {"initial_backoff": "200ms", "max_backoff": "1s"},
                },
                "route": {"receiver": "am", "group_by": ["kind", "node"], "group_wait": "1s", "group_interval": "2s"},
                "receivers": [{"name": "am", "alertmanager_configs": [{"url": f"http://127.0.0.1:{am_port}"}]}],
            }
        )
    )
    router = start_router(pipeline, str(config))
    try:
        produce(pipeline, anomaly("a0", node="n1"))  # Alertmanager is not up yet: retried
        pipeline.poll(lambda: "HTTP" in pipeline.log("alerts") or "Connection" in pipeline.log("alerts"), router)
        time.sleep(2)
        am.start()
        pipeline.poll(lambda: len(am.alerts()) == 1, router)
        [alert] = am.alerts()
        assert alert["labels"]["alertname"] == "gpu_health" and alert["labels"]["node"] == "n1"
        assert alert["annotations"]["anomaly_id"] == "a0" and "throttles" in alert["annotations"]["summary"]
        assert alert["startsAt"].startswith(time.strftime("%Y-%m-%dT", time.gmtime(anomaly("a0").started_at / 1000)))
        assert alert["generatorURL"].startswith("https://grafana.example/d/gpu?var-node=n1")
        assert alert["status"]["state"] == "active"

        produce(pipeline, anomaly("b0", node="n2"), anomaly("a0", "resolved", node="n1"))
        pipeline.poll(lambda: [a["labels"]["node"] for a in am.alerts()] == ["n2"], router)  # a0 resolved: gone
    finally:
        assert stop(router) == 0, pipeline.log("alerts")
        am.stop()
