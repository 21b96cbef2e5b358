"""Sink ingest: raw Kafka message bytes to rows in ClickHouse, against ``insert_arrow`` of ready tables.

``sink``: GPU-sample messages as the agents and the worker produce them (the ``gpu.samples``
codec, one message per node per tick, 8 GPUs each; 128 nodes) go through what the sink does
with them: :class:`hpcinsight.sinks.clickhouse_sink.TableWriter` decodes each block of messages (as one
``consume`` returns them) straight to Arrow, with the codec's validation, and inserts each batch
(51,200 rows, the sink's default batch size) with its deduplication token into the real
``gpu_samples`` table of an embedded chDB store created by ``hpcinsight.sinks.clickhouse.ensure_tables``
(rollup views included), one insert in the background while the next batch is decoded. The
baseline inserts the same batches, already as Arrow tables, with the same settings, one after
the other. The store is emptied before every round; rounds of ours and the baseline alternate,
and the best of each counts. ``paired_ratio`` is the median over rounds of ours against the
baseline's round just before it (steadier on a busy machine), ``serial_rows_per_s`` ours
without the background insert, and ``decode_rows_per_s`` the decoding alone.
``table_alone_rows_per_s`` is the baseline's insert into a table of ``gpu_samples``' columns, key
and codecs without its rollup views: the ceiling ClickHouse itself sets here, views aside.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pyarrow as pa

from hpcinsight.schemas.catalog import GPU_SAMPLES

NODES, GPUS = 128, 8
BATCH_MESSAGES = 6_400  # 51,200 rows: the sink closes a batch at 50,000
CONSUME = 1_600  # messages per block, as one consume() returns them
BATCHES = 4
PARTITIONS = 6


def bench_sink(repeats: int) -> dict[str, float]:
    import clickhouse_connect

    from bench.run import messages
    from hpcinsight.schemas.derive import to_arrow
    from hpcinsight.sinks.clickhouse import ensure_tables
    from hpcinsight.sinks.clickhouse_sink import TableWriter, insert_settings

    data = messages(nodes=NODES, ticks=BATCH_MESSAGES * BATCHES // NODES)
    partitions = [k % NODES % PARTITIONS for k in range(len(data))]  # keyed by node, as in Kafka
    offsets, next_offset = [], [0] * PARTITIONS
    for p in partitions:
        offsets.append(next_offset[p])
        next_offset[p] += 1
    batches = [range(b * BATCH_MESSAGES, (b + 1) * BATCH_MESSAGES) for b in range(BATCHES)]
    rows = 0
    ready = []
    for batch in batches:
        records, parts, offs = [], [], []
        for k in batch:
            got = GPU_SAMPLES.codec.decode(data[k])
            records.extend(got)
            parts.extend([partitions[k]] * len(got))
            offs.extend([offsets[k]] * len(got))
        ready.append(
            to_arrow(
                GPU_SAMPLES.event,
                records,
                {
                    "_partition": pa.array(parts, pa.uint32()),
                    "_offset": pa.array(offs, pa.uint64()),
                },
            )
        )
        rows += len(records)

    def feed(writer: TableWriter) -> None:
        for batch in batches:
            for start in range(batch.start, batch.stop, CONSUME):
                block = range(start, min(start + CONSUME, batch.stop))
                rejected = writer.add(
                    GPU_SAMPLES, [data[k] for k in block], [partitions[k] for k in block], [offsets[k] for k in block]
                )
                assert not rejected, rejected[:3]
            writer.submit()
        writer.wait()

    def decode_only() -> None:
        for batch in batches:
            for start in range(batch.start, batch.stop, CONSUME):
                block = range(start, min(start + CONSUME, batch.stop))
                GPU_SAMPLES.codec.decode_table([data[k] for k in block])

    with tempfile.TemporaryDirectory() as tmp:
        client = clickhouse_connect.get_client(dsn=f"chdb://{Path(tmp) / 'ch'}")
        try:
            ensure_tables(client)
            assert GPU_SAMPLES.table is not None
            table = GPU_SAMPLES.table.name
            tables = [
                name
                for (name,) in client.query(
                    "SELECT name FROM system.tables WHERE database = currentDatabase() AND engine LIKE '%MergeTree'"
                ).result_rows
            ]

            def empty() -> None:
                for name in tables:
                    client.command(f"TRUNCATE TABLE `{name}`")

            def timed(fn, into: str = table) -> float:
                empty()
                start = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - start
                stored = int(client.command(f"SELECT count() FROM `{into}`"))
                assert stored == rows, "rows lost or deduplicated away: the figure would be wrong"
                return elapsed

            def baseline(into: str = table) -> None:
                for t in ready:
                    client.insert_arrow(into, t, settings=insert_settings(GPU_SAMPLES, t))

            # the same table without the views: what the rollups cost is the difference
            alone = f"{table}_alone"
            client.command(f"CREATE TABLE `{alone}` AS `{table}`")
            tables.append(alone)

            ours = serial = base = decode = table_alone = float("inf")
            paired = []
            for _ in range(repeats):
                base_round = timed(baseline)
                table_alone = min(table_alone, timed(lambda: baseline(alone), into=alone))
                writer = TableWriter(client)
                try:
                    ours_round = timed(lambda: feed(writer))  # noqa: B023 - timed at once, within this iteration
                finally:
                    writer.close()
                base, ours = min(base, base_round), min(ours, ours_round)
                paired.append(base_round / ours_round)
                serial = min(serial, timed(lambda: feed(TableWriter(client, background=False))))
                start = time.perf_counter()
                decode_only()
                decode = min(decode, time.perf_counter() - start)
        finally:
            client.close()
    return {
        "rows_per_s": rows / ours,
        "baseline_rows_per_s": rows / base,
        "ratio": base / ours,
        "paired_ratio": sorted(paired)[len(paired) // 2],
        "serial_rows_per_s": rows / serial,
        "decode_rows_per_s": rows / decode,
        "table_alone_rows_per_s": rows / table_alone,
        "rows": rows,
    }
