"""Property-based fuzzing of every decoder and every consumer's per-message handling (issue 14).

Properties, for hostile messages generated from the schemas (tests/fuzz/strategies.py):
- a codec's ``decode`` returns records or raises DecodeError, nothing else, and its bulk path
  (``decode_table``, the sink's) refuses exactly the messages ``decode`` refuses, with its reason;
- every worker stage, the sink's decode, the alert router and the live view take any message
  without raising; a bad one becomes exactly one dead letter (worker, sink, router) that decodes,
  names a reason and the whole message's size and digest, and fits a Kafka message;
- a good message is processed, never dead-lettered;
- of a refused message, the worker uses exactly the records that decode alone and dead-letters the
  others, each as it came;
- what an agent sends, whatever its collectors read, decodes with the worker's codec.

The suite runs a bounded profile; ``make fuzz`` runs the long one (HYPOTHESIS_PROFILE=long).
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcinsight.schemas.catalog import (
    ALERT_SILENCES,
    ANOMALIES,
    DEAD_LETTERS,
    GPU_SAMPLES_RAW,
    GPU_SKETCHES,
    GPU_XID,
    IB_SAMPLES_RAW,
    SCHEDULER_EVENTS,
    STEP_METRICS_RAW,
    STORED,
    TOPICS,
)
from hpcinsight.schemas.codec import DecodeError
from hpcinsight.schemas.events import DEAD_LETTER_RAW_MAX
from hpcinsight.web.feed import FEEDS
from tests.fuzz.strategies import dumps, envelope, messages, record_lists

settings.register_profile(
    "suite",
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "5000")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))

KAFKA_MESSAGE_MAX = 1_000_000  # librdkafka's default message.max.bytes


def decodes(topic: Any, raw: bytes) -> bool:
    try:
        topic.codec.decode(raw)
        return True
    except DecodeError:
        return False


def as_salvaged(topic: Any, raw: bytes) -> tuple[list[Any], Any]:
    """A message's records, or those salvage keeps of a refused one and what it left out (none: nothing usable)."""
    try:
        return topic.codec.decode_salvaging(raw)
    except DecodeError:
        return [], None


def is_json_text(text: bytes) -> bool:
    """Whether ``text`` is JSON as a parser reads it past its values (NaN is not; 1e999 is)."""
    try:
        msgspec.json.decode(text, type=msgspec.Raw)
        return True
    except (msgspec.DecodeError, RecursionError):
        return False


def as_dead_lettered(topic: Any, raw: bytes, letter: Any) -> bytes:
    """What ``letter`` must hold of ``raw``: the records left out where its good ones were used
    (its reason says so, and salvage must agree), else the whole message."""
    if not letter.reason.startswith("records left out:"):
        return raw
    salvaged = topic.codec.salvage(raw)
    assert salvaged is not None, letter.reason
    return salvaged.left_out


def check_dead_letter(value: bytes, raw: bytes, stage: str | None = None) -> None:
    assert len(value) < KAFKA_MESSAGE_MAX
    [letter] = DEAD_LETTERS.codec.decode(value)
    assert letter.reason and letter.raw == raw[:DEAD_LETTER_RAW_MAX]
    assert letter.raw_size == len(raw) and letter.raw_sha256 == hashlib.sha256(raw).hexdigest()
    if stage is not None:
        assert letter.stage == stage


# -- decoders ---------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", TOPICS, ids=lambda t: t.name)
def test_a_decoder_returns_records_or_says_why(topic: Any) -> None:
    @given(messages(topic))
    def prop(raw: bytes) -> None:
        try:
            records = topic.codec.decode(raw)
        except DecodeError as err:
            assert str(err)
            return
        assert all(isinstance(r, topic.event) for r in records)
        assert topic.codec.decode(topic.codec.encode(records)) == records  # what decodes, round-trips

    prop()


