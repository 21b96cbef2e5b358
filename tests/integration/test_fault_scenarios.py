"""Every detector against ground truth, through the real pipeline: sim agent -> Kafka -> Faust -> sink -> chDB.

One sim cluster (4 nodes x 8 GPUs, InfiniBand, the sim scheduler's job) runs with one fault of
each kind injected on its own GPU or node. Each fault must raise its detector's anomaly on its
own subject, firing after the fault begins and resolving after it ends, under one id; no GPU or
node without a fault may raise anything. A second run of a healthy, noisy cluster must raise
nothing at all (the false-positive trap).

Only the detectors' *time spans* are shortened (spans of seconds, not minutes), so that both
edges of every fault fit in a couple of minutes of sim time at 5x speed; their *levels* (shares,
ratios, robust deviations, thresholds) stay at their defaults, which is what the faults test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from hpcinsight.agents.sim.gpu import SimConfig, SimGpuCollector
from hpcinsight.streams.detectors import anomaly_id
from tests.conftest import Pipeline, sim_agent, stop

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

NODES, GPUS, SPEED = 4, 8, 5
# 20 s windows, the demo's: in 10 s ones a healthy GPU's cluster of data-loading stalls can hold its median
# down for two windows in a row (gpu_outlier's fire_after); in 20 s ones it did not (checked offline: 30 seeds, every
# window phase, with the worker's sketches and the real detector)
WORKER_ARGS = ("--windows", "20s/10s", "--since-start-every", "20s", "--job-wait", "2s")
STORED = [
    "gpu.samples",
    "ib.samples",
    "gpu.quantiles",
    "job.quantiles",
    "anomalies",
    "gpu.xid",
    "scheduler.events",
    "node.inventory",
]
SPANS = """
[detectors.gpu_health]
ecc_quiet_s = 20
throttle_window_s = 20
throttle_quiet_s = 10
clock_low_s = 15

[detectors.gpu_xid]
quiet_s = 20

[detectors.gpu_underused]
quiet_s = 10

[detectors.gpu_outlier]
quiet_s = 10

[detectors.straggler]
quiet_s = 10

