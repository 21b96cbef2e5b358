"""The JSON wire codec: every Kafka message is a batch envelope of one event type.

Wire form::

    {"schema": "gpu_sample", "v": 1, "records": [{...}, {...}]}

One message per node per tick carries all of that node's GPUs, which keeps Kafka's
per-message overhead low while each record stays a plain, self-describing object.
Decoding validates types, ranges and finiteness; anything wrong raises
:class:`DecodeError` with a reason fit for a dead-letter record.

:meth:`Codec.decode_table` decodes many messages at once into Arrow columns (what the
ClickHouse sink stores). It parses the whole block in C++ (``pyarrow.json``) and checks the
codec's rules column by column (:func:`hpcinsight.schemas.derive.wire_rules`); a block it cannot vouch
for, to the last message, goes through :meth:`Codec.decode` one message at a time instead, so
the result is always what ``decode`` + :func:`hpcinsight.schemas.derive.to_arrow` would give, and the
messages it refuses are exactly those ``decode`` refuses, with ``decode``'s reason.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import msgspec

from hpcinsight.schemas.events import JSON_DECODING, Event

if TYPE_CHECKING:
    import pyarrow as pa

    from hpcinsight.schemas.derive import ValueRule, WireRule

E = TypeVar("E", bound=Event)
log = logging.getLogger(__name__)


class DecodeError(ValueError):
    """A message that cannot be used; ``str(err)`` is the reason stored with the dead letter."""


class _Header(msgspec.Struct):
    schema: str
    v: int


_header_decoder = msgspec.json.Decoder(_Header)


def _read_header(raw: bytes | bytearray | memoryview) -> _Header:
    """A message's envelope header, or the :class:`DecodeError` that says why there is none."""
    try:
        return _header_decoder.decode(raw)
    except msgspec.ValidationError as err:
        raise DecodeError(f"bad envelope: {err}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        raise DecodeError(f"malformed JSON: {err}") from None


_encoder = msgspec.json.Encoder()
_fields_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])  # a message's fields, each as its text
_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])

#: decodes :meth:`Codec.salvage` may spend on one message before it gives up and the message is
#: dead-lettered whole: a bisection finds each bad record in about twice log2(records) decodes
#: (6 for a node's 8 GPUs, 24 in 4,096 records), so this bounds what a hostile producer costs
SALVAGE_DECODES = 64

#: how many records a refused message holds, and a function making a message of some of them
RecordSplit = tuple[int, Callable[[list[int]], bytes]]


@dataclass
class Salvaged(Generic[E]):
    """What of a refused message is still usable (see :meth:`Codec.salvage`)."""

    records: list[E]  # the records that decode alone, in the message's order
    left_out: bytes  # one message of the same wire holding the others, in order: what a dead letter keeps
    reason: str  # which records were left out, and why each


@dataclass
class Decoded:
    """A block of messages as one Arrow table, and the messages that could not be decoded."""

    table: pa.Table  # the records of the good messages in message order, plus the extra columns
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index of the message, reason)


