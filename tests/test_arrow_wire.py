"""The Arrow wire of the stored sample topics (schemas/arrow_wire.py, issue 19).

What is checked: a message round-trips and its block decode is, column for column, the JSON
codec's table of the same records (every field, nulls, lists, maps); one message may carry many
rows and each row keeps its message's Kafka partition and offset; a bad message is refused with
its reason while the good ones beside it are kept; a JSON envelope (a worker of before the
change) is still read, in message order; the catalog names each topic's wire; the worker writes
Arrow to gpu.samples even where it used to forward the raw JSON bytes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
import pyarrow as pa
import pytest

from hpcinsight.schemas.arrow_wire import EOS, IPC_MARKER, ArrowCodec
from hpcinsight.schemas.catalog import (
    ANOMALIES,
    GPU_QUANTILES,
    GPU_SAMPLES,
    GPU_SAMPLES_RAW,
    IB_SAMPLES,
    IB_SAMPLES_RAW,
    STORED,
    TOPICS,
    Topic,
    describe,
)
from hpcinsight.schemas.codec import Codec, DecodeError
from hpcinsight.schemas.columns import REAL_LIMIT
from hpcinsight.schemas.derive import arrow_schema, to_arrow
from hpcinsight.schemas.events import GpuSample, IbSample
from tests.test_bulk_decode import extra_for, minimal
from tests.test_schemas import EXAMPLES, T0

#: the topics on the Arrow wire, and IB samples on it too (not chosen for now, see the catalog): maps
ARROW = [t for t in TOPICS if t.wire == "arrow"]
IB_ARROW = dataclasses.replace(IB_SAMPLES, wire="arrow")


def ipc(table: pa.Table, metadata: dict[str, str] | None = None, compression: str | None = None) -> bytes:
    """An IPC stream of ``table`` as any producer would write it, with the given schema metadata."""
    from pyarrow import ipc as arrow_ipc

    table = table.replace_schema_metadata(metadata)
    sink = pa.BufferOutputStream()
    with arrow_ipc.new_stream(sink, table.schema, options=arrow_ipc.IpcWriteOptions(compression=compression)) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def gpu_table(**columns: Any) -> pa.Table:
    """Two example GPU samples as a table, with some columns replaced (same Arrow types)."""
    table = to_arrow(GpuSample, [EXAMPLES[GpuSample], minimal(GpuSample)])
    for name, values in columns.items():
        k = table.schema.get_field_index(name)
        table = table.set_column(k, table.schema.field(k), pa.array(values, table.schema.field(k).type))
    return table


META = {"schema": "gpu_sample", "v": "1"}


# -- the catalog ------------------------------------------------------------------------------
def test_the_stored_sample_topics_are_columnar_and_the_rest_json() -> None:
    assert {t.name for t in ARROW} == {"gpu.samples"}
    for topic in TOPICS:
        assert isinstance(topic.codec, ArrowCodec) == (topic.wire == "arrow"), topic.name
    # what agents write and what subscribers read stays JSON
    for topic in (GPU_SAMPLES_RAW, IB_SAMPLES_RAW, IB_SAMPLES, ANOMALIES, GPU_QUANTILES):
        assert topic.wire == "json" and not isinstance(topic.codec, ArrowCodec)
    rows = {r["topic"]: r for r in describe("p.")}
    assert rows["p.gpu.samples"]["wire"] == "arrow" and rows["p.anomalies"]["wire"] == "json"


# -- valid messages ---------------------------------------------------------------------------
@pytest.mark.parametrize("topic", [*ARROW, IB_ARROW], ids=lambda t: f"{t.name}-{t.wire}")
def test_a_message_round_trips_and_decodes_to_the_json_codec_s_table(topic: Topic) -> None:
    full, small = EXAMPLES[topic.event], minimal(topic.event)
    blocks = [[full, small], [], [small] * 3, [full], [small, full]]
    raws = [topic.codec.encode(b) for b in blocks]
    assert all(r.startswith(IPC_MARKER) and r.endswith(EOS) for r in raws)
    assert [topic.codec.decode(r) for r in raws] == blocks  # every field, nulls, lists, maps
    got = topic.codec.decode_table(raws, extra_for(len(raws)))
    json_codec = Codec(topic.event)
    want = json_codec.decode_table([json_codec.encode(b) for b in blocks], extra_for(len(raws)))
    assert got.rejected == [] and got.table.schema == want.table.schema
    assert got.table.equals(want.table)
    assert got.table.num_rows == 8


def test_every_row_of_a_message_carries_its_partition_and_offset() -> None:
    samples = [GpuSample(f"n{k % 3}", k % 8, f"GPU-{k}", T0 + k * 1000, gpu_util=float(k % 100)) for k in range(60)]
    sizes = [1, 17, 0, 5, 30, 7]
    raws, start = [], 0
    for n in sizes:
        raws.append(GPU_SAMPLES.codec.encode(samples[start : start + n]))
        start += n
    raws.insert(3, raws[1][:-9])  # a cut message among them: refused, its neighbours' rows kept
    extra = extra_for(len(raws))
    got = GPU_SAMPLES.codec.decode_table(raws, extra)
    assert [i for i, _ in got.rejected] == [3]
    owners = [i for i, n in zip([0, 1, 2, 4, 5, 6], sizes, strict=True) for _ in range(n)]
    assert got.table.column("_offset").to_pylist() == [extra["_offset"][i].as_py() for i in owners]
    assert got.table.column("_partition").to_pylist() == [extra["_partition"][i].as_py() for i in owners]
    assert got.table.column("gpu_uuid").to_pylist() == [s.gpu_uuid for s in samples]


def test_a_json_envelope_on_a_columnar_topic_is_read_in_message_order() -> None:
    """A worker of before the change writes JSON to gpu.samples during a rolling upgrade."""
    a, b = EXAMPLES[GpuSample], minimal(GpuSample)
    json_codec = Codec(GpuSample)
    raws = [GPU_SAMPLES.codec.encode([a]), json_codec.encode([b, a]), b"{", GPU_SAMPLES.codec.encode([b]), json_codec.encode([a])]
    got = GPU_SAMPLES.codec.decode_table(raws, extra_for(len(raws)))
    assert [i for i, _ in got.rejected] == [2] and got.rejected[0][1].startswith("malformed JSON")
    assert got.table.column("_offset").to_pylist() == [1000, 1001, 1001, 1003, 1004]
    assert got.table.equals(to_arrow(GpuSample, [a, b, a, b, a], {k: v.take([0, 1, 1, 3, 4]) for k, v in extra_for(5).items()}))
    assert GPU_SAMPLES.codec.decode(json_codec.encode([b])) == [b]


def test_a_producer_holding_columns_writes_a_table() -> None:
    table = gpu_table().append_column("extra", pa.array([1, 2]))  # other columns are left out
    table = table.cast(pa.schema([f.with_nullable(True) for f in table.schema]))  # as pa.table() would type it
    raw = GPU_SAMPLES.codec.encode_table(table)
    assert GPU_SAMPLES.codec.decode(raw) == [EXAMPLES[GpuSample], minimal(GpuSample)]
    with pytest.raises(ValueError, match="no column node"):
        GPU_SAMPLES.codec.encode_table(table.drop_columns(["node"]))


def test_a_foreign_writer_s_stream_with_the_same_columns_is_read() -> None:
    """Not our encoder's bytes (nullability as pa.table() gives it, metadata of its own): the columns decide."""
    table = gpu_table()
    table = table.cast(pa.schema([f.with_nullable(True) for f in table.schema]))
    got = GPU_SAMPLES.codec.decode(ipc(table, {**META, "writer": "someone"}))
    assert got == [EXAMPLES[GpuSample], minimal(GpuSample)]


