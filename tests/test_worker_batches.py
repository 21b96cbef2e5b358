"""The per-GPU stage's batch path gives what its message-by-message path gives (issue 19).

The worker hands the per-GPU stage batches of raw messages (``SampleProcessor.handle_batch``);
tests, replay and the bench still use ``handle`` one message at a time. Both run here on the same
simulated cluster (idle GPUs, so anomalies fire and resolve; one node in a zone, so attribution
changes its samples) with bad messages mixed in, and must agree on every decoded output record
per topic and key, on the anomalies' order per subject, on the stats, and on the dead letters.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections import Counter
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcinsight.agents.sim.gpu import IdleGpu, SimConfig, SimGpuCollector
from hpcinsight.harness.demo import demo_detectors
from hpcinsight.schemas.catalog import (
    ANOMALIES,
    DEAD_LETTERS,
    GPU_QUANTILES,
    GPU_SAMPLES,
    GPU_SAMPLES_RAW,
    GPU_SKETCHES,
    NODE_INVENTORY,
    STREAM_STATE,
)
from hpcinsight.schemas.events import GpuSample, NodeInventory
from hpcinsight.streams.app import WorkerOptions, parse_windows
from hpcinsight.streams.attribution import Attribution
from hpcinsight.streams.detectors import build
from hpcinsight.streams.processor import MAX_OUTPUT_BYTES, Message, Output, SampleProcessor
from hpcinsight.streams.rolling import RollingSeries
from tests.fuzz.strategies import messages as fuzz_messages
from tests.fuzz.test_fuzz import as_dead_lettered, check_dead_letter, decodes

NODES, GPUS, TICKS = 6, 8, 150
SOURCE, STAGE = "gpu.samples.raw", "gpu-samples"
BROKEN_NODE = "sim-node-04"  # its samples at BROKEN_TICK make processing raise (see FailingAttribution)
BROKEN_TICK = 61
LATE_TICK = 100  # a message of 50 ticks before comes again (see _input)
T0 = (int(time.time()) // 3600 - 2) * 3_600_000


class FailingAttribution(Attribution):
    """The attribution table, failing on one message's samples: processing that raises for a
    message the decoder took (as a bug would), to show the guarded rule holds per message."""

    def enrich_gpu(self, s: GpuSample) -> GpuSample:
        if s.node == BROKEN_NODE and s.ts == T0 + BROKEN_TICK * 1000:
            raise RuntimeError(f"no attribution for {s.gpu_uuid}")
        return super().enrich_gpu(s)


def _processor() -> SampleProcessor:
    options = WorkerOptions(windows=parse_windows("10s/5s,30s/10s"), since_start_every_s=20, checkpoint_every_s=20)
    processor = SampleProcessor(options.processor_config(), detectors=build(demo_detectors()), attribution=FailingAttribution())
    zone = NodeInventory(ts=T0 - 60_000, node="sim-node-01", gpu_count=GPUS, zone="rack-a")
    processor.observe_scheduler(NODE_INVENTORY.codec.encode([zone]), NODE_INVENTORY)
    return processor


def _bad_messages(tick: int) -> list[tuple[bytes | None, bytes | None]]:
    """Bad messages, a few at some ticks: each must become one dead letter with its reason."""
    future = GpuSample(node="sim-node-00", gpu_index=0, gpu_uuid="GPU-future", ts=T0 + 10 * 86_400_000 + tick, gpu_util=50.0)
    wrong = {"node": "sim-node-00", "gpu_index": "zero", "gpu_uuid": "GPU-x", "ts": T0}
    envelope = {"schema": "gpu_sample", "v": 1, "records": [wrong]}
    return {
        7: [(b"sim-node-00", b"not json")],
        40: [(b"sim-node-02", msgspec.json.encode(envelope)), (None, None)],
        90: [(b"sim-node-00", GPU_SAMPLES_RAW.codec.encode([future]))],
        91: [(b"sim-node-03", b"[]"), (b"sim-node-03", b'{"schema":"gpu_sample","v":1,"records":[{')],
    }.get(tick, [])


def _partition_of(key: bytes | None, offset: int) -> int:
    """A node's messages all in one partition, as the agents' keyed producer puts them."""
    return int(key.rsplit(b"-", 1)[1]) % 3 if key and key.startswith(b"sim-node-") else offset % 3


def _input() -> list[Message]:
    """The cluster's raw messages in Kafka's order: a node's messages in one partition, in order."""
    idle = (IdleGpu(1, 2, 20, 70), IdleGpu(3, 5, 40, 100), IdleGpu(5, 0, 10, 130))
    sim = SimGpuCollector(SimConfig(nodes=NODES, gpus_per_node=GPUS, idle=idle))
    out: list[Message] = []
    sent: dict[int, list[tuple[bytes, bytes]]] = {}
    for k in range(TICKS):
        samples = sim.sample(T0 + k * 1000)
        raw = sent[k] = [
            (samples[n * GPUS].node.encode(), GPU_SAMPLES_RAW.codec.encode(samples[n * GPUS : (n + 1) * GPUS]))
            for n in range(NODES)
        ]
        if k == 30:  # a good message without samples, keyed and not
            raw = raw + [(b"sim-node-05", GPU_SAMPLES_RAW.codec.encode([])), (None, GPU_SAMPLES_RAW.codec.encode([]))]
        if k == LATE_TICK:  # a node's message of long ago again: every sample of it late for every series
            raw = raw + [sent[LATE_TICK - 50][2]]
        for key, value in raw + _bad_messages(k):
            out.append((SOURCE, _partition_of(key, len(out)), len(out), key, value))
    return out