class Codec(Generic[E]):
    """Encoder and validating decoder of batches of one event type."""

    def __init__(self, event: type[E]) -> None:
        self.event = event
        envelope = msgspec.defstruct(
            f"{event.__name__}Batch",
            [("schema", str), ("v", int), ("records", list[event])],  # type: ignore[valid-type]  # the event type is a run-time value
            frozen=True,
        )
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(envelope)  # a struct type built at run time
        self._envelope = envelope
        self._bulk: _BulkDecoder | None | Literal[False] = False  # built on first use: agents never need it

    def encode(self, records: list[E]) -> bytes:
        return _encoder.encode(self._envelope(self.event.__schema__, self.event.__version__, records))

    def encode_parts(self, records: list[E], limit: int) -> list[bytes]:
        """``records`` as one message, or as several in order where one would pass ``limit`` bytes
        (a broker refuses a message over its limit); a single record is one message whatever its size.
        Parts are cut from what :meth:`_prepared` made of the records, so a wire that converts
        them first (Arrow) converts them once."""
        return _runs(self._prepared(records), self._encode_prepared, limit)

    def _prepared(self, records: list[E]) -> Any:
        """The records as this wire encodes them: anything with a length that slices in order."""
        return records

    def _encode_prepared(self, prepared: Any) -> bytes:
        return self.encode(prepared)

    def decode(self, raw: bytes | None) -> list[E]:
        """The records of one message; any message that is not a valid batch of this event type
        raises :class:`DecodeError` (and nothing else: a decoder that can be made to raise
        something else stops whoever calls it)."""
        try:
            return self._decode(raw)
        except DecodeError:
            raise
        except RecursionError:
            raise DecodeError("malformed JSON: nested too deeply") from None
        except Exception as err:  # noqa: BLE001 - e.g. MemoryError on an absurd message: still one bad message
            raise DecodeError(f"undecodable: {type(err).__name__}: {err}") from None

    def _decode(self, raw: bytes | None) -> list[E]:
        if not raw:
            raise DecodeError("empty message")
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise DecodeError(f"not bytes: {type(raw).__name__}")
        JSON_DECODING.active = True  # its numbers are finite: the events' own check is skipped
        try:  # one parse for a good message: its envelope's header is checked on what it gave
            batch = self._decoder.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as err:
            self._check_header(_read_header(raw))  # the header's fault first, as its reason
            raise DecodeError(f"invalid {self.event.__schema__}: {err}") from None
        finally:
            JSON_DECODING.active = False
        self._check_header(batch)
        return list(batch.records)

    def decode_salvaging(self, raw: bytes | None) -> tuple[list[E], Salvaged[E] | None]:
        """:meth:`decode`'s records, or those :meth:`salvage` finds (with what it left out) where
        decode refused the message; :class:`DecodeError`, decode's own, where nothing is usable."""
        try:
            return self.decode(raw), None
        except DecodeError:
            salvaged = self.salvage(raw)
            if salvaged is None:
                raise
        return salvaged.records, salvaged

    def salvage(self, raw: bytes | None) -> Salvaged[E] | None:
        """The records of a message :meth:`decode` refused that decode alone, under the same rules,
        so that one bad record (from a producer that is not one of our agents) does not cost the
        message's others; and the rest as one message, for the dead letter.

        The records are bisected: a part that decodes is taken whole, one that does not is halved,
        down to single records (a part decodes exactly when each of its records does: the rules
        are per value). None where nothing can be salvaged: the message is not this wire's
        envelope or holds a single record, none of its records decodes alone (or all do: then the
        fault is the message's), or finding them would take more than :data:`SALVAGE_DECODES`."""
        split = self._split_records(raw)
        if split is None:
            return None
        n, message = split
        good: list[E] = []
        bad: list[tuple[int, str]] = []
        todo = _halves(list(range(n)))  # a stack, the first half on top: the whole was refused
        for _ in range(SALVAGE_DECODES):
            if not todo:
                break
            part = todo.pop()
            try:
                good.extend(self.decode(message(part)))
            except DecodeError as err:
                if len(part) == 1:
                    bad.append((part[0], str(err).replace("$.records[0]", f"$.records[{part[0]}]")))
                else:
                    todo += _halves(part)
        if todo or not good or not bad:
            return None
        said = "; ".join(f"record {i}: {why}" for i, why in bad)
        # "records left out" first: the worker counts reasons by what comes before the first colon
        reason = f"records left out: {len(bad)} of {n}, the other {n - len(bad)} used; {said}"
        return Salvaged(good, message([i for i, _ in bad]), cut_reason(reason))

    def _split_records(self, raw: bytes | None) -> RecordSplit | None:
        """How many records ``raw`` holds, and messages of some of them with its envelope, each
        record's text as it came (a value parsed and written again could change: a number's form,
        an escape); or None where it has no list of records to split, or one record only."""
        if not raw or not isinstance(raw, (bytes, bytearray, memoryview)):
            return None
        try:
            top = _fields_decoder.decode(raw)
            records = _list_decoder.decode(top.pop("records"))
        except Exception:  # noqa: BLE001 - not a JSON object with a list of records (or nested too deeply)
            return None
        if len(records) < 2:
            return None
        head = b"".join(_encoder.encode(name) + b":" + bytes(value) + b"," for name, value in top.items())

        def message(indices: list[int]) -> bytes:
            return b"{" + head + b'"records":[' + b",".join(bytes(records[i]) for i in indices) + b"]}"

        return len(records), message

    def _check_header(self, header: Any) -> None:  # a _Header, or the envelope (built at run time)
        if header.schema != self.event.__schema__:
            raise DecodeError(f"schema {header.schema!r} does not belong here; expected {self.event.__schema__!r}")
        if header.v != self.event.__version__:
            raise DecodeError(
                f"unknown schema version {header.v} of {header.schema!r}; this build reads version {self.event.__version__}"
            )

    def decode_table(self, raws: Sequence[bytes | None], extra: Mapping[str, pa.Array] | None = None) -> Decoded:
        """Decode a block of messages into one table with the columns of :func:`to_arrow`.

        ``extra`` holds columns with one value per message (the sink's Kafka partition and
        offset); each value is repeated for every record of its message. Messages that cannot
        be decoded are left out and reported with the reason :meth:`decode` gives.
        """
        import pyarrow as pa

        from hpcinsight.schemas.derive import arrow_schema, to_arrow

        if self._bulk is False:
            self._bulk = _BulkDecoder.of(self.event)
        got = None
        if self._bulk is not None and len(raws) >= _BULK_MIN:
            try:
                got = self._bulk.decode(raws)
            except Exception:
                log.exception(
                    "bulk decoding of %d %s messages failed; decoding them one by one", len(raws), self.event.__schema__
                )
        rejected: list[tuple[int, str]] = []
        if got is not None:
            table, owner = got
        else:
            records: list[E] = []
            owners: list[int] = []
            for i, raw in enumerate(raws):
                try:
                    batch = self.decode(raw)
                except DecodeError as err:
                    rejected.append((i, str(err)))
                    continue
                records.extend(batch)
                owners.extend([i] * len(batch))
            table = to_arrow(self.event, records) if records else arrow_schema(self.event).empty_table()
            owner = pa.array(owners, pa.int64())
        for name, values in (extra or {}).items():
            table = table.append_column(pa.field(name, values.type, nullable=False), values.take(owner))
        return Decoded(table, rejected)


