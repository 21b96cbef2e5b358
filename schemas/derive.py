"""Derive the Arrow schema and ClickHouse columns of an event from its annotations.

This is the only place that turns a field declaration into storage types. The codec
(:mod:`hpcinsight.schemas.codec`) uses the same classes for the wire, so all representations of an
event are projections of one definition.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Union, get_args, get_origin

import msgspec
import msgspec.inspect as mi
import pyarrow as pa

from hpcinsight.schemas.columns import Column
from hpcinsight.schemas.events import Event


@dataclass(frozen=True)
class Field:
    """One column of an event: name, nullability and its storage facts."""

    name: str
    column: Column
    nullable: bool

    @property
    def clickhouse_type(self) -> str:
        ch = self.column.clickhouse
        if not self.nullable:
            return ch
        if ch.startswith("LowCardinality("):  # ClickHouse nests it the other way round
            return f"LowCardinality(Nullable({ch[len('LowCardinality(') : -1]}))"
        return f"Nullable({ch})"

    @property
    def arrow_field(self) -> pa.Field:
        return pa.field(self.name, self.column.arrow, nullable=self.nullable)


def _column_of(annotation: Any) -> tuple[Column, bool]:
    nullable = False
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) != 1:
            raise TypeError(f"only `T | None` unions are supported, got {annotation!r}")
        nullable = True
        annotation = members[0]
    if get_origin(annotation) is Annotated:
        for meta in annotation.__metadata__:
            if isinstance(meta, Column):
                return meta, nullable
    raise TypeError(f"{annotation!r} has no storage Column; use a type from hpcinsight.schemas.columns")


@cache
def fields_of(event: type[Event]) -> tuple[Field, ...]:
    """The event's fields in declaration order, with their storage types."""
    hints = typing.get_type_hints(event, include_extras=True)
    out = []
    for name in event.__struct_fields__:
        column, nullable = _column_of(hints[name])
        out.append(Field(name, column, nullable))
    return tuple(out)


@cache
def arrow_schema(event: type[Event]) -> pa.Schema:
    return pa.schema([f.arrow_field for f in fields_of(event)])


def to_arrow(event: type[Event], records: Iterable[Event], extra: dict[str, pa.Array] | None = None) -> pa.Table:
    """Columnar form of ``records`` for ``insert_arrow``; ``extra`` appends columns (sink metadata)."""
    fields = fields_of(event)
    # one C-level tuple per record, transposed into one tuple per field
    columns = list(zip(*map(msgspec.structs.astuple, records))) or [()] * len(fields)
    arrays = [arrow_values(f, values) for f, values in zip(fields, columns, strict=True)]
    schema = arrow_schema(event)
    if extra:
        for name, array in extra.items():
            arrays.append(array)
            schema = schema.append(pa.field(name, array.type, nullable=False))
    return pa.Table.from_arrays(arrays, schema=schema)


def arrow_values(f: Field, values: Sequence[Any]) -> pa.Array:
    """One field's values (as the decoded records hold them) as an Arrow array of its type."""
    if pa.types.is_map(f.column.arrow):
        values = [None if v is None else list(v.items()) for v in values]
    return pa.array(values, type=f.column.arrow)


def clickhouse_columns(event: type[Event]) -> list[str]:
    """Column definitions (name, type, codec) for a ClickHouse CREATE TABLE."""
    out = []
    for f in fields_of(event):
        codec = f" CODEC({f.column.codec})" if f.column.codec else ""
        out.append(f"`{f.name}` {f.clickhouse_type}{codec}")
    return out


# --- the wire rules, for decoding many messages at once --------------------------------------
#
# The codec validates one message at a time with msgspec. To decode a whole block of messages in
# C++ (pyarrow.json) the same rules are needed column by column. They are read from msgspec's
# own view of each annotation (``msgspec.inspect``), so there is still one definition: a bound
# added to a type in ``hpcinsight.schemas.columns`` is enforced by both paths. A field whose rule has no
# column-wise form (a map, bytes, a pattern) is decoded by msgspec alone, message by message,
# with its own annotation: slower than Arrow, much faster than decoding the whole record.


