"""Storage bytes per GPU sample, and the measurement behind each column's codec.

``storage``: an hour of a 64-GPU simulated cluster at 1 Hz (230,400 rows, every NVML field the
sim fills) is stored in the real ``gpu_samples`` table (embedded chDB, migrated as in
production) and merged to one part; the figure is compressed bytes per row. The baseline is
the same rows in the same table with every codec removed (ClickHouse's default LZ4).

Each numeric column is also stored under every candidate codec of its type; a column whose
chosen codec (``schemas/columns.py``) is more than 10% larger than the best candidate is
reported, so the codec choices stay measured, not guessed.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from hpcinsight.agents.sim.gpu import SimConfig, SimGpuCollector
from hpcinsight.schemas.catalog import GPU_SAMPLES
from hpcinsight.schemas.derive import fields_of, to_arrow

CANDIDATES = {
    "DateTime64": ["LZ4", "ZSTD(1)", "Delta, ZSTD(1)", "DoubleDelta, ZSTD(1)", "DoubleDelta, LZ4"],
    "Float32": ["LZ4", "ZSTD(1)", "ZSTD(3)", "Gorilla, ZSTD(1)", "FPC, ZSTD(1)", "Gorilla, LZ4"],
    "Float64": ["LZ4", "ZSTD(1)", "ZSTD(3)", "Gorilla, ZSTD(1)", "FPC, ZSTD(1)"],
    "UInt64": ["LZ4", "ZSTD(1)", "T64, ZSTD(1)", "Delta, ZSTD(1)", "DoubleDelta, ZSTD(1)"],
    "UInt32": ["LZ4", "ZSTD(1)", "T64, ZSTD(1)", "Delta, ZSTD(1)"],
}


def _rows(gpus_per_node: int = 8, nodes: int = 8, seconds: int = 3600) -> pa.Table:
    sim = SimGpuCollector(SimConfig(nodes=nodes, gpus_per_node=gpus_per_node))
    t0 = (int(time.time()) // 3600 - 2) * 3_600_000
    records = [s for k in range(seconds) for s in sim.sample(t0 + k * 1000)]
    n = len(records)
    return to_arrow(
        GPU_SAMPLES.event,
        records,
        {
            "_partition": pa.array([0] * n, pa.uint32()),
            "_offset": pa.array(range(n), pa.uint64()),
        },
    )


def _column_bytes(client, table: str) -> dict[str, int]:
    rows = client.query(
        "SELECT name, data_compressed_bytes FROM system.columns WHERE database = currentDatabase() AND table = {t:String}",
        parameters={"t": table},
    ).result_rows
    return {name: int(size) for name, size in rows}


def _base_type(ch_type: str) -> str | None:
    inner = re.sub(r"^(LowCardinality\()?(Nullable\()?", "", ch_type)
    for name in CANDIDATES:
        if inner.startswith(name):
            return name
    return None


def bench_storage(repeats: int) -> dict[str, float]:
    import clickhouse_connect

    from hpcinsight.sinks.clickhouse import ensure_tables

    data = _rows()
    n = data.num_rows
    with tempfile.TemporaryDirectory() as tmp:
        client = clickhouse_connect.get_client(dsn=f"chdb://{Path(tmp) / 'ch'}")
        try:
            ensure_tables(client)
            client.insert_arrow("gpu_samples", data)
            client.command("OPTIMIZE TABLE gpu_samples FINAL")
            ours = _column_bytes(client, "gpu_samples")

            # the baseline: the same table and rows, every column with ClickHouse's default codec
            client.command("CREATE TABLE plain AS gpu_samples")
            for f in fields_of(GPU_SAMPLES.event):
                if f.column.codec:
                    client.command(f"ALTER TABLE plain MODIFY COLUMN `{f.name}` REMOVE CODEC")
            client.command("ALTER TABLE plain MODIFY COLUMN `_offset` REMOVE CODEC")
            client.command("INSERT INTO plain SELECT * FROM gpu_samples")
            client.command("OPTIMIZE TABLE plain FINAL")
            plain = _column_bytes(client, "plain")

            # every candidate codec of each numeric column, on the same rows in the same order
            columns, selects = [], []
            for f in fields_of(GPU_SAMPLES.event):
                kind = _base_type(f.clickhouse_type)
                if kind is None:
                    continue
                for i, codec in enumerate(CANDIDATES[kind]):
                    columns.append(f"`{f.name}__{i}` {f.clickhouse_type} CODEC({codec})")
                    selects.append(f"`{f.name}` AS `{f.name}__{i}`")
            client.command(
                f"CREATE TABLE candidates (node LowCardinality(String), gpu_index UInt8, ts_key DateTime64(3), "
                f"{', '.join(columns)}) ENGINE = MergeTree ORDER BY (node, gpu_index, ts_key)"
            )
            client.command(f"INSERT INTO candidates SELECT node, gpu_index, ts AS ts_key, {', '.join(selects)} FROM gpu_samples")
            client.command("OPTIMIZE TABLE candidates FINAL")
            sizes = _column_bytes(client, "candidates")
        finally:
            client.close()

    out: dict[str, float] = {
        "bytes_per_sample": sum(ours.values()) / n,
        "baseline_bytes_per_sample": sum(plain.values()) / n,
        "ratio": sum(plain.values()) / sum(ours.values()),
        "rows": n,
    }
    worse, per_column = [], {}
    for f in fields_of(GPU_SAMPLES.event):
        kind = _base_type(f.clickhouse_type)
        if kind is None:
            continue
        tried = {codec: sizes[f"{f.name}__{i}"] for i, codec in enumerate(CANDIDATES[kind])}
        best_codec = min(tried, key=tried.__getitem__)
        chosen = ours[f.name]
        per_column[f.name] = chosen / n
        if tried[best_codec] > 0 and chosen > 1.10 * tried[best_codec] and chosen - tried[best_codec] > n * 0.01:
            worse.append(f"{f.name}: {f.column.codec or 'LZ4'} {chosen / n:.2f} B vs {best_codec} {tried[best_codec] / n:.2f} B")
    for name in sorted(per_column, key=per_column.__getitem__, reverse=True)[:4]:  # where the bytes go
        out[f"{name}_bytes"] = per_column[name]
    out["codecs_worse_than_best"] = len(worse)
    for line in worse:
        print(f"  storage: codec to revisit: {line}")
    return out


if __name__ == "__main__":
    result = bench_storage(1)
    for key, value in result.items():
        print(f"{key:40s} {value:,.3f}")
