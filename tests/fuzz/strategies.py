"""Hostile Kafka messages, generated from the schemas (Hypothesis strategies).

Each topic's event yields its JSON schema (msgspec); from it come records whose fields are valid,
or broken one at a time: wrong types, values out of range, NaN and infinities written as JSON
tokens, over-long and empty strings, deep nesting, invalid UTF-8, unknown fields. Around them:
right and wrong envelopes, versions, truncations and plain binary. What a field may hold is read
from the schema, so a new event or field is fuzzed without touching this file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import msgspec
from hypothesis import strategies as st

from hpcinsight.schemas.catalog import Topic


@dataclass(frozen=True)
class Raw:
    """JSON text put into a message as it is (NaN, 1e999, invalid UTF-8, deep nesting)."""

    text: bytes


RAW_TOKENS = [
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e999",
    b"-1e999",
    b"nan",
    b"\xff\xfe",
    b'"\xc3\x28"',
    b'"\\ud800"',
    b"[" * 3000 + b"]" * 3000,
    b"{" * 2000,
    b"01",
    b"-",
    b'"unterminated',
    b"1" * 400,
]


def dumps(value: Any) -> bytes:
    """JSON text of ``value``; :class:`Raw` parts are spliced in unchanged."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return b"{" + b",".join(json.dumps(k).encode() + b":" + dumps(v) for k, v in value.items()) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(dumps(v) for v in value) + b"]"
    return json.dumps(value, allow_nan=True).encode()


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _float32_inside(bound: float, up: bool) -> float:
    """The float32 nearest ``bound`` on the side of the range (``up``: at or above it), so that
    32-bit floats (what a Float32 column round-trips) can be drawn up to a bound such as 1e15."""
    import numpy as np

    near = np.float32(bound)
    if (up and float(near) < bound) or (not up and float(near) > bound):
        near = np.nextafter(near, np.float32(np.inf if up else -np.inf))
    return float(near)


def valid_value(schema: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A value the schema accepts (within its bounds)."""
    schema = _resolve(schema, defs)
    if "anyOf" in schema:
        return st.one_of([valid_value(s, defs) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "integer":
        lo = schema.get("minimum", schema.get("exclusiveMinimum", -(2**31)) + ("exclusiveMinimum" in schema))
        hi = schema.get("maximum", schema.get("exclusiveMaximum", 2**31) - ("exclusiveMaximum" in schema))
        return st.integers(min_value=int(lo), max_value=int(hi))
    if kind == "number":
        lo = schema.get("minimum", schema.get("exclusiveMinimum"))
        hi = schema.get("maximum", schema.get("exclusiveMaximum"))
        return st.floats(
            min_value=None if lo is None else _float32_inside(lo, up=True),
            max_value=None if hi is None else _float32_inside(hi, up=False),
            allow_nan=False,
            allow_infinity=False,
            exclude_min="exclusiveMinimum" in schema,
            exclude_max="exclusiveMaximum" in schema,
            width=32,
        )
    if kind == "string":
        if schema.get("contentEncoding") == "base64":
            return st.binary(max_size=64).map(lambda b: __import__("base64").b64encode(b).decode())
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 40))
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(
            valid_value(schema.get("items", {}), defs),
            min_size=schema.get("minItems", 0),
            max_size=min(schema.get("maxItems", 4), 4),
        )
    if kind == "object":
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            return st.dictionaries(st.text(min_size=1, max_size=12), valid_value(extra, defs), max_size=4)
        return st.fixed_dictionaries({})
    return st.none()


def hostile_value(schema: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A value meant to break the field: another type, out of bounds, or raw JSON text."""
    schema = _resolve(schema, defs)
    out: list[st.SearchStrategy[Any]] = [
        st.sampled_from([Raw(t) for t in RAW_TOKENS]),
        st.sampled_from([None, True, "", "x" * 300, [], {}, -1, 2**64, 2**70, -(2**63) - 1, 0.5, "12", [[[]]]]),
        st.text(max_size=8),
        st.integers(),
        st.floats(allow_nan=False),
    ]
    if "maxLength" in schema:
        out.append(st.just("y" * (schema["maxLength"] + 1)))
    for bound, step in (("minimum", -1), ("maximum", 1)):
        if bound in schema:
            out.append(st.just(schema[bound] + step))
    return st.one_of(out)


def record(schema: dict[str, Any], defs: dict[str, Any], breaks: int) -> st.SearchStrategy[dict[str, Any]]:
    """A record of the event: every field valid, then ``breaks`` of them (or unknown ones) hostile."""
    schema = _resolve(schema, defs)
    props: dict[str, Any] = schema["properties"]
    required = set(schema.get("required", []))

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        rec: dict[str, Any] = {}
        for name, sub in props.items():
            if name in required or draw(st.booleans()):
                rec[name] = draw(valid_value(sub, defs))
        for _ in range(breaks):
            choice = draw(st.integers(0, 3))
            if choice == 0 and rec:
                name = draw(st.sampled_from(sorted(rec)))
                rec.pop(name)  # a field missing
            elif choice == 1:
                rec[draw(st.text(min_size=1, max_size=10))] = draw(hostile_value({}, defs))  # maybe unknown
            else:
                name = draw(st.sampled_from(sorted(props)))
                rec[name] = draw(hostile_value(props[name], defs))
        return rec

    return build()


def messages(topic: Topic, valid_only: bool = False) -> st.SearchStrategy[bytes]:
    """Messages for ``topic``: whole batches, mostly well-formed, with hostile ones among them."""
    event = topic.event
    top = msgspec.json.schema(event)
    defs = top.get("$defs", {})
    good = st.lists(record(top, defs, 0), min_size=1, max_size=4).map(
        lambda recs: dumps({"schema": event.__schema__, "v": event.__version__, "records": recs})
    )
    if valid_only:
        return good
    broken_records = st.lists(st.one_of(record(top, defs, 0), record(top, defs, 1), record(top, defs, 3)), min_size=0, max_size=4)
    envelope = st.fixed_dictionaries(
        {
            "schema": st.one_of(
                st.just(event.__schema__), st.sampled_from(["gpu_sample", "anomaly", "", "x" * 300]), st.integers()
            ),
            "v": st.one_of(st.just(event.__version__), st.integers(-5, 99), st.just("1"), st.just(Raw(b"1e999"))),
            "records": st.one_of(broken_records, st.just(Raw(b"null")), st.just({}), st.just(Raw(b"[" * 5000 + b"]" * 5000))),
        }
    )
    return st.one_of(
        good,
        envelope.map(dumps),
        good.flatmap(lambda m: st.integers(0, max(0, len(m) - 1)).map(lambda n: m[:n])),  # truncated
        good.map(lambda m: m.replace(b'"records"', b'"records","extra":1,"records"', 1)),
        st.binary(max_size=200),
        st.just(b'{"schema":"' + event.__schema__.encode() + b'","v":1,"records":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        st.just(b"{}"),
        st.just(b"null"),
        st.just(b""),
    )


def record_lists(topic: Topic) -> st.SearchStrategy[list[dict[str, Any]]]:
    """Two to five records of the topic's event, each valid or with one field hostile."""
    top = msgspec.json.schema(topic.event)
    defs = top.get("$defs", {})
    return st.lists(st.one_of(record(top, defs, 0), record(top, defs, 1)), min_size=2, max_size=5)


def envelope(topic: Topic, records: list[dict[str, Any]]) -> bytes:
    """A message of ``records`` under the topic's own header."""
    return dumps({"schema": topic.event.__schema__, "v": topic.event.__version__, "records": records})