@pytest.mark.parametrize("topic", STORED, ids=lambda t: t.name)
def test_the_bulk_decoder_refuses_exactly_what_decode_refuses(topic: Any) -> None:
    import pyarrow as pa

    @given(st.lists(messages(topic), min_size=4, max_size=12))
    def prop(block: list[bytes]) -> None:
        n = len(block)
        decoded = topic.codec.decode_table(block, {"_offset": pa.array(range(n), pa.uint64())})
        expected = []
        for i, raw in enumerate(block):
            try:
                topic.codec.decode(raw)
            except DecodeError as err:
                expected.append((i, str(err)))
        assert decoded.rejected == expected

    prop()


@given(messages(GPU_SAMPLES_RAW, valid_only=True))
def test_a_good_message_is_never_refused(raw: bytes) -> None:
    # generated records are within every bound, so decoding must succeed
    assert GPU_SAMPLES_RAW.codec.decode(raw)


# -- the worker's stages ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def processor() -> Any:
    from hpcinsight.streams.app import WorkerOptions
    from hpcinsight.streams.detectors import build
    from hpcinsight.streams.processor import SampleProcessor

    return SampleProcessor(WorkerOptions().processor_config(), detectors=build(None))


STAGES = [
    (GPU_SAMPLES_RAW, "handle"),
    (IB_SAMPLES_RAW, "handle_ib"),
    (STEP_METRICS_RAW, "handle_steps"),
    (GPU_SKETCHES, "handle_sketches"),
    (GPU_XID, "events"),
    (SCHEDULER_EVENTS, "events"),
]


@pytest.mark.parametrize(("topic", "method"), STAGES, ids=lambda x: getattr(x, "name", x))
def test_a_worker_stage_takes_any_message(processor: Any, topic: Any, method: str) -> None:
    import functools

    handle = functools.partial(processor.handle_events, topic) if method == "events" else getattr(processor, method)
    stage = processor.guarded(handle, f"fuzz-{topic.name}")

    @given(messages(topic))
    def prop(raw: bytes) -> None:
        outputs = stage(topic.name, 0, 7, b"k", raw)
        letters = [o for o in outputs if o.topic is DEAD_LETTERS]
        if decodes(topic, raw) and not letters:
            return
        assert len(letters) == 1, outputs
        [letter] = DEAD_LETTERS.codec.decode(letters[0].value)
        if not letter.reason.startswith("records left out:"):
            assert len(outputs) == 1, outputs  # refused whole: nothing else comes of it
        check_dead_letter(letters[0].value, as_dead_lettered(topic, raw, letter))

    prop()


@pytest.mark.parametrize("topic", [topic for topic, _ in STAGES], ids=lambda t: t.name)
def test_a_refused_message_keeps_exactly_the_records_that_decode_alone(topic: Any) -> None:
    @given(record_lists(topic))
    def prop(records: list[dict[str, Any]]) -> None:
        raw = envelope(topic, records)
        if decodes(topic, raw):
            return
        alone = [decodes(topic, envelope(topic, [r])) for r in records]
        got = topic.codec.salvage(raw)
        if not all(is_json_text(dumps(r)) for r in records) or all(alone) or not any(alone):
            assert got is None
            return
        assert got is not None
        assert got.records == [topic.codec.decode(envelope(topic, [r]))[0] for r, ok in zip(records, alone) if ok]
        left = msgspec.json.decode(got.left_out, type=dict[str, msgspec.Raw])  # each record as it came
        assert [bytes(r) for r in msgspec.json.decode(left.pop("records"), type=list[msgspec.Raw])] == [
            dumps(r) for r, ok in zip(records, alone) if not ok
        ]
        assert {k: msgspec.json.decode(v) for k, v in left.items()} == {
            "schema": topic.event.__schema__,
            "v": topic.event.__version__,
        }
        if not got.reason.endswith("..."):  # not cut: it names each record left out, and only those
            assert [i for i in range(len(records)) if f"record {i}: " in got.reason] == [
                i for i, ok in enumerate(alone) if not ok
            ]

    prop()


