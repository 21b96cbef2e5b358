"""Sink ingest: the worker's gpu.samples messages to rows in ClickHouse, against ``insert_arrow`` of ready tables.

``sink``: 200 ticks of 128 simulated nodes of 8 GPUs (204,800 samples) as the worker writes them
to ``gpu.samples`` while it drains a backlog: Arrow IPC streams (the topic's wire), one message
per raw partition and batch of the worker's ``--batch-max`` raw messages (100, the partitions
interleaved as a consumer hands them over), so some 130 rows a message. They go through what the sink does with them:
:class:`hpcinsight.sinks.clickhouse_sink.TableWriter` decodes each block of messages (about
12,800 rows, as one ``consume`` returns them) to Arrow with the codec's validation and the
replay filter, and inserts each batch (50,000 rows or more: the sink's default batch size),
noted in the insert journal first, with its deduplication token
into the real ``gpu_samples`` table of an embedded chDB store created by
``hpcinsight.sinks.clickhouse.ensure_tables`` (rollup views included), one insert in the
background while the next batch is decoded. The baseline inserts the same batches, already as
Arrow tables, with the same settings, one after the other. The store is emptied before every
round; rounds of ours and the baseline alternate, and the best of each counts.
``paired_ratio`` is the median over rounds of ours against the baseline's round just before it
(steadier on a busy machine), ``serial_rows_per_s`` ours without the background insert, and
``decode_rows_per_s`` the decoding alone. ``table_alone_rows_per_s`` is the baseline's insert
into a table of ``gpu_samples``' columns, key and codecs without its rollup views.

``tick_*``: the same with one message per node and tick (8 rows, what the worker writes when
it is not behind and a batch holds one message per node), against its own baseline rounds; and
``json_tick_*``: those messages as JSON envelopes, the wire before Arrow, for comparison.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from hpcinsight.schemas.catalog import GPU_SAMPLES
from hpcinsight.schemas.codec import Codec
from hpcinsight.schemas.events import GpuSample

NODES, GPUS, TICKS = 128, 8, 200
PARTITIONS = 6
WORKER_BATCH = 100  # raw messages the worker takes at a time (``hpcinsight worker --batch-max``; a test holds them equal)
BLOCK_ROWS = 12_800  # rows one consume() returns: 1,600 messages of one node's tick
BATCH_ROWS = 50_000  # the sink closes a batch at this many rows (SinkOptions.batch_rows)
T = TypeVar("T")


@dataclass
class Feed:
    """Messages of gpu.samples in the order the sink consumes them, cut into its blocks and batches."""

    values: list[bytes]
    partitions: list[int]
    offsets: list[int]
    batches: list[list[range]]  # each batch: its blocks, each a range of message indices
    ready: list[pa.Table]  # each batch as the baseline inserts it
    rows: int


def _interleaved(per_partition: list[list[T]]) -> list[tuple[int, int, T]]:
    """(partition, offset, item) of every item, the partitions taken in turn, as a consumer does."""
    longest = max(map(len, per_partition))
    return [(p, k, items[k]) for k in range(longest) for p, items in enumerate(per_partition) if k < len(items)]


def worker_output(ticks: list[list[GpuSample]], per_batch: int, encode: Callable[[list[GpuSample]], bytes]) -> Feed:
    """What the worker writes to gpu.samples from a backlog of ``ticks`` (raw messages keyed by node,
    so node k in partition k % 6): batches of ``per_batch`` raw messages as a consumer hands them
    over (the partitions interleaved), one message per partition and batch with its rows in offset
    order (``SampleProcessor._gpu_outputs``); read back by the sink partition by partition in turn."""
    from hpcinsight.schemas.derive import to_arrow

    raw: list[list[list[GpuSample]]] = [[] for _ in range(PARTITIONS)]  # partition -> raw messages in offset order
    for samples in ticks:
        for n in range(NODES):
            raw[n % PARTITIONS].append(samples[n * GPUS : (n + 1) * GPUS])
    taken = _interleaved(raw)
    out: list[list[list[GpuSample]]] = [[] for _ in range(PARTITIONS)]
    for start in range(0, len(taken), per_batch):
        by_partition: dict[int, list[GpuSample]] = {}
        for p, _, message in taken[start : start + per_batch]:
            by_partition.setdefault(p, []).extend(message)
        for p, rows in by_partition.items():
            out[p].append(rows)
    read = _interleaved(out)  # as consume() interleaves the partitions
    records = [message for _, _, message in read]
    partitions, offsets = [p for p, _, _ in read], [k for _, k, _ in read]
    batches: list[list[range]] = [[]]
    rows_in_block = rows_in_batch = start = 0
    for i, message in enumerate(records):
        rows_in_block += len(message)
        if rows_in_block >= BLOCK_ROWS or i == len(records) - 1:
            batches[-1].append(range(start, i + 1))
            rows_in_batch, rows_in_block, start = rows_in_batch + rows_in_block, 0, i + 1
            if rows_in_batch >= BATCH_ROWS and i < len(records) - 1:
                batches.append([])
                rows_in_batch = 0
    ready = []
    for batch in batches:
        indices = [i for block in batch for i in block]
        ready.append(
            to_arrow(
                GpuSample,
                [s for i in indices for s in records[i]],
                {
                    "_partition": pa.array([partitions[i] for i in indices for _ in records[i]], pa.uint32()),
                    "_offset": pa.array([offsets[i] for i in indices for _ in records[i]], pa.uint64()),
                },
            )
        )
    return Feed([encode(m) for m in records], partitions, offsets, batches, ready, sum(len(m) for m in records))


def bench_sink(repeats: int) -> dict[str, float]:
    import clickhouse_connect

    from bench.run import T0
    from hpcinsight.agents.sim.gpu import SimConfig, SimGpuCollector
    from hpcinsight.sinks.clickhouse import ensure_tables
    from hpcinsight.sinks.clickhouse_sink import TableWriter, insert_settings

    sim = SimGpuCollector(SimConfig(nodes=NODES, gpus_per_node=GPUS))
    ticks = [sim.sample(T0 + k * 1000) for k in range(TICKS)]
    feeds = {
        "": worker_output(ticks, WORKER_BATCH, GPU_SAMPLES.codec.encode),
        "tick_": worker_output(ticks, 1, GPU_SAMPLES.codec.encode),
        "json_tick_": worker_output(ticks, 1, Codec(GpuSample).encode),
    }
    assert all(v.startswith(b"\xff\xff\xff\xff") for v in feeds[""].values)  # the topic's wire is Arrow IPC

    def feed(writer: TableWriter, f: Feed) -> None:
        for batch in f.batches:
            for block in batch:
                rejected = writer.add(
                    GPU_SAMPLES, [f.values[k] for k in block], [f.partitions[k] for k in block], [f.offsets[k] for k in block]
                )
                assert not rejected, rejected[:3]
            writer.submit()
        writer.wait()

    def decode_only(f: Feed) -> None:
        for batch in f.batches:
            for block in batch:
                GPU_SAMPLES.codec.decode_table([f.values[k] for k in block])

    out: dict[str, Any] = {}
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

            def timed(fn: Callable[[], None], rows: int, into: str = table) -> float:
                empty()
                start = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - start
                stored = int(client.command(f"SELECT count() FROM `{into}`"))
                assert stored == rows, "rows lost or deduplicated away: the figure would be wrong"
                return elapsed

            def baseline(f: Feed, into: str = table) -> None:
                for t in f.ready:
                    client.insert_arrow(into, t, settings=insert_settings(GPU_SAMPLES, t))

            # the same table without the views: what the rollups cost is the difference
            alone = f"{table}_alone"
            client.command(f"CREATE TABLE `{alone}` AS `{table}`")
            tables.append(alone)

            for name, f in feeds.items():
                ours = serial = base = decode = table_alone = float("inf")
                paired = []
                for _ in range(repeats if not name else max(2, repeats // 2)):
                    base_round = timed(partial(baseline, f), f.rows)
                    writer = TableWriter(client)
                    writer.guard_rollups()  # as the sink does
                    try:
                        ours_round = timed(partial(feed, writer, f), f.rows)
                    finally:
                        writer.close()
                    base, ours = min(base, base_round), min(ours, ours_round)
                    paired.append(base_round / ours_round)
                    start = time.perf_counter()
                    decode_only(f)
                    decode = min(decode, time.perf_counter() - start)
                    if not name:
                        table_alone = min(table_alone, timed(partial(baseline, f, alone), f.rows, into=alone))
                        alone_writer = TableWriter(client, background=False)
                        alone_writer.guard_rollups()
                        serial = min(serial, timed(partial(feed, alone_writer, f), f.rows))
                out[f"{name}rows_per_s"] = f.rows / ours
                out[f"{name or ''}baseline_rows_per_s"] = f.rows / base
                out[f"{name}ratio"] = base / ours
                out[f"{name}paired_ratio"] = sorted(paired)[len(paired) // 2]
                out[f"{name}decode_rows_per_s"] = f.rows / decode
                out[f"{name}rows_per_message"] = f.rows / len(f.values)
                if not name:
                    out["serial_rows_per_s"] = f.rows / serial
                    out["table_alone_rows_per_s"] = f.rows / table_alone
                    out["rows"] = f.rows
        finally:
            client.close()
    return out