# -- refused messages, with their reasons --------------------------------------------------------
def _invalid_utf8_labels() -> pa.Table:
    table = gpu_table()
    node = pa.Array.from_buffers(
        pa.string(), 2, [None, pa.py_buffer(b"\x00\x00\x00\x00\x02\x00\x00\x00\x04\x00\x00\x00"), pa.py_buffer(b"n0\xc3\x28")]
    )
    return table.set_column(0, table.schema.field(0), node)


GOOD = GPU_SAMPLES.codec.encode([EXAMPLES[GpuSample]])
REFUSED = [
    ("garbage after the marker", IPC_MARKER + b"\x10\x00\x00\x00" + b"x" * 40, "malformed Arrow IPC: "),
    ("only the marker", IPC_MARKER, "malformed Arrow IPC: "),
    ("truncated", GOOD[:-20], "malformed Arrow IPC: "),
    ("no end-of-stream marker", GOOD[: -len(EOS)], "malformed Arrow IPC: not one whole stream"),
    ("bytes after the end", GOOD + b"\x00" * 8, "malformed Arrow IPC: not one whole stream"),
    ("two streams in one", GOOD + GOOD, "malformed Arrow IPC: not one whole stream"),
    ("another event's schema", ipc(gpu_table(), {"schema": "ib_sample", "v": "1"}), "schema 'ib_sample' does not belong here"),
    ("another version", ipc(gpu_table(), {"schema": "gpu_sample", "v": "2"}), "unknown schema version 2 of 'gpu_sample'"),
    ("no metadata", ipc(gpu_table()), "Arrow schema without the 'schema' and 'v' metadata"),
    ("a column less", ipc(gpu_table().drop_columns(["zone"]), META), "Arrow schema of 'gpu_sample' with 38 columns; expected 39"),
    (
        "a column of another type",
        ipc(gpu_table().set_column(4, "gpu_util", pa.array([1.0, 2.0], pa.float64())), META),
        "Arrow column 4 of 'gpu_sample' is `gpu_util: double`; expected `gpu_util: float`",
    ),
    (
        "a column renamed",
        ipc(gpu_table().rename_columns(["host", *arrow_schema(GpuSample).names[1:]]), META),
        "Arrow column 0 of 'gpu_sample' is `host: string`",
    ),
    (
        "out of range",
        ipc(gpu_table(gpu_util=[150.0, None]), META),
        "invalid gpu_sample: `gpu_util` is 150.0, above its maximum 100.0",
    ),
    (
        "below range",
        ipc(gpu_table(temperature_c=[-150.0, None]), META),
        "invalid gpu_sample: `temperature_c` is -150.0, below its minimum -100.0",
    ),
    (
        "NaN",
        ipc(gpu_table(power_w=[float("nan"), 1.0]), META),
        "invalid gpu_sample: `power_w` holds a value that is not a finite number",
    ),
    (
        "infinity",
        ipc(gpu_table(power_w=[1.0, float("inf")]), META),
        "invalid gpu_sample: `power_w` holds a value that is not a finite number",
    ),
    ("null where none may be", ipc(gpu_table(node=[None, "n1"]), META), "invalid gpu_sample: `node` is null, and may not be"),
    (
        "an empty label",
        ipc(gpu_table(node=["", "n1"]), META),
        "invalid gpu_sample: `node` has a length (characters) of 0, below its minimum 1",
    ),
    (
        "an over-long label",
        ipc(gpu_table(job_id=["j" * 257, None]), META),
        "invalid gpu_sample: `job_id` has a length (characters) of 257",
    ),
    ("seconds for milliseconds", ipc(gpu_table(ts=[T0 // 1000, T0]), META), "invalid gpu_sample: `ts` is 1"),
    (
        "a count past int64",
        ipc(gpu_table(ecc_corrected_volatile=[2**63, 0]), META),
        "invalid gpu_sample: `ecc_corrected_volatile` is 9223372036854775808",
    ),
    (
        "a null in a list",
        ipc(gpu_table(throttle=[["hw_slowdown", None], []]), META),
        "invalid gpu_sample: `throttle` holds a null item",
    ),
    ("a null list", ipc(gpu_table(throttle=[None, []]), META), "invalid gpu_sample: `throttle` is null, and may not be"),
    ("invalid UTF-8", ipc(_invalid_utf8_labels(), META), "malformed Arrow IPC: "),
    # a few bytes of zstd could ask for gigabytes once decompressed
    ("compressed buffers", ipc(gpu_table(), META, "zstd"), "compressed Arrow IPC buffers are not accepted"),
    ("compressed, foreign", ipc(gpu_table(), {**META, "x": "y"}, "lz4"), "compressed Arrow IPC buffers are not accepted"),
    (
        "a batch where the schema should be",
        GOOD[len(GPU_SAMPLES.codec.encode([])) - len(EOS) :],
        "malformed Arrow IPC: a record batch message",
    ),
]


@pytest.mark.parametrize(("what", "raw", "reason"), REFUSED, ids=[c[0] for c in REFUSED])
def test_a_bad_message_is_refused_with_its_reason_and_its_neighbours_kept(what: str, raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        GPU_SAMPLES.codec.decode(raw)
    assert str(err.value).startswith(reason), str(err.value)
    raws = [GOOD, raw, GOOD, GOOD]
    got = GPU_SAMPLES.codec.decode_table(raws, extra_for(len(raws)))
    assert got.rejected == [(1, str(err.value))]
    assert got.table.column("_offset").to_pylist() == [1000, 1002, 1003]


def test_a_map_of_infinities_is_refused() -> None:
    sample = IbSample("n0", "mlx5_0", 1, T0, hw_counters={"rx": 1.0})
    table = to_arrow(IbSample, [sample])
    k = table.schema.get_field_index("hw_counters")
    table = table.set_column(k, table.schema.field(k), pa.array([[("rx", float("inf"))]], table.schema.field(k).type))
    raw = ipc(table, {"schema": "ib_sample", "v": "1"})
    with pytest.raises(DecodeError, match="`hw_counters` holds a value that is not a finite number"):
        IB_ARROW.codec.decode(raw)
    got = IB_ARROW.codec.decode_table([IB_ARROW.codec.encode([sample]), raw])
    assert [i for i, _ in got.rejected] == [1] and got.table.num_rows == 1


def test_a_reading_past_the_limit_is_refused() -> None:
    """The Arrow wire bounds a map of readings as the JSON wire does (REAL_LIMIT), message by message."""
    sample = IbSample("n0", "mlx5_0", 1, T0, hw_counters={"rx": REAL_LIMIT})
    table = to_arrow(IbSample, [sample])
    k = table.schema.get_field_index("hw_counters")
    table = table.set_column(k, table.schema.field(k), pa.array([[("rx", REAL_LIMIT * 1.5)]], table.schema.field(k).type))
    raw = ipc(table, {"schema": "ib_sample", "v": "1"})
    with pytest.raises(DecodeError, match=rf"`hw_counters` is invalid: Expected `float` <= {REAL_LIMIT}"):
        IB_ARROW.codec.decode(raw)
    assert IB_ARROW.codec.decode(IB_ARROW.codec.encode([sample])) == [sample]
    got = IB_ARROW.codec.decode_table([IB_ARROW.codec.encode([sample]), raw])
    assert [i for i, _ in got.rejected] == [1] and got.table.num_rows == 1


def test_what_is_not_arrow_gets_the_json_codec_s_reason() -> None:
    for raw in (b"", None, b"{", b"\x00\x01", b"\xff\xff"):
        with pytest.raises(DecodeError) as arrow:
            GPU_SAMPLES.codec.decode(raw)
        with pytest.raises(DecodeError) as json:
            Codec(GpuSample).decode(raw)
        assert str(arrow.value) == str(json.value)


# -- the worker -------------------------------------------------------------------------------
def test_the_worker_writes_arrow_even_where_it_used_to_forward_the_raw_bytes() -> None:
    from hpcinsight.streams.app import WorkerOptions
    from hpcinsight.streams.detectors import build
    from hpcinsight.streams.processor import SampleProcessor

    processor = SampleProcessor(WorkerOptions().processor_config(), detectors=build(None))
    samples = [GpuSample("n0", k, f"GPU-{k}", T0, gpu_util=10.0 * k) for k in range(4)]  # no placements: nothing to attribute
    raw = GPU_SAMPLES_RAW.codec.encode(samples)
    [stored] = [o for o in processor.handle(GPU_SAMPLES_RAW.name, 0, 0, b"n0", raw) if o.topic is GPU_SAMPLES]
    assert stored.value != raw and stored.value.startswith(IPC_MARKER)
    assert GPU_SAMPLES.codec.decode(stored.value) == samples


def test_every_stored_topic_s_codec_reads_what_it_writes() -> None:
    for topic in STORED:
        record = EXAMPLES[topic.event]
        assert topic.codec.decode(topic.codec.encode([record])) == [record], topic.name
        assert msgspec.structs.asdict(topic.codec.decode(topic.codec.encode([record]))[0]) == msgspec.structs.asdict(record)


# -- the sink's writer ------------------------------------------------------------------------
BAD_UTIL = "invalid gpu_sample: `gpu_util` is 101.0, above its maximum 100.0"


def test_the_sink_stores_many_rows_a_message_each_with_its_kafka_position(tmp_path: Any) -> None:
    """Rows per message vary (the worker's batches): each row keeps its message's partition and
    offset, so the insert's deduplication token and the resume after a restart (the highest
    offset stored per partition) are what they were with one message per node and tick."""
    import clickhouse_connect

    from hpcinsight.sinks.clickhouse import ensure_tables
    from hpcinsight.sinks.clickhouse_sink import TableWriter, insert_settings

    sizes = [24, 0, 8, 200, 1]
    messages, start = [], 0
    for n in sizes:
        messages.append(
            [GpuSample(f"n{k % 5}", k % 8, f"GPU-{k % 40}", T0 + k * 1000, gpu_util=1.0) for k in range(start, start + n)]
        )
        start += n
    raws = [GPU_SAMPLES.codec.encode(m) for m in messages]
    raws.insert(2, ipc(gpu_table(gpu_util=[101.0, None]), META))  # a bad row among them: its message gives the other
    partitions, offsets = [0, 1, 0, 1, 0, 1], [10, 20, 11, 21, 12, 22]
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / 'ch'}")
    try:
        ensure_tables(client)
        writer = TableWriter(client, background=False)
        rejected = writer.add(GPU_SAMPLES, raws, partitions, offsets)
        [(index, reason, left_out)] = rejected
        assert (index, reason) == (2, "records left out: 1 of 2, the other 1 used; record 0: " + BAD_UTIL)
        assert GPU_SAMPLES.codec.salvage(left_out) is None
        [(topic, tables)] = writer._pending.values()
        assert (
            insert_settings(topic, tables[0])["insert_deduplication_token"] == "gpu.samples/0:10-12,1:21-22"
        )  # (offset 20 held no row)
        writer.submit()
        stored = client.query("SELECT _partition, _offset, count() FROM gpu_samples GROUP BY 1, 2 ORDER BY 1, 2").result_rows
        assert stored == [(0, 10, 24), (0, 11, 1), (0, 12, 200), (1, 21, 8), (1, 22, 1)]
        resume = client.query("SELECT _partition, max(_offset) FROM gpu_samples GROUP BY 1 ORDER BY 1").result_rows
        assert resume == [(0, 12), (1, 22)]
    finally:
        client.close()


@pytest.mark.parametrize("codec", [GPU_SAMPLES.codec, GPU_SAMPLES_RAW.codec], ids=["arrow", "json"])
def test_records_over_the_limit_go_in_parts_each_a_message_of_its_own(codec: Codec[GpuSample]) -> None:
    """A batch over the broker's limit is cut in parts below it (one record alone as it is), in
    order; each part is a whole message a reader takes alone, and together they are the batch."""
    records = [msgspec.structs.replace(EXAMPLES[GpuSample], gpu_index=i % 8, ts=T0 + i) for i in range(300)]
    whole = codec.encode(records)
    limit = len(whole) // 5
    parts = codec.encode_parts(records, limit)
    assert len(parts) >= 5 and all(len(p) <= limit for p in parts)
    assert [r for p in parts for r in codec.decode(p)] == codec.decode(whole)
    assert codec.encode_parts(records, len(whole)) == [whole]
    assert codec.encode_parts(records[:1], 10) == [codec.encode(records[:1])]