def test_a_stage_that_fails_dead_letters_the_message_and_goes_on(processor: Any) -> None:
    def broken(*args: Any) -> list[Any]:
        raise RecursionError("maximum recursion depth exceeded")

    [out] = processor.guarded(broken, "gpu-samples")("raw", 3, 42, b"n1", b"x" * 2_000_000)
    assert out.topic is DEAD_LETTERS
    check_dead_letter(out.value, b"x" * 2_000_000, stage="gpu-samples")
    [letter] = DEAD_LETTERS.codec.decode(out.value)
    assert "RecursionError" in letter.reason and (letter.source_partition, letter.source_offset) == (3, 42)


# -- the sink's decode ------------------------------------------------------------------------


@pytest.mark.parametrize("topic", STORED, ids=lambda t: t.name)
def test_the_sink_writer_takes_any_block(topic: Any) -> None:
    from hpcinsight.sinks.clickhouse_sink import TableWriter

    some_bad_records = record_lists(topic).map(lambda records: envelope(topic, records))

    @given(st.lists(st.one_of(messages(topic), some_bad_records), min_size=1, max_size=10))
    def prop(block: list[bytes]) -> None:
        writer = TableWriter(None, background=False)  # type: ignore[arg-type] - decoding only, no insert
        n = len(block)
        rejected = writer.add(topic, block, [0] * n, list(range(n)))
        assert [r.index for r in rejected] == [i for i, raw in enumerate(block) if not decodes(topic, raw)]
        rows = 0  # each message's records, or those salvage keeps of a refused one (as the worker does)
        for i, raw in enumerate(block):
            records, salvaged = as_salvaged(topic, raw)
            rows += len(records)
            if i in {r.index for r in rejected}:
                [r] = [r for r in rejected if r.index == i]
                assert (r.reason, r.left_out) == ((salvaged.reason, salvaged.left_out) if salvaged else (r.reason, None))
        assert writer.pending_rows == rows

    prop()


# -- the alert router -------------------------------------------------------------------------


class KafkaMessage:
    """The part of confluent_kafka.Message the router reads (a message that was never on a broker)."""

    def __init__(self, topic: str, partition: int, offset: int, value: bytes) -> None:
        self._t, self._p, self._o, self._v = topic, partition, offset, value

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return self._v

    def error(self) -> None:
        return None


def offline_router(tmp_path: Path, prefix: str) -> Any:
    """An alert router with no broker: its engine set up, its dead letters kept in ``.letters``."""
    from hpcinsight.sinks.alerts import config as alerts_config
    from hpcinsight.sinks.alerts.engine import Engine
    from hpcinsight.sinks.alerts.router import AlertRouter, RouterOptions

    config = alerts_config.parse(
        {
            "route": {"receiver": "ops", "group_by": ["kind", "node"]},
            "receivers": [{"name": "ops", "webhook_configs": [{"url": "http://127.0.0.1:9/x"}]}],
        },
        "t.yaml",
    )
    r = AlertRouter(config, {"bootstrap.servers": "127.0.0.1:9"}, prefix, RouterOptions(state_dir=tmp_path))
    r.engine = Engine(config)
    r._stop = threading.Event()
    letters: list[Any] = []
    r._produce_dead_letter = lambda letter: letters.append(letter)
    r.letters = letters
    return r


@pytest.fixture
def router(tmp_path: Path) -> Any:
    return offline_router(tmp_path, "fz.")


@pytest.mark.parametrize("topic", [ANOMALIES, SCHEDULER_EVENTS, ALERT_SILENCES], ids=lambda t: t.name)
def test_the_router_takes_any_message(router: Any, topic: Any) -> None:
    name = topic.full_name("fz.")

    @given(st.lists(messages(topic), min_size=1, max_size=6))
    def prop(block: list[bytes]) -> None:
        before = len(router.letters)
        router.take([KafkaMessage(name, 0, i, raw) for i, raw in enumerate(block)])
        bad = {i for i, raw in enumerate(block) if not decodes(topic, raw)}
        new = router.letters[before:]
        assert bad <= {d.source_offset for d in new}  # (a silence that decodes but cannot match is one too)
        for d in new:
            check_dead_letter(DEAD_LETTERS.codec.encode([d]), as_dead_lettered(topic, block[d.source_offset], d), stage="alerts")
        router.engine.tick(router._now_ms())

    prop()


# -- the live view ----------------------------------------------------------------------------


