"""Codec.decode_table (a block of messages straight to Arrow) against decode + to_arrow, one by one.

For every stored topic: valid blocks give the very table the per-message codec and ``to_arrow``
give, through the bulk path wherever the event allows it; hostile messages inside a block of
good ones are refused exactly when ``Codec.decode`` refuses them, with its reason, and the good
ones around them are kept. The hostile cases are derived from the wire rules of each field, so
a field or bound added to an event is covered without touching this file.
"""

from __future__ import annotations

import json
import random
from typing import Any

import msgspec
import pyarrow as pa
import pytest

from hpcinsight.agents.sim.gpu import InjectedXid, SimConfig, SimGpuCollector, SimProcessCollector, SimXidCollector
from hpcinsight.agents.sim.ib import SimIbCollector, SimIbConfig
from hpcinsight.schemas.catalog import GPU_PROCESSES, GPU_SAMPLES, GPU_XID, IB_SAMPLES, STORED, Topic
from hpcinsight.schemas.codec import Codec, DecodeError, _BulkDecoder
from hpcinsight.schemas.derive import ValueRule, WireRule, to_arrow, wire_rules
from tests.test_schemas import EXAMPLES, T0

BULK = [t for t in STORED if wire_rules(t.event) is not None]
NUMERIC = [
    t for t in BULK if any(r.value is not None and not pa.types.is_string(r.value.read_type) for r in wire_rules(t.event) or ())
]


def extra_for(n: int) -> dict[str, pa.Array]:
    return {
        "_partition": pa.array([k % 3 for k in range(n)], pa.uint32()),
        "_offset": pa.array([1000 + k for k in range(n)], pa.uint64()),
    }


def reference(topic: Topic, raws: list[Any]) -> tuple[pa.Table, list[tuple[int, str]]]:
    """What the per-message codec and to_arrow make of the block."""
    records, owners, rejected = [], [], []
    for i, raw in enumerate(raws):
        try:
            got = topic.codec.decode(raw)
        except DecodeError as err:
            rejected.append((i, str(err)))
            continue
        records.extend(got)
        owners.extend([i] * len(got))
    extra = {name: values.take(pa.array(owners, pa.int64())) for name, values in extra_for(len(raws)).items()}
    return to_arrow(topic.event, records, extra), rejected


def check(topic: Topic, raws: list[Any]) -> pa.Table:
    got = topic.codec.decode_table(raws, extra_for(len(raws)))
    want, rejected = reference(topic, raws)
    assert got.rejected == rejected
    assert got.table.schema == want.schema
    assert got.table.equals(want), _first_difference(got.table, want)
    return got.table


def _first_difference(got: pa.Table, want: pa.Table) -> str:
    if got.num_rows != want.num_rows:
        return f"{got.num_rows} rows, want {want.num_rows}"
    for name in want.column_names:
        if not got.column(name).equals(want.column(name)):
            a, b = got.column(name).to_pylist(), want.column(name).to_pylist()
            k = next(i for i in range(len(a)) if a[i] != b[i] or type(a[i]) is not type(b[i]))
            return f"column {name!r} row {k}: {a[k]!r} != {b[k]!r}"
    return "tables differ"


def bulk_accepts(topic: Topic, raws: list[bytes]) -> bool:
    rules = wire_rules(topic.event)
    return rules is not None and _BulkDecoder(topic.event, rules).decode(raws) is not None


def envelope(topic: Topic, records: list[bytes], schema: str | None = None, v: Any = None) -> bytes:
    head = json.dumps({"schema": schema or topic.event.__schema__, "v": topic.event.__version__ if v is None else v})
    return (head[:-1] + ',"records":[').encode() + b",".join(records) + b"]}"


def record(fields: dict[str, bytes]) -> bytes:
    """A JSON object from already-encoded values (so that NaN and friends can be spelled)."""
    return b"{" + b",".join(json.dumps(k).encode() + b":" + v for k, v in fields.items()) + b"}"