def _records(outputs: list[Output]) -> dict[tuple[str, bytes, int | None], list[Any]]:
    """Every output decoded: its records per (topic, key, partition), in send order. A dead letter
    keeps what names the message and why (its time is the wall clock's; a clock skew's reason
    says how far ahead the sample is of that clock, in whole seconds)."""
    out: dict[tuple[str, bytes, int | None], list[Any]] = {}
    for o in outputs:
        records = o.topic.codec.decode(o.value)
        if o.topic is DEAD_LETTERS:
            records = [
                (
                    d.source_topic,
                    d.source_partition,
                    d.source_offset,
                    d.stage,
                    re.sub(r"\d+ s in", "N s in", d.reason),
                    d.raw,
                    d.key,
                )
                for d in records
            ]
        if not records:  # a message without samples: forwarded as it is one by one, nothing to send in a batch
            continue
        if o.topic is GPU_SAMPLES:  # one by one a message per node; in a batch one per partition: compared per node
            for r in records:
                out.setdefault((o.topic.name, r.node.encode(), None), []).append(r)
        else:
            out.setdefault((o.topic.name, o.key, o.partition), []).extend(records)
    return out


def _stats(processor: SampleProcessor) -> dict[str, Any]:
    return dataclasses.asdict(processor.stats)


@pytest.fixture(scope="module")
def one_by_one() -> tuple[list[Message], list[Output], SampleProcessor]:
    data = _input()
    processor = _processor()
    handle = processor.guarded(processor.handle, STAGE)
    return data, [o for m in data for o in handle(*m)], processor


def test_the_input_makes_every_kind_of_output(one_by_one: tuple[list[Message], list[Output], SampleProcessor]) -> None:
    """The comparison below means something: windows close, anomalies fire and resolve, sketches
    and checkpoints go out, and each bad message is dead-lettered with its own reason."""
    _, outputs, processor = one_by_one
    topics = Counter(o.topic.name for o in outputs)
    assert {GPU_SAMPLES.name, GPU_QUANTILES.name, GPU_SKETCHES.name, STREAM_STATE.name, ANOMALIES.name} <= set(topics)
    states = Counter((a.kind, a.state) for o in outputs if o.topic is ANOMALIES for a in ANOMALIES.codec.decode(o.value))
    assert states[("gpu_underused", "firing")] >= 3 and states[("gpu_underused", "resolved")] >= 2, states
    letters = [d for o in outputs if o.topic is DEAD_LETTERS for d in DEAD_LETTERS.codec.decode(o.value)]
    reasons = [d.reason for d in letters]
    assert len(letters) == 7 and processor.stats.failed == 1, reasons  # 6 bad messages, 1 that raises
    assert sum("clock skew" in r for r in reasons) == 1 and sum("RuntimeError: no attribution" in r for r in reasons) == 1
    zoned = [s for o in outputs if o.topic is GPU_SAMPLES and o.key == b"sim-node-01" for s in GPU_SAMPLES.codec.decode(o.value)]
    assert zoned and all(s.zone == "rack-a" for s in zoned)
    assert processor.stats.late_samples == GPUS * 3  # the message sent again: its 8 samples, late for 3 series each


