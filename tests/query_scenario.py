"""A small cluster story with known faults, stored through the real schema, for the query library's tests.

Four nodes of eight GPUs (zones ``zone-a``: node-00, node-01; ``zone-b``: node-02, node-03):

* ``job-a`` (ann, team llm, high priority): 16 GPUs on node-00 and node-01 for 20 minutes, 16
  ranks. GPU node-01/5 runs slow (40-50 % against its peers' 82-94 %) from minute 5 to 15; node-01's
  InfiniBand ports drop from ~10 GB/s to ~3 GB/s from minute 10 to 15, and every rank's steps are
  40 % slower meanwhile; rank 3 (node-00, GPU 3, a healthy GPU) is 35 % slower than the others
  throughout; node-00/6 reports XID 79 at minute 16.
* ``job-b`` (bob, team vision, low priority): 8 GPUs of node-02 idling at 5-15 % for 10 minutes.
* ``job-c`` (carl, team vision, low priority): 4 GPUs of node-03 for 5 minutes; the other 4 GPUs of
  node-03 hold no job.
* 40 one- and two-GPU jobs whose queue waits are drawn at random, scheduled in two KPI intervals.

Every record is built from the schema classes and inserted as the sink does (Arrow, with
``_partition``/``_offset``); the stream's outputs (quantiles, anomalies, KPIs) are what the worker
would emit: the quantiles computed here with numpy over the same samples, the KPIs by
:class:`hpcinsight.streams.kpis.SchedulingKpis` itself from the scheduler events. Tests compute their expected
answers from :attr:`Scenario` records, never from the queries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from hpcinsight.schemas.derive import to_arrow
from hpcinsight.schemas.events import (
    Anomaly,
    GpuQuantiles,
    GpuSample,
    IbSample,
    JobQuantiles,
    NodeInventory,
    SchedulerEvent,
    SchedulingKpi,
    StepMetric,
    XidEvent,
)

NODES = [f"node-{n:02d}" for n in range(4)]
ZONE = {"node-00": "zone-a", "node-01": "zone-a", "node-02": "zone-b", "node-03": "zone-b"}
S = 1000  # ms

SLOW = ("node-01", 5)
SLOW_SPAN = (300, 900)  # seconds after job-a's start
IB_SPAN = (600, 900)
STRAGGLER_RANK = 3
XID_GPU = ("node-00", 6)
A_SECONDS, B_SECONDS, C_SECONDS = 1200, 600, 300


def uuid(node: str, gpu: int) -> str:
    return f"GPU-{node}-{gpu}"


@dataclass
class Scenario:
    t0: int  # ms: an hour boundary, one to two hours ago
    a_start: int
    samples: list[GpuSample] = field(default_factory=list)
    ib: list[IbSample] = field(default_factory=list)
    steps: list[StepMetric] = field(default_factory=list)
    events: list[SchedulerEvent] = field(default_factory=list)
    inventory: list[NodeInventory] = field(default_factory=list)
    kpis: list[SchedulingKpi] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    job_quantiles: list[JobQuantiles] = field(default_factory=list)
    gpu_quantiles: list[GpuQuantiles] = field(default_factory=list)
    xids: list[XidEvent] = field(default_factory=list)
    waits: dict[str, list[float]] = field(default_factory=dict)  # gpu bucket -> queue waits (s)


def _job_samples(
    sc: Scenario,
    rng: np.random.Generator,
    job: str,
    user: str,
    team: str,
    priority: str,
    gpus: list[tuple[str, int]],
    start: int,
    seconds: int,
    level: tuple[float, float],
) -> None:
    for node, gpu in gpus:
        base = rng.uniform(*level)
        for s in range(seconds):
            util = float(np.clip(rng.normal(base, 3.0), 0, 100))
            if job == "job-a" and (node, gpu) == SLOW and SLOW_SPAN[0] <= s < SLOW_SPAN[1]:
                util = float(rng.uniform(40, 50))
            power = float(min(700.0, max(60.0, 90 + 5.6 * util + rng.normal(0, 8))))
            sc.samples.append(
                GpuSample(
                    node=node,
                    gpu_index=gpu,
                    gpu_uuid=uuid(node, gpu),
                    ts=start + s * S,
                    gpu_util=round(util, 1),
                    power_w=round(power, 1),
                    sm_clock_mhz=float(round(1980 - abs(rng.normal(0, 10)))),
                    temperature_c=round(35 + 0.4 * util, 1),
                    mem_used_bytes=60 * 2**30,
                    mem_util_pct=round(util * 0.4, 1),
                    ecc_uncorrected_volatile=0,
                    throttle=[],
                    job_id=job,
                    user=user,
                    team=team,
                    priority=priority,
                    zone=ZONE[node],
                )
            )


def _quantile_rows(sc: Scenario, job: str, user: str, team: str, start: int, seconds: int) -> None:
    """Since-start views every minute, as the job stage and the per-GPU stage emit them (here exact)."""
    mine = [s for s in sc.samples if s.job_id == job]
    for end in range(start + 60 * S, start + seconds * S + 1, 60 * S):
        upto = [s for s in mine if s.ts < end]
        for metric in ("gpu_util", "power_w", "sm_clock_mhz"):
            values = np.array([getattr(s, metric) for s in upto], dtype=np.float64)
            p25, p50, p95 = np.quantile(values, [0.25, 0.5, 0.95])
            sc.job_quantiles.append(
                JobQuantiles(
                    job_id=job,
                    metric=metric,
                    window="since_start",
                    window_start=start,
                    window_end=end,
                    gpus=len({s.gpu_uuid for s in upto}),
                    count=len(values),
                    p25=float(p25),
                    p50=float(p50),
                    p95=float(p95),
                    mean=float(values.mean()),
                    user=user,
                    team=team,
                )
            )
        for g in sorted({(s.node, s.gpu_index) for s in upto}):
            values = np.array([s.gpu_util for s in upto if (s.node, s.gpu_index) == g], dtype=np.float64)
            p25, p50, p95 = np.quantile(values, [0.25, 0.5, 0.95])
            sc.gpu_quantiles.append(
                GpuQuantiles(
                    node=g[0],
                    gpu_index=g[1],
                    gpu_uuid=uuid(*g),
                    metric="gpu_util",
                    window="since_start",
                    window_start=start,
                    window_end=end,
                    count=len(values),
                    p25=float(p25),
                    p50=float(p50),
                    p95=float(p95),
                    mean=float(values.mean()),
                    job_id=job,
                    user=user,
                    team=team,
                )
            )


def _anomaly(
    kind: str, severity: str, subject_type: str, subject: str, fired: int, resolved: int | None, message: str, **kw: Any
) -> list[Anomaly]:
    out = []
    for state, ts in (("firing", fired), ("resolved", resolved)):
        if ts is not None:
            out.append(
                Anomaly(
                    id=f"{kind}-{subject}",
                    kind=kind,
                    severity=severity,
                    state=state,
                    subject_type=subject_type,
                    subject=subject,
                    ts=ts,
                    started_at=fired,
                    window_start=fired,
                    window_end=ts,
                    message=message,
                    **kw,
                )
            )
    return out


def build(seed: int = 11) -> Scenario:
    from hpcinsight.streams.kpis import KpiConfig, SchedulingKpis

    rng = np.random.default_rng(seed)
    t0 = (int(time.time()) // 3600 - 1) * 3600 * S
    sc = Scenario(t0=t0, a_start=t0 + 60 * S)
    a, b_start, c_start = sc.a_start, t0 + 300 * S, t0 + 120 * S
    sc.inventory = [NodeInventory(ts=t0, node=n, gpu_count=8, gpu_model="H100", zone=ZONE[n]) for n in NODES]

    # jobs and their scheduler events
    def job_events(
        job: str,
        user: str,
        team: str,
        priority: str,
        gpus: float,
        submitted: int,
        scheduled: int,
        finished: int | None,
        node: str | None,
    ) -> None:
        common = dict(
            source="test", job_id=job, user=user, team=team, priority=priority, requested_gpus=gpus, name=job, gpu_model="H100"
        )
        sc.events.append(SchedulerEvent(ts=submitted, kind="submitted", **common))
        sc.events.append(SchedulerEvent(ts=scheduled, kind="scheduled", node=node, **common))
        if finished is not None:
            sc.events.append(SchedulerEvent(ts=finished, kind="finished", node=node, status="Succeeded", **common))

    job_events("job-a", "ann", "llm", "high", 16.0, t0, a, None, "node-[00-01]")
    job_events("job-b", "bob", "vision", "low", 8.0, t0 + 200 * S, b_start, b_start + B_SECONDS * S, "node-02")
    job_events("job-c", "carl", "vision", "low", 4.0, t0 + 100 * S, c_start, c_start + C_SECONDS * S, "node-03")
    # queue waits: 30 one-GPU jobs scheduled within one KPI interval, 10 two-GPU jobs within another
    for bucket, n, base, gpus in (("1", 30, 2400, 1.0), ("2-4", 10, 2520, 2.0)):
        waits = [float(round(rng.uniform(0, 300), 3)) for _ in range(n)]
        sc.waits[bucket] = waits
        for i, w in enumerate(waits):
            sched = t0 + (base + i) * S
            job_events(f"w{bucket}-{i}", f"user-{i % 3}", "batch", "normal", gpus, sched - int(w * S), sched, t0 + 2700 * S, None)
    sc.events.sort(key=lambda e: e.ts)

    # GPU samples
    _job_samples(sc, rng, "job-a", "ann", "llm", "high", [(n, g) for n in NODES[:2] for g in range(8)], a, A_SECONDS, (82, 94))
    _job_samples(sc, rng, "job-b", "bob", "vision", "low", [("node-02", g) for g in range(8)], b_start, B_SECONDS, (8, 12))
    _job_samples(sc, rng, "job-c", "carl", "vision", "low", [("node-03", g) for g in range(4)], c_start, C_SECONDS, (55, 65))
    for g in range(4, 8):  # idle GPUs, no job
        for s in range(0, A_SECONDS, 10):
            sc.samples.append(
                GpuSample(
                    node="node-03",
                    gpu_index=g,
                    gpu_uuid=uuid("node-03", g),
                    ts=a + s * S,
                    gpu_util=0.0,
                    power_w=60.0,
                    sm_clock_mhz=345.0,
                    throttle=["idle"],
                    zone="zone-b",
                )
            )

    # IB: two ports a node, attributed to the node's job
    for node in NODES[:2]:
        for s in range(A_SECONDS):
            degraded = node == "node-01" and IB_SPAN[0] <= s < IB_SPAN[1]
            for port in range(2):
                rate = rng.normal(3e9 if degraded else 10e9, 0.3e9)
                sc.ib.append(
                    IbSample(
                        node=node,
                        device=f"mlx5_{port}",
                        port=1,
                        ts=a + s * S,
                        interval_s=1.0,
                        state="ACTIVE",
                        xmit_bytes_per_s=float(rate / 2),
                        rcv_bytes_per_s=float(rate / 2),
                        xmit_wait_per_s=float(5e6 if degraded else 1e5),
                        symbol_errors=0,
                        link_downed=0,
                        job_id="job-a",
                        user="ann",
                        team="llm",
                    )
                )

    # steps of job-a's 16 ranks, one a second
    for step in range(A_SECONDS):
        slow_ib = IB_SPAN[0] <= step < IB_SPAN[1]
        for rank in range(16):
            d = rng.normal(1.0, 0.02) * (1.4 if slow_ib else 1.0) * (1.35 if rank == STRAGGLER_RANK else 1.0)
            sc.steps.append(
                StepMetric(
                    job_id="job-a",
                    rank=rank,
                    world_size=16,
                    step=step,
                    ts=a + step * S + rank,
                    duration_s=float(d),
                    node=NODES[rank // 8],
                    local_rank=rank % 8,
                    user="ann",
                    team="llm",
                )
            )

    _quantile_rows(sc, "job-a", "ann", "llm", a, A_SECONDS)
    _quantile_rows(sc, "job-b", "bob", "vision", b_start, B_SECONDS)

    # what the detectors raised
    sc.anomalies += _anomaly(
        "gpu_outlier",
        "warning",
        "gpu",
        uuid(*SLOW),
        a + 360 * S,
        a + 960 * S,
        "GPU out of line",
        node=SLOW[0],
        gpu_uuid=uuid(*SLOW),
        job_id="job-a",
        evidence={"robust_z": -12.0},
    )
    sc.anomalies += _anomaly(
        "gpu_xid",
        "critical",
        "gpu",
        uuid(*XID_GPU),
        a + 960 * S,
        None,
        "XID 79: GPU fallen off the bus",
        node=XID_GPU[0],
        gpu_uuid=uuid(*XID_GPU),
        evidence={"xid": 79.0, "count": 1.0, "drain": 1.0},
    )
    sc.anomalies += _anomaly(
        "straggler",
        "warning",
        "rank",
        f"job-a/rank-{STRAGGLER_RANK}",
        a + 200 * S,
        None,
        "rank 3 is the slowest",
        node="node-00",
        job_id="job-a",
        evidence={"rank": float(STRAGGLER_RANK)},
    )
    sc.anomalies += _anomaly(
        "slow_interconnect",
        "warning",
        "node",
        "node-01",
        a + 640 * S,
        a + 930 * S,
        "IB throughput low",
        node="node-01",
        job_id="job-a",
        evidence={"ratio": 0.3},
    )
    sc.anomalies += _anomaly(
        "job_underused",
        "warning",
        "job",
        "job-b",
        b_start + 400 * S,
        None,
        "job-b under-used",
        job_id="job-b",
        evidence={"p95_pct": 13.0},
    )
    sc.anomalies += _anomaly(
        "gpu_outlier",
        "warning",
        "gpu",
        uuid("node-03", 1),
        t0 + 10 * S,
        t0 + 40 * S,
        "another job's GPU, before job-a",
        node="node-03",
        gpu_uuid=uuid("node-03", 1),
        job_id="job-c",
        evidence={},
    )
    sc.xids.append(XidEvent(node=XID_GPU[0], gpu_index=XID_GPU[1], gpu_uuid=uuid(*XID_GPU), ts=a + 960 * S, xid=79, seq=1))

    # scheduling KPIs, by the worker's own logic
    kpis = SchedulingKpis(KpiConfig(interval_s=60, lateness_s=0))
    usage = [(q.window_end, q) for q in sc.job_quantiles if q.metric == "gpu_util"]  # the job stage's view, as it comes
    for _ts, e in sorted(
        [(e.ts, e) for e in (*sc.inventory, *sc.events)] + usage,
        key=lambda te: (te[0], not isinstance(te[1], NodeInventory), isinstance(te[1], JobQuantiles)),
    ):
        if isinstance(e, JobQuantiles):
            kpis.observe_usage(e.job_id, e.mean)
        else:
            sc.kpis += kpis.observe(e)
    sc.kpis += kpis.advance(t0 + 3000 * S)
    return sc


def insert(client: Any, sc: Scenario) -> None:
    """Store every record as the sink would: Arrow batches with their Kafka coordinates."""
    tables = (
        ("gpu_samples", GpuSample, sc.samples),
        ("ib_samples", IbSample, sc.ib),
        ("step_metrics", StepMetric, sc.steps),
        ("scheduler_events", SchedulerEvent, sc.events),
        ("node_inventory", NodeInventory, sc.inventory),
        ("scheduling_kpis", SchedulingKpi, sc.kpis),
        ("anomalies", Anomaly, sc.anomalies),
        ("job_quantiles", JobQuantiles, sc.job_quantiles),
        ("gpu_quantiles", GpuQuantiles, sc.gpu_quantiles),
        ("xid_events", XidEvent, sc.xids),
    )
    for table, event, records in tables:
        n = len(records)
        extra = {"_partition": pa.array([0] * n, pa.uint32()), "_offset": pa.array(range(n), pa.uint64())}
        client.insert_arrow(table, to_arrow(event, records, extra))


def open_store(directory: Any) -> tuple[Any, Scenario]:
    """A fresh embedded store at ``directory`` holding the story."""
    import clickhouse_connect

    from hpcinsight.sinks.clickhouse import ensure_tables

    client = clickhouse_connect.get_client(dsn=f"chdb://{directory}")
    ensure_tables(client)
    sc = build()
    insert(client, sc)
    return client, sc