[detectors.slow_interconnect]
warmup_s = 10
baseline_s = 20
fire_after_s = 10
resolve_after_s = 15
flap_window_s = 20
quiet_s = 10
"""
ZONES = {"sim-node-00": "sim-zone-a", "sim-node-01": "sim-zone-a", "sim-node-02": "sim-zone-b", "sim-node-03": "sim-zone-b"}
_SIM = SimGpuCollector(SimConfig(nodes=NODES, gpus_per_node=GPUS))  # seed 0, as the agent runs it: the GPUs' UUIDs


def uuid_of(node: int, gpu: int) -> str:
    return _SIM.gpu(node, gpu).uuid


@dataclass(frozen=True)
class Fault:
    """One injected fault and what it must raise: ``kind`` on ``subject`` (firing then resolved)."""

    name: str
    option: tuple[str, str]  # the agent's option and its value
    kind: str
    subject: str
    severity: str
    start_s: float
    end_s: float  # when the condition ends (for ECC: when the count stops rising)
    owner: str  # the GPU UUID or node it is on: nothing else may be flagged there
    #: other anomalies the fault may raise on its owner: a throttled or slow GPU is also out of line with its peers
    also: frozenset[str] = field(default_factory=frozenset)
    #: what the incident id hashes, where it names more than the subject
    key: str | None = None


OUTLIER = frozenset({"gpu_outlier"})
FAULTS = (
    Fault(
        "thermal",
        ("--fault", "thermal:0:1@20-60"),
        "gpu_health",
        f"{uuid_of(0, 1)}/thermal_throttle",
        "warning",
        20,
        60,
        uuid_of(0, 1),
        OUTLIER,
    ),
    Fault(
        "power",
        ("--fault", "power:0:3@20-60"),
        "gpu_health",
        f"{uuid_of(0, 3)}/power_throttle",
        "info",
        20,
        60,
        uuid_of(0, 3),
        OUTLIER,
    ),
    Fault(
        "ecc", ("--fault", "ecc:1:0@30"), "gpu_health", f"{uuid_of(1, 0)}/ecc_uncorrectable", "critical", 30, 30, uuid_of(1, 0)
    ),
    Fault(
        "remap",
        ("--fault", "remap:1:2@30-60"),
        "gpu_health",
        f"{uuid_of(1, 2)}/row_remap_pending",
        "warning",
        30,
        60,
        uuid_of(1, 2),
    ),
    Fault(
        "clock",
        ("--fault", "clock:1:5@20-60"),
        "gpu_health",
        f"{uuid_of(1, 5)}/clock_stuck_low",
        "warning",
        20,
        60,
        uuid_of(1, 5),
        OUTLIER,
    ),
    # one incident for the GPU, though its power and SM activity follow its utilisation out of line
    Fault("slow", ("--fault", "slow:2:1@20-60"), "gpu_outlier", uuid_of(2, 1), "warning", 20, 60, uuid_of(2, 1)),
    Fault("idle", ("--idle", "2:6@20-60"), "gpu_underused", uuid_of(2, 6), "warning", 20, 60, uuid_of(2, 6), OUTLIER),
    Fault("xid", ("--xid", "3:4@30:13x2"), "gpu_xid", uuid_of(3, 4), "warning", 30, 30, uuid_of(3, 4)),
    Fault(
        "ib degrade", ("--ib-fault", "degrade:3@60-100"), "slow_interconnect", "sim-node-03", "warning", 60, 100, "sim-node-03"
    ),
    Fault(
        "ib flap",
        ("--ib-fault", "flap:2:3@80"),
        "slow_interconnect",
        "sim-node-02/mlx5_3/1",
        "critical",
        80,
        80,
        "sim-node-02/mlx5_3/1",
    ),
)
#: a degraded node's ports each err and wait too: one link incident per port besides the node's
DEGRADED_LINKS = [f"sim-node-03/mlx5_{p}/1" for p in range(8)]


def run_cluster(pipeline: Pipeline, ticks: int, *options: str, seed: int = 0) -> dict[str, Any]:
    """The worker, the sink and one sim agent (GPUs, IB, the sim scheduler) for ``ticks`` seconds of
    sim time; returns the agent's summary once everything it sent is stored."""
    config = pipeline.logs.parent / "detectors.toml"
    config.write_text(SPANS)
    worker = pipeline.start("worker", "worker", *WORKER_ARGS, extra_env={"HPCINSIGHT_CONFIG": str(config)})
    sink = pipeline.start("sink", "sink", "--batch-age", "0.3")
    try:
        agent = pipeline.run(
            *sim_agent(NODES, GPUS, ticks=ticks, speed=SPEED),
            "--ib",
            "--scheduler",
            "sim",
            "--seed",
            str(seed),
            *options,
            timeout=300,
        )
        summary: dict[str, Any] = json.loads(agent.stdout.strip().splitlines()[-1])
        assert summary["failed"] == summary["dropped"] == 0, summary
        pipeline.wait_caught_up("worker", ["gpu.samples.raw", "ib.samples.raw", "gpu.xid", "gpu.sketches"])
        pipeline.wait_caught_up("clickhouse-sink", STORED)
    finally:
        assert stop(sink) == 0, pipeline.log("sink")
        stop(worker)
    return summary


def anomalies(pipeline: Pipeline) -> list[dict[str, Any]]:
    return pipeline.sql(
        "SELECT id, kind, severity, state, subject, node, gpu_uuid, toUnixTimestamp64Milli(ts) AS ts, "
        "toUnixTimestamp64Milli(started_at) AS started_at FROM anomalies FINAL ORDER BY ts, state"
    )


def owner(a: dict[str, Any]) -> str:
    """What an anomaly is about, at the grain faults are injected: the GPU, the node, or one link."""
    if a["gpu_uuid"]:
        return str(a["gpu_uuid"])
    return str(a["subject"]) if a["subject"] in {f.owner for f in FAULTS} else str(a["node"])


def check_attribution(pipeline: Pipeline, t0: int) -> None:
    """Samples carry the sim scheduler's job, user, team and zone from the moment its events reached the
    worker, a second or so of wall time after the first samples (attribution does not rewrite the past)."""
    rows = pipeline.sql(
        "SELECT node, job_id, user, team, priority, zone, count() AS n, toUnixTimestamp64Milli(min(ts)) AS first, "
        "toUnixTimestamp64Milli(max(ts)) AS last FROM gpu_samples GROUP BY node, job_id, user, team, priority, zone"
    )
    attributed = [r for r in rows if r["user"] is not None]
    assert {(r["node"], r["job_id"], r["user"], r["team"], r["priority"], r["zone"]) for r in attributed} == {
        (node, "sim-job-0", "alice", "llm", "high", zone) for node, zone in ZONES.items()
    }
    early = [r for r in rows if r["user"] is None]
    assert all(r["job_id"] == "sim-job-0" and r["zone"] is None and r["last"] < t0 + 20_000 for r in early), early
    assert sum(r["n"] for r in early) <= 0.15 * sum(r["n"] for r in rows), rows
    ib = pipeline.sql("SELECT DISTINCT node, job_id, user, team FROM ib_samples WHERE job_id IS NOT NULL ORDER BY node")
    assert ib == [{"node": node, "job_id": "sim-job-0", "user": "alice", "team": "llm"} for node in ZONES]
    jobs = pipeline.sql(
        "SELECT job_id, max(gpus) AS gpus, groupUniqArray(user) AS users FROM job_quantiles "
        "WHERE window != 'since_start' GROUP BY job_id"
    )
    assert jobs == [{"job_id": "sim-job-0", "gpus": NODES * GPUS, "users": ["alice"]}]


