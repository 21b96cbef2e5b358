"""One bad record costs only itself: the worker uses a refused message's good records and
dead-letters the rest, with the reason for each (on both wires, in every raw stage)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pytest

from hpcinsight.schemas.catalog import (
    DEAD_LETTERS,
    GPU_SAMPLES,
    GPU_SAMPLES_RAW,
    IB_SAMPLES,
    IB_SAMPLES_RAW,
    SCHEDULER_EVENTS,
    STEP_METRICS,
    STEP_METRICS_RAW,
)
from hpcinsight.schemas.codec import SALVAGE_DECODES, DecodeError
from hpcinsight.schemas.events import DeadLetter, GpuSample
from hpcinsight.streams.processor import Output, SampleProcessor

T0 = (int(time.time()) // 3600 - 2) * 3_600_000
SOURCE = "gpu.samples.raw"


def gpu(g: int, **fields: Any) -> dict[str, Any]:
    return {"node": "n0", "gpu_index": g, "gpu_uuid": f"GPU-{g}", "ts": T0, "gpu_util": 50.0 + g, **fields}


def message(records: list[dict[str, Any]], schema: str = "gpu_sample") -> bytes:
    return json.dumps({"schema": schema, "v": 1, "records": records}).encode()


def letters_of(outputs: list[Output]) -> list[DeadLetter]:
    return [d for o in outputs if o.topic is DEAD_LETTERS for d in DEAD_LETTERS.codec.decode(o.value)]


def arrow_message(util: list[float]) -> bytes:
    """A columnar message of GPU samples whose utilisations are ``util`` as they are (no check)."""
    codec = GPU_SAMPLES.codec
    batch = codec._prepared([GpuSample("n0", g, f"GPU-{g}", T0, gpu_util=0.0) for g in range(len(util))])
    i = batch.schema.get_field_index("gpu_util")
    return codec.encode_table(batch.set_column(i, "gpu_util", pa.array(util, batch.schema.field("gpu_util").type)))


# -- the codec ----------------------------------------------------------------------------------


def test_a_json_message_keeps_the_records_that_decode_alone() -> None:
    records = [gpu(0), gpu(1), gpu(2, gpu_util=250), gpu(3)]
    raw = message(records)
    with pytest.raises(DecodeError):  # the premise: the message as a whole is refused
        GPU_SAMPLES_RAW.codec.decode(raw)

    got = GPU_SAMPLES_RAW.codec.salvage(raw)
    assert got is not None
    assert got.records == GPU_SAMPLES_RAW.codec.decode(message([records[0], records[1], records[3]]))
    assert msgspec.json.decode(got.left_out) == {"schema": "gpu_sample", "v": 1, "records": [records[2]]}
    assert got.reason.startswith("records left out: 1 of 4, the other 3 used; record 2: ")
    assert "`$.records[2].gpu_util`" in got.reason  # the path in the message it came in, not in the one-record one


def test_an_arrow_message_keeps_the_rows_that_decode_alone() -> None:
    raw = arrow_message([10.0, 250.0, 30.0, -4.0])
    with pytest.raises(DecodeError):
        GPU_SAMPLES.codec.decode(raw)

    got = GPU_SAMPLES.codec.salvage(raw)
    assert got is not None
    assert [(r.gpu_index, r.gpu_util) for r in got.records] == [(0, 10.0), (2, 30.0)]
    with pytest.raises(DecodeError):  # the rows left out, as a message of the same wire
        GPU_SAMPLES.codec.decode(got.left_out)
    left = GPU_SAMPLES.codec._table(GPU_SAMPLES.codec._batches(got.left_out))
    assert left.column("gpu_index").to_pylist() == [1, 3] and left.column("gpu_util").to_pylist() == [250.0, -4.0]
    assert "records left out: 2 of 4, " in got.reason and "record 1: " in got.reason and "record 3: " in got.reason


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"{not json", id="not JSON"),
        pytest.param(message([gpu(0), gpu(1, gpu_util=250)], schema="ib_sample"), id="another event's envelope"),
        pytest.param(message([gpu(1, gpu_util=250)]), id="a single record"),
        pytest.param(message([gpu(0, gpu_util=250), gpu(1, ts=-1)]), id="no record decodes"),
        pytest.param(message([gpu(0), gpu(1)]).replace(b'"v": 1', b'"v": "1"'), id="a bad header"),
        pytest.param(
            message([gpu(g, gpu_util=250 if g % 2 else 50) for g in range(SALVAGE_DECODES)]),
            id="more bad records than it can find",
        ),
    ],
)
def test_a_message_with_nothing_to_salvage_is_refused_whole(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        GPU_SAMPLES_RAW.codec.decode(raw)
    assert GPU_SAMPLES_RAW.codec.salvage(raw) is None


def test_a_large_message_is_bisected_to_its_bad_records() -> None:
    """5,000 records with two bad ones: each found in about twice log2(5,000) decodes, not 5,000."""
    records = [gpu(g % 256, gpu_util=50.0) for g in range(5_000)]
    records[1_234] = gpu(1, ts="yesterday")
    records[4_321] = gpu(2, gpu_util=-1)
    calls = 0
    codec = GPU_SAMPLES_RAW.codec
    decode = codec.decode

    def counted(raw: bytes | None) -> list[Any]:
        nonlocal calls
        calls += 1
        return decode(raw)

    codec.decode = counted  # type: ignore[method-assign]  # counting the codec's own decodes
    try:
        got = codec.salvage(message(records))
    finally:
        del codec.decode
    assert got is not None and len(got.records) == 4_998 and calls <= SALVAGE_DECODES
    assert [r["ts"] for r in msgspec.json.decode(got.left_out)["records"]] == ["yesterday", T0]
    assert "record 1234: " in got.reason and "`$.records[4321].gpu_util`" in got.reason


# -- the worker's stages ------------------------------------------------------------------------


def test_the_per_gpu_stage_uses_the_good_records_and_dead_letters_the_bad_one() -> None:
    good = message([gpu(g) for g in range(8)])
    mixed = [gpu(g) for g in range(8)]
    mixed[5] = gpu(5, temperature_c=-500.0)
    processor = SampleProcessor()
    batch = [(SOURCE, 0, 10, b"n0", good), (SOURCE, 0, 11, b"n1", message([{**r, "node": "n1"} for r in mixed]))]
    outputs = processor.handle_batch(batch, "gpu-samples")

    forwarded = [s for o in outputs if o.topic is GPU_SAMPLES for s in GPU_SAMPLES.codec.decode(o.value)]
    assert [(s.node, s.gpu_index) for s in forwarded] == [("n0", g) for g in range(8)] + [
        ("n1", g) for g in range(8) if g != 5
    ]  # before: the second message was one dead letter, its 7 good GPUs with it
    [letter] = letters_of(outputs)
    assert (letter.source_offset, letter.stage, letter.key) == (11, "validate", b"n1")
    assert msgspec.json.decode(letter.raw)["records"] == [{**mixed[5], "node": "n1"}]
    assert "record 5: " in letter.reason and "temperature_c" in letter.reason
    assert processor.stats.messages_salvaged == 1 and processor.stats.dead_letters == 1
    assert processor.stats.reasons == {"records left out": 1}  # one key however many records (the stats log line)
    assert processor.stats.samples == 15


def test_one_by_one_the_same() -> None:
    mixed = [gpu(0), gpu(1, gpu_util="x"), gpu(2)]
    outputs = SampleProcessor().handle(SOURCE, 0, 3, b"n0", message(mixed))
    forwarded = [s for o in outputs if o.topic is GPU_SAMPLES for s in GPU_SAMPLES.codec.decode(o.value)]
    assert [s.gpu_index for s in forwarded] == [0, 2]
    [letter] = letters_of(outputs)
    assert msgspec.json.decode(letter.raw)["records"] == [mixed[1]] and "record 1: " in letter.reason


def test_a_sample_stamped_in_the_future_still_refuses_its_whole_message() -> None:
    """A node whose clock is wrong stamps every record wrong: the message goes whole, as before."""
    raw = message([gpu(0, ts=int(time.time() * 1000) + 86_400_000), gpu(1), gpu(2, gpu_util=250)])
    processor = SampleProcessor()
    outputs = processor.handle(SOURCE, 0, 3, b"n0", raw)
    [letter] = letters_of(outputs)
    assert len(outputs) == 1 and letter.raw == raw and letter.reason.startswith("clock skew")
    assert processor.stats.dead_letters == 1 and processor.stats.messages_salvaged == 0  # no letter made and dropped


def ib(k: int, **fields: Any) -> dict[str, Any]:
    return {"node": "n0", "device": "mlx5_0", "port": k, "ts": T0, "rcv_bytes_per_s": 1e9, **fields}


def step(k: int, **fields: Any) -> dict[str, Any]:
    return {"job_id": "job-1", "rank": k, "world_size": 3, "step": 100, "ts": T0, "duration_s": 0.5, **fields}


@pytest.mark.parametrize(
    ("topic", "stored", "method", "records", "bad"),
    [
        (IB_SAMPLES_RAW, IB_SAMPLES, "handle_ib", [ib(0), ib(1, port=300), ib(2)], 1),
        (STEP_METRICS_RAW, STEP_METRICS, "handle_steps", [step(0, duration_s="slow"), step(1), step(2)], 0),
    ],
    ids=["ib", "steps"],
)
def test_the_other_raw_stages_do_the_same(topic: Any, stored: Any, method: str, records: list[dict[str, Any]], bad: int) -> None:
    raw = message(records, schema=topic.event.__schema__)
    outputs = getattr(SampleProcessor(), method)(topic.name, 0, 5, b"n0", raw)
    kept = [r for o in outputs if o.topic is stored for r in stored.codec.decode(o.value)]
    assert kept == topic.codec.decode(message([r for i, r in enumerate(records) if i != bad], schema=topic.event.__schema__))
    [letter] = letters_of(outputs)
    assert msgspec.json.decode(letter.raw)["records"] == [records[bad]] and f"record {bad}: " in letter.reason


def test_the_scheduler_feed_applies_the_records_the_owner_uses() -> None:
    """Every worker reads the scheduler topics for attribution; the owner of the partition
    dead-letters the bad record and uses the rest, so the feed must apply the same rest."""
    placed = {"ts": T0 - 60_000, "source": "test", "job_id": "j1", "kind": "scheduled", "node": "n0", "gpu_ids": ["0"]}
    bad = {**placed, "job_id": "j2", "kind": "teleported"}
    raw = message([bad, placed], schema="scheduler_event")
    processor = SampleProcessor()
    processor.observe_scheduler(raw, SCHEDULER_EVENTS)
    outputs = processor.handle(SOURCE, 0, 1, b"n0", message([gpu(0)]))
    [stored] = [s for o in outputs if o.topic is GPU_SAMPLES for s in GPU_SAMPLES.codec.decode(o.value)]
    assert stored.job_id == "j1"  # before: the whole message skipped, the GPU unattributed


def test_the_alert_router_learns_the_owners_of_the_good_events(tmp_path: Path) -> None:
    """The router reads the scheduler's events for the owners it routes by: a bad event among
    them is dead-lettered alone, and the others' owners are known."""
    from tests.fuzz.test_fuzz import KafkaMessage, offline_router

    router = offline_router(tmp_path, "t.")
    owned = {"ts": T0, "source": "test", "job_id": "j1", "kind": "submitted", "user": "alice", "team": "llm"}
    bad = {**owned, "job_id": "j2", "user": "x" * 1000}
    router.take([KafkaMessage(SCHEDULER_EVENTS.full_name("t."), 0, 4, message([bad, owned], schema="scheduler_event"))])
    assert router.engine.jobs["j1"].user == "alice" and "j2" not in router.engine.jobs
    [letter] = router.letters
    assert letter.stage == "alerts" and letter.source_offset == 4 and "record 0: " in letter.reason
    assert msgspec.json.decode(letter.raw)["records"] == [bad]
