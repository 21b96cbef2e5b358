"""Versioned, idempotent schema migrations: ``hpcinsight db migrate``.

A migration is a numbered list of DDL statements rendered for the configured layout (one
server or a cluster, see :mod:`hpcinsight.sinks.storage`). The version table records each migration that
ran, so running ``migrate`` again is a no-op; every statement is idempotent on its own
(``IF NOT EXISTS``), so a migration interrupted half-way simply runs again in full.

After the versions, ``migrate`` reconciles what is configuration rather than history: the TTL
of each table (``[clickhouse.ttl_days]``) is set to what the configuration says, and each view
of the query library (:mod:`hpcinsight.sinks.views`) to this build's definition. Last, it
checks that every table has the columns its event defines, with their types; a difference
means an event changed without a migration, and is an error that names the columns (write a
migration with :func:`add_columns`).

Rules for new migrations: append, never edit or renumber one that may have run; render DDL
through :mod:`hpcinsight.sinks.storage` so the cluster layout applies; keep each statement idempotent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from clickhouse_connect.driver.client import Client

from hpcinsight.schemas.catalog import DEAD_LETTERS, SINK_COLUMNS, STORED, Topic
from hpcinsight.schemas.derive import fields_of
from hpcinsight.sinks.insert_journal import journal_ddl
from hpcinsight.sinks.storage import (
    MIGRATIONS_TABLE,
    ROLLUPS,
    Layout,
    add_bloom_filters_ddl,
    codecs_ddl,
    default_ttl_days,
    durability_ddl,
    quote,
    table_ddl,
)
from hpcinsight.sinks.views import reconcile_views, views_ddl


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: Callable[[Layout], list[str]]


def add_columns(topic: Topic, *names: str) -> Callable[[Layout], list[str]]:
    """Statements adding fields of ``topic``'s event to its table (in a later migration)."""

    def render(layout: Layout) -> list[str]:
        fields = {f.name: f for f in fields_of(topic.event)}
        table = topic.table.name
        out = []
        for name in names:
            f = fields[name]
            codec = f" CODEC({f.column.codec})" if f.column.codec else ""
            for target in dict.fromkeys([layout.local(table), table]):  # the Distributed table too
                out.append(
                    f"ALTER TABLE {quote(target)}{layout.on_cluster} ADD COLUMN IF NOT EXISTS "
                    f"{quote(name)} {f.clickhouse_type}{'' if target != layout.local(table) else codec}"
                )
        return out

    return render


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "tables of the topic catalog", lambda layout: [s for t in STORED for s in table_ddl(layout, t)]),
    Migration(
        2,
        "bloom-filter indexes on job_id, for job-scoped reads of stores created before them",
        lambda layout: [s for t in STORED for s in add_bloom_filters_ddl(layout, t)],
    ),
    Migration(
        3,
        "rollups: quantile/avg/max states per GPU and per job, per minute and per hour",
        lambda layout: [s for r in ROLLUPS for s in r.ddl(layout)],
    ),
    Migration(
        4,
        "column codecs as measured by bench/storage.py (ZSTD for quantised gauges)",
        lambda layout: [s for t in STORED for s in codecs_ddl(layout, t)],
    ),
    Migration(
        5,
        "dead letters: the size and SHA-256 of the whole message (raw is capped at 64 KiB)",
        add_columns(DEAD_LETTERS, "raw_size", "raw_sha256"),
    ),
    Migration(6, "the query library's views (job_window, job_gpu_buckets), which the job-scoped queries read", views_ddl),
    Migration(7, "durable parts: fsync on insert and merge, merged-away parts kept 480 s (chaos finding F5)", durability_ddl),
    Migration(8, "the sink's insert journal: an insert cut short between a table and its views is done again", journal_ddl),
)


class SchemaDriftError(RuntimeError):
    """A table's columns differ from its event's definition."""


@dataclass
class MigrationReport:
    applied: list[tuple[int, str]] = field(default_factory=list)
    already: list[tuple[int, str]] = field(default_factory=list)
    ttl_changed: list[tuple[str, int | None, int]] = field(default_factory=list)  # (table, was, now)
    views_replaced: list[str] = field(default_factory=list)  # library views whose definition changed

    @property
    def version(self) -> int:
        return max([v for v, _ in self.applied + self.already], default=0)


def _version_table_ddl(layout: Layout) -> str:
    # Every replica of every shard keeps the whole (tiny) history: shared replication path.
    engine = layout.engine("ReplacingMergeTree", shared_by_all_shards=True)
    return (
        f"CREATE TABLE IF NOT EXISTS {quote(MIGRATIONS_TABLE)}{layout.on_cluster} (\n"
        "  version UInt32, name String, applied_at DateTime64(3, 'UTC'), statements UInt32\n"
        f") ENGINE = {engine} ORDER BY version"
    )