#: below this many messages a block is not worth a bulk parse
_BULK_MIN = 4


class _BulkDecoder:
    """A whole block of one event type's messages, parsed by pyarrow.json and checked column-wise.

    :meth:`decode` answers None whenever it cannot vouch that every message of the block is one
    :meth:`Codec.decode` accepts, and that the table is the one ``to_arrow`` would build;
    being stricter than the codec only costs the slow path, never a wrong row. Fields with no
    column-wise rule (maps, bytes) are decoded by msgspec alone, message by message.
    """

    def __init__(self, event: type[Event], rules: tuple[WireRule, ...]) -> None:
        import typing

        import pyarrow as pa
        import pyarrow.json as pj

        from hpcinsight.schemas.derive import arrow_schema

        self.event = event
        self.rules = rules
        self.schema = arrow_schema(event)
        read = [r for r in rules if r.value is not None]
        self._read_names = {r.field.name for r in read}
        record = pa.struct([pa.field(r.field.name, r.value.read_type) for r in read if r.value is not None])
        envelope = pa.schema([("schema", pa.string()), ("v", pa.int64()), ("records", pa.list_(record))])
        projected = [r for r in rules if r.value is None]
        self._projected_names = {r.field.name for r in projected}
        # With fields left to msgspec, pyarrow.json must let them through (it infers a type and
        # that column is dropped), so unknown fields are found by name in what it read.
        self._parse = pj.ParseOptions(explicit_schema=envelope, unexpected_field_behavior="infer" if projected else "error")
        self._read = pj.ReadOptions(use_threads=True)
        self._projection: msgspec.json.Decoder[Any] | None = None
        if projected:
            hints = typing.get_type_hints(event, include_extras=True)
            spec = {f.name: f for f in msgspec.structs.fields(event)}
            # the Event base (its finite-float check) only where a projected field is a float itself
            floats = any(pa.types.is_floating(r.field.column.arrow) for r in projected)
            only = msgspec.defstruct(
                f"{event.__name__}Projection",
                [(r.field.name, hints[r.field.name], _default_of(spec[r.field.name])) for r in projected],
                bases=(Event,) if floats else (),
                kw_only=True,
                forbid_unknown_fields=False,
                frozen=True,
                gc=False,
            )
            self._projection = msgspec.json.Decoder(
                msgspec.defstruct(f"{event.__name__}ProjectionBatch", [("records", list[only])])  # type: ignore[valid-type]  # a struct type built at run time
            )
        # pyarrow.json reads an absent field and an explicit null alike; for a field that may be
        # absent (it has a default) but must not be null, the null is looked for in the text.
        defaulted = [re.escape(r.field.name) for r in read if r.default is not msgspec.NODEFAULT]
        self._null_for_default = (
            re.compile(rb'"(?:' + "|".join(defaulted).encode() + rb')"[ \t]*:[ \t]*null') if defaulted else None
        )

    @classmethod
    def of(cls, event: type[Event]) -> _BulkDecoder | None:
        from hpcinsight.schemas.derive import wire_rules

        rules = wire_rules(event)
        return None if rules is None else cls(event, rules)

    def decode(self, raws: Sequence[bytes | None]) -> tuple[pa.Table, pa.Array] | None:
        """The block's records and, for each, the index of its message; or None."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.json as pj

        n = len(raws)
        # One message a line: none may be empty or hold a line break (pretty-printed JSON is
        # valid, but not here), and each must start with '{' and end with '}', so that every
        # line is exactly one message.
        for raw in raws:
            if not raw or raw[0] != 0x7B or raw[-1] != 0x7D or b"\n" in raw or b"\r" in raw:
                return None
        buf = b"\n".join(raws)  # type: ignore[arg-type]  # every raw was checked above: bytes, one JSON object each
        if self._null_for_default is not None:
            if self._null_for_default.search(buf) or (b"\\" in buf and b"\\u" in buf):
                return None  # (a \u escape could spell a field name the pattern would miss)
        try:
            table = pj.read_json(pa.BufferReader(buf), read_options=self._read, parse_options=self._parse)
            # unknown fields (let through for those left to msgspec): none at the top, none in a record
            record_type = table.schema.field("records").type.value_type
            names = [record_type.field(i).name for i in range(record_type.num_fields)]
            if table.column_names != ["schema", "v", "records"] or not set(names) <= self._read_names | self._projected_names:
                return None
        except Exception:  # noqa: BLE001 - any parse failure (or a field name not even UTF-8): the codec finds the culprits and says why
            return None
        if table.num_rows != n:
            return None
        schema_col, version_col, records = table.column("schema"), table.column("v"), table.column("records")
        if schema_col.null_count or version_col.null_count or records.null_count:
            return None
        if not (
            all_true(pc.equal(schema_col, self.event.__schema__)) and all_true(pc.equal(version_col, self.event.__version__))
        ):
            return None
        columns: dict[str, list[pa.Array]] = {name: [] for name in names}
        owners = []
        start = 0
        for chunk in records.chunks:
            values = chunk.flatten()
            if values.null_count:
                return None  # a null record
            for name, array in zip(names, values.flatten(), strict=True):
                columns[name].append(array)
            owners.append(pc.add(pc.list_parent_indices(chunk), start))
            start += len(chunk)
        projected = self._project(raws, records) if self._projection is not None else {}
        if projected is None:
            return None
        arrays = []
        for rule in self.rules:
            if rule.value is None:
                array = projected[rule.field.name]
            else:
                array = _column(rule, pa.chunked_array(columns[rule.field.name], rule.value.read_type))
            if array is None:
                return None
            arrays.append(array)
        owner = pa.chunked_array(owners, pa.int64()) if owners else pa.chunked_array([], pa.int64())
        return pa.Table.from_arrays(arrays, schema=self.schema), owner

    def _project(self, raws: Sequence[bytes | None], records: pa.ChunkedArray) -> dict[str, pa.Array] | None:
        """The fields left to msgspec, decoded alone from every message, as Arrow arrays."""
        import pyarrow.compute as pc

        from hpcinsight.schemas.derive import arrow_values

        assert self._projection is not None
        try:
            batches = [self._projection.decode(raw).records for raw in raws]  # type: ignore[arg-type]  # raws checked non-empty bytes by the caller
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
            return None
        if [len(b) for b in batches] != pc.list_value_length(records).to_pylist():
            return None
        rows = [r for batch in batches for r in batch]
        return {
            rule.field.name: arrow_values(rule.field, [getattr(r, rule.field.name) for r in rows])
            for rule in self.rules
            if rule.value is None
        }


def _default_of(spec: Any) -> Any:
    if spec.default_factory is not msgspec.NODEFAULT:
        return msgspec.field(default_factory=spec.default_factory)
    return spec.default


def all_true(mask: Any) -> bool:
    import pyarrow.compute as pc

    return pc.all(mask).as_py() is not False


def _column(rule: WireRule, values: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """``values`` as read, checked against ``rule`` and cast to the field's Arrow type; None if
    any value breaks the rule."""
    import pyarrow.compute as pc

    if values.null_count:
        if rule.nullable:
            pass
        elif rule.default is not msgspec.NODEFAULT:
            values = _fill(values, rule.default)
        else:
            return None  # a required field absent, or null
    if rule.value is None:  # no column-wise rule: such fields are decoded by msgspec, never here
        return None
    if not _values_ok(rule.value, values):
        return None
    target = rule.field.column.arrow
    if values.type != target:
        values = values.cast(target)
        if rule.value.finite and not all_true(pc.is_finite(values)):
            return None  # a finite float64 too large for float32
    return values


def _fill(values: pa.ChunkedArray, default: Any) -> pa.ChunkedArray:
    """``values`` with its nulls replaced by ``default``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if default == [] and pa.types.is_list(values.type):
        # fill_null on lists is a slow generic kernel; a null list slot written by the JSON
        # reader is already an empty one, so dropping the validity bitmap is enough (checked).
        filled = pa.chunked_array(
            [pa.ListArray.from_arrays(c.offsets, c.values, type=c.type) if c.null_count else c for c in values.chunks],
            values.type,
        )
        if pc.sum(pc.list_value_length(filled), min_count=0) == pc.sum(pc.list_value_length(values), min_count=0):
            return filled
    return pc.fill_null(values, pa.scalar(default, values.type))