def minimal(event: Any) -> Any:
    """The example with every optional field left at its default."""
    example = EXAMPLES[event]
    required = len(event.__struct_fields__) - len(event.__struct_defaults__)
    return event(*[getattr(example, name) for name in event.__struct_fields__[:required]])


# --- valid input --------------------------------------------------------------------------
@pytest.mark.parametrize("topic", STORED, ids=lambda t: t.name)
def test_valid_blocks_give_the_codec_s_table(topic: Topic) -> None:
    full, small = EXAMPLES[topic.event], minimal(topic.event)
    codec = Codec(topic.event)  # the JSON wire (a stored topic's codec reads it on any wire)
    raws = [
        codec.encode([full, small]),
        codec.encode([]),
        codec.encode([small] * 3),
        codec.encode([full]),
        codec.encode([small, full]),
    ]
    table = check(topic, raws)
    assert table.num_rows == 8
    # the bulk path really ran, where the event's rules allow it
    assert bulk_accepts(topic, raws) == (topic in BULK)


def test_the_volume_topics_take_the_bulk_path() -> None:
    assert {t.name for t in BULK} >= {
        "gpu.samples",
        "ib.samples",
        "gpu.processes",
        "gpu.xid",
        "gpu.quantiles",
        "scheduler.events",
    }


def test_simulated_cluster_decodes_in_bulk() -> None:
    gpus = SimGpuCollector(SimConfig(nodes=6, gpus_per_node=8, seed=3))
    views = [
        (GPU_SAMPLES, gpus),
        (GPU_PROCESSES, SimProcessCollector(gpus)),
        (GPU_XID, SimXidCollector(gpus, tuple(InjectedXid(n, 1, 2.0, 79, 3) for n in range(6)))),
        (IB_SAMPLES, SimIbCollector(SimIbConfig(nodes=6, ports=4, seed=3))),
    ]
    raws: dict[str, list[bytes]] = {topic.name: [] for topic, _ in views}
    for k in range(20):
        for topic, collector in views:  # the GPUs first: the other views read their last tick
            samples = collector.sample(T0 + k * 1000)
            for node in sorted({s.node for s in samples}):
                raws[topic.name].append(Codec(topic.event).encode([s for s in samples if s.node == node]))
    for topic, _ in views:
        assert len(raws[topic.name]) >= 6, topic.name
        check(topic, raws[topic.name])
        assert bulk_accepts(topic, raws[topic.name]), topic.name


def _valid_value(rule: ValueRule, rnd: random.Random) -> Any:
    if rule.item is not None:
        lo, hi = rule.min_length or 0, min(rule.max_length if rule.max_length is not None else 4, 4)
        return [_valid_value(rule.item, rnd) for _ in range(rnd.randint(lo, hi))]
    if rule.values is not None:
        return rnd.choice(rule.values)
    if pa.types.is_boolean(rule.read_type):
        return rnd.random() < 0.5
    if pa.types.is_string(rule.read_type):
        lo, hi = rule.min_length or 0, rule.max_length if rule.max_length is not None else 300
        n = rnd.choice([lo, hi, rnd.randint(lo, min(hi, 40))]) if hi <= 300 else rnd.randint(lo, 40)
        alphabet = "abcXYZ09 -_./:é中😀\"'"
        return "".join(rnd.choice(alphabet) for _ in range(n))
    if pa.types.is_integer(rule.read_type):
        lo = rule.ge if rule.ge is not None else -(2**63)
        hi = rule.le if rule.le is not None else 2**63 - 1
        return rnd.choice([lo, hi, rnd.randint(lo, hi), max(lo, min(hi, 0))])
    lo = rule.ge if rule.ge is not None else -1.7e308
    hi = rule.le if rule.le is not None else 1.7e308
    if rule.ge is None and rule.le is None:
        return rnd.choice([0.0, -0.0, 1e-320, 1.7e308, -1.7e308, 2**70, rnd.uniform(-1e6, 1e6), 10 ** rnd.uniform(-300, 300)])
    return rnd.choice([float(lo), float(hi), rnd.uniform(lo, hi), int(lo), round(rnd.uniform(lo, hi), 1)])


