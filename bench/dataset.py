"""A day of a 1,024-GPU cluster for the query benchmarks: about 88 M GPU samples, generated fast.

The per-sample simulator (:mod:`hpcinsight.agents.sim.gpu`) draws every field of every GPU in Python, about
40,000 samples a second here: 88 M samples would take most of an hour. This module draws the
same model in columns with numpy (per-job utilisation level with per-second noise, data-loading
dips, checkpoint pauses every 30 minutes, power and temperature following utilisation, clocks
at their maximum unless throttled, a few GPUs per day with a fault), one hour of the cluster at a
time, and inserts Arrow tables whose schemas come from the catalog, through the same tables and
rollup views the sink feeds. Jobs are whole nodes (8 to 64 GPUs) run back to back on fixed
groups of nodes, with idle gaps; each has scheduler events, per-rank steps (one per 10 s), one
IB port per node at 1 Hz, since-start job quantiles per minute, and anomalies where a fault was
drawn. Seeded: the same arguments give the same day.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from hpcinsight.schemas.catalog import ANOMALIES, GPU_SAMPLES, IB_SAMPLES, JOB_QUANTILES, SCHEDULER_EVENTS, STEP_METRICS, Topic
from hpcinsight.schemas.derive import arrow_schema, fields_of, to_arrow
from hpcinsight.schemas.events import Anomaly, JobQuantiles, SchedulerEvent

GPUS_PER_NODE = 8
NODES_PER_GROUP = 8
TEAMS = ("vision", "llm", "speech", "recsys")
USERS = tuple(f"user{i:02d}" for i in range(24))


@dataclass(frozen=True)
class Job:
    job_id: str
    user: str
    team: str
    nodes: tuple[int, ...]
    start_s: int
    end_s: int
    util: float  # mean utilisation of its healthy GPUs
    faulty_gpu: int | None  # global GPU index of a throttled GPU, if any
    straggler_rank: int | None

    @property
    def gpus(self) -> list[int]:
        return [n * GPUS_PER_NODE + g for n in self.nodes for g in range(GPUS_PER_NODE)]


def plan_jobs(gpus: int, seconds: int, rng: np.random.Generator) -> list[Job]:
    """Jobs back to back on groups of nodes: the whole group (64 GPUs) or half of it."""
    nodes = gpus // GPUS_PER_NODE
    jobs: list[Job] = []
    for group_start in range(0, nodes, NODES_PER_GROUP):
        group = list(range(group_start, min(group_start + NODES_PER_GROUP, nodes)))
        lanes = [group] if rng.random() < 0.4 else [group[: len(group) // 2], group[len(group) // 2 :]]
        for lane in lanes:
            t = int(rng.integers(0, 1800))
            while t < seconds - 600:
                duration = int(rng.integers(3600, 6 * 3600))
                end = min(seconds, t + duration)
                k = len(jobs)
                user = USERS[int(rng.integers(len(USERS)))]
                gpu_ids = [n * GPUS_PER_NODE + g for n in lane for g in range(GPUS_PER_NODE)]
                jobs.append(
                    Job(
                        job_id=f"job-{k:04d}",
                        user=user,
                        team=TEAMS[hash(user) % len(TEAMS)],
                        nodes=tuple(lane),
                        start_s=t,
                        end_s=end,
                        util=float(rng.choice([rng.uniform(15, 28), rng.uniform(55, 95)], p=[0.2, 0.8])),
                        faulty_gpu=int(rng.choice(gpu_ids)) if rng.random() < 0.2 else None,
                        straggler_rank=int(rng.integers(len(gpu_ids))) if rng.random() < 0.2 else None,
                    )
                )
                t = end + int(rng.integers(60, 1800))
    return jobs


def _table(topic: Topic, n: int, columns: dict[str, object], partition: int = 0, offset0: int = 0) -> pa.Table:
    """An Arrow table of ``topic``'s schema: given columns, nulls or empty defaults elsewhere."""
    event = topic.event
    defaults = dict(
        zip(event.__struct_fields__[len(event.__struct_fields__) - len(event.__struct_defaults__) :], event.__struct_defaults__)
    )
    arrays = []
    for f in fields_of(event):
        arrow_type = f.column.arrow
        if f.name in columns:
            value = columns[f.name]
            arrays.append(value if isinstance(value, pa.Array) else pa.array(value, type=arrow_type))
        elif f.nullable:
            arrays.append(pa.nulls(n, arrow_type))
        elif pa.types.is_list(arrow_type):
            arrays.append(pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], arrow_type.value_type)))
        elif pa.types.is_map(arrow_type):
            arrays.append(
                pa.MapArray.from_arrays(
                    pa.array(np.zeros(n + 1, np.int32)), pa.array([], arrow_type.key_type), pa.array([], arrow_type.item_type)
                )
            )
        else:
            arrays.append(pa.array(np.full(n, defaults[f.name]), type=arrow_type))
    arrays += [pa.array(np.full(n, partition, np.uint32)), pa.array(np.arange(offset0, offset0 + n, dtype=np.uint64))]
    schema = (
        arrow_schema(event).append(pa.field("_partition", pa.uint32(), False)).append(pa.field("_offset", pa.uint64(), False))
    )
    return pa.Table.from_arrays(arrays, schema=schema)


