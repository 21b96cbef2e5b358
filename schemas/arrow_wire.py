"""The Arrow wire: a topic's messages as Arrow IPC streams, for topics read by column stores.

A stored sample topic (``gpu.samples``) is written by the worker and read by the ClickHouse
sink, which wants Arrow columns: sending JSON made the sink parse every value the worker had
just printed. Here a message is one Arrow IPC *stream* (schema, record batches, end-of-stream
marker) whose schema is the event's (:func:`hpcinsight.schemas.derive.arrow_schema`) with the
envelope's facts as metadata (``schema``, ``v``); the sink's decode is then reading buffers.

:class:`ArrowCodec` has the JSON codec's interface, so every consumer keeps calling
``topic.codec``. It trusts nothing it reads: the stream must parse, carry exactly the event's
columns, pass Arrow's full validation (offsets, UTF-8) and the codec's value rules (ranges,
lengths, nulls, finiteness; :func:`hpcinsight.schemas.derive.wire_rules`), else
:class:`DecodeError` says why. A message that does not start like an IPC stream is handed to
the JSON codec: a worker from before this wire, during a rolling upgrade.
"""

from __future__ import annotations

import struct
import typing
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import msgspec

from hpcinsight.schemas.codec import (
    Codec,
    Decoded,
    DecodeError,
    E,
    RecordSplit,
    all_true,
    cut_reason,
    rule_violation,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from hpcinsight.schemas.derive import Field, ValueRule

#: every message of the IPC stream format starts with this continuation marker; JSON never does
IPC_MARKER = b"\xff\xff\xff\xff"
#: the stream format's end: the marker and a zero length
EOS = IPC_MARKER + b"\x00\x00\x00\x00"


class ArrowCodec(Codec[E]):
    """Encoder and validating decoder of Arrow IPC batches of one event type (JSON still read)."""

    def encode(self, records: list[E]) -> bytes:
        return self._encode_prepared(self._prepared(records))

    def _prepared(self, records: list[E]) -> pa.RecordBatch:
        """The records as one record batch: :meth:`Codec.encode_parts` cuts slices of it, so the
        values (nine tenths of an encode) are converted once."""
        import pyarrow as pa

        # one conversion of all values into a struct array, then its columns: no Python loop per field
        columns = pa.array(list(map(msgspec.structs.astuple, records)), type=self._struct)
        return pa.RecordBatch.from_struct_array(columns)

    def _encode_prepared(self, prepared: pa.RecordBatch) -> bytes:
        if not prepared.num_rows:
            return self._prefix + EOS
        body: bytes = prepared.serialize().to_pybytes()
        return self._prefix + body + EOS

    def encode_table(self, table: pa.Table | pa.RecordBatch) -> bytes:
        """One message of the rows of ``table``, which holds the event's columns (by name; others
        are left out). Not validated here: whoever reads it does that."""
        import pyarrow as pa

        schema = self._schema
        missing = [name for name in schema.names if name not in table.column_names]
        if missing:
            raise ValueError(f"not a table of {self.event.__schema__}: no column {', '.join(missing)}")
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        table = table.select(schema.names).cast(schema)
        return self._prefix + b"".join(b.serialize().to_pybytes() for b in table.to_batches()) + EOS

    # -- decoding ------------------------------------------------------------------------------

    def decode(self, raw: bytes | None) -> list[E]:
        if not _is_ipc(raw):
            return super().decode(raw)  # JSON, or nothing usable: the JSON codec says why
        try:
            table = self._table(self._batches(raw))  # type: ignore[arg-type]  # _is_ipc saw bytes
            try:
                records = self._records(table)  # msgspec checks the rules: faster than a kernel a column
            except DecodeError as err:
                raise DecodeError(self._invalid(table) or str(err)) from None  # decode_table's words for it
            reason = self._invalid(table, self._unruled)
            if reason is not None:
                raise DecodeError(reason)
            return records
        except DecodeError:
            raise
        except Exception as err:  # noqa: BLE001 - e.g. MemoryError on an absurd length: still one bad message
            raise DecodeError(cut_reason(f"undecodable: {type(err).__name__}: {err}")) from None

    def _split_records(self, raw: bytes | None) -> RecordSplit | None:
        """As :meth:`Codec._split_records`, for an IPC message: its rows, and messages of some of them."""
        if not _is_ipc(raw):
            return super()._split_records(raw)
        try:
            table = self._table(self._batches(raw))  # type: ignore[arg-type]  # _is_ipc saw bytes
        except Exception:  # noqa: BLE001 - not readable as this event's columns: nothing to split
            return None
        if table.num_rows < 2:
            return None

        def message(indices: list[int]) -> bytes:
            return self.encode_table(table.take(indices))

        return table.num_rows, message

    def decode_table(self, raws: Sequence[bytes | None], extra: Mapping[str, pa.Array] | None = None) -> Decoded:
        """As :meth:`Codec.decode_table`: the good messages' rows in message order, ``extra``
        repeated for every row of its message, and each bad message with :meth:`decode`'s reason.

        IPC messages are read one by one (a few microseconds each) and checked as one table; only
        when that table breaks a rule are they checked one by one, to find the culprits."""
        import numpy as np
        import pyarrow as pa

        ipc = [i for i, raw in enumerate(raws) if _is_ipc(raw)]
        if len(ipc) < len(raws):
            return self._mixed(raws, ipc, extra)
        rejected: list[tuple[int, str]] = []
        good: list[tuple[int, list[pa.RecordBatch]]] = []
        for i, raw in enumerate(raws):
            try:
                good.append((i, self._batches(raw)))  # type: ignore[arg-type]  # _is_ipc saw bytes
            except Exception as err:  # noqa: BLE001 - whatever the reader raised: decode gives the same reason
                rejected.append((i, _reason(err)))
        table = self._table([b for _, batches in good for b in batches])
        try:
            bad = self._invalid(table) is not None
        except Exception:  # noqa: BLE001 - a check that cannot run on the block finds its culprit message by message
            bad = True
        if bad:
            kept = []
            for i, batches in good:
                reason = self._bad_one(batches)
                if reason is None:
                    kept.append((i, batches))
                else:
                    rejected.append((i, reason))
            rejected.sort()
            good = kept
            table = self._table([b for _, batches in good for b in batches])
        if extra:
            counts = [sum(b.num_rows for b in batches) for _, batches in good]
            owner = pa.array(np.repeat(np.array([i for i, _ in good], np.int64), counts), pa.int64())
            for name, values in extra.items():
                table = table.append_column(pa.field(name, values.type, nullable=False), values.take(owner))
        return Decoded(table, rejected)

    def _mixed(self, raws: Sequence[bytes | None], ipc: list[int], extra: Mapping[str, pa.Array] | None) -> Decoded:
        """A block holding JSON messages too: each kind decoded apart, the rows put back in message order."""
        import pyarrow as pa
        import pyarrow.compute as pc

        arrow = set(ipc)
        others = [i for i in range(len(raws)) if i not in arrow]
        parts: list[pa.Table] = []
        rejected: list[tuple[int, str]] = []
        for indices, decode in ((others, super().decode_table), (ipc, self.decode_table)):
            if not indices:
                continue
            where = pa.array(indices, pa.int64())
            got = decode([raws[i] for i in indices], {**{k: v.take(where) for k, v in (extra or {}).items()}, "__at": where})
            parts.append(got.table)
            rejected.extend((indices[i], reason) for i, reason in got.rejected)
        table = pa.concat_tables(parts)
        if len(parts) > 1:
            table = table.take(pc.sort_indices(table.column("__at"), sort_keys=[("__at", "ascending")]))
        table = table.drop_columns(["__at"])
        return Decoded(table, sorted(rejected))

    def _batches(self, raw: bytes) -> list[pa.RecordBatch]:
        """The record batches of one IPC stream of this event's schema, validated by Arrow (not yet
        against the event's rules)."""
        import pyarrow as pa
        import pyarrow.ipc

        raw = bytes(raw)  # (a bytearray or memoryview: the JSON codec takes them too)
        source = pa.BufferReader(raw)
        ours = raw.startswith(self._prefix)  # the schema this codec writes, byte for byte: read the rest only
        batches = []
        try:
            if ours:
                source.seek(len(self._prefix))
            reader = pa.ipc.MessageReader.open_stream(source)
            schema = self._schema
            if not ours:
                first = reader.read_next_message()
                if first.type != "schema":
                    raise DecodeError(f"malformed Arrow IPC: a {first.type} message where the schema should be")
                schema = pa.ipc.read_schema(first)
                reason = self._foreign_schema(schema)
                if reason is not None:
                    raise DecodeError(reason)
            for message in reader:  # (a loop on read_next_message's StopIteration took 28 us more a message)
                if message.type != "record batch":
                    raise DecodeError(cut_reason(f"malformed Arrow IPC: a {message.type} message after the schema"))
                if _compressed(message.metadata.to_pybytes()):
                    # Kafka compresses whole messages already; a compressed buffer says its size
                    # after decompression itself, and a few hostile bytes could ask for gigabytes
                    raise DecodeError("compressed Arrow IPC buffers are not accepted (Kafka compresses the messages)")
                batch = pa.ipc.read_record_batch(message, schema)
                batches.append(batch if ours else pa.RecordBatch.from_arrays(batch.columns, schema=self._schema))
        except DecodeError:
            raise
        except StopIteration:
            raise DecodeError("malformed Arrow IPC: no schema") from None
        except (pa.ArrowException, OSError, ValueError, struct.error) as err:
            raise DecodeError(cut_reason(f"malformed Arrow IPC: {err}")) from None
        if not raw.endswith(EOS) or source.tell() != len(raw):
            raise DecodeError("malformed Arrow IPC: not one whole stream (no end-of-stream marker, or bytes after it)")
        for batch in batches:
            try:
                batch.validate(full=True)  # before any kernel reads a buffer: offsets, lengths, UTF-8
            except pa.ArrowException as err:
                raise DecodeError(cut_reason(f"malformed Arrow IPC: {err}")) from None
        return batches

    def _foreign_schema(self, schema: pa.Schema) -> str | None:
        """Why a stream's schema (not byte for byte ours) is not this event's, or None."""
        meta = schema.metadata or {}
        name, version = meta.get(b"schema"), meta.get(b"v")
        expected = self.event.__schema__
        if name is None or version is None:
            return f"Arrow schema without the 'schema' and 'v' metadata; expected {expected!r} v{self.event.__version__}"
        shown = name.decode("utf-8", "replace")[:100]
        if shown != expected:
            return f"schema {shown!r} does not belong here; expected {expected!r}"
        if version != str(self.event.__version__).encode():
            return (
                f"unknown schema version {version.decode('utf-8', 'replace')[:20]} of {expected!r}; "
                f"this build reads version {self.event.__version__}"
            )
        want = self._schema
        if len(schema) != len(want):
            return f"Arrow schema of {expected!r} with {len(schema)} columns; expected {len(want)}"
        for k, (got, field) in enumerate(zip(schema, want, strict=True)):
            if got.name != field.name or not got.type.equals(field.type):
                return cut_reason(
                    f"Arrow column {k} of {expected!r} is `{got.name}: {got.type}`; expected `{field.name}: {field.type}`"
                )
        return None

    def _table(self, batches: list[pa.RecordBatch]) -> pa.Table:
        import pyarrow as pa

        from hpcinsight.schemas.derive import arrow_schema

        # one chunk: the kernels' cost is per chunk, and the sink inserts one record batch anyway
        combined = [pa.concat_batches(batches)] if len(batches) > 1 else batches
        return pa.Table.from_batches(combined, schema=arrow_schema(self.event))

    def _bad_one(self, batches: list[pa.RecordBatch]) -> str | None:
        """Why one message's batches are unusable, or None; what :meth:`decode` says of it."""
        try:
            return self._invalid(self._table(batches))
        except Exception as err:  # noqa: BLE001 - as decode
            return cut_reason(f"undecodable: {type(err).__name__}: {err}")

    def _invalid(self, table: pa.Table, only: tuple[int, ...] | None = None) -> str | None:
        """Why the rows of ``table`` (validated batches) break the event's rules, first column first; or
        None. ``only``: the columns to check (all by default)."""
        if not table.num_rows:
            return None
        for k in range(len(self._checks)) if only is None else only:
            check, values = self._checks[k], table.column(k)
            why = check.why(values)
            if why is not None:
                return cut_reason(f"invalid {self.event.__schema__}: `{check.field.name}` {why}")
        return None

    def _records(self, table: pa.Table) -> list[E]:
        import pyarrow as pa

        columns = []
        for values in table.columns:
            if pa.types.is_timestamp(values.type):
                values = values.cast(pa.int64())
            column = values.to_pylist()
            if pa.types.is_map(values.type):
                column = [None if v is None else dict(v) for v in column]
            columns.append(column)
        names = [f.name for f in self._fields]
        try:
            return msgspec.convert([dict(zip(names, row)) for row in zip(*columns)], list[self.event])  # type: ignore[name-defined]  # a run-time type
        except (msgspec.ValidationError, ValueError) as err:
            raise DecodeError(cut_reason(f"invalid {self.event.__schema__}: {err}")) from None

    # -- what is built once, on first use (an agent that only encodes JSON never loads pyarrow) --

    @cached_property
    def _fields(self) -> tuple[Field, ...]:
        from hpcinsight.schemas.derive import fields_of

        return fields_of(self.event)

    @cached_property
    def _schema(self) -> pa.Schema:
        from hpcinsight.schemas.derive import arrow_schema

        return arrow_schema(self.event).with_metadata({"schema": self.event.__schema__, "v": str(self.event.__version__)})

    @cached_property
    def _struct(self) -> pa.StructType:
        import pyarrow as pa

        return pa.struct(list(self._schema))

    @cached_property
    def _prefix(self) -> bytes:
        """The stream's schema message as this codec writes it: every message it encodes starts so."""
        import pyarrow as pa
        import pyarrow.ipc

        sink = pa.BufferOutputStream()
        pa.ipc.new_stream(sink, self._schema).close()
        whole: bytes = sink.getvalue().to_pybytes()
        assert whole.endswith(EOS)
        return whole[: -len(EOS)]

    @cached_property
    def _unruled(self) -> tuple[int, ...]:
        """Columns whose rule msgspec does not hold in full: float maps (it lets infinities through)."""
        return tuple(k for k, c in enumerate(self._checks) if c.rule is None)

    @cached_property
    def _checks(self) -> tuple[_ColumnCheck, ...]:
        from hpcinsight.schemas.derive import wire_rules

        rules = wire_rules(self.event)
        hints = typing.get_type_hints(self.event, include_extras=True)
        return tuple(
            _ColumnCheck(f, rules[k].value if rules is not None else None, hints[f.name]) for k, f in enumerate(self._fields)
        )


class _ColumnCheck:
    """The codec's rule for one column, applied to all of a table's values at once."""

    def __init__(self, field: Field, rule: ValueRule | None, hint: Any) -> None:
        self.field = field
        self.rule = rule
        self.hint = hint

    def why(self, values: pa.ChunkedArray) -> str | None:
        if values.null_count:
            if not self.field.nullable:
                return "is null, and may not be"
            if values.null_count == len(values):
                return None
        if self.rule is None:
            return self._by_msgspec(values)
        return rule_violation(self.rule, values)

    def _by_msgspec(self, values: pa.ChunkedArray) -> str | None:
        """A field with no column-wise rule (a map, bytes): msgspec checks its values one by one."""
        import pyarrow as pa
        import pyarrow.compute as pc

        column = values.to_pylist()
        if pa.types.is_map(values.type):
            column = [None if v is None else dict(v) for v in column]
            if pa.types.is_floating(values.type.item_type):
                items = [c.items.slice(c.offsets[0].as_py(), c.offsets[-1].as_py() - c.offsets[0].as_py()) for c in values.chunks]
                if not all(all_true(pc.is_finite(pc.fill_null(i, 0.0))) for i in items):
                    return "holds a value that is not a finite number"
        try:
            msgspec.convert(column, list[self.hint])  # type: ignore[name-defined]  # a run-time type
        except msgspec.ValidationError as err:
            return f"is invalid: {err}"
        return None


def _compressed(metadata: bytes) -> bool:
    """Whether a record batch message's metadata (a flatbuffer ``Message`` whose header is a
    ``RecordBatch``, as Arrow's format/Message.fbs lays it out) names a body compression: field 3
    of the header table. Arrow has verified the flatbuffer; struct.error on anything out of place."""

    def field_offset(table: int, index: int) -> int:
        vtable = table - struct.unpack_from("<i", metadata, table)[0]
        if 4 + 2 * index + 2 > struct.unpack_from("<H", metadata, vtable)[0]:
            return 0  # a field past the vtable's end is absent
        return int(struct.unpack_from("<H", metadata, vtable + 4 + 2 * index)[0])

    root = struct.unpack_from("<I", metadata, 0)[0]
    at = field_offset(root, 2)  # Message.header
    if not at:
        return False
    header = root + at + struct.unpack_from("<I", metadata, root + at)[0]
    return field_offset(header, 3) != 0  # RecordBatch.compression


def _is_ipc(raw: Any) -> bool:
    return isinstance(raw, (bytes, bytearray, memoryview)) and bytes(raw[:4]) == IPC_MARKER


def _reason(err: Exception) -> str:
    if isinstance(err, DecodeError):
        return str(err)
    return cut_reason(f"undecodable: {type(err).__name__}: {err}")