def test_each_injected_fault_raises_its_anomaly_and_only_there(pipeline: Pipeline) -> None:
    ticks = 150  # the last fault ends at 100 s; the slowest resolution (IB, resolve_after_s + smoothing) needs ~25 s more
    options = [o for f in FAULTS for o in f.option]
    summary = run_cluster(pipeline, ticks, *options)
    assert summary["topics"]["gpu.samples.raw"]["records"] == NODES * GPUS * summary["ticks"]
    t0 = pipeline.sql("SELECT toUnixTimestamp64Milli(min(ts)) AS t0 FROM gpu_samples")[0]["t0"]
    flags = anomalies(pipeline)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for a in flags:
        by_id.setdefault(a["id"], []).append(a)

    # every incident fired once and resolved once, in that order, under one id
    for incidents in by_id.values():
        assert [a["state"] for a in incidents] == ["firing", "resolved"], incidents

    report = []
    for fault in FAULTS:
        mine = [
            a
            for a in flags
            if a["kind"] == fault.kind
            and a["subject"] == fault.subject
            and (fault.key is None or a["id"] == anomaly_id(fault.kind, fault.key, a["started_at"]))
        ]
        assert mine, f"{fault.name}: no {fault.kind} anomaly on {fault.subject}; raised: {flags}"
        assert len({a["id"] for a in mine}) == 1, (fault.name, mine)  # one incident per fault, not a chatter
        fired, resolved = mine
        assert fired["severity"] == fault.severity, (fault.name, fired)
        # ground truth: it fires once the fault has begun, and resolves once the fault is over
        assert t0 + fault.start_s * 1000 <= fired["ts"] <= t0 + (fault.start_s + 40) * 1000, (fault.name, fired["ts"] - t0)
        assert resolved["ts"] >= t0 + fault.end_s * 1000, (fault.name, resolved["ts"] - t0)
        report.append(
            f"{fault.name:11} {fault.kind:17} {fault.subject:58} fired {(fired['ts'] - t0) / 1000:5.0f} s "
            f"(+{(fired['ts'] - t0) / 1000 - fault.start_s:.0f}), resolved {(resolved['ts'] - t0) / 1000:5.0f} s "
            f"(+{(resolved['ts'] - t0) / 1000 - fault.end_s:.0f})"
        )
    degraded = {a["subject"] for a in flags if a["kind"] == "slow_interconnect" and a["subject"] in DEGRADED_LINKS}
    assert degraded == set(DEGRADED_LINKS)

    # nothing on a GPU, node or link without a fault, and on a faulty one nothing but its fault's findings
    allowed = {(f.owner, k) for f in FAULTS for k in {f.kind} | f.also}
    unexpected = [a for a in flags if (owner(a), a["kind"]) not in allowed]
    assert not unexpected, unexpected
    print("\n".join(report))  # detection delays, shown with -s or on a failure below

    check_attribution(pipeline, t0)


def test_a_healthy_noisy_cluster_raises_nothing(pipeline: Pipeline) -> None:
    # the same spans, so every detector is armed (baselines, windows) for most of the run; other seed
    summary = run_cluster(pipeline, 90, seed=3)
    assert summary["topics"]["gpu.samples.raw"]["records"] == NODES * GPUS * summary["ticks"]
    assert anomalies(pipeline) == []
    # the pipeline did look: windows were judged and the IB samples were attributed to the job for most of the run
    windows = pipeline.sql("SELECT count() AS n, uniqExact(gpu_uuid) AS gpus FROM gpu_quantiles FINAL WHERE window = '20s'")[0]
    assert windows["gpus"] == NODES * GPUS and windows["n"] >= NODES * GPUS * 3 * 6
    ib = pipeline.sql("SELECT count() AS n FROM ib_samples WHERE job_id = 'sim-job-0'")[0]["n"]
    assert ib >= NODES * 8 * 75
