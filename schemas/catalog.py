"""The topic catalog: every Kafka topic and ClickHouse table of hpcinsight, as data.

Like a Vector topology, the flow of data is something you can print
(``hpcinsight topics``): which schema each topic carries, how it is keyed and
partitioned, how long Kafka keeps it, and which table the sink stores it in.
Agents, streams and sinks never import one another; they meet here.

Each topic also names its wire: JSON envelopes (:mod:`hpcinsight.schemas.codec`) for what agents
write and subscribers read, Arrow IPC (:mod:`hpcinsight.schemas.arrow_wire`) for the stored GPU
samples, which the worker writes in batches and the ClickHouse sink stores as columns.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from hpcinsight.schemas.arrow_wire import ArrowCodec
from hpcinsight.schemas.codec import Codec
from hpcinsight.schemas.events import (
    AgentHealth,
    Anomaly,
    DeadLetter,
    Event,
    GpuProcess,
    GpuQuantiles,
    GpuSample,
    GpuSketch,
    IbSample,
    JobQuantiles,
    NodeInventory,
    Redrive,
    SchedulerEvent,
    SchedulingKpi,
    Silence,
    StateCheckpoint,
    StepMetric,
    XidEvent,
)

if TYPE_CHECKING:
    import threading

    from hpcinsight.core.settings import KafkaSettings

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

# Columns the sink adds to every table: where each row came from in Kafka. They make the
# sink exactly-once: after a crash it resumes past the highest offset ClickHouse holds.
SINK_COLUMNS = ("`_partition` UInt32", "`_offset` UInt64 CODEC(Delta, ZSTD(1))")


@dataclass(frozen=True)
class Table:
    """A ClickHouse table fed from one topic: the storage facts only.

    ``order_by`` is the sorting key, chosen for the reads that matter (a node's or GPU's time
    range), and also the deduplication key (ReplacingMergeTree): a record replayed by an
    at-least-once upstream stage collapses into one row. ``bloom_filters`` name columns that
    get a data-skipping index, for reads scoped by something outside the key (a job). The DDL
    itself (engine, single server or cluster, TTL from the configuration) is rendered by
    :mod:`hpcinsight.sinks.storage`.
    """

    name: str
    order_by: tuple[str, ...]
    time_column: str
    ttl_days: int = 30
    bloom_filters: tuple[str, ...] = ()


@dataclass(frozen=True)
class Topic:
    """One Kafka topic: its schema, key, partitioning and retention, and its table if stored."""

    name: str
    event: type[Event]
    key: str
    partitions: int
    retention_ms: int
    doc: str
    table: Table | None = None
    compacted: bool = False  # keep the latest message of each key, not a time window
    #: how messages are written: "json" envelopes, or "arrow" IPC streams (read by column stores;
    #: their codec still reads a JSON envelope, e.g. from a worker of before the change)
    wire: Literal["json", "arrow"] = "json"
    codec: Codec[Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "codec", ArrowCodec(self.event) if self.wire == "arrow" else Codec(self.event))

    def full_name(self, prefix: str) -> str:
        return f"{prefix}{self.name}"


GPU_SAMPLES_RAW = Topic(
    "gpu.samples.raw",
    GpuSample,
    key="node",
    partitions=6,
    retention_ms=DAY_MS,
    doc="What agents read from NVML, one message per node per tick; not yet validated.",
)
GPU_SAMPLES = Topic(
    "gpu.samples",
    GpuSample,
    key="node",
    partitions=6,
    retention_ms=DAY_MS,
    doc="Validated GPU samples, attributed to the job (user, team, zone) holding each GPU, as stored.",
    table=Table("gpu_samples", order_by=("node", "gpu_index", "ts"), time_column="ts", bloom_filters=("job_id",)),
    wire="arrow",  # the sink's bulk: stored as columns, so sent as columns
)
GPU_QUANTILES = Topic(
    "gpu.quantiles",
    GpuQuantiles,
    key="node",
    partitions=6,
    retention_ms=7 * DAY_MS,
    doc="p25/p50/p95 of GPU metrics per sliding window (1m, 5m, 1h) and since the job started.",
    table=Table(
        "gpu_quantiles",
        order_by=("node", "gpu_index", "metric", "window", "window_end"),
        time_column="window_end",
        ttl_days=365,
        bloom_filters=("job_id",),
    ),
)
ANOMALIES = Topic(
    "anomalies",
    Anomaly,
    key="subject",
    partitions=3,
    retention_ms=30 * DAY_MS,
    doc="Flags raised by detectors, firing then resolved, with a stable id.",
    table=Table(
        "anomalies", order_by=("kind", "subject", "id", "state"), time_column="ts", ttl_days=365, bloom_filters=("job_id",)
    ),
)
DEAD_LETTERS = Topic(
    "dead.letters",
    DeadLetter,
    key="source topic",
    partitions=1,
    retention_ms=30 * DAY_MS,
    doc="Messages, or the records of a message, that no stage could use, with the reason.",
    table=Table(
        "dead_letters", order_by=("source_topic", "source_partition", "source_offset", "stage"), time_column="ts", ttl_days=90
    ),
)

IB_SAMPLES_RAW = Topic(
    "ib.samples.raw",
    IbSample,
    key="node",
    partitions=6,
    retention_ms=DAY_MS,
    doc="What agents read from InfiniBand sysfs, one message per node per tick; not yet validated.",
)
IB_SAMPLES = Topic(
    "ib.samples",
    IbSample,
    key="node",
    partitions=6,
    retention_ms=DAY_MS,
    doc="InfiniBand port state, throughput and error counts per node per tick, attributed to jobs.",
    table=Table("ib_samples", order_by=("node", "device", "port", "ts"), time_column="ts", bloom_filters=("job_id",)),
    # JSON still: the worker writes one message per node and tick here (a few ports), where Arrow
    # cost it 15 times the encode (88 against 6 us a message) for a sink decode 1.2 times faster
)
# Six partitions keyed by job like gpu.sketches: the job stage sees a job's end where it merges its GPUs.
SCHEDULER_EVENTS = Topic(
    "scheduler.events",
    SchedulerEvent,
    key="job_id",
    partitions=6,
    retention_ms=30 * DAY_MS,
    doc="Job submitted, scheduled, started, finished, preempted, deleted (Kubernetes, Slurm, traces).",
    table=Table("scheduler_events", order_by=("job_id", "kind", "ts", "ifNull(name, '')"), time_column="ts", ttl_days=365),
)
NODE_INVENTORY = Topic(
    "node.inventory",
    NodeInventory,
    key="node",
    partitions=1,
    retention_ms=30 * DAY_MS,
    doc="What each node has (GPUs, CPUs, memory) and its zone/pool labels.",
    table=Table("node_inventory", order_by=("node", "ts"), time_column="ts", ttl_days=365),
)
STEP_METRICS_RAW = Topic(
    "step.metrics.raw",
    StepMetric,
    key="job_id",
    partitions=6,
    retention_ms=7 * DAY_MS,
    doc="What training processes report, per rank and step; not yet validated.",
)
STEP_METRICS = Topic(
    "step.metrics",
    StepMetric,
    key="job_id",
    partitions=6,
    retention_ms=7 * DAY_MS,
    doc="Per-rank training step durations and phases, validated and attributed (user, team).",
    table=Table("step_metrics", order_by=("job_id", "rank", "step"), time_column="ts", ttl_days=90),
)
AGENT_HEALTH = Topic(
    "agent.health",
    AgentHealth,
    key="node",
    partitions=1,
    retention_ms=7 * DAY_MS,
    doc="Agents' own counters: samples taken, sent, spilled to disk, dropped; errors.",
    table=Table("agent_health", order_by=("node", "agent", "ts"), time_column="ts", ttl_days=90),
)
GPU_PROCESSES = Topic(
    "gpu.processes",
    GpuProcess,
    key="node",
    partitions=6,
    retention_ms=DAY_MS,
    doc="Processes on each GPU per tick: memory, SM share, and the container/pod/Slurm job they belong to.",
    table=Table("gpu_processes", order_by=("node", "gpu_uuid", "ts", "pid"), time_column="ts"),
)
# XIDs are rare and are the history a hardware claim (RMA) is argued from: kept a year.
# ``seq`` is in the key so repeated identical XIDs are not collapsed (see XidEvent).
GPU_XID = Topic(
    "gpu.xid",
    XidEvent,
    key="node",
    partitions=6,
    retention_ms=30 * DAY_MS,
    doc="Every XID error the driver reported, one record per occurrence.",
    table=Table("xid_events", order_by=("node", "gpu_uuid", "ts", "seq"), time_column="ts", ttl_days=365),
)

# Keyed by job: the per-GPU stage (partitioned by node) hands sketches to the job stage.
GPU_SKETCHES = Topic(
    "gpu.sketches",
    GpuSketch,
    key="job_id",
    partitions=6,
    retention_ms=DAY_MS,
    doc="Internal: per-GPU KLL sketches per window, keyed by job, merged by the job stage.",
)
JOB_QUANTILES = Topic(
    "job.quantiles",
    JobQuantiles,
    key="job_id",
    partitions=6,
    retention_ms=7 * DAY_MS,
    doc="p25/p50/p95 of GPU metrics over all GPUs of a job: merged sketches, per window and since start.",
    table=Table("job_quantiles", order_by=("job_id", "metric", "window", "window_end"), time_column="window_end", ttl_days=365),
)
SCHEDULING_KPIS = Topic(
    "scheduling.kpis",
    SchedulingKpi,
    key="kpi",
    partitions=1,
    retention_ms=30 * DAY_MS,
    doc="Allocation rate, queue wait, fragmentation and usage by team/user/model/zone, over time.",
    table=Table("scheduling_kpis", order_by=("kpi", "dimension", "group", "ts"), time_column="ts", ttl_days=365),
)

# Compacted, partitioned like the raw samples: a worker assigned raw partition p reads back the
# checkpoints of partition p and replays the raw samples after them.
STREAM_STATE = Topic(
    "streams.state",
    StateCheckpoint,
    key="series",
    partitions=6,
    retention_ms=7 * DAY_MS,
    compacted=True,
    doc="Internal: checkpoints of the stream processor's rolling sketches, one per series (compacted).",
)

# Compacted: the latest record of each silence is its state. The alert router follows it from the
# start; `hpcinsight silence add|list|expire` write and read it. Not stored in ClickHouse.
ALERT_SILENCES = Topic(
    "alerts.silences",
    Silence,
    key="id",
    partitions=1,
    retention_ms=30 * DAY_MS,
    compacted=True,
    doc="Silences of the alert router (matchers, start, end, author, comment), one per id (compacted).",
)

# Compacted by batch: `hpcinsight dead-letters redrive` records each batch of letters it sends back
# before and after sending it, and skips the letters recorded as sent. Not stored in ClickHouse.
DEAD_LETTERS_REDRIVEN = Topic(
    "dead.letters.redriven",
    Redrive,
    key="batch",
    partitions=1,
    retention_ms=30 * DAY_MS,
    compacted=True,
    doc="Batches of dead letters sent back to their topics (compacted by batch): none is sent back twice.",
)

TOPICS: tuple[Topic, ...] = (
    GPU_SAMPLES_RAW,
    GPU_SAMPLES,
    GPU_QUANTILES,
    ANOMALIES,
    DEAD_LETTERS,
    DEAD_LETTERS_REDRIVEN,
    IB_SAMPLES_RAW,
    IB_SAMPLES,
    SCHEDULER_EVENTS,
    NODE_INVENTORY,
    STEP_METRICS_RAW,
    STEP_METRICS,
    AGENT_HEALTH,
    GPU_PROCESSES,
    GPU_XID,
    GPU_SKETCHES,
    JOB_QUANTILES,
    SCHEDULING_KPIS,
    STREAM_STATE,
    ALERT_SILENCES,
)
STORED: tuple[Topic, ...] = tuple(t for t in TOPICS if t.table is not None)


def by_name(name: str) -> Topic:
    for topic in TOPICS:
        if topic.name == name:
            return topic
    raise KeyError(f"no topic {name!r} in the catalog; known: {', '.join(t.name for t in TOPICS)}")


def with_partitions(partitions: int | None) -> list[Topic]:
    """The catalog with ``partitions`` for every keyed topic it gives more than one (None: as it
    is). Those with one stay at one: a single reader by design (the KPI leader's inventory, the
    KPIs, dead letters, agent health, silences). Topics read side by side keep equal counts."""
    if partitions is None:
        return list(TOPICS)
    return [dataclasses.replace(t, partitions=partitions) if t.partitions > 1 else t for t in TOPICS]


def ensure_topics(
    client_config: dict[str, Any],
    prefix: str,
    replication: int | None = None,
    timeout: float = 30.0,
    partitions: int | None = None,
) -> list[str]:
    """Create the catalog's missing topics (existing ones are left as they are); returns every full
    name. ``replication`` None leaves the factor to the cluster's ``default.replication.factor``;
    ``partitions``: see :func:`with_partitions`."""
    from hpcinsight.core.topics import create_topics

    return create_topics(client_config, with_partitions(partitions), prefix, replication, timeout)


def ensure_configured_topics(kafka: KafkaSettings, stop: threading.Event | None = None) -> list[str]:
    """:func:`ensure_topics` with the settings' prefix and partition count (what every component
    does at start, so that none of them creates a topic at another count). With ``stop`` (a
    long-running component) a broker away is waited for until ``stop`` is set (then []); without,
    the call fails after 30 s."""

    def ensure() -> list[str]:
        return ensure_topics(kafka.client_config(), kafka.topic_prefix, partitions=kafka.topic_partitions)

    if stop is None:
        return ensure()
    from hpcinsight.core.kafka import while_broker_away

    return while_broker_away(ensure, stop, "creating the topics") or []


def partitions_unlike(
    client_config: dict[str, Any], prefix: str, partitions: int | None = None, timeout: float = 30.0
) -> list[tuple[str, int, int]]:
    """(full name, partitions on the broker, partitions asked) of each existing topic whose count
    differs from :func:`with_partitions`' (topics are created, never resized: keys would move)."""
    from hpcinsight.core.kafka import offsets_consumer, partition_counts

    wanted = {t.full_name(prefix): t.partitions for t in with_partitions(partitions)}
    with offsets_consumer(client_config, f"{prefix}topics") as consumer:
        listed = partition_counts(consumer, list(wanted), timeout)
    return [(name, listed[name], n) for name, n in wanted.items() if name in listed and listed[name] != n]


def describe(prefix: str, partitions: int | None = None) -> list[dict[str, Any]]:
    """The catalog as plain rows (what ``hpcinsight topics`` prints): each topic's full name, schema
    and version, wire (json or arrow), key, partitions, retention, ClickHouse table, fields and what it carries."""
    from hpcinsight.schemas.derive import fields_of  # pyarrow: only where the catalog is described

    return [
        {
            "topic": t.full_name(prefix),
            "schema": t.event.__schema__,
            "version": t.event.__version__,
            "wire": t.wire,
            "key": t.key,
            "partitions": t.partitions,
            "retention_hours": t.retention_ms / 3_600_000,
            "table": t.table.name if t.table else None,
            "fields": [f.name for f in fields_of(t.event)],
            "doc": t.doc,
        }
        for t in with_partitions(partitions)
    ]