@dataclass(frozen=True)
class ValueRule:
    """What msgspec accepts for one JSON value, as pyarrow.json reads it and compute checks it."""

    read_type: pa.DataType  # int64, float64, string, bool, or a list of one of those
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    min_length: int | None = None  # characters of a string, items of a list
    max_length: int | None = None
    values: tuple[str, ...] | None = None  # a Literal's allowed strings
    finite: bool = False  # floats: the Event base refuses NaN and infinities
    item: ValueRule | None = None  # a list's items


@dataclass(frozen=True)
class WireRule:
    """One field on the wire: its value rule, and what its absence or an explicit null means."""

    field: Field
    value: ValueRule | None  # None: decoded by msgspec, alone (no column-wise form)
    required: bool  # absent -> invalid
    nullable: bool  # explicit null -> None
    default: Any  # absent (and not nullable) -> this value; msgspec.NODEFAULT when there is none


def _value_rule(info: Any, target: pa.DataType) -> ValueRule | None:
    bounds = {
        "ge": getattr(info, "ge", None),
        "gt": getattr(info, "gt", None),
        "le": getattr(info, "le", None),
        "lt": getattr(info, "lt", None),
    }

    def numbers(read_type: pa.DataType, finite: bool = False) -> ValueRule:
        return ValueRule(read_type, ge=bounds["ge"], gt=bounds["gt"], le=bounds["le"], lt=bounds["lt"], finite=finite)

    if isinstance(info, mi.IntType) and info.multiple_of is None:
        if pa.types.is_integer(target) or pa.types.is_timestamp(target):
            return numbers(pa.int64())
    elif isinstance(info, mi.FloatType) and info.multiple_of is None:
        if pa.types.is_floating(target):
            return numbers(pa.float64(), finite=True)
    elif isinstance(info, mi.StrType) and info.pattern is None:
        if pa.types.is_string(target):
            return ValueRule(pa.string(), min_length=info.min_length, max_length=info.max_length)
    elif isinstance(info, mi.LiteralType) and all(isinstance(v, str) for v in info.values):
        if pa.types.is_string(target):
            return ValueRule(pa.string(), values=tuple(str(v) for v in info.values))
    elif isinstance(info, mi.BoolType):
        if pa.types.is_boolean(target):
            return ValueRule(pa.bool_())
    elif isinstance(info, mi.ListType) and pa.types.is_list(target):
        item = _value_rule(info.item_type, target.value_type)
        if item is not None and item.item is None:
            return ValueRule(pa.list_(item.read_type), min_length=info.min_length, max_length=info.max_length, item=item)
    return None


@cache
def wire_rules(event: type[Event]) -> tuple[WireRule, ...] | None:
    """The codec's rules for every field of ``event`` in a form a block of messages can be checked
    by, or None if the event's wire form is not one JSON object of its fields, each under its own
    name, unknown ones refused."""
    info = mi.type_info(event)
    if not isinstance(info, mi.StructType) or info.array_like or not info.forbid_unknown_fields:
        return None
    out = []
    for f, wire in zip(fields_of(event), info.fields, strict=True):
        if wire.name != f.name or wire.encode_name != f.name:
            return None
        kind, nullable = wire.type, False
        if isinstance(kind, mi.UnionType):
            union = kind
            members = [t for t in union.types if not isinstance(t, mi.NoneType)]
            kind, nullable = (members[0] if len(members) == 1 else union), len(members) < len(union.types)
        value = _value_rule(kind, f.column.arrow)
        default = wire.default if wire.default_factory is msgspec.NODEFAULT else wire.default_factory()
        if nullable and default not in (None, msgspec.NODEFAULT):
            value = None  # an absent field and an explicit null would read alike in Arrow
        out.append(WireRule(f, value, wire.required, nullable, msgspec.NODEFAULT if default is None else default))
    return tuple(out)