def _random_record(topic: Topic, rules: tuple[WireRule, ...], rnd: random.Random) -> bytes:
    fields = {}
    example = EXAMPLES[topic.event]
    for rule in rules:
        roll = rnd.random()
        if not rule.required and roll < 0.3:
            continue  # absent
        if rule.nullable and roll < 0.45:
            fields[rule.field.name] = b"null"
            continue
        if rule.value is None:  # left to msgspec: the example's value, or another one of its kind
            value = getattr(example, rule.field.name)
            value = rnd.choice([value, type(value)()]) if isinstance(value, (dict, bytes)) else value
        else:
            value = _valid_value(rule.value, rnd)
        fields[rule.field.name] = msgspec.json.encode(value)
    keys = list(fields)
    rnd.shuffle(keys)  # key order is free on the wire
    return record({k: fields[k] for k in keys})


@pytest.mark.parametrize("topic", BULK, ids=lambda t: t.name)
def test_random_valid_records_give_the_codec_s_table(topic: Topic) -> None:
    rules = wire_rules(topic.event)
    assert rules is not None
    rnd = random.Random(topic.name)
    raws = [envelope(topic, [_random_record(topic, rules, rnd) for _ in range(rnd.randint(0, 6))]) for _ in range(60)]
    table = check(topic, raws)
    assert table.num_rows > 100
    if not any(b"\\" in raw for raw in raws):
        assert bulk_accepts(topic, raws)


NUMBER_SPELLINGS = {
    "int": [b"0", b"-0", b"7", b"1" + b"0" * 18],
    "float": [
        b"0",
        b"-0",
        b"-0.0",
        b"1E2",
        b"1e+2",
        b"1.5e-3",
        b"0.30000000000000004",
        b"0.1000000000000000055511151231257827",
        b"2.2250738585072011e-308",
        b"4.9e-324",
        b"1e-400",
        b"1.7976931348623157e308",
        b"99999999999999999999999",
        b"12.000000000000000000000000000000001",
        b"7",
    ],
}


@pytest.mark.parametrize("topic", NUMERIC, ids=lambda t: t.name)
def test_every_json_spelling_of_a_number_reads_as_the_codec_reads_it(topic: Topic) -> None:
    rules = wire_rules(topic.event)
    assert rules is not None
    good = _good_fields(topic)
    records = []
    for rule in rules:
        t = rule.value.read_type if rule.value is not None else pa.null()
        kind = "int" if pa.types.is_integer(t) else "float" if pa.types.is_floating(t) else None
        for spelling in NUMBER_SPELLINGS.get(kind, []):
            records.append(record({**good, rule.field.name: spelling}))
    raws = [envelope(topic, [r]) for r in records]
    check(topic, raws)  # those out of a field's range are refused, by both paths alike
    valid = [raw for raw in raws if not reference(topic, [raw])[1]]
    if len(valid) >= 4:  # (an event whose only numbers are timestamps has none of these in range)
        check(topic, valid)
        assert bulk_accepts(topic, valid)


# --- hostile input ------------------------------------------------------------------------
def _good_fields(topic: Topic) -> dict[str, bytes]:
    return {k: msgspec.json.encode(v) for k, v in msgspec.structs.asdict(EXAMPLES[topic.event]).items()}


