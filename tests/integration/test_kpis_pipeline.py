"""The openb replay through the real pipeline: the KPI table holds exactly what the KPI logic
computes from the scheduler events the table holds (nothing lost, nothing doubled on the way), and
GPU samples on the trace's nodes are attributed to the pods placed there."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from hpcinsight.agents.scheduler.trace import POD_FILE
from hpcinsight.schemas.events import NodeInventory, SchedulerEvent
from hpcinsight.streams.kpis import KpiConfig, SchedulingKpis
from tests.conftest import Pipeline, stop

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "alibaba-openb-2023"
pytestmark = [
    pytest.mark.kafka,
    pytest.mark.integration,
    pytest.mark.skipif(not (DATA / POD_FILE).is_file(), reason=f"the openb trace is not at {DATA}"),
]

PODS = 300
REPLAY_WALL_S = 8.0
INTERVAL = KpiConfig(interval_s=1.0)


def test_openb_kpis_through_kafka_faust_and_clickhouse(pipeline: Pipeline) -> None:
    with (DATA / POD_FILE).open() as f:
        rows = [r for _, r in zip(range(PODS), csv.DictReader(f))]
    span_s = max(float(r[k]) for r in rows for k in ("creation_time", "scheduled_time", "deletion_time") if r[k])
    speedup = span_s / REPLAY_WALL_S
    worker = pipeline.start("worker", "worker", "--windows", "10s/5s", "--kpi-interval", "1s")
    sink = pipeline.start("sink", "sink", "--batch-age", "0.3")
    try:
        agent = pipeline.run(
            "agent",
            "--backend",
            "none",
            "--scheduler",
            "trace",
            "--trace-dir",
            str(DATA),
            "--trace-limit",
            str(PODS),
            "--trace-speedup",
            f"{speedup:.3f}",
            "--interval",
            "0.25",
            "--ticks",
            str(int(REPLAY_WALL_S / 0.25) + 8),
            timeout=120,
        )
        summary = json.loads(agent.stdout.strip().splitlines()[-1])
        assert summary["failed"] == summary["dropped"] == 0
        pipeline.wait_caught_up("clickhouse-sink", ["scheduler.events", "node.inventory"])
        last = pipeline.sql("SELECT toUnixTimestamp64Milli(max(ts)) AS ms FROM scheduler_events")[0]["ms"]
        cut = last - last % 1000 + 1000  # the first boundary after the last event
        # the worker closes the last intervals by its clock, a lateness after them
        pipeline.poll(
            lambda: (pipeline.sql("SELECT toUnixTimestamp64Milli(max(ts)) AS ms FROM scheduling_kpis")[0]["ms"] or 0) >= cut,
            worker,
            sink,
        )
        pipeline.wait_caught_up("clickhouse-sink", ["scheduling.kpis"])
    finally:
        assert stop(sink) == 0, pipeline.log("sink")
        stop(worker)

    stored = pipeline.sql("SELECT * FROM scheduler_events FINAL ORDER BY ts")
    assert len({r["job_id"] for r in stored}) == PODS
    # everything the KPIs read, FGD's fragmentation included (CPUs of nodes and of requests)
    inventory = pipeline.sql(
        "SELECT node, toUnixTimestamp64Milli(ts) AS ts, gpu_count, gpu_model, cpus, memory_bytes FROM node_inventory FINAL"
    )
    events: list[NodeInventory | SchedulerEvent] = [
        NodeInventory(
            ts=r["ts"],
            node=r["node"],
            gpu_count=r["gpu_count"],
            **{k: r[k] for k in ("gpu_model", "cpus", "memory_bytes") if r[k] is not None},
        )
        for r in inventory
    ]
    fields = (
        "source",
        "job_id",
        "kind",
        "priority",
        "qos",
        "requested_gpus",
        "requested_cpus",
        "requested_memory_bytes",
        "gpu_model",
        "node",
        "gpu_ids",
        "name",
    )
    for r in pipeline.sql("SELECT *, toUnixTimestamp64Milli(ts) AS ms FROM scheduler_events FINAL"):
        events.append(SchedulerEvent(ts=r["ms"], **{k: r[k] for k in fields if r[k] is not None}))
    events.sort(key=lambda e: e.ts)
    assert max(e.ts for e in events) == last

    kpis = SchedulingKpis(INTERVAL)
    expected = [row for e in events for row in kpis.observe(e)] + kpis.advance(cut + 1)
    want = {(r.kpi, r.dimension, r.group, r.ts): (round(r.value, 9), r.count) for r in expected if r.ts <= cut}
    got = {
        (r["kpi"], r["dimension"], r["group"], r["ms"]): (round(r["value"], 9), r["count"])
        for r in pipeline.sql(
            "SELECT kpi, dimension, `group`, toUnixTimestamp64Milli(ts) AS ms, value, count FROM scheduling_kpis FINAL"
        )
        if r["ms"] <= cut
    }
    assert len(want) > 500
    first = min(ts for *_, ts in want)
    missing = sorted(k for k in want if k not in got and k[3] > first)
    assert not missing, missing[:10]
    wrong = {k: (got[k], v) for k, v in want.items() if k in got and got[k] != v}
    assert not wrong, list(wrong.items())[:10]
    placed = [r for r in stored if r["kind"] == "scheduled" and r["node"]]
    assert placed, "the replay placed no pod"
