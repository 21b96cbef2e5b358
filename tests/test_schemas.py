"""One definition per event: the codec, Arrow schema and ClickHouse table must agree."""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

import msgspec
import msgspec.inspect
import pyarrow as pa
import pytest

from hpcinsight.schemas.catalog import SINK_COLUMNS, STORED, TOPICS
from hpcinsight.schemas.codec import DecodeError
from hpcinsight.schemas.columns import AMOUNT_LIMIT, REAL_LIMIT
from hpcinsight.schemas.derive import arrow_schema, fields_of, to_arrow
from hpcinsight.schemas.events import (
    ALL_EVENTS,
    JSON_DECODING,
    AgentHealth,
    Anomaly,
    DeadLetter,
    GpuProcess,
    GpuQuantiles,
    GpuSample,
    GpuSketch,
    IbSample,
    JobQuantiles,
    NodeInventory,
    Redrive,
    SchedulerEvent,
    SchedulingKpi,
    Silence,
    StateCheckpoint,
    StepMetric,
    XidEvent,
    relabelled,
)
from hpcinsight.sinks.storage import Layout, table_ddl

# recent, so the tables' TTL (on event time) keeps the rows
T0 = (int(time.time()) - 3600) * 1000

EXAMPLES = {
    GpuSample: GpuSample(
        "n0",
        67,
        "MIG-abc",
        T0,
        gpu_util=42.5,
        mem_used_bytes=2**40,
        mem_total_bytes=2**41,
        power_w=350.5,
        temperature_c=61.0,
        sm_clock_mhz=1980.0,
        job_id="job-1",
        mem_util_pct=30.5,
        power_limit_w=700.0,
        mem_clock_mhz=2619.0,
        sm_clock_max_mhz=1980.0,
        mem_clock_max_mhz=2619.0,
        throttle_reasons=0x24,
        throttle=["sw_power_cap", "sw_thermal"],
        ecc_corrected_volatile=3,
        ecc_uncorrected_volatile=0,
        retired_pages_pending=False,
        remapped_rows_pending=True,
        remapped_rows_failure=False,
        pcie_tx_bytes_per_s=2.5e9,
        pcie_rx_bytes_per_s=1.25e9,
        nvlink_tx_bytes_per_s=1.5e11,
        nvlink_rx_bytes_per_s=1.25e11,
        nvlink_errors=7,
        sm_active_pct=71.5,
        sm_occupancy_pct=30.25,
        tensor_active_pct=40.5,
        dram_bw_util_pct=55.5,
        mig_index=3,
        mig_profile="1g.10gb",
        parent_gpu_uuid="GPU-abc",
        user="alice",
        team="nlp",
        priority="high",
        zone="eu-1",
    ),
    GpuQuantiles: GpuQuantiles(
        "n0",
        3,
        "GPU-abc",
        "gpu_util",
        "1m",
        T0 - 60_000,
        T0,
        60,
        10.0,
        50.0,
        95.5,
        48.25,
        job_id="job-1",
        user="alice",
        team="nlp",
    ),
    JobQuantiles: JobQuantiles(
        "job-1",
        "gpu_util",
        "since_start",
        T0 - 3_600_000,
        T0,
        16,
        57_600,
        20.0,
        60.0,
        97.5,
        55.5,
        user="alice",
        team="nlp",
        priority="high",
    ),
    GpuSketch: GpuSketch(
        "job-1",
        "n0",
        "GPU-abc",
        "power_w",
        "5m",
        T0 - 300_000,
        T0,
        300,
        105_000.0,
        b"\x05\x01\x0f",
        user="alice",
        team="nlp",
        priority="high",
    ),
    StateCheckpoint: StateCheckpoint("GPU-abc|gpu_util", T0, b"\x93\x01\x02"),
    SchedulingKpi: SchedulingKpi(T0, "queue_wait_p95_s", "gpu_model", "V100M32", 412.5, count=31, interval_s=3600.0),
    Anomaly: Anomaly(
        "a1b2",
        "gpu_underused",
        "warning",
        "firing",
        "gpu",
        "GPU-abc",
        T0,
        T0 - 60_000,
        T0 - 60_000,
        T0,
        "GPU 3 of n0 is idle",
        {"p95_pct": 1.5, "threshold_pct": 10.0},
        node="n0",
        gpu_uuid="GPU-abc",
    ),
    DeadLetter: DeadLetter(T0, "hpcinsight.gpu.samples.raw", 2, 17, "validate", "malformed JSON", b"\x00{not json", key=b"n0"),
    IbSample: IbSample(
        "n0",
        "mlx5_0",
        1,
        T0,
        interval_s=1.0,
        state="ACTIVE",
        phys_state="LinkUp",
        rate_gbps=400.0,
        xmit_bytes_per_s=4.5e10,
        rcv_bytes_per_s=4.4e10,
        xmit_packets_per_s=1e7,
        rcv_packets_per_s=1e7,
        xmit_wait_per_s=12.0,
        symbol_errors=0,
        link_downed=0,
        link_error_recovery=1,
        rcv_errors=0,
        rcv_remote_physical_errors=0,
        xmit_discards=2,
        local_link_integrity_errors=0,
        excessive_buffer_overrun_errors=0,
        hw_counters={"out_of_buffer": 3.0},
        counters_reset=False,
        job_id="job-1",
        user="alice",
        team="nlp",
    ),
    SchedulerEvent: SchedulerEvent(
        T0,
        "k8s",
        "job-1",
        "scheduled",
        user="alice",
        team="nlp",
        priority="high",
        qos="Guaranteed",
        queue="default",
        requested_gpus=8.0,
        requested_cpus=64.0,
        requested_memory_bytes=2**39,
        gpu_model="H100",
        node="n0",
        gpu_ids=["GPU-a", "GPU-b"],
        status=None,
        name="train-llm",
    ),
    NodeInventory: NodeInventory(
        T0, "n0", 8, gpu_model="H100", cpus=128.0, memory_bytes=2**41, zone="eu-1", pool="train", labels={"rack": "r12"}
    ),
    StepMetric: StepMetric(
        "job-1",
        3,
        16,
        1200,
        T0,
        0.512,
        node="n0",
        local_rank=3,
        phases={"forward": 0.1, "backward": 0.3},
        user="alice",
        team="nlp",
    ),
    AgentHealth: AgentHealth(T0, "n0", "gpu", 1000, 125, 3, 0, 4096, 1, 0),
    GpuProcess: GpuProcess(
        "n0",
        3,
        "GPU-abc",
        T0,
        4242,
        process_name="/usr/bin/python3",
        used_memory_bytes=2**34,
        sm_util_pct=37.5,
        mem_util_pct=12.5,
        container_id="3f" * 32,
        pod_uid="1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e",
        slurm_job_id="123",
    ),
    XidEvent: XidEvent("n0", 3, "GPU-abc", T0, 79, 12, gpu_instance_id=1, compute_instance_id=0),
    Silence: Silence("5f0c", T0, ["kind=gpu_xid", 'node=~"n[0-9]+"'], T0, T0 + 7_200_000, "alice", comment="RMA open"),
    Redrive: Redrive(
        "9c1f",
        T0,
        "alice",
        "sent",
        ["0:412"],
        ["hpcinsight.scheduler.events"],
        ["ab" * 32],
        ["hpcinsight.scheduler.events:3:90210"],
        ["hpcinsight.scheduler.events:3:90211"],
    ),
}


