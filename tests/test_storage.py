"""The ClickHouse layout and its migrations, on the real engine (embedded chDB).

Covers what `hpcinsight db migrate` promises: versions recorded and run once, stores created
by older builds brought up to date, TTLs following the configuration, drift refused with the
columns named, rollups equal to the raw samples they summarise, and the cluster form of DDL.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pyarrow as pa
import pytest

from hpcinsight.core.settings import ClickHouseSettings, ConfigError
from hpcinsight.schemas.catalog import GPU_SAMPLES, STORED
from hpcinsight.schemas.derive import to_arrow
from hpcinsight.schemas.events import GpuSample
from hpcinsight.sinks.migrations import (
    MIGRATIONS,
    Migration,
    SchemaDriftError,
    add_columns,
    applied_versions,
    current_ttl_days,
    migrate,
)
from hpcinsight.sinks.storage import DURABILITY, ROLLUPS, Layout, table_ddl, table_names

T0 = (int(time.time()) // 3600 - 2) * 3_600_000  # an hour boundary, recent (tables drop rows past their TTL)


@pytest.fixture(scope="module")
def clickhouse_server():
    """A ClickHouse server in a container, where a Docker engine runs (skipped elsewhere)."""
    from conftest import _docker_available

    if not _docker_available():
        pytest.skip("no Docker engine here: the ClickHouse-server variant runs where testcontainers can start one")
    from testcontainers.community.clickhouse import ClickHouseContainer

    with ClickHouseContainer("clickhouse/clickhouse-server:25.8", username="test", password="test") as server:
        yield server


@pytest.fixture(params=["chdb", "server"])
def client(request, tmp_path):
    """The same tests against embedded chDB and a ClickHouse server: one code path, two targets."""
    import uuid

    import clickhouse_connect

    if request.param == "chdb":
        c = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / 'ch'}")
    else:
        server = request.getfixturevalue("clickhouse_server")
        host, port = server.get_container_host_ip(), int(server.get_exposed_port(8123))
        admin = clickhouse_connect.get_client(host=host, port=port, username="test", password="test")
        database = f"t_{uuid.uuid4().hex[:8]}"
        admin.command(f"CREATE DATABASE {database}")
        c = clickhouse_connect.get_client(host=host, port=port, username="test", password="test", database=database)
    yield c
    c.close()


def _tables(client) -> set[str]:
    return {r[0] for r in client.query("SELECT name FROM system.tables WHERE database = currentDatabase()").result_rows}


def test_migrate_records_each_version_and_twice_is_a_no_op(client) -> None:
    first = migrate(client, Layout())
    assert [v for v, _ in first.applied] == [m.version for m in MIGRATIONS]
    assert set(table_names()) <= _tables(client)
    assert {f"{r.name}_mv" for r in ROLLUPS} <= _tables(client)
    second = migrate(client, Layout())
    assert second.applied == [] and second.ttl_changed == []
    assert sorted(applied_versions(client)) == [m.version for m in MIGRATIONS]
    # one row per version, even after the second run
    assert client.query("SELECT count() FROM hpcinsight_migrations").result_rows == [(len(MIGRATIONS),)]


def test_a_store_from_an_older_build_gets_the_skip_indexes(client) -> None:
    """Tables created before migrations existed (no version table, no bloom filters)."""
    old = dataclasses.replace(GPU_SAMPLES, table=dataclasses.replace(GPU_SAMPLES.table, bloom_filters=()))
    client.command(table_ddl(Layout(), old)[0])
    assert "job_id_bloom" not in client.command("SHOW CREATE TABLE gpu_samples")
    migrate(client, Layout())
    indexes = client.query(
        "SELECT name FROM system.data_skipping_indices WHERE database = currentDatabase() AND table = 'gpu_samples'"
    ).result_rows
    assert ("job_id_bloom",) in indexes


def test_every_table_keeps_its_parts_durable_old_stores_too(client) -> None:
    """Chaos finding F5: a full disk left a merged part of empty files, and the parts it replaced
    were gone (chDB deletes them at once). Every table fsyncs its parts and keeps merged-away
    ones for 480 s, whether created now or by a build from before (a store at migration 6)."""

    def durable(table: str) -> bool:
        create = client.command(f"SHOW CREATE TABLE {table}")
        return all(f"{k} = {v}" in create for k, v in DURABILITY.items())

    class BeforeDurability(Layout):
        def settings(self) -> str:
            return "\nSETTINGS non_replicated_deduplication_window = 1000"

    migrate(client, BeforeDurability(), tuple(m for m in MIGRATIONS if m.version < 7))
    assert not any(durable(name) for name in table_names())
    report = migrate(client, Layout())
    assert [v for v, _ in report.applied][0] == 7
    assert all(durable(name) for name in table_names())


def test_ttl_follows_the_configuration(client) -> None:
    migrate(client, Layout())
    assert current_ttl_days(client, "gpu_samples") == 30
    report = migrate(client, Layout(ttl_days={"gpu_samples": 7, "gpu_rollup_1h": 0}))
    assert sorted(report.ttl_changed) == [("gpu_rollup_1h", 730, 0), ("gpu_samples", 30, 7)]
    assert current_ttl_days(client, "gpu_samples") == 7
    assert current_ttl_days(client, "gpu_rollup_1h") is None
    assert migrate(client, Layout(ttl_days={"gpu_samples": 7, "gpu_rollup_1h": 0})).ttl_changed == []


def test_ttl_configuration_names_real_tables() -> None:
    with pytest.raises(ConfigError, match="no table gpu_sample\\b"):
        Layout.of(ClickHouseSettings(url="chdb:///x", ttl_days={"gpu_sample": 3}))


def test_drift_is_refused_with_the_columns_named_and_a_migration_fixes_it(client) -> None:
    migrate(client, Layout())
    client.command("ALTER TABLE gpu_samples DROP COLUMN zone")
    with pytest.raises(SchemaDriftError, match="gpu_samples: missing column\\(s\\) zone"):
        migrate(client, Layout())
    fix = Migration(MIGRATIONS[-1].version + 1, "zone on gpu samples", add_columns(GPU_SAMPLES, "zone"))
    report = migrate(client, Layout(), MIGRATIONS + (fix,))
    assert report.applied == [(fix.version, fix.name)]


def test_a_store_newer_than_this_build_is_refused(client) -> None:
    future = Migration(MIGRATIONS[-1].version + 5, "from the future", lambda layout: [])
    migrate(client, Layout(), MIGRATIONS + (future,))
    with pytest.raises(SchemaDriftError, match="upgrade hpcinsight"):
        migrate(client, Layout())


def _samples(gpus: int, seconds: int, rng: np.random.Generator) -> list[GpuSample]:
    out = []
    for s in range(seconds):
        for g in range(gpus):
            out.append(
                GpuSample(
                    node=f"n{g // 8}",
                    gpu_index=g % 8,
                    gpu_uuid=f"GPU-{g}",
                    ts=T0 + s * 1000,
                    gpu_util=float(rng.uniform(0, 100)),
                    power_w=float(rng.uniform(100, 700)),
                    sm_clock_mhz=float(rng.uniform(1000, 1980)),
                    mem_util_pct=float(rng.uniform(0, 100)),
                    temperature_c=float(rng.uniform(30, 80)),
                    job_id="job-a" if g < 8 else ("job-b" if g < 12 else None),
                    user="ann" if g < 8 else "bob",
                )
            )
    return out


def _insert(client, records: list[GpuSample], token: str) -> None:
    n = len(records)
    extra = {"_partition": pa.array([0] * n, pa.uint32()), "_offset": pa.array(range(n), pa.uint64())}
    client.insert_arrow(
        "gpu_samples",
        to_arrow(GpuSample, records, extra),
        settings={"insert_deduplication_token": token, "deduplicate_blocks_in_dependent_materialized_views": 1},
    )


def test_rollups_summarise_the_raw_samples(client) -> None:
    migrate(client, Layout())
    rng = np.random.default_rng(7)
    records = _samples(gpus=16, seconds=180, rng=rng)
    _insert(client, records, "batch-1")
    _insert(client, records, "batch-1")  # a retried insert: neither raw nor rollups count it twice

    # per GPU per minute: exact count, average and maximum; t-digest quantiles close to numpy's
    rows = client.query(
        "SELECT node, gpu_index, ts, sum(samples), avgMerge(power_w_avg), max(power_w_max), "
        "quantilesTDigestMerge(0.25, 0.5, 0.95)(gpu_util_q), anyLast(job_id) "
        "FROM gpu_rollup_1m GROUP BY node, gpu_index, ts ORDER BY node, gpu_index, ts"
    ).result_rows
    assert len(rows) == 16 * 3
    for node, gpu, ts, count, power_avg, power_max, util_q, job in rows:
        minute = int(ts.timestamp() * 1000)
        mine = [r for r in records if r.node == node and r.gpu_index == gpu and minute <= r.ts < minute + 60_000]
        assert count == len(mine) == 60
        power = np.array([r.power_w for r in mine], dtype=np.float32)
        assert power_avg == pytest.approx(float(power.mean()), rel=1e-5)
        assert power_max == pytest.approx(float(power.max()), rel=1e-6)
        util = np.array([r.gpu_util for r in mine])
        for q, got in zip((0.25, 0.5, 0.95), util_q):
            assert abs(np.mean(util <= got) - q) <= 0.05, (q, got)  # rank error of a 60-value t-digest
        assert job == mine[-1].job_id

    # per GPU per hour (fed from the minute rollup's blocks): the same totals
    hourly = client.query(
        "SELECT sum(samples), avgMerge(power_w_avg), max(power_w_max) FROM gpu_rollup_1h WHERE node = 'n0' AND gpu_index = 3"
    ).result_rows[0]
    power = np.array([r.power_w for r in records if r.node == "n0" and r.gpu_index == 3], dtype=np.float32)
    assert hourly[0] == 180 and hourly[1] == pytest.approx(float(power.mean()), rel=1e-5)
    assert hourly[2] == pytest.approx(float(power.max()), rel=1e-6)

    # per job per hour: only samples that carry a job, GPUs counted
    jobs = client.query(
        "SELECT job_id, sum(samples), uniqMerge(gpus), anyLast(user), avgMerge(gpu_util_avg) "
        "FROM job_rollup_1h GROUP BY job_id ORDER BY job_id"
    ).result_rows
    assert [(j, n, g, u) for j, n, g, u, _ in jobs] == [("job-a", 8 * 180, 8, "ann"), ("job-b", 4 * 180, 4, "bob")]
    job_a = np.array([r.gpu_util for r in records if r.job_id == "job-a"], dtype=np.float32)
    assert jobs[0][4] == pytest.approx(float(job_a.mean()), rel=1e-5)


def test_job_scoped_reads_use_the_skip_index(client) -> None:
    migrate(client, Layout())
    _insert(client, _samples(gpus=16, seconds=30, rng=np.random.default_rng(1)), "b")
    got = client.query(
        "SELECT count() FROM gpu_samples WHERE job_id = {job:String}",
        parameters={"job": "job-b"},
        settings={"force_data_skipping_indices": "job_id_bloom"},
    ).result_rows
    assert got == [(4 * 30,)]


def test_cluster_layout_replicates_distributes_and_runs_on_cluster() -> None:
    layout = Layout(database="telemetry", cluster="gpu-prod")
    statements = [s for m in MIGRATIONS for s in m.statements(layout)]
    assert statements and all(" ON CLUSTER 'gpu-prod'" in s for s in statements)
    for topic in STORED:
        name = topic.table.name
        local, distributed = table_ddl(layout, topic)
        assert local.startswith(f"CREATE TABLE IF NOT EXISTS `{name}_local`")
        assert "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')" in local
        assert "non_replicated_deduplication_window" not in local
        # sharded by the sorting key's first column: rows that may collapse live on one shard
        assert distributed.endswith(
            f"ENGINE = Distributed('gpu-prod', `telemetry`, `{name}_local`, cityHash64({topic.table.order_by[0]}))"
        )
    for rollup in ROLLUPS:
        target, view, distributed = rollup.ddl(layout)
        assert "ReplicatedAggregatingMergeTree" in target
        assert f"TO `{rollup.name}_local`" in view and f"FROM `{rollup.source}_local`" in view  # fire on local inserts
        assert f"`{rollup.name}_local`" in distributed


def test_single_server_layout_keeps_plain_names() -> None:
    for topic in STORED:
        statements = table_ddl(Layout(), topic)
        assert len(statements) == 1 and f"`{topic.table.name}`" in statements[0]
        assert "ON CLUSTER" not in statements[0] and "ENGINE = ReplacingMergeTree\n" in statements[0]


def test_a_store_with_older_codecs_gets_the_measured_ones(client) -> None:
    client.command(table_ddl(Layout(), GPU_SAMPLES)[0])
    client.command("ALTER TABLE gpu_samples MODIFY COLUMN gpu_util CODEC(Gorilla, ZSTD(1))")
    migrate(client, Layout())
    codec = client.query(
        "SELECT compression_codec FROM system.columns WHERE database = currentDatabase() AND table = 'gpu_samples' AND name = 'gpu_util'"
    ).result_rows[0][0]
    assert codec == "CODEC(ZSTD(1))"
