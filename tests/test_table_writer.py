"""The sink's Kafka-free core: raw messages in, rows in ClickHouse, one insert in the background."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from hpcinsight.schemas.catalog import GPU_SAMPLES, IB_SAMPLES, SCHEDULER_EVENTS
from hpcinsight.schemas.codec import DecodeError
from hpcinsight.schemas.events import GpuSample, IbSample, SchedulerEvent
from hpcinsight.sinks.clickhouse_sink import TableWriter, insert_settings

T0 = (int(time.time()) - 3600) * 1000  # recent: older rows fall to the tables' TTL


@pytest.fixture
def client(tmp_path: Any) -> Iterator[Any]:
    import clickhouse_connect

    from hpcinsight.sinks.clickhouse import ensure_tables

    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / 'ch'}")
    ensure_tables(client)
    try:
        yield client
    finally:
        client.close()


def gpu_message(k: int, gpus: int = 8) -> bytes:
    return GPU_SAMPLES.codec.encode(
        [GpuSample(f"n{k % 4}", g, f"GPU-{k % 4}-{g}", T0 + k * 1000, gpu_util=float(g)) for g in range(gpus)]
    )


def count(client: Any, table: str) -> int:
    return int(client.command(f"SELECT count() FROM `{table}`"))


def test_good_rows_are_stored_with_their_kafka_position_and_bad_messages_reported(client: Any) -> None:
    writer = TableWriter(client)
    raws = [gpu_message(k) for k in range(10)]
    raws[3] = b'{"schema":"gpu_sample","v":1,"records":[{"node":"n0"}]}'
    raws[7] = b""
    rejected = writer.add(GPU_SAMPLES, raws, [k % 2 for k in range(10)], [100 + k for k in range(10)])
    assert [r.index for r in rejected] == [3, 7]
    assert "missing required field" in rejected[0].reason and rejected[1].reason == "empty message"
    assert writer.pending_rows == 8 * 8
    done = []
    writer.submit(on_done=lambda: done.append(count(client, "gpu_samples")))
    assert writer.pending_rows == 0
    writer.wait()
    assert done == [64]  # on_done ran once, after the insert
    rows = client.query("SELECT _partition, _offset, count() FROM gpu_samples GROUP BY 1, 2 ORDER BY 2").result_rows
    assert rows == [(k % 2, 100 + k, 8) for k in range(10) if k not in (3, 7)]
    assert writer.rows == {"gpu_samples": 64}
    writer.close()


def test_a_message_with_some_bad_records_stores_the_others_as_the_worker_uses_them(client: Any) -> None:
    """A foreign producer's message on a stored topic with one bad record: its other records are
    stored with the message's Kafka position, in its place among the block's rows (the replay
    filter reads a GPU's rows in order, so out of place they would be dropped as replays), and
    only the bad one is refused, as the message it was sent in, for the dead letter."""
    writer = TableWriter(client, background=False)
    writer.guard_rollups()
    samples = [[GpuSample("n0", g, f"GPU-{g}", T0 + k * 1000, gpu_util=50.0) for g in range(3)] for k in range(3)]
    bad = msgspec.structs.replace(samples[1][1], temperature_c=-500.0)  # below the schema's -100
    raws = [GPU_SAMPLES.codec.encode(m) for m in (samples[0], [samples[1][0], bad, samples[1][2]], samples[2])]
    [refused] = writer.add(GPU_SAMPLES, raws, [0, 0, 0], [10, 11, 12])
    assert refused.index == 1 and refused.reason.startswith("records left out: 1 of 3, the other 2 used; record 1: ")
    assert "temperature_c" in refused.reason
    assert GPU_SAMPLES.codec.salvage(refused.left_out) is None  # the bad record alone
    with pytest.raises(DecodeError):
        GPU_SAMPLES.codec.decode(refused.left_out)
    writer.submit()
    writer.close()
    stored = client.query("SELECT _offset, gpu_index FROM gpu_samples ORDER BY _offset, gpu_index").result_rows
    assert stored == [(10, 0), (10, 1), (10, 2), (11, 0), (11, 2), (12, 0), (12, 1), (12, 2)]
    assert int(client.command("SELECT sum(samples) FROM gpu_rollup_1m")) == 8

    events = [SchedulerEvent(T0, "foreign", f"j{k}", "started", node=f"n{k}") for k in range(3)]
    raw = SCHEDULER_EVENTS.codec.encode(events).replace(b'"j1","kind":"started"', b'"j1","kind":"exploded"')
    writer = TableWriter(client, background=False)
    [refused] = writer.add(SCHEDULER_EVENTS, [raw], [2], [7])
    assert refused.reason.startswith("records left out: 1 of 3, the other 2 used; record 1: ") and b"j1" in refused.left_out
    writer.submit()
    writer.close()
    rows = client.query("SELECT job_id, _partition, _offset FROM scheduler_events ORDER BY job_id").result_rows
    assert rows == [("j0", 2, 7), ("j2", 2, 7)]


def test_inserts_run_one_at_a_time_in_order(client: Any) -> None:
    writer = TableWriter(client)
    order = []
    for batch in range(3):
        writer.add(GPU_SAMPLES, [gpu_message(batch * 10 + k) for k in range(10)], [0] * 10, [batch * 10 + k for k in range(10)])
        writer.add(
            IB_SAMPLES,
            [IB_SAMPLES.codec.encode([IbSample(f"n{k}", "mlx5_0", 1, T0 + batch * 1000)]) for k in range(5)],
            [0] * 5,
            [batch * 5 + k for k in range(5)],
        )
        writer.submit(on_done=lambda b=batch: order.append((b, count(client, "gpu_samples"))))
    writer.close()
    assert order == [(0, 80), (1, 160), (2, 240)]
    assert count(client, "ib_samples") == 15


def test_a_failed_insert_is_retried_until_the_store_takes_it(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """ClickHouse away (or its disk full) is weather: the insert is tried again with the same
    deduplication token until it lands, and only then are its offsets committed."""
    import hpcinsight.sinks.clickhouse_sink as sink_module

    real, calls = client.insert_arrow, []

    def flaky(*args: Any, **kwargs: Any) -> None:
        calls.append(kwargs["settings"]["insert_deduplication_token"])
        if len(calls) <= 2:
            raise ConnectionError("ClickHouse went away")
        real(*args, **kwargs)

    monkeypatch.setattr(sink_module, "backoff_s", lambda attempt: 0.01)
    writer = TableWriter(client)
    monkeypatch.setattr(client, "insert_arrow", flaky)
    writer.add(GPU_SAMPLES, [gpu_message(k) for k in range(5)], [0] * 5, list(range(5)))
    done = []
    writer.submit(on_done=lambda: done.append(True))
    writer.wait()
    assert done == [True] and len(calls) == 3 and len(set(calls)) == 1
    assert writer.stats.insert_retries == 2
    assert count(client, "gpu_samples") == 40
    writer.close()


def test_a_failing_insert_given_up_raises_at_wait_and_commits_nothing(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import hpcinsight.sinks.clickhouse_sink as sink_module

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("ClickHouse went away")

    monkeypatch.setattr(sink_module, "backoff_s", lambda attempt: 0.01)
    writer = TableWriter(client)
    monkeypatch.setattr(client, "insert_arrow", broken)
    writer.add(GPU_SAMPLES, [gpu_message(k) for k in range(5)], [0] * 5, list(range(5)))
    done = []
    writer.submit(on_done=lambda: done.append(True))
    time.sleep(0.2)
    assert writer.busy() and writer.stats.insert_retries > 0  # still trying
    writer.give_up.set()  # the process is stopping
    with pytest.raises(ConnectionError):
        writer.wait()
    assert done == []  # the offsets of a batch that is not stored are never committed
    writer.close()


def test_a_retried_batch_is_stored_once_in_the_table_and_its_rollups(client: Any) -> None:
    raws = [gpu_message(k) for k in range(6)]
    for _ in range(2):  # the same Kafka span inserted twice, as after a failed commit
        writer = TableWriter(client, background=False)
        writer.add(GPU_SAMPLES, raws, [1] * 6, [40 + k for k in range(6)])
        writer.submit()
        writer.close()
    assert count(client, "gpu_samples") == 48
    assert int(client.command("SELECT sum(samples) FROM gpu_rollup_1m")) == 48


def test_the_deduplication_token_is_the_kafka_span_of_each_partition() -> None:
    import pyarrow as pa

    table = pa.table({"_partition": pa.array([1, 0, 1, 0, 1], pa.uint32()), "_offset": pa.array([9, 5, 7, 6, 8], pa.uint64())})
    settings = insert_settings(GPU_SAMPLES, table)
    assert settings["insert_deduplication_token"] == "gpu.samples/0:5-6,1:7-9"
    assert settings["deduplicate_blocks_in_dependent_materialized_views"] == 1


def test_a_backfill_touching_many_daily_partitions_is_stored(client: Any) -> None:
    """More than ClickHouse's default 100 partitions in one insert (months of KPIs at once)."""
    import pyarrow as pa

    from hpcinsight.schemas.catalog import SCHEDULING_KPIS
    from hpcinsight.schemas.derive import to_arrow
    from hpcinsight.schemas.events import SchedulingKpi

    days = 150
    rows = [SchedulingKpi(T0 - d * 86_400_000, "allocation_rate", "cluster", "all", 0.5) for d in range(days)]
    extra = {"_partition": pa.array([0] * days, pa.uint32()), "_offset": pa.array(range(days), pa.uint64())}
    table = to_arrow(SchedulingKpi, rows, extra)
    client.insert_arrow("scheduling_kpis", table, settings=insert_settings(SCHEDULING_KPIS, table))
    assert count(client, "scheduling_kpis") == days


def test_the_workers_replayed_samples_reach_the_table_but_never_the_rollups_twice(client: Any) -> None:
    """Chaos finding F4: after a worker restart its forwarded samples come again at new offsets;
    gpu_samples collapses them, the rollups counted them twice. The sink now drops them."""
    from hpcinsight.sinks.replays import SeriesWatermarks

    raws = [gpu_message(k) for k in range(12)]  # 4 nodes x 8 GPUs, 3 ticks each
    first = TableWriter(client, background=False)
    first.add(GPU_SAMPLES, raws[:8], [0] * 8, list(range(8)))
    first.submit()
    # a new sink process: what is stored comes from ClickHouse
    marks = SeriesWatermarks("gpu_samples")
    marks.load(client, 0)
    assert len(marks.newest) == 32
    writer = TableWriter(client, background=False)
    writer.replay_filters["gpu_samples"] = marks
    # the worker replays messages 4..7 (already stored) and goes on with 8..11, out of one batch
    writer.add(GPU_SAMPLES, raws[4:12], [0] * 8, list(range(8, 16)))
    writer.submit()
    assert marks.dropped == 4 * 8
    assert int(client.command("SELECT count() FROM gpu_samples FINAL")) == 12 * 8
    assert int(client.command("SELECT sum(samples) FROM gpu_rollup_1m")) == 12 * 8  # each sample once
    # a GPU never seen, and a later sample of a known one, pass untouched
    late = GPU_SAMPLES.codec.encode(
        [GpuSample("n9", 0, "GPU-9-0", T0, gpu_util=1.0), GpuSample("n0", 0, "GPU-0-0", T0 + 100 * 1000, gpu_util=1.0)]
    )
    writer.add(GPU_SAMPLES, [late], [0], [16])
    writer.submit()
    assert int(client.command("SELECT sum(samples) FROM gpu_rollup_1m")) == 12 * 8 + 2 and marks.dropped == 32