def test_every_event_has_an_example() -> None:
    assert set(EXAMPLES) == set(ALL_EVENTS)


def _fields(event: type, kind: type[msgspec.inspect.Type]) -> list[tuple[str, Any]]:
    """(name, type) of each field of ``event`` whose type, or a member of its union, is a ``kind``."""
    info = msgspec.inspect.type_info(event)
    assert isinstance(info, msgspec.inspect.StructType)
    return [(f.name, m) for f in info.fields for m in getattr(f.type, "types", (f.type,)) if isinstance(m, kind)]


def _message_with(event: type, name: str, value: str) -> bytes:
    """A message of ``event``'s example with field ``name`` written as the JSON text ``value``."""
    topic = next(t for t in TOPICS if t.event is event)
    message = json.loads(topic.codec.encode([EXAMPLES[event]]))
    message["records"][0][name] = "@"
    return json.dumps(message).replace('"@"', value).encode()


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: e.__name__)
def test_every_float_field_refuses_nan_and_infinity(event: type) -> None:
    """Built in Python, an event with a non-finite number in any float field (a float, or a float
    or null) is refused by name; the same with a large finite number is not. (Numbers inside maps:
    the next test.)"""
    floats = [name for name, _ in _fields(event, msgspec.inspect.FloatType)]
    example = EXAMPLES[event]
    assert {n for n in example.__struct_fields__ if isinstance(getattr(example, n), float)} <= set(floats)
    for name in floats:
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(ValueError, match=f"field {name!r} is"):
                msgspec.structs.replace(EXAMPLES[event], **{name: bad})
        msgspec.structs.replace(EXAMPLES[event], **{name: 1e300})


