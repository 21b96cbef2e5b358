"""The whole path on a real broker and real ClickHouse: sim agent -> Kafka -> Faust -> sink -> chDB."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcinsight.harness.demo import DEMO_DETECTORS
from tests.conftest import Pipeline, check_windows_against_numpy, sim_agent, stop

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

NODES, GPUS, TICKS = 2, 4, 60
IDLE_NODE, IDLE_GPU = 1, 2


def test_samples_quantiles_and_idle_gpu_anomaly(pipeline: Pipeline, tmp_path: Path) -> None:
    # a run of a minute: the detectors' spans of the demo's short runs (production quiet times are minutes)
    config = tmp_path / "detectors.toml"
    config.write_text(DEMO_DETECTORS)
    worker = pipeline.start(
        "worker",
        "worker",
        "--windows",
        "10s/5s",
        "--since-start-every",
        "20s",
        "--job-wait",
        "2s",
        extra_env={"HPCINSIGHT_CONFIG": str(config)},
    )
    sink = pipeline.start("sink", "sink", "--batch-age", "0.5")
    try:
        agent = pipeline.run(
            *sim_agent(NODES, GPUS, ticks=TICKS, speed=10),
            "--idle",
            f"{IDLE_NODE}:{IDLE_GPU}@0-25",
        )
        summary = json.loads(agent.stdout.strip().splitlines()[-1])
        produced = summary["topics"]["gpu.samples.raw"]
        assert produced["records"] == NODES * GPUS * TICKS and summary["failed"] == summary["dropped"] == 0
        assert produced["messages"] == NODES * summary["ticks"]

        pipeline.wait_caught_up("worker", ["gpu.samples.raw", "gpu.sketches"])
        pipeline.wait_caught_up("clickhouse-sink", ["gpu.samples", "gpu.quantiles"])
        pipeline.poll(pipeline.job_stage_settled, worker, sink)
        pipeline.wait_caught_up("clickhouse-sink", ["gpu.samples", "gpu.quantiles", "job.quantiles", "anomalies", "dead.letters"])
        # while the sink owns the embedded store, the query CLI reads it through the sink
        assert pipeline.sql("SELECT count() AS n FROM gpu_samples")[0]["n"] == produced["records"]
    finally:
        assert stop(sink) == 0, pipeline.log("sink")
        stop(worker)

    # every sample stored exactly once
    counts = pipeline.sql("SELECT count() AS n, uniqExact(gpu_uuid, ts) AS distinct_n FROM gpu_samples")[0]
    assert counts == {"n": produced["records"], "distinct_n": produced["records"]}
    # ... from what the worker wrote to gpu.samples on the topic's wire, Arrow IPC (issue 19)
    from hpcinsight.core.kafka import read_to_end
    from hpcinsight.schemas.arrow_wire import IPC_MARKER
    from hpcinsight.schemas.catalog import GPU_SAMPLES

    values = [m.value() for m in read_to_end(pipeline.client_config(), pipeline.topic("gpu.samples"), "test-read", timeout=30)]
    assert values and all(v.startswith(IPC_MARKER) for v in values)
    assert sum(len(GPU_SAMPLES.codec.decode(v)) for v in values) == produced["records"]

    # every quantile row equals numpy's over the stored samples of the same window
    ends = check_windows_against_numpy(pipeline, samples_per_window=10)
    assert sum(len(e) for e in ends.values()) >= NODES * GPUS * 8
    for metric in ("power_w", "sm_clock_mhz"):  # the same windows for power and SM clock
        assert check_windows_against_numpy(pipeline, samples_per_window=10, metric=metric) == ends

    # the idle GPU's anomaly fires and resolves, with one id; no other GPU is flagged
    anomalies = pipeline.sql(
        "SELECT id, kind, state, node, subject, evidence['p95_pct'] AS p95 FROM anomalies FINAL WHERE kind = 'gpu_underused' ORDER BY ts"
    )
    assert [a["state"] for a in anomalies] == ["firing", "resolved"], anomalies
    assert anomalies[0]["id"] == anomalies[1]["id"]
    assert {a["node"] for a in anomalies} == {f"sim-node-{IDLE_NODE:02d}"}
    assert anomalies[0]["kind"] == "gpu_underused" and anomalies[0]["p95"] < 10 <= anomalies[1]["p95"]
    idle_uuid = pipeline.sql(
        f"SELECT DISTINCT gpu_uuid FROM gpu_samples WHERE node = 'sim-node-{IDLE_NODE:02d}' AND gpu_index = {IDLE_GPU}"
    )[0]["gpu_uuid"]
    assert anomalies[0]["subject"] == idle_uuid
    # among its job's peers the idle GPU is also the only outlier (healthy noisy peers stay quiet)
    outliers = pipeline.sql("SELECT DISTINCT subject FROM anomalies FINAL WHERE kind = 'gpu_outlier'")
    assert [o["subject"] for o in outliers] == [idle_uuid]
    other = pipeline.sql("SELECT count() AS n FROM anomalies FINAL WHERE kind NOT IN ('gpu_underused', 'gpu_outlier')")
    assert other == [{"n": 0}]

    # since-start: each GPU's latest view covers every sample it had up to then, within 1% rank error
    from tests.conftest import rank_error_ok, samples_by_gpu

    by_gpu = samples_by_gpu(pipeline)
    since = pipeline.sql(
        "SELECT gpu_uuid, job_id, toUnixTimestamp64Milli(window_end) AS e, count, p25, p50, p95 FROM gpu_quantiles FINAL "
        "WHERE metric = 'gpu_util' AND window = 'since_start' ORDER BY window_end DESC LIMIT 1 BY gpu_uuid"
    )
    assert len(since) == NODES * GPUS and {s["job_id"] for s in since} == {"sim-job-0"}
    for s in since:
        values = [v for t, v in by_gpu[s["gpu_uuid"]] if t < s["e"]]
        # views go out on whole 20 s of event time once the lateness has passed: the last covers at
        # least the run less one period, the lateness and the start's offset into its period
        assert s["count"] == len(values) >= TICKS - 20 - 5
        assert all(rank_error_ok(values, q, s[n]) for q, n in ((0.25, "p25"), (0.5, "p50"), (0.95, "p95")))

    # the job's quantiles are the merge of its GPUs' sketches: the same as over all its samples
    job = pipeline.sql(
        "SELECT gpus, count, p25, p50, p95, toUnixTimestamp64Milli(window_end) AS e FROM job_quantiles FINAL "
        "WHERE job_id = 'sim-job-0' AND metric = 'gpu_util' AND window = 'since_start' ORDER BY window_end DESC LIMIT 1"
    )[0]
    values = [v for series in by_gpu.values() for t, v in series if t < job["e"]]
    assert job["gpus"] == NODES * GPUS and job["count"] == len(values)
    assert all(rank_error_ok(values, q, job[n]) for q, n in ((0.25, "p25"), (0.5, "p50"), (0.95, "p95")))
    windows = pipeline.sql("SELECT DISTINCT window FROM job_quantiles WHERE metric = 'gpu_util' ORDER BY window")
    assert [w["window"] for w in windows] == ["10s", "since_start"]
