"""A slow GPU through the real pipeline (sim agent -> Kafka -> Faust -> sink -> chDB), then
``hpcinsight diagnose`` names it and draws the figures."""

from __future__ import annotations

import json

import pytest

from hpcinsight.agents.sim.gpu import SimConfig, SimGpuCollector
from tests.conftest import Pipeline, sim_agent, stop

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

NODES, GPUS, TICKS, SPEED = 4, 8, 120, 5
SLOW_NODE, SLOW_GPU = 2, 1


def test_diagnose_names_the_slow_gpu_and_draws_three_figures(pipeline: Pipeline, tmp_path) -> None:
    worker = pipeline.start("worker", "worker", "--windows", "20s/10s", "--since-start-every", "20s", "--job-wait", "2s")
    sink = pipeline.start("sink", "sink", "--batch-age", "0.3")
    try:
        agent = pipeline.run(
            *sim_agent(NODES, GPUS, ticks=TICKS, speed=SPEED),
            "--ib",
            "--scheduler",
            "sim",
            "--fault",
            f"slow:{SLOW_NODE}:{SLOW_GPU}@20-100",
            timeout=300,
        )
        summary = json.loads(agent.stdout.strip().splitlines()[-1])
        assert summary["failed"] == summary["dropped"] == 0, summary
        pipeline.wait_caught_up("worker", ["gpu.samples.raw", "ib.samples.raw", "gpu.sketches"])
        pipeline.wait_caught_up(
            "clickhouse-sink",
            ["gpu.samples", "ib.samples", "gpu.quantiles", "job.quantiles", "anomalies", "scheduler.events", "node.inventory"],
        )
    finally:
        assert stop(sink) == 0, pipeline.log("sink")
        stop(worker)

    slow_uuid = SimGpuCollector(SimConfig(nodes=NODES, gpus_per_node=GPUS)).gpu(SLOW_NODE, SLOW_GPU).uuid
    slow = f"sim-node-{SLOW_NODE:02d}/gpu{SLOW_GPU}"
    plots = tmp_path / "plots"
    report = json.loads(pipeline.run("diagnose", "sim-job-0", "--plots", str(plots), "--format", "json").stdout)
    assert report["summary"]["user"] == "alice" and report["summary"]["gpus"] == NODES * GPUS
    top = report["findings"][0]
    assert (top["subject_type"], top["subject"], top["node"]) == ("gpu", slow, f"sim-node-{SLOW_NODE:02d}"), report["findings"]
    assert "utilisation" in top["evidence"][1] and "gpu_outlier" in top["evidence"][-1]  # the detector agreed
    lagging = [f["subject"] for f in report["findings"] if f["what"].endswith("lags its peers")]
    assert lagging[0] == slow
    # the correlation of utilisation and power over the job's GPUs and time (power follows utilisation in the sim)
    pairs = {(c["metric_a"], c["metric_b"]): c for c in report["correlations"]}
    assert pairs[("gpu_util", "power_w")]["r"] > 0.8
    assert {"scheduler", "anomaly", "gpus"} <= {t["source"] for t in report["timeline"]}
    assert any(t["subject"] == slow_uuid and t["event"].startswith("gpu_outlier firing") for t in report["timeline"])
    assert len(report["plots"]) == 3
    for path in report["plots"]:
        data = open(path, "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, path

    text = pipeline.run("diagnose", "sim-job-0").stdout
    assert f"Suspect: GPU {slow} lags its peers" in text, text