def _number_maps(event: type) -> list[str]:
    return [name for name, m in _fields(event, msgspec.inspect.DictType) if isinstance(m.value_type, msgspec.inspect.FloatType)]


@pytest.mark.parametrize("event", [e for e in ALL_EVENTS if _number_maps(e)], ids=lambda e: e.__name__)
def test_every_map_of_numbers_refuses_nan_and_infinity(event: type) -> None:
    """Built in Python, an event with a non-finite number in a map (an anomaly's evidence, a
    sketch's window means) is refused by field and key: JSON would write it as null, and the
    consumer refuse the whole message it is in. A large finite number is not refused."""
    for name in _number_maps(event):
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(ValueError, match=f"field {name!r} holds {bad!r} at 'b'"):
                msgspec.structs.replace(EXAMPLES[event], **{name: {"a": 1.0, "b": bad}})
        msgspec.structs.replace(EXAMPLES[event], **{name: {"a": 1e300, "b": 1e300}})  # its sum overflows: still finite values


@pytest.mark.parametrize("event", [GpuSample, IbSample, StepMetric, SchedulerEvent, NodeInventory], ids=lambda e: e.__name__)
def test_an_unbounded_number_is_refused_past_its_limit(event: type) -> None:
    """The plain numbers of what agents, schedulers and training jobs send stop at a limit either
    way (REAL_LIMIT; AMOUNT_LIMIT for a scheduler's GPU and CPU counts, which KPIs sum over every
    job), so no sum over them overflows; the limit itself is accepted."""
    topic = next(t for t in TOPICS if t.event is event)
    bounded = [
        (name, m.le)
        for name, m in _fields(event, msgspec.inspect.FloatType)
        if m.le in (REAL_LIMIT, AMOUNT_LIMIT) and m.ge == -m.le
    ]
    assert bounded, "no plain number in this event"
    for name, limit in bounded:
        for value, refused in ((limit, False), (-limit, False), (limit * 1.5, True), (-limit * 1.5, True)):
            raw = _message_with(event, name, json.dumps(value))
            if refused:
                with pytest.raises(DecodeError, match=name):
                    topic.codec.decode(raw)
            else:
                assert getattr(topic.codec.decode(raw)[0], name) == value


def _bounded_maps(event: type) -> list[str]:
    return [
        name
        for name, m in _fields(event, msgspec.inspect.DictType)
        if isinstance(m.value_type, msgspec.inspect.FloatType) and m.value_type.le == REAL_LIMIT == -m.value_type.ge
    ]


def test_readings_from_outside_are_bounded() -> None:
    """The maps of numbers that come from outside (an IB port's counter rates, a step's phase
    times) are bounded by name; those the worker builds (evidence, window means) need not be."""
    assert _bounded_maps(IbSample) == ["hw_counters"] and _bounded_maps(StepMetric) == ["phases"]
    assert not [e for e in ALL_EVENTS if e not in (IbSample, StepMetric) and _bounded_maps(e)]


@pytest.mark.parametrize("event", [IbSample, StepMetric], ids=lambda e: e.__name__)
def test_a_reading_is_refused_past_the_limit(event: type) -> None:
    """A number in a map of readings stops at REAL_LIMIT either way, as a plain number does: a
    message with one past it is refused naming the field and the limit; the limit is accepted."""
    topic = next(t for t in TOPICS if t.event is event)
    names = _bounded_maps(event)
    assert names, "no map of readings in this event"
    for name in names:
        for value, refused in ((REAL_LIMIT, False), (-REAL_LIMIT, False), (REAL_LIMIT * 1.5, True), (-REAL_LIMIT * 1.5, True)):
            raw = _message_with(event, name, json.dumps({"a": 1.0, "b": value}))
            if refused:
                with pytest.raises(DecodeError, match=rf"[<>]= -?{REAL_LIMIT} - at `\$\.records\[0\]\.{name}"):
                    topic.codec.decode(raw)
            else:
                assert getattr(topic.codec.decode(raw)[0], name) == {"a": 1.0, "b": value}