@pytest.mark.parametrize("size", [1, 5, 64, 500, 10_000])
def test_a_batch_gives_what_its_messages_give_one_by_one(
    one_by_one: tuple[list[Message], list[Output], SampleProcessor], size: int
) -> None:
    data, expected, reference = one_by_one
    processor = _processor()
    outputs: list[Output] = []
    for start in range(0, len(data), size):
        batch = processor.handle_batch(data[start : start + size], STAGE)
        samples = Counter(o.partition for o in batch if o.topic is GPU_SAMPLES)
        for o in batch:  # one samples message per partition and batch, unless it had to be split
            if o.topic is GPU_SAMPLES and samples[o.partition] > 1:
                assert len(o.value) > MAX_OUTPUT_BYTES // 4, (o.partition, len(o.value))
        for o in batch:  # each in the partition of its nodes' raw messages: a node's rows stay in order
            if o.topic is GPU_SAMPLES:
                assert {_partition_of(r.node.encode(), 0) for r in GPU_SAMPLES.codec.decode(o.value)} == {o.partition}
        quantiles = Counter(o.key for o in batch if o.topic is GPU_QUANTILES)
        assert all(n == 1 for n in quantiles.values()), quantiles
        outputs += batch

    got, want = _records(outputs), _records(expected)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key] == want[key], key  # records, and anomalies per subject, in the same order
    assert _stats(processor) == _stats(reference)
    if size >= 64:  # the point of batches: fewer, larger messages (checkpoints go as they did: one a series)
        assert sum(o.topic is not STREAM_STATE for o in outputs) < sum(o.topic is not STREAM_STATE for o in expected) / 4


