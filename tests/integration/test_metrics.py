"""Every long-running component serves Prometheus /metrics, and its series move (issue 16, item 4).

The agent, worker, sink, alert router and service run as processes on the real broker, each with
a metrics port; each is scraped twice and the series the chart's PrometheusRule and dashboards
rely on must exist, with counters that grew in between.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from hpcinsight.deploy.local.kafka import free_ports
from tests.alerts_receiver import LocalReceiver
from tests.conftest import Pipeline, sim_agent, stop

pytestmark = [pytest.mark.kafka, pytest.mark.integration]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and all(dict(ls).get(k) == w for k, w in labels.items()))


def names(samples: dict) -> set[str]:
    return {n for n, _ in samples}


def test_every_component_serves_metrics_that_move(pipeline: Pipeline, tmp_path: Path) -> None:
    ports = dict(zip(("agent", "worker", "sink", "alerts", "serve", "api"), free_ports(6)))
    receiver = LocalReceiver()
    config = tmp_path / "alerts.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "route": {"receiver": "hook", "group_by": ["kind"], "group_wait": "1s", "group_interval": "2s"},
                "receivers": [{"name": "hook", "webhook_configs": [{"url": receiver.url()}]}],
            }
        )
    )
    procs = {
        "worker": pipeline.start(
            "worker",
            "worker",
            "--windows",
            "10s/5s",
            "--since-start-every",
            "10s",
            "--checkpoint-every",
            "10s",
            "--metrics-port",
            str(ports["worker"]),
        ),
        "sink": pipeline.start("sink", "sink", "--batch-age", "0.5", "--metrics-port", str(ports["sink"])),
        "alerts": pipeline.start("alerts", "alerts", "--config", str(config), "--metrics-port", str(ports["alerts"])),
        "serve": pipeline.start("serve", "serve", "--port", str(ports["api"]), "--metrics-port", str(ports["serve"])),
        "agent": pipeline.start(
            "agent",
            *sim_agent(2, 2, speed=2),
            "--scheduler",
            "sim",
            "--idle",
            "0:1",
            "--metrics-port",
            str(ports["agent"]),
        ),
    }
    try:
        first: dict[str, dict] = {}
        deadline = time.monotonic() + 120
        while len(first) < len(procs) and time.monotonic() < deadline:
            for name, proc in procs.items():
                assert proc.poll() is None, pipeline.log(name)
                if name not in first:
                    try:
                        first[name] = scrape(ports[name])
                    except OSError:
                        pass
            time.sleep(1)
        assert set(first) == set(procs), f"no /metrics from {set(procs) - set(first)}"
        urllib.request.urlopen(f"http://127.0.0.1:{ports['api']}/healthz", timeout=10).read()
        time.sleep(25)  # the worker closes windows, the idle GPU is flagged, the router tells it
        then = {name: scrape(ports[name]) for name in procs}
    finally:
        for proc in procs.values():
            stop(proc)
        receiver.stop()

    assert total(then["agent"], "hpcinsight_agent_ticks_total") > total(first["agent"], "hpcinsight_agent_ticks_total")

    worker = then["worker"]
    assert total(worker, "hpcinsight_worker_messages_total", stage="gpu-samples") > total(
        first["worker"], "hpcinsight_worker_messages_total", stage="gpu-samples"
    )
    assert total(worker, "hpcinsight_worker_samples_total") > 0
    assert {
        "hpcinsight_worker_dead_letters_total",
        "hpcinsight_worker_messages_salvaged_total",
        "hpcinsight_worker_state_restore_seconds",
        "hpcinsight_worker_open_incidents",
        "hpcinsight_worker_job_stage_held_seconds_total",
        "hpcinsight_consumer_lag",
    } <= names(worker)
    assert total(worker, "hpcinsight_worker_state_restores_total") >= 1
    assert total(worker, "hpcinsight_worker_open_incidents", detector="gpu_underused") >= 1  # GPU 1 of node 0 idles
    assert any(n == "hpcinsight_consumer_lag" and dict(ls).get("topic", "").endswith("gpu.samples.raw") for n, ls in worker)

    sink = then["sink"]
    assert total(sink, "hpcinsight_sink_rows_total", table="gpu_samples") > total(
        first["sink"], "hpcinsight_sink_rows_total", table="gpu_samples"
    )
    assert total(sink, "hpcinsight_sink_insert_seconds_count") > 0
    assert {
        "hpcinsight_sink_dead_letters_total",
        "hpcinsight_sink_messages_salvaged_total",
        "hpcinsight_sink_insert_retries_total",
        "hpcinsight_consumer_lag",
    } <= names(sink)

    alerts = then["alerts"]
    assert total(alerts, "hpcinsight_alerts_anomalies_total") >= 1
    assert total(alerts, "hpcinsight_alerts_notifications_sent_total", receiver="hook") >= 1
    assert {
        "hpcinsight_alerts_outbox_depth",
        "hpcinsight_alerts_notifications_failed_total",
        "hpcinsight_alerts_notifications_retried_total",
    } <= names(alerts)

    serve = then["serve"]
    assert total(serve, "hpcinsight_serve_requests_total", route="/healthz", status="200") == 1
    assert "hpcinsight_serve_live_clients" in names(serve)