def test_a_scheduler_count_has_the_amount_limit() -> None:
    """What the KPIs sum over every job is held far below Real's limit."""
    assert AMOUNT_LIMIT * 1e6 < REAL_LIMIT  # a million jobs at the limit still sum inside Real's
    for event, name in ((SchedulerEvent, "requested_gpus"), (SchedulerEvent, "requested_cpus"), (NodeInventory, "cpus")):
        assert any(m.le == AMOUNT_LIMIT for field, m in _fields(event, msgspec.inspect.FloatType) if field == name), name


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: e.__name__)
def test_json_cannot_carry_a_number_past_a_float(event: type) -> None:
    """What lets the JSON decode skip the events' own finiteness check (JSON_DECODING): a number
    past a float's range in any float field of a message is refused by the decode, not built;
    and in this thread and any other, an event built afterwards is checked again."""
    topic = next(t for t in TOPICS if t.event is event)
    floats = [name for name, _ in _fields(event, msgspec.inspect.FloatType)]
    for name in floats:
        for big in ("1e400", "-1e400", "1" + "0" * 400):
            with pytest.raises(DecodeError, match="out of range"):
                topic.codec.decode(_message_with(event, name, big))
            assert not JSON_DECODING.active
    if floats:
        with pytest.raises(ValueError, match="only finite numbers"):
            msgspec.structs.replace(EXAMPLES[event], **{floats[0]: math.inf})


def test_the_json_decode_trusts_its_own_thread_only() -> None:
    """The skip is per thread: an event built elsewhere while a decode runs is still checked."""
    failed: list[BaseException] = []

    def build() -> None:
        try:
            GpuSample("n0", 0, "GPU-1", T0, gpu_util=math.nan)
        except ValueError as err:
            failed.append(err)

    JSON_DECODING.active = True
    try:
        other = threading.Thread(target=build)
        other.start()
        other.join()
    finally:
        JSON_DECODING.active = False
    assert len(failed) == 1 and "only finite numbers" in str(failed[0])


def test_relabelled_changes_labels_only_and_skips_the_check_it_would_repeat() -> None:
    """The attribution's copy of every sample on a job: the labels replaced, the numbers as they
    were, and no second finiteness check (an event that somehow escaped it stays as it is, where
    msgspec's replace refuses it); the skip ends with the copy."""
    sample = GpuSample("n0", 0, "GPU-1", T0, gpu_util=42.0, power_w=300.5, job_id="agent-said")
    got = relabelled(sample, job_id="j1", user="u", team="t", priority=5, zone="z")
    assert got == msgspec.structs.replace(sample, job_id="j1", user="u", team="t", priority=5, zone="z")
    assert (got.gpu_util, got.power_w, sample.job_id) == (42.0, 300.5, "agent-said")
    JSON_DECODING.active = True
    try:
        unchecked = GpuSample("n0", 0, "GPU-1", T0, gpu_util=math.nan)
    finally:
        JSON_DECODING.active = False
    assert math.isnan(relabelled(unchecked, job_id="j1").gpu_util)  # not checked again
    with pytest.raises(ValueError, match="only finite numbers"):
        msgspec.structs.replace(unchecked, job_id="j1")
    assert not JSON_DECODING.active
    with pytest.raises(ValueError, match="only finite numbers"):
        GpuSample("n0", 0, "GPU-1", T0, gpu_util=math.nan)


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: e.__name__)
def test_relabelled_refuses_a_field_that_holds_numbers(event: type) -> None:
    """A float, or a map of floats, would go unchecked through relabelled: it refuses them, and
    takes every field of strings, integers or null."""
    example = EXAMPLES[event]
    floats = {name for name, _ in _fields(event, msgspec.inspect.FloatType)}
    info = msgspec.inspect.type_info(event)
    assert isinstance(info, msgspec.inspect.StructType)
    for f in info.fields:
        value = getattr(example, f.name)
        if f.name in floats or isinstance(value, (dict, list)):
            with pytest.raises(TypeError, match="not label fields"):
                relabelled(example, **{f.name: value})
        elif isinstance(value, (str, int)) or value is None:
            assert relabelled(example, **{f.name: value}) == example


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: e.__name__)
def test_codec_round_trip(event: type) -> None:
    topic = next(t for t in TOPICS if t.event is event)
    record = EXAMPLES[event]
    raw = topic.codec.encode([record, record])
    assert topic.codec.decode(raw) == [record, record]


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: e.__name__)
def test_arrow_schema_matches_struct_fields(event: type) -> None:
    assert arrow_schema(event).names == list(event.__struct_fields__)
    table = to_arrow(event, [EXAMPLES[event]])
    assert table.schema == arrow_schema(event)
    row = table.to_pylist()[0]
    assert set(row) == set(event.__struct_fields__)


