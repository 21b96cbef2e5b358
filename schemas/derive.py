"""Derive the Arrow schema and ClickHouse columns of an event from its annotations.

This is the only place that turns a field declaration into storage types. The codec
(:mod:`schemas.codec`) uses the same classes for the wire, so all representations of an
event are projections of one definition.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Iterable, Union, get_args, get_origin

import pyarrow as pa

from schemas.columns import Column
from schemas.events import Event


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
            return f"LowCardinality(Nullable({ch[len('LowCardinality('):-1]}))"
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
    raise TypeError(f"{annotation!r} has no storage Column; use a type from schemas.columns")


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
    records = list(records)
    arrays = []
    for f in fields_of(event):
        values = [getattr(r, f.name) for r in records]
        if pa.types.is_map(f.column.arrow):
            values = [None if v is None else list(v.items()) for v in values]
        arrays.append(pa.array(values, type=f.column.arrow))
    schema = arrow_schema(event)
    if extra:
        for name, array in extra.items():
            arrays.append(array)
            schema = schema.append(pa.field(name, array.type, nullable=False))
    return pa.Table.from_arrays(arrays, schema=schema)


def clickhouse_columns(event: type[Event]) -> list[str]:
    """Column definitions (name, type, codec) for a ClickHouse CREATE TABLE."""
    out = []
    for f in fields_of(event):
        codec = f" CODEC({f.column.codec})" if f.column.codec else ""
        out.append(f"`{f.name}` {f.clickhouse_type}{codec}")
    return out