@pytest.mark.parametrize("topic", list(FEEDS), ids=lambda t: t.name)
def test_the_live_view_takes_any_message(topic: Any) -> None:
    from hpcinsight.web.feed import Feed
    from hpcinsight.web.state import ClusterState

    state = ClusterState()
    feed = Feed(state, {}, "fz.")
    method = FEEDS[topic][1]

    @given(st.lists(messages(topic), min_size=1, max_size=6))
    def prop(block: list[bytes]) -> None:
        records = [r for raw in block if decodes(topic, raw) for r in topic.codec.decode(raw)]
        feed._apply(topic.name, getattr(state, method), records)
        state.summary()

    prop()


# -- agents: what leaves a node ---------------------------------------------------------------

#: the topics agents (and the scheduler watchers) write, their records built in Python
AGENT_TOPICS = [t for t in TOPICS if t.name in ("gpu.samples.raw", "ib.samples.raw", "gpu.processes", "gpu.xid")] + [
    SCHEDULER_EVENTS,
    STEP_METRICS_RAW,
]
_ANY_FLOAT = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),  # any magnitude, as a glitching sensor gives
    st.floats(min_value=-200, max_value=200),  # and ordinary ones, inside most ranges
)


def _value_of(t: Any) -> st.SearchStrategy[Any]:
    """Values of ``t``'s Python type at any size or length: the ranges are what is fuzzed."""
    import msgspec

    i = msgspec.inspect
    if isinstance(t, i.NoneType):
        return st.none()
    if isinstance(t, i.BoolType):
        return st.booleans()
    if isinstance(t, i.IntType):
        return st.one_of(st.integers(-(2**70), 2**70), st.integers(0, 300), st.integers(1_700_000_000_000, 1_800_000_000_000))
    if isinstance(t, i.FloatType):
        return _ANY_FLOAT
    if isinstance(t, i.StrType):
        return st.text(max_size=300)
    if isinstance(t, i.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, i.ListType):
        return st.lists(_value_of(t.item_type), max_size=3)
    if isinstance(t, i.DictType):
        return st.dictionaries(st.text(min_size=1, max_size=12), _value_of(t.value_type), max_size=3)
    raise AssertionError(f"no strategy for {t!r}")


def _records_of(event: type) -> st.SearchStrategy[Any]:
    import msgspec

    info = msgspec.inspect.type_info(event)
    assert isinstance(info, msgspec.inspect.StructType)
    fields = {f.name: st.one_of(*(_value_of(m) for m in getattr(f.type, "types", (f.type,)))) for f in info.fields}
    return st.fixed_dictionaries(fields).map(lambda kwargs: event(**kwargs))


@pytest.mark.parametrize("topic", AGENT_TOPICS, ids=lambda t: t.name)
def test_what_an_agent_sends_decodes_and_keeps_every_value_in_range(topic: Any) -> None:
    """Whatever a collector reads (finite, of its field's type, of any size), the agent's message
    decodes with the worker's codec; a record inside every range goes as it was, and any other
    that goes differs only in values made unknown (agents/fit.py)."""
    import msgspec

    from hpcinsight.agents.fit import FitStats, fitted

    @given(st.lists(_records_of(topic.event), min_size=1, max_size=4))
    def prop(records: list[Any]) -> None:
        value, sent = fitted(topic, records, FitStats())
        if value is None:
            assert sent == 0
            return
        got = topic.codec.decode(value)
        assert len(got) == sent
        valid = [r for r in records if decodes(topic, topic.codec.encode([r]))]
        assert [r for r in got if r in valid] == valid  # a record inside every range goes as it was, in order
        originals = {id(r): r for r in records}
        for record in got:  # each kept record: the same as one sent, but for values set to unknown
            matches = [
                r
                for r in originals.values()
                if all(
                    getattr(record, n) == getattr(r, n)
                    or getattr(record, n) in (None, {})
                    or (isinstance(getattr(r, n), dict) and getattr(record, n).items() <= getattr(r, n).items())
                    for n in record.__struct_fields__
                )
            ]
            assert matches, msgspec.structs.asdict(record)

    prop()