def test_nullable_fields_are_exactly_the_optional_ones() -> None:
    for event in ALL_EVENTS:
        for f in fields_of(event):
            default = event.__struct_defaults__
            optional_names = event.__struct_fields__[len(event.__struct_fields__) - len(default) :]
            assert f.nullable == (f.name in optional_names and default[optional_names.index(f.name)] is None), f


def _describe(client, table: str) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in client.query(f"DESCRIBE TABLE `{table}`").result_rows]


def test_clickhouse_tables_store_and_return_every_field(tmp_path) -> None:
    """Create each table from its DDL in real ClickHouse (chDB), insert the Arrow form, read it back."""
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / 'ch'}")
    try:
        for topic in STORED:
            client.command(table_ddl(Layout(), topic)[0])
            columns = _describe(client, topic.table.name)
            expected = [f.name for f in fields_of(topic.event)] + [c.split("`")[1] for c in SINK_COLUMNS]
            assert [name for name, _ in columns] == expected
            for (name, ch_type), f in zip(columns, fields_of(topic.event)):
                assert ch_type == f.clickhouse_type.replace(" CODEC", ""), name
            record = EXAMPLES[topic.event]
            extra = {"_partition": pa.array([0], pa.uint32()), "_offset": pa.array([5], pa.uint64())}
            client.insert_arrow(topic.table.name, to_arrow(topic.event, [record], extra))
            back = client.query_arrow(f"SELECT * EXCEPT (_partition, _offset) FROM `{topic.table.name}`")
            got = back.to_pylist()[0]
            for name in topic.event.__struct_fields__:
                want = getattr(record, name)
                value = got[name]
                if hasattr(value, "timestamp"):
                    value = round(value.timestamp() * 1000)
                if isinstance(want, dict) and isinstance(value, list):  # Arrow map
                    value = dict(value)
                if isinstance(want, bytes) and isinstance(value, str):
                    value = value.encode()
                if isinstance(want, float):
                    assert value == pytest.approx(want, rel=1e-6), name
                else:
                    assert value == want, name
    finally:
        client.close()


def test_table_keys_keep_apart_what_must_not_collapse(tmp_path) -> None:
    """A ReplacingMergeTree merges rows with equal ORDER BY keys. A MIG instance and its board
    sampled at the same tick, and two identical XIDs in the same millisecond, must stay two rows."""
    import clickhouse_connect

    from hpcinsight.schemas.catalog import GPU_SAMPLES, GPU_XID

    board = GpuSample("n0", 1, "GPU-board", T0, power_w=400.0)
    instance = GpuSample("n0", 72, "MIG-0", T0, mem_used_bytes=2**30, mig_index=0, parent_gpu_uuid="GPU-board")
    xids = [XidEvent("n0", 1, "GPU-board", T0, 79, 0), XidEvent("n0", 1, "GPU-board", T0, 79, 1)]
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / 'ch'}")
    try:
        for topic, records in ((GPU_SAMPLES, [board, instance]), (GPU_XID, xids)):
            client.command(table_ddl(Layout(), topic)[0])
            extra = {"_partition": pa.array([0, 0], pa.uint32()), "_offset": pa.array([1, 2], pa.uint64())}
            client.insert_arrow(topic.table.name, to_arrow(topic.event, records, extra))
            client.command(f"OPTIMIZE TABLE `{topic.table.name}` FINAL")
            assert client.query(f"SELECT count() FROM `{topic.table.name}` FINAL").result_rows == [(2,)], topic.name
    finally:
        client.close()


def test_pods_of_one_job_in_the_same_second_stay_apart(tmp_path) -> None:
    """scheduler_events deduplicates replays, not sibling pods that share a job id and a second."""
    import clickhouse_connect

    from hpcinsight.schemas.catalog import SCHEDULER_EVENTS

    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / 'ch'}")
    try:
        client.command(table_ddl(Layout(), SCHEDULER_EVENTS)[0])
        pods = [SchedulerEvent(T0, "k8s", "job-1", "started", name=f"job-1-worker-{i}") for i in range(2)]
        extra = {"_partition": pa.array([0, 0], pa.uint32()), "_offset": pa.array([1, 2], pa.uint64())}
        for _ in range(2):  # the second insert is a replay of the first
            client.insert_arrow("scheduler_events", to_arrow(SchedulerEvent, pods, extra))
        assert client.query("SELECT count() FROM scheduler_events FINAL").result_rows == [(2,)]
    finally:
        client.close()