def _wrong_values(rule: WireRule) -> list[bytes]:
    """Values of the wrong type, out of range, too long or short, not allowed, or not finite."""
    value = rule.value
    out = [b"{}", b'{"a":1}']
    if value is None:  # left to msgspec (a map, bytes): a few of each wrong kind
        out = [
            b'"x"',
            b'"@@"',
            b"1",
            b"[]",
            b'{"a":null}',
            b'{"a":"x"}',
            b'{"a":1e999}',
            b'{"a":NaN}',
            b'{"a":{}}',
            b'{"a":[1]}',
            b'{"a":1,"a":2}',
        ]
        return out + ([] if rule.nullable else [b"null"])
    t = value.read_type
    if value.item is not None:
        out += [b'"x"', b"1", b"[null]", b"[1]", b"[[]]", b"[{}]"]
    elif pa.types.is_boolean(t):
        out += [b"1", b"0", b'"true"', b"[]"]
    elif pa.types.is_string(t):
        out += [b"1", b"1.5", b"true", b'["a"]']
        if value.min_length:
            out.append(json.dumps("x" * (value.min_length - 1)).encode())
        if value.max_length is not None:
            out += [json.dumps("x" * (value.max_length + 1)).encode(), json.dumps("é" * (value.max_length + 1)).encode()]
        if value.values is not None:
            out += [b'"bogus"', json.dumps(value.values[0].upper()).encode()]
    elif pa.types.is_integer(t):
        out += [b'"1"', b"1.0", b"1e0", b"true", b"99999999999999999999999", b"-99999999999999999999999"]
        if value.ge is not None:
            out.append(str(value.ge - 1).encode())
        if value.le is not None:
            out.append(str(value.le + 1).encode())
    else:
        out += [b'"1.5"', b"true", b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"]
        if value.ge is not None:
            out.append(repr(float(value.ge) - 0.5).encode())
        if value.le is not None:
            out += [repr(float(value.le) + 0.5).encode(), b"1e300"]
    if not rule.nullable:
        out.append(b"null")
    return out


def _hostile_records(topic: Topic) -> list[tuple[str, bytes]]:
    rules = wire_rules(topic.event)
    assert rules is not None
    good = _good_fields(topic)
    out = []
    for rule in rules:
        name = rule.field.name
        for wrong in _wrong_values(rule):
            out.append((f"{name}={wrong[:20]!r}", record({**good, name: wrong})))
        if rule.required:
            out.append((f"{name} missing", record({k: v for k, v in good.items() if k != name})))
        if not rule.nullable:
            # an explicit null spelled so that a text search could miss it
            key = json.dumps(name).encode()
            escaped = b'"' + b"".join(b"\\u%04x" % ord(c) for c in name[:1]) + name[1:].encode() + b'"'
            rest = b",".join(json.dumps(k).encode() + b":" + v for k, v in good.items() if k != name)
            for spelling in (key + b" : null", key + b":\tnull", escaped + b":null"):
                out.append((f"{name} null spelled {spelling[:30]!r}", b"{" + rest + b"," + spelling + b"}"))
    out.append(("unknown field", record({**good, "surprise": b"1"})))
    out.append(("unknown null field", record({**good, "surprise": b"null"})))
    first = next(iter(good))
    out.append(("duplicate key", record(good)[:-1] + b"," + json.dumps(first).encode() + b":" + good[first] + b"}"))
    return out


@pytest.mark.parametrize("topic", BULK, ids=lambda t: t.name)
def test_hostile_records_are_refused_exactly_as_the_codec_refuses_them(topic: Topic) -> None:
    good = envelope(topic, [record(_good_fields(topic))] * 2)
    cases = _hostile_records(topic)
    assert len(cases) > 3 * len(wire_rules(topic.event) or ())
    refused = 0
    for what, bad in cases:
        raws = [good, good, envelope(topic, [record(_good_fields(topic)), bad]), good, good]
        got = topic.codec.decode_table(raws, extra_for(len(raws)))
        want, rejected = reference(topic, raws)
        assert got.rejected == rejected, what
        assert got.table.equals(want), (what, _first_difference(got.table, want))
        refused += bool(rejected)
    # all in one block, too
    raws = [envelope(topic, [bad]) for _, bad in cases] + [good]
    check(topic, raws)
    assert refused >= 0.8 * len(cases)  # not all: e.g. a duplicate key is valid JSON to msgspec (the last one wins)


def _hostile_messages(topic: Topic) -> list[tuple[str, Any]]:
    good = envelope(topic, [record(_good_fields(topic))] * 2)
    parsed = json.loads(good)
    head = good[: good.index(b'"records"')]
    return [
        ("empty", b""),
        ("none", None),
        ("whitespace", b"  "),
        ("null", b"null"),  # pyarrow.json crashes the process on this one: the guard must stop it
        ("array", b"[1, 2]"),
        ("string", b'"x"'),
        ("number", b"1"),
        ("empty object", b"{}"),
        ("truncated", good[:-7]),
        ("cut in a string", good[: good.index(b'"', 30) + 3]),
        ("trailing garbage", good + b"x"),
        ("two messages in one", good + good),
        ("two messages on two lines", good + b"\n" + good),
        ("padded with spaces (valid)", b"  " + good + b"  "),
        ("tabs between tokens (valid)", good.replace(b'":', b'":\t')),
        ("pretty-printed (valid)", json.dumps(parsed, indent=2).encode()),
        ("pretty-printed with CRLF (valid)", json.dumps(parsed, indent=2).replace("\n", "\r\n").encode()),
        ("ASCII-escaped (valid)", json.dumps(parsed, ensure_ascii=True).encode()),
        ("not UTF-8", good.replace(b'"', b'"\xff', 5)),
        ("not UTF-8 in a string", good[:-12] + b"\xc3\x28" + good[-12:]),
        ("overlong UTF-8", good.replace(b'"v"', b'"\xc0\xaev"')),
        ("lone surrogate escape", good.replace(b'"records"', b'"\\ud800records"')),
        ("control character in a string", good.replace(b'"records"', b'"rec\x01ords"')),
        ("line break in a string", good.replace(b'"records"', b'"rec\nords"')),
        ("wrong schema", envelope(topic, [record(_good_fields(topic))], schema="anomaly_x")),
        ("wrong version", envelope(topic, [record(_good_fields(topic))], v=topic.event.__version__ + 1)),
        ("version as a string", envelope(topic, [record(_good_fields(topic))], v=str(topic.event.__version__))),
        ("version as a float", good.replace(b'"v": %d' % topic.event.__version__, b'"v": %d.0' % topic.event.__version__)),
        ("unknown envelope field (valid)", good[:-1] + b',"extra":1}'),
        ("records missing", head.rstrip(b", ") + b"}"),
        ("records null", head + b'"records":null}'),
        ("records an object", head + b'"records":{}}'),
        ("records [null]", head + b'"records":[null]}'),
        ("records [1]", head + b'"records":[1]}'),
        ("records [[]]", head + b'"records":[[]]}'),
        ("schema missing", b'{"v":1,"records":[]}'),
        ("schema null", good.replace(b'"schema": "', b'"schema": null, "x": "')),
    ]


@pytest.mark.parametrize("topic", STORED, ids=lambda t: t.name)
def test_hostile_messages_are_refused_exactly_as_the_codec_refuses_them(topic: Topic) -> None:
    good = envelope(topic, [record(_good_fields(topic))] * 2)
    cases = _hostile_messages(topic)
    for what, bad in cases:
        raws = [good, good, bad, good, good, good]
        got = topic.codec.decode_table(raws, extra_for(len(raws)))
        want, rejected = reference(topic, raws)
        assert got.rejected == rejected, what
        assert got.table.equals(want), (what, _first_difference(got.table, want))
        assert bool(rejected) != ("(valid)" in what), (what, rejected)
    check(topic, [bad for _, bad in cases] + [good])


def test_an_all_bad_block_keeps_nothing_and_reports_every_message() -> None:
    got = GPU_SAMPLES.codec.decode_table([b"", b"{", b"null", b"[]"] * 3, extra_for(12))
    assert got.table.num_rows == 0 and [i for i, _ in got.rejected] == list(range(12))
    assert got.table.schema == reference(GPU_SAMPLES, [b""])[0].schema


def test_a_failing_bulk_path_costs_speed_not_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Any, raws: Any) -> None:
        raise RuntimeError("a bug in the bulk path")

    monkeypatch.setattr(_BulkDecoder, "decode", broken)
    raws = [Codec(GPU_SAMPLES.event).encode([EXAMPLES[GPU_SAMPLES.event]])] * 5 + [b"{"]
    table = check(GPU_SAMPLES, raws)
    assert table.num_rows == 5