def applied_versions(client: Client) -> dict[int, str]:
    rows = client.query(f"SELECT version, name FROM {quote(MIGRATIONS_TABLE)} FINAL ORDER BY version").result_rows
    return {int(v): str(n) for v, n in rows}


def migrate(client: Client, layout: Layout, migrations: tuple[Migration, ...] = MIGRATIONS) -> MigrationReport:
    """Bring the store to the newest version, apply the configured TTLs, check for drift."""
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise ValueError(f"migration versions must be unique and ascending, got {versions}")
    client.command(_version_table_ddl(layout))
    done = applied_versions(client)
    newest = max(versions, default=0)
    if done and max(done) > newest:
        raise SchemaDriftError(
            f"the store is at schema version {max(done)} ({done[max(done)]!r}); this build knows up to {newest}: "
            "upgrade hpcinsight before writing to it"
        )
    report = MigrationReport()
    for m in migrations:
        if m.version in done:
            report.already.append((m.version, m.name))
            continue
        statements = m.statements(layout)
        for statement in statements:
            client.command(statement)
        client.command(
            f"INSERT INTO {quote(MIGRATIONS_TABLE)} (version, name, applied_at, statements) "
            "SELECT {v:UInt32}, {n:String}, now64(3), {s:UInt32}",
            parameters={"v": m.version, "n": m.name, "s": len(statements)},
        )
        report.applied.append((m.version, m.name))
    report.ttl_changed = apply_ttls(client, layout)
    report.views_replaced = reconcile_views(client, layout)
    check_drift(client, layout)
    return report


# -- configuration: TTL ------------------------------------------------------------------
_TTL_DAYS = re.compile(r"\sTTL\s.*?toIntervalDay\((\d+)\)")


def current_ttl_days(client: Client, table: str) -> int | None:
    """The table's TTL in days as ClickHouse holds it (None: no TTL)."""
    rows = client.query(
        "SELECT create_table_query FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
        parameters={"t": table},
    ).result_rows
    if not rows:
        raise SchemaDriftError(f"table {table!r} does not exist; run `hpcinsight db migrate`")
    found = _TTL_DAYS.search(rows[0][0])
    return int(found.group(1)) if found else None


def _time_expr(name: str) -> str:
    for topic in STORED:
        if topic.table.name == name:
            return f"toDateTime({topic.table.time_column})"
    return "ts"  # rollups


def apply_ttls(client: Client, layout: Layout) -> list[tuple[str, int | None, int]]:
    changed = []
    names = [t.table.name for t in STORED] + [r.name for r in ROLLUPS]
    for name in names:
        want = layout.ttl_days.get(name, default_ttl_days(name))
        local = layout.local(name)
        have = current_ttl_days(client, local)
        if (have or 0) == want:
            continue
        clause = f"MODIFY TTL {_time_expr(name)} + INTERVAL {want} DAY" if want else "REMOVE TTL"
        client.command(f"ALTER TABLE {quote(local)}{layout.on_cluster} {clause}")
        changed.append((name, have, want))
    return changed


# -- drift -------------------------------------------------------------------------------
def _normalise(ch_type: str) -> str:
    return re.sub(r"\s+", "", ch_type)


def check_drift(client: Client, layout: Layout) -> None:
    """Raise :class:`SchemaDriftError` if a catalog table's columns differ from its event."""
    problems = []
    for topic in STORED:
        name = topic.table.name
        rows = client.query(
            "SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = {t:String} ORDER BY position",
            parameters={"t": layout.local(name)},
        ).result_rows
        have = {n: _normalise(t) for n, t in rows}
        want = {f.name: _normalise(f.clickhouse_type) for f in fields_of(topic.event)}
        want.update({c.split("`")[1]: _normalise(c.split("`")[2].split("CODEC")[0]) for c in SINK_COLUMNS})
        missing = [n for n in want if n not in have]
        differ = [f"{n} is {have[n]}, the event says {want[n]}" for n in want if n in have and have[n] != want[n]]
        if missing:
            problems.append(f"{name}: missing column(s) {', '.join(missing)}")
        if differ:
            problems.append(f"{name}: " + "; ".join(differ))
    if problems:
        raise SchemaDriftError(
            "the store's tables differ from the event definitions (an event changed without a migration; "
            "add one to sinks/migrations.py, e.g. with add_columns):\n  " + "\n  ".join(problems)
        )
