"""The ClickHouse layout: tables from the catalog, rollups, and how a cluster changes them.

Everything here renders DDL; :mod:`hpcinsight.sinks.migrations` decides when it runs. Columns come from
the event definitions (:func:`hpcinsight.schemas.derive.clickhouse_columns`), keys and default TTLs from
the catalog's :class:`~hpcinsight.schemas.catalog.Table`, so nothing here lists a column of an event.

One server (embedded chDB or a ClickHouse server) gets ``ReplacingMergeTree`` tables. With a
cluster configured (``CLICKHOUSE_CLUSTER``), each table becomes a
``ReplicatedReplacingMergeTree`` named ``<table>_local`` on every node, created ``ON CLUSTER``,
behind a ``Distributed`` table with the plain name; the sink inserts into and queries read the
plain name, so no other code knows which layout it runs on. Rows are sharded by the first
column of the sorting key (node or job), which keeps every row that a ReplacingMergeTree
might have to collapse on one shard.

Rollups are ``AggregatingMergeTree`` tables fed by materialized views on ``gpu_samples``:
quantile (t-digest), average and maximum states per GPU and per job, per minute and per hour,
so a month of a job or of the cluster is read from thousands of rows, not billions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from hpcinsight.core.settings import ClickHouseSettings, ConfigError
from hpcinsight.schemas.catalog import GPU_SAMPLES, SINK_COLUMNS, STORED, Table, Topic
from hpcinsight.schemas.derive import clickhouse_columns, fields_of

#: the version table's name (see :mod:`hpcinsight.sinks.migrations`)
MIGRATIONS_TABLE = "hpcinsight_migrations"


def quote(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"{name!r} is not a plain identifier")
    return f"`{name}`"


#: Every table's parts reach the disk before they count, and merged-away parts are kept a while.
#: Found by the chaos campaign (F5, docs/chaos-results.md): with the store's disk full, a merge
#: committed a part whose files were empty while the parts it replaced were already deleted
#: (chDB's old_parts_lifetime is 0, a server's 480 s): reopened, the store detached the broken
#: part and its rows were gone. With fsync the write error fails the merge (its sources stay);
#: with the lifetime a part found broken at start has the parts it covered to fall back on.
DURABILITY: dict[str, int] = {
    "fsync_after_insert": 1,
    "fsync_part_directory": 1,
    "min_rows_to_fsync_after_merge": 1,
    "old_parts_lifetime": 480,
}


@dataclass(frozen=True)
class Layout:
    """How tables are created on the configured target (one server or a cluster)."""

    database: str = "default"
    cluster: str | None = None
    replica_path: str = "/clickhouse/tables/{shard}/{database}/{table}"
    replica_name: str = "{replica}"
    ttl_days: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, settings: ClickHouseSettings, database: str = "default") -> Layout:
        layout = cls(
            database=database,
            cluster=settings.cluster,
            replica_path=settings.replica_path,
            replica_name=settings.replica_name,
            ttl_days=dict(settings.ttl_days),
        )
        known = set(table_names())
        unknown = set(layout.ttl_days) - known
        if unknown:
            raise ConfigError(f"[clickhouse.ttl_days]: no table {', '.join(sorted(unknown))}; tables: {', '.join(sorted(known))}")
        return layout

    # -- naming --------------------------------------------------------------------------
    @property
    def on_cluster(self) -> str:
        return f" ON CLUSTER {quote_cluster(self.cluster)}" if self.cluster else ""

    def local(self, name: str) -> str:
        """The name of the table that holds the data: the plain name on one server."""
        return f"{name}_local" if self.cluster else name

    # -- engines -------------------------------------------------------------------------
    def engine(self, kind: str, *, shared_by_all_shards: bool = False) -> str:
        """``kind`` (e.g. ``ReplacingMergeTree``), replicated when on a cluster."""
        if not self.cluster:
            return kind
        path = self.replica_path.replace("{shard}", "all") if shared_by_all_shards else self.replica_path
        return f"Replicated{kind}('{path}', '{self.replica_name}')"

    def settings(self) -> str:
        # Insert deduplication by token: replicated tables keep a window by default; a plain
        # MergeTree needs one (the sink's retried inserts and the rollups' views rely on it).
        dedup = {} if self.cluster else {"non_replicated_deduplication_window": 1000}
        return "\nSETTINGS " + _assignments({**dedup, **DURABILITY})

    def ttl(self, name: str, default_days: int, time_expr: str) -> str:
        days = self.ttl_days.get(name, default_days)
        return f"\nTTL {time_expr} + INTERVAL {days} DAY" if days else ""

    def distributed(self, name: str, shard_by: str) -> list[str]:
        """The Distributed table in front of ``<name>_local`` (nothing on one server)."""
        if not self.cluster:
            return []
        return [
            f"CREATE TABLE IF NOT EXISTS {quote(name)}{self.on_cluster} AS {quote(self.local(name))}\n"
            f"ENGINE = Distributed({quote_cluster(self.cluster)}, {quote(self.database)}, {quote(self.local(name))}, "
            f"cityHash64({shard_by}))"
        ]


def quote_cluster(name: str | None) -> str:
    if not name or not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", name):
        raise ValueError(f"{name!r} is not a cluster name")
    return f"'{name}'"


# -- catalog tables ----------------------------------------------------------------------
def bloom_filter_index(column: str) -> tuple[str, str]:
    """(name, definition) of the data-skipping index on ``column``."""
    return f"{column}_bloom", f"{quote(column)} TYPE bloom_filter(0.01) GRANULARITY 1"


def table_ddl(layout: Layout, topic: Topic) -> list[str]:
    table: Table = topic.table
    indexes = ["INDEX _offset_minmax _offset TYPE minmax GRANULARITY 1"]
    indexes += [f"INDEX {name} {definition}" for name, definition in map(bloom_filter_index, table.bloom_filters)]
    columns = ",\n  ".join([*clickhouse_columns(topic.event), *SINK_COLUMNS, *indexes])
    time_expr = f"toDateTime({table.time_column})"
    return [
        f"CREATE TABLE IF NOT EXISTS {quote(layout.local(table.name))}{layout.on_cluster} (\n  {columns}\n)\n"
        f"ENGINE = {layout.engine('ReplacingMergeTree')}\n"
        f"PARTITION BY toYYYYMMDD({table.time_column})\n"
        f"ORDER BY ({', '.join(table.order_by)})"
        f"{layout.ttl(table.name, table.ttl_days, time_expr)}"
        f"{layout.settings()}",
        *layout.distributed(table.name, shard_by=table.order_by[0]),
    ]


def add_bloom_filters_ddl(layout: Layout, topic: Topic) -> list[str]:
    """For stores created before a table had its skip indexes: add and build them."""
    table: Table = topic.table
    out = []
    for name, definition in map(bloom_filter_index, table.bloom_filters):
        target = quote(layout.local(table.name))
        out.append(f"ALTER TABLE {target}{layout.on_cluster} ADD INDEX IF NOT EXISTS {name} {definition}")
        out.append(f"ALTER TABLE {target}{layout.on_cluster} MATERIALIZE INDEX {name}")
    return out


def codecs_ddl(layout: Layout, topic: Topic) -> list[str]:
    """Set every column's codec to the catalog's: for stores created before a codec changed.
    (New parts use it; existing parts are recompressed as they merge.)"""
    target = quote(layout.local(topic.table.name))
    return [
        f"ALTER TABLE {target}{layout.on_cluster} MODIFY COLUMN {quote(f.name)} CODEC({f.column.codec})"
        for f in fields_of(topic.event)
        if f.column.codec
    ]


# -- rollups -----------------------------------------------------------------------------
#: the GPU metrics rolled up, each with quantile, average and maximum states
ROLLUP_METRICS = ("gpu_util", "power_w", "sm_clock_mhz", "mem_util_pct", "temperature_c")
ROLLUP_QUANTILES = (0.25, 0.5, 0.95)


@dataclass(frozen=True)
class Rollup:
    """Aggregate states of GPU samples per ``keys`` and time bucket, fed by a materialized view.

    Only ``gpu_rollup_1m`` reads the raw samples; the others are fed from its insert blocks
    (states merged into states), so each insert into ``gpu_samples`` pays for one aggregation
    over the raw rows, not four. A GPU that changes job within a minute is counted in the job
    it ended that minute with. Read with the ``-Merge`` combinators, e.g. a job's hourly p95::

        SELECT ts, quantilesTDigestMerge(0.25, 0.5, 0.95)(gpu_util_q)[3] AS p95
        FROM job_rollup_1h WHERE job_id = {job:String} GROUP BY ts ORDER BY ts
    """

    name: str
    keys: tuple[str, ...]  # grouping columns besides the time bucket
    bucket: str  # ClickHouse function rounding ts down to the bucket
    labels: tuple[str, ...]  # carried along (the latest value)
    ttl_days: int
    source: str = "gpu_samples"  # the raw table, or the rollup whose blocks feed this one
    count_gpus: bool = False  # a ``gpus`` column: distinct GPUs in the bucket

    @property
    def from_raw(self) -> bool:
        return self.source == GPU_SAMPLES.table.name

    def select(self, source_table: str) -> str:
        quantiles = ", ".join(str(q) for q in ROLLUP_QUANTILES)
        # job rollups group by job_id and keep only rows that have one; the qualified name in
        # WHERE is the source column (the unqualified one would be the assumeNotNull alias)
        by_job = "job_id" in self.keys
        keys = [f"assumeNotNull({k}) AS {k}" if k == "job_id" else k for k in self.keys]
        parts = [*keys, f"{self.bucket}(ts) AS ts"]
        parts += [f"anyLastSimpleState({label}) AS {label}" for label in self.labels]
        parts.append(f"sumSimpleState({'toUInt64(1)' if self.from_raw else 'samples'}) AS samples")
        if self.count_gpus:
            source_has_gpus = any(r.name == self.source and r.count_gpus for r in ROLLUPS)
            parts.append("uniqMergeState(gpus) AS gpus" if source_has_gpus else "uniqState(gpu_uuid) AS gpus")
        for m in ROLLUP_METRICS:
            if self.from_raw:
                parts += [f"quantilesTDigestState({quantiles})({m}) AS {m}_q", f"avgState({m}) AS {m}_avg"]
            else:
                parts += [f"quantilesTDigestMergeState({quantiles})({m}_q) AS {m}_q", f"avgMergeState({m}_avg) AS {m}_avg"]
            parts.append(f"maxSimpleState({m}{'' if self.from_raw else '_max'}) AS {m}_max")
        where = f"\nWHERE {quote(source_table)}.job_id IS NOT NULL" if by_job else ""
        return f"SELECT {', '.join(parts)}\nFROM {quote(source_table)}{where}\nGROUP BY {', '.join([*self.keys, 'ts'])}"

    def ddl(self, layout: Layout) -> list[str]:
        local = layout.local(self.name)
        select = self.select(layout.local(self.source))
        # The target's columns are those of the view's SELECT (EMPTY AS SELECT): written once.
        return [
            f"CREATE TABLE IF NOT EXISTS {quote(local)}{layout.on_cluster}\n"
            f"ENGINE = {layout.engine('AggregatingMergeTree')}\n"
            f"PARTITION BY toYYYYMM(ts)\nORDER BY ({', '.join([*self.keys, 'ts'])})"
            f"{layout.ttl(self.name, self.ttl_days, 'ts')}"
            f"{layout.settings()}\nEMPTY AS {select}",
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {quote(self.name + '_mv')}{layout.on_cluster} TO {quote(local)} AS\n{select}",
            *layout.distributed(self.name, shard_by=self.keys[0]),
        ]


_GPU_LABELS = ("gpu_uuid", "job_id", "user", "team")
ROLLUPS: tuple[Rollup, ...] = (
    Rollup("gpu_rollup_1m", ("node", "gpu_index"), "toStartOfMinute", _GPU_LABELS, ttl_days=90),
    Rollup("gpu_rollup_1h", ("node", "gpu_index"), "toStartOfHour", _GPU_LABELS, ttl_days=730, source="gpu_rollup_1m"),
    Rollup(
        "job_rollup_1m", ("job_id",), "toStartOfMinute", ("user", "team"), ttl_days=90, source="gpu_rollup_1m", count_gpus=True
    ),
    Rollup(
        "job_rollup_1h", ("job_id",), "toStartOfHour", ("user", "team"), ttl_days=730, source="job_rollup_1m", count_gpus=True
    ),
)


def table_names() -> list[str]:
    """Every table whose retention can be configured."""
    return [t.table.name for t in STORED] + [r.name for r in ROLLUPS]


def durability_ddl(layout: Layout) -> list[str]:
    """For stores created before :data:`DURABILITY`: the same settings on every table."""
    return [
        f"ALTER TABLE {quote(layout.local(name))}{layout.on_cluster} MODIFY SETTING {_assignments(DURABILITY)}"
        for name in table_names()
    ]


def _assignments(settings: dict[str, int]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in settings.items())


def default_ttl_days(name: str) -> int:
    for topic in STORED:
        if topic.table.name == name:
            return topic.table.ttl_days
    for rollup in ROLLUPS:
        if rollup.name == name:
            return rollup.ttl_days
    raise KeyError(name)