def test_a_batch_larger_than_a_kafka_message_is_split_in_order() -> None:
    """One node's backlog in one batch: its samples go in several messages, none over the limit."""
    sim = SimGpuCollector(SimConfig(nodes=1, gpus_per_node=16))
    samples: list[GpuSample] = []
    while len(GPU_SAMPLES.codec.encode(samples)) < 2 * MAX_OUTPUT_BYTES:  # as the worker encodes them: twice the limit
        samples += [s for k in range(100) for s in sim.sample(T0 + (len(samples) // 16 + k) * 1000)]
    data: list[Message] = [
        (SOURCE, 0, i, b"sim-node-00", GPU_SAMPLES_RAW.codec.encode(samples[i * 16 : (i + 1) * 16]))
        for i in range(len(samples) // 16)
    ]
    outputs = SampleProcessor().handle_batch(data, STAGE)
    forwarded = [o for o in outputs if o.topic is GPU_SAMPLES]
    assert len(forwarded) > 1 and all(len(o.value) <= MAX_OUTPUT_BYTES for o in forwarded)
    records = [s for o in forwarded for s in GPU_SAMPLES.codec.decode(o.value)]
    assert records == GPU_SAMPLES.codec.decode(GPU_SAMPLES.codec.encode(samples))  # all of them, in order, as encoded


@given(st.lists(fuzz_messages(GPU_SAMPLES_RAW), min_size=1, max_size=6))
def test_a_batch_of_any_messages_dead_letters_exactly_the_bad_ones(raws: list[bytes]) -> None:
    processor = SampleProcessor(WorkerOptions().processor_config(), detectors=build(None))
    batch: list[Message] = [(SOURCE, 0, i, b"k", raw) for i, raw in enumerate(raws)]
    letters = [o for o in processor.handle_batch(batch, STAGE) if o.topic is DEAD_LETTERS]
    offsets = Counter(d.source_offset for o in letters for d in DEAD_LETTERS.codec.decode(o.value))
    assert all(n == 1 for n in offsets.values()), offsets  # one letter a message, at most
    assert {i for i, raw in enumerate(raws) if not decodes(GPU_SAMPLES_RAW, raw)} <= set(offsets)
    for letter in letters:
        [d] = DEAD_LETTERS.codec.decode(letter.value)
        check_dead_letter(letter.value, as_dead_lettered(GPU_SAMPLES_RAW, raws[d.source_offset], d))


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--batch-wait", "50"], "--batch-wait: '50' is not a duration"),  # a unit, always: 50 what?
        (["--batch-wait", "0ms"], "--batch-wait: more than 0"),  # Faust's take would wait for a full batch
        (["--batch-max", "0"], "--batch-max: at least 1 message"),
    ],
)
def test_the_worker_refuses_a_batch_it_cannot_take(flags: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    from hpcinsight.cli import main

    assert main(["worker", *flags]) == 2
    assert said in capsys.readouterr().err


def test_the_batch_flags_reach_the_worker_options() -> None:
    from hpcinsight.cli import build_parser

    args = build_parser().parse_args(["worker", "--batch-max", "64", "--batch-wait", "20ms"])
    assert (args.batch_max, args.batch_wait) == (64, "20ms")
    defaults = build_parser().parse_args(["worker"])
    assert WorkerOptions().batch_max == defaults.batch_max == 100
    assert WorkerOptions().batch_wait_s == 0.05 and defaults.batch_wait == "50ms"


class BrokenSeries(RollingSeries):
    """A series whose pane close raises for one GPU's utilisation at one pane (as a bug would):
    the pane with a value that is not a whole percentage, which the series closes as objects."""

    def _close(self, op: Any, values: Any, total: float, counts: Any, out: list[Any]) -> None:
        if op is not None and op[0] == T0 + 20_000 and values.size and float(values[0]) == BROKEN_VALUE:
            raise RuntimeError("the close failed")
        super()._close(op, values, total, counts, out)


BROKEN_VALUE = 12.5


def test_a_failed_close_dead_letters_the_messages_that_closed_panes_and_the_stream_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch's closes run together (close_queued): if they raise, every message whose samples
    closed a pane in that batch is one dead letter with the reason, the others' outputs go out,
    and later batches run as before."""
    monkeypatch.setattr("hpcinsight.streams.processor.RollingSeries", BrokenSeries)
    processor = SampleProcessor(WorkerOptions(windows=parse_windows("10s/5s")).processor_config(), detectors=build(None))
    data: list[Message] = []
    for tick in range(40):
        for node in range(3):
            util = BROKEN_VALUE if (node, tick) == (1, 20) else 50.0
            sample = GpuSample(node=f"n{node}", gpu_index=0, gpu_uuid=f"GPU-{node}", ts=T0 + tick * 1000, gpu_util=util)
            data.append((SOURCE, node, len(data), f"n{node}".encode(), GPU_SAMPLES_RAW.codec.encode([sample])))
    outputs = [o for start in range(0, len(data), 6) for o in processor.handle_batch(data[start : start + 6], STAGE)]
    letters = [d for o in outputs if o.topic is DEAD_LETTERS for d in DEAD_LETTERS.codec.decode(o.value)]
    # pane [20 s, 25 s) of GPU-1 closes at its 27 s sample, in the batch of ticks 26-27; in it,
    # each node's 27 s message closed its panes
    assert sorted(d.source_offset for d in letters) == [27 * 3 + n for n in range(3)], letters
    assert all(d.reason == "gpu-samples failed: RuntimeError: the close failed" for d in letters)
    assert processor.stats.failed == 3
    windows = [q for o in outputs if o.topic is GPU_QUANTILES for q in GPU_QUANTILES.codec.decode(o.value)]
    assert {q.window_end for q in windows if q.gpu_uuid == "GPU-0"} >= {T0 + 30_000, T0 + 35_000}  # the stream went on
    stored = [s for o in outputs if o.topic is GPU_SAMPLES for s in GPU_SAMPLES.codec.decode(o.value)]
    assert len(stored) == len(data) - 3  # the dead-lettered messages' samples are in their letters, not stored