def _values_ok(rule: ValueRule, values: Any) -> bool:
    return values.null_count == len(values) or rule_violation(rule, values, check_utf8=True) is None


def _halves(part: list[int]) -> list[list[int]]:
    """``part`` cut in two, the second half first (pushed on a stack, the first comes off first)."""
    return [part[len(part) // 2 :], part[: len(part) // 2]]


def _runs(items: Any, encode: Callable[[Any], bytes], limit: int) -> list[bytes]:
    """``encode(items)``, or, where that passes ``limit``, the messages of as many equal runs of
    items as its size asks (a tenth to spare), each encoded once; a run still over is cut again.
    Halving instead encoded a message 8 times the limit four times over, one level at a time."""
    whole = encode(items)
    if len(whole) <= limit or len(items) < 2:
        return [whole]
    n = len(items)
    runs = min(n, -(-len(whole) * 10 // (limit * 9)))
    return [m for i in range(runs) for m in _runs(items[n * i // runs : n * (i + 1) // runs], encode, limit)]


#: the longest reason a rejected message's dead letter carries
REASON_MAX = 300


def cut_reason(reason: str) -> str:
    return reason if len(reason) <= REASON_MAX else reason[: REASON_MAX - 3] + "..."


def rule_violation(rule: ValueRule, values: Any, check_utf8: bool = False) -> str | None:
    """Why some of ``values`` (nulls aside) break ``rule``, naming the offending value; or None.
    ``check_utf8``: strings too (pyarrow.json does not check that they are UTF-8; msgspec does)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if check_utf8 and pa.types.is_string(values.type) and not _utf8(values):
        return "holds a string that is not UTF-8"
    if pa.types.is_timestamp(values.type):
        values = values.cast(pa.int64())
    if rule.finite and not all_true(pc.is_finite(values)):
        return "holds a value that is not a finite number"
    bounds = bounds_violation(values, rule.ge, rule.gt, rule.le, rule.lt)
    if bounds is not None:
        return f"is {bounds}"
    if rule.min_length is not None or rule.max_length is not None:
        lengths = pc.list_value_length(values) if rule.item is not None else pc.utf8_length(values)
        what = "items" if rule.item is not None else "characters"
        short = bounds_violation(lengths, rule.min_length, None, rule.max_length, None)
        if short is not None:
            return f"has a length ({what}) of {short}"
    if rule.values is not None:
        allowed = pc.is_in(values, value_set=pa.array(rule.values, values.type), skip_nulls=True)
        if not all_true(allowed):
            odd = pc.filter(values, pc.invert(allowed))[0].as_py()
            return cut_reason(f"is {odd!r}, not one of {', '.join(rule.values)}")
    if rule.item is not None:
        items = pc.list_flatten(values)
        if items.null_count:
            return "holds a null item"
        if len(items):
            why = rule_violation(rule.item, items, check_utf8)
            if why is not None:
                return f"holds an item that {why}"
    return None


def _utf8(values: Any) -> bool:
    """pyarrow.json does not check that strings are UTF-8; msgspec does."""
    import pyarrow as pa

    try:
        for chunk in getattr(values, "chunks", [values]):
            chunk.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def bounds_violation(values: Any, ge: Any, gt: Any, le: Any, lt: Any) -> str | None:
    """The smallest or largest of ``values`` where it breaks a bound, said in words; or None."""
    import pyarrow.compute as pc

    if ge is None and gt is None and le is None and lt is None:
        return None
    extremes = pc.min_max(values)
    lo, hi = extremes["min"].as_py(), extremes["max"].as_py()
    if lo is None:
        return None  # nothing but nulls
    if ge is not None and lo < ge:
        return f"{lo!r}, below its minimum {ge!r}"
    if gt is not None and lo <= gt:
        return f"{lo!r}, not above {gt!r}"
    if le is not None and hi > le:
        return f"{hi!r}, above its maximum {le!r}"
    if lt is not None and hi >= lt:
        return f"{hi!r}, not below {lt!r}"
    return None