def _labels(values: np.ndarray, names: list[str | None]) -> pa.Array:
    """A string column from small integer codes (-1 = null), as a dictionary decoded to strings."""
    dictionary = pa.array([n for n in names], pa.string())
    codes = pa.array(np.where(values < 0, 0, values).astype(np.int32), mask=values < 0)
    return pa.DictionaryArray.from_arrays(codes, dictionary).cast(pa.string())


@dataclass
class Day:
    t0_ms: int
    gpus: int
    seconds: int
    jobs: list[Job]
    gpu_rows: int = 0


def load_day(client, gpus: int = 1024, hours: float = 24, seed: int = 0, progress=None) -> Day:
    """Generate and insert the day; returns what was generated (jobs, row counts)."""
    rng = np.random.default_rng(seed)
    seconds = int(hours * 3600)
    t0_ms = (int(time.time()) // 3600) * 3_600_000 - seconds * 1000  # ends at the last full hour
    jobs = plan_jobs(gpus, seconds, rng)
    day = Day(t0_ms=t0_ms, gpus=gpus, seconds=seconds, jobs=jobs)
    nodes = gpus // GPUS_PER_NODE
    node_names = [f"node{n:04d}" for n in range(nodes)]
    job_names = [j.job_id for j in jobs]
    user_names, team_names = list(USERS), list(TEAMS)

    # per GPU, per second: which job (-1: idle); per job: its parameters as arrays
    job_util = np.array([j.util for j in jobs])
    job_user = np.array([USERS.index(j.user) for j in jobs])
    job_team = np.array([TEAMS.index(j.team) for j in jobs])
    faulty = np.full(gpus, -1)
    for k, j in enumerate(jobs):
        if j.faulty_gpu is not None:
            faulty[j.faulty_gpu] = k
    gpu_idx = np.arange(gpus)
    offset = 0
    chunk = 3600
    for h0 in range(0, seconds, chunk):
        secs = np.arange(h0, min(seconds, h0 + chunk))
        owner = np.full((len(secs), gpus), -1, dtype=np.int64)
        for j in jobs:
            lo, hi = max(j.start_s, secs[0]), min(j.end_s, secs[-1] + 1)
            if lo < hi:
                owner[lo - secs[0] : hi - secs[0], j.gpus] = k
        busy = owner >= 0
        level = np.where(busy, job_util[np.maximum(owner, 0)], 0.0)
        util = level + rng.normal(0, 4.0, owner.shape)
        # data-loading dips (2% of seconds) and a checkpoint pause of 60 s every 30 min of a job
        util = np.where(rng.random(owner.shape) < 0.02, util * 0.3, util)
        since = np.where(busy, secs[:, None] - np.array([j.start_s for j in jobs] + [0])[owner], 0)
        util = np.where(busy & (since % 1800 < 60) & (since > 60), rng.uniform(0, 3, owner.shape), util)
        util = np.where(busy, util, rng.uniform(0, 1.0, owner.shape))
        util = np.round(np.clip(util, 0, 100), 1).astype(np.float32)
        power = np.round(np.clip(90 + 5.6 * util + rng.normal(0, 8.0, owner.shape), 60, 700), 1).astype(np.float32)
        temp = np.round(32 + 0.38 * util + rng.normal(0, 0.8, owner.shape), 1).astype(np.float32)
        clock = np.full(owner.shape, 1980.0, np.float32)
        is_faulty = (faulty[None, :] >= 0) & (owner == faulty[None, :])
        clock = np.where(is_faulty, 1100.0, clock).astype(np.float32)
        util = np.where(is_faulty, np.round(util * 0.7, 1), util).astype(np.float32)
        n = owner.size
        ts = (t0_ms + secs[:, None] * 1000 + np.zeros((1, gpus), np.int64)).ravel()
        g = np.broadcast_to(gpu_idx, owner.shape).ravel()
        o = owner.ravel()
        columns = {
            "node": _labels(g // GPUS_PER_NODE, node_names),
            "gpu_index": pa.array((g % GPUS_PER_NODE).astype(np.uint8)),
            "gpu_uuid": _labels(g, [f"GPU-{i:05d}" for i in range(gpus)]),
            "ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
            "gpu_util": pa.array(util.ravel()),
            "power_w": pa.array(power.ravel()),
            "temperature_c": pa.array(temp.ravel()),
            "sm_clock_mhz": pa.array(clock.ravel()),
            "sm_clock_max_mhz": pa.array(np.full(n, 1980.0, np.float32)),
            "power_limit_w": pa.array(np.full(n, 700.0, np.float32)),
            "mem_util_pct": pa.array(np.round(util.ravel() * 0.45, 1).astype(np.float32)),
            "mem_used_bytes": pa.array(np.where(o >= 0, 60 << 30, 1 << 30).astype(np.uint64)),
            "mem_total_bytes": pa.array(np.full(n, 80 << 30, np.uint64)),
            "nvlink_tx_bytes_per_s": pa.array(np.round(util.ravel() * 2.0e9 * rng.uniform(0.9, 1.1, n))),
            "pcie_tx_bytes_per_s": pa.array(np.round(util.ravel() * 2.5e7 * rng.uniform(0.9, 1.1, n))),
            "job_id": _labels(o, job_names),
            "user": _labels(np.where(o >= 0, job_user[np.maximum(o, 0)], -1), user_names),
            "team": _labels(np.where(o >= 0, job_team[np.maximum(o, 0)], -1), team_names),
        }
        client.insert_arrow(GPU_SAMPLES.table.name, _table(GPU_SAMPLES, n, columns, offset0=offset))
        offset += n
        day.gpu_rows += n

        # one IB port per node at 1 Hz: throughput follows the node's mean utilisation
        node_util = util.reshape(len(secs), nodes, GPUS_PER_NODE).mean(axis=2)
        node_owner = owner.reshape(len(secs), nodes, GPUS_PER_NODE)[:, :, 0].ravel()
        m = node_util.size
        ib = {
            "node": _labels(np.broadcast_to(np.arange(nodes), node_util.shape).ravel(), node_names),
            "device": pa.array(np.full(m, "mlx5_0", object), pa.string()),
            "port": pa.array(np.ones(m, np.uint8)),
            "ts": pa.array((t0_ms + secs[:, None] * 1000 + np.zeros((1, nodes), np.int64)).ravel(), pa.timestamp("ms", tz="UTC")),
            "interval_s": pa.array(np.ones(m)),
            "state": pa.array(np.full(m, "ACTIVE", object), pa.string()),
            "rate_gbps": pa.array(np.full(m, 400.0)),
            "xmit_bytes_per_s": pa.array(np.round(node_util.ravel() * 4.0e8 * rng.uniform(0.9, 1.1, m))),
            "rcv_bytes_per_s": pa.array(np.round(node_util.ravel() * 4.0e8 * rng.uniform(0.9, 1.1, m))),
            "xmit_wait_per_s": pa.array(np.round(rng.exponential(100.0, m))),
            "job_id": _labels(node_owner, job_names),
        }
        client.insert_arrow(IB_SAMPLES.table.name, _table(IB_SAMPLES, m, ib, offset0=offset))
        offset += m

        # per-rank steps, one per 10 s of each running job
        for j in jobs:
            lo, hi = max(j.start_s, int(secs[0])), min(j.end_s, int(secs[-1]) + 1)
            step_s = np.arange(lo + (-(lo - j.start_s)) % 10, hi, 10)
            if len(step_s) == 0:
                continue
            ranks = len(j.gpus)
            dur = 10.0 * rng.uniform(0.95, 1.0, (len(step_s), ranks))
            if j.straggler_rank is not None:
                dur[:, j.straggler_rank] *= 1.25
            sr = len(step_s) * ranks
            steps = {
                "job_id": pa.array(np.full(sr, j.job_id, object), pa.string()),
                "rank": pa.array(np.tile(np.arange(ranks, dtype=np.uint32), len(step_s))),
                "world_size": pa.array(np.full(sr, ranks, np.uint32)),
                "step": pa.array(np.repeat((step_s - j.start_s) // 10, ranks).astype(np.uint64)),
                "ts": pa.array(np.repeat(t0_ms + step_s * 1000, ranks), pa.timestamp("ms", tz="UTC")),
                "duration_s": pa.array(dur.ravel()),
                "node": _labels(np.tile(np.array(j.nodes).repeat(GPUS_PER_NODE), len(step_s)), node_names),
                "user": pa.array(np.full(sr, j.user, object), pa.string()),
                "team": pa.array(np.full(sr, j.team, object), pa.string()),
            }
            client.insert_arrow(STEP_METRICS.table.name, _table(STEP_METRICS, sr, steps, offset0=offset))
            offset += sr
        if progress:
            progress(min(seconds, h0 + chunk) / seconds)

    _insert_job_records(client, day)
    return day


def _insert_job_records(client, day: Day) -> None:
    """Scheduler events, per-minute since-start quantiles, and anomalies for the faults drawn."""
    events, quantiles, anomalies = [], [], []
    for j in day.jobs:
        start, end = day.t0_ms + j.start_s * 1000, day.t0_ms + j.end_s * 1000
        gpu_ids = [f"GPU-{g:05d}" for g in j.gpus]
        for kind, ts in (("submitted", start - 120_000), ("scheduled", start - 5_000), ("started", start)):
            events.append(
                SchedulerEvent(
                    ts,
                    "sim",
                    j.job_id,
                    kind,
                    user=j.user,
                    team=j.team,
                    requested_gpus=float(len(j.gpus)),
                    gpu_model="H100",
                    gpu_ids=gpu_ids if kind != "submitted" else [],
                )
            )
        if j.end_s < day.seconds:
            events.append(SchedulerEvent(end, "sim", j.job_id, "finished", user=j.user, team=j.team, status="succeeded"))
        for minute in range(j.start_s + 60, j.end_s, 60):
            count = (minute - j.start_s) * len(j.gpus)
            quantiles.append(
                JobQuantiles(
                    j.job_id,
                    "gpu_util",
                    "since_start",
                    start,
                    day.t0_ms + minute * 1000,
                    len(j.gpus),
                    count,
                    j.util - 6,
                    j.util,
                    min(100.0, j.util + 7),
                    j.util,
                    user=j.user,
                    team=j.team,
                )
            )
        if j.faulty_gpu is not None:
            node = f"node{j.faulty_gpu // GPUS_PER_NODE:04d}"
            uuid = f"GPU-{j.faulty_gpu:05d}"
            for state, ts in (("firing", start + 120_000), ("resolved", end)):
                anomalies.append(
                    Anomaly(
                        f"gpu_health:{uuid}:{j.start_s}",
                        "gpu_health",
                        "warning",
                        state,
                        "gpu",
                        uuid,
                        ts,
                        start + 120_000,
                        start,
                        ts,
                        f"{uuid} on {node}: SM clock 1100 MHz, 56% of its maximum",
                        {"sm_clock_mhz": 1100.0},
                        node=node,
                        gpu_uuid=uuid,
                        job_id=j.job_id,
                    )
                )
        if j.straggler_rank is not None:
            anomalies.append(
                Anomaly(
                    f"straggler:{j.job_id}:{j.straggler_rank}",
                    "straggler",
                    "warning",
                    "firing",
                    "rank",
                    f"{j.job_id}/{j.straggler_rank}",
                    start + 300_000,
                    start + 300_000,
                    start,
                    start + 300_000,
                    f"rank {j.straggler_rank} of {j.job_id} is slowest in most steps",
                    {"slowdown": 1.25},
                    job_id=j.job_id,
                )
            )
    for topic, records in ((SCHEDULER_EVENTS, events), (JOB_QUANTILES, quantiles), (ANOMALIES, anomalies)):
        if records:
            n = len(records)
            extra = {"_partition": pa.array(np.zeros(n, np.uint32)), "_offset": pa.array(np.arange(n, dtype=np.uint64))}
            client.insert_arrow(topic.table.name, to_arrow(topic.event, records, extra))
