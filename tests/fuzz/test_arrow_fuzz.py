"""Property-based fuzzing of the Arrow wire's decoder (issue 14's rule for issue 19's codec).

Hostile Arrow messages for every columnar topic: valid streams of generated records, then cut,
overwritten, padded or spliced byte-wise; tables with one value out of its rule (NaN, a bound
passed, an empty or over-long label, a null where none may be), compressed or not; streams of another schema
(columns dropped, retyped, reordered, deeply nested); plain bytes after the IPC marker.
Properties: ``decode`` returns records or raises DecodeError and nothing else; the block decode
(the sink's) refuses exactly what ``decode`` refuses, with its reason, and its table is the
table of the records ``decode`` accepts; and what decodes, round-trips.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcinsight.schemas.arrow_wire import IPC_MARKER
from hpcinsight.schemas.catalog import IB_SAMPLES, TOPICS, Topic
from hpcinsight.schemas.codec import Codec, DecodeError
from hpcinsight.schemas.derive import to_arrow
from tests.fuzz.strategies import messages
from tests.fuzz.test_fuzz import decodes  # noqa: F401 - also loads the suite's Hypothesis profile
from tests.test_arrow_wire import ipc
from tests.test_bulk_decode import extra_for, reference

#: the topics on the Arrow wire, and IB samples as if they were (maps, a float map's infinities)
ARROW = [*(t for t in TOPICS if t.wire == "arrow"), dataclasses.replace(IB_SAMPLES, wire="arrow")]


def records(topic: Topic) -> st.SearchStrategy[list[Any]]:
    """Lists of valid records of the topic's event (the JSON fuzzer's valid messages, decoded)."""
    return messages(topic, valid_only=True).map(Codec(topic.event).decode)


def _hostile_value(arrow_type: pa.DataType) -> st.SearchStrategy[Any]:
    if pa.types.is_floating(arrow_type):
        return st.sampled_from([float("nan"), float("inf"), -float("inf"), -1.0, 1e30, 300.5, -300.5, None])
    if pa.types.is_unsigned_integer(arrow_type):
        return st.sampled_from([0, 2**63, 2**64 - 1, None] if arrow_type.bit_width == 64 else [0, 255, None])
    if pa.types.is_timestamp(arrow_type):
        return st.sampled_from([0, -1, 1_700_000_000, 2**62, None])
    if pa.types.is_string(arrow_type):
        return st.sampled_from(["", "x" * 257, "x" * 70_000, "\x00", None])
    if pa.types.is_list(arrow_type):
        return st.sampled_from([None, [None], ["a", None], [""], []])
    if pa.types.is_map(arrow_type):
        return st.sampled_from([None, [("k", float("nan"))], [("k", float("inf"))], [("", 1.0)], []])
    return st.none()


@st.composite
def bad_value_tables(draw: st.DrawFn, topic: Topic) -> bytes:
    """A stream of valid records but for one value, of the right Arrow type, that may break its rule."""
    recs = draw(records(topic))
    table = to_arrow(topic.event, recs)
    k = draw(st.integers(0, table.num_columns - 1))
    field = table.schema.field(k)
    row = draw(st.integers(0, table.num_rows - 1))
    values = table.column(k).to_pylist()
    if pa.types.is_map(field.type):
        values = [None if v is None else list(v) for v in values]
    values[row] = draw(_hostile_value(field.type))
    table = table.set_column(k, field.with_nullable(True), pa.array(values, field.type))
    compression = draw(st.sampled_from([None, None, "zstd", "lz4"]))  # compressed: refused whole
    return ipc(table, {"schema": topic.event.__schema__, "v": str(topic.event.__version__)}, compression)


@st.composite
def other_schema_tables(draw: st.DrawFn, topic: Topic) -> bytes:
    """Valid records under a schema that is not the event's: metadata or columns changed."""
    table = to_arrow(topic.event, draw(records(topic)))
    meta = draw(
        st.sampled_from(
            [
                {"schema": topic.event.__schema__, "v": str(topic.event.__version__)},
                {"schema": "gpu_sample", "v": "1"},
                {"schema": topic.event.__schema__, "v": "x"},
                {"schema": "\udcff"},
                None,
            ]
        )
    )
    how = draw(st.integers(0, 3))
    if how == 0:
        table = table.drop_columns([draw(st.sampled_from(table.column_names))])
    elif how == 1:
        k = draw(st.integers(0, table.num_columns - 1))
        table = table.set_column(k, table.schema.field(k).name, pa.array([None] * table.num_rows, pa.null()))
    elif how == 2:
        table = table.select(list(reversed(table.column_names)))
    else:
        deep: pa.DataType = pa.int8()
        for _ in range(draw(st.integers(1, 60))):  # (the writer itself refuses deeper)
            deep = pa.list_(deep)
        table = table.append_column("deep", pa.nulls(table.num_rows, deep))
    if isinstance(meta, dict) and "\udcff" in meta.get("schema", ""):
        meta = {"schema": "\ufffd", "v": "1"}
    return ipc(table, meta)


@st.composite
def mangled(draw: st.DrawFn, topic: Topic) -> bytes:
    """A valid message, then cut, overwritten, padded or spliced."""
    raw = topic.codec.encode(draw(records(topic)))
    how = draw(st.integers(0, 4))
    if how == 0:
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if how == 1:
        data = bytearray(raw)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if how == 2:
        return raw + draw(st.binary(min_size=1, max_size=64))
    if how == 3:
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.binary(min_size=1, max_size=64)) + raw[at:]
    return raw[: len(raw) // 2] + raw  # a stream spliced into itself


def arrow_messages(topic: Topic) -> st.SearchStrategy[bytes]:
    return st.one_of(
        records(topic).map(topic.codec.encode),
        mangled(topic),
        bad_value_tables(topic),
        other_schema_tables(topic),
        st.binary(max_size=300).map(lambda b: IPC_MARKER + b),
    )


@pytest.mark.parametrize("topic", ARROW, ids=lambda t: f"{t.name}-{t.wire}")
def test_the_arrow_decoder_returns_records_or_says_why(topic: Topic) -> None:
    @given(arrow_messages(topic))
    def prop(raw: bytes) -> None:
        try:
            got = topic.codec.decode(raw)
        except DecodeError as err:
            assert str(err)
            return
        assert all(isinstance(r, topic.event) for r in got)
        assert topic.codec.decode(topic.codec.encode(got)) == got  # what decodes, round-trips

    prop()


@pytest.mark.parametrize("topic", ARROW, ids=lambda t: f"{t.name}-{t.wire}")
def test_the_arrow_block_decode_refuses_exactly_what_decode_refuses(topic: Topic) -> None:
    @given(st.lists(st.one_of(arrow_messages(topic), messages(topic)), min_size=1, max_size=8))
    def prop(block: list[bytes]) -> None:
        got = topic.codec.decode_table(block, extra_for(len(block)))
        want, expected = reference(topic, block)  # decode, message by message
        assert got.rejected == expected
        assert got.table.schema == want.schema and got.table.equals(want)

    prop()
