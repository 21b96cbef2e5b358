"""The sink on a real broker with gpu.samples on the Arrow wire (issue 19): messages of many rows
are stored with each row's Kafka position, a bad IPC message is a dead letter with its reason,
and a JSON envelope (a worker of before the change, during a rolling upgrade) is still stored."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest
from confluent_kafka import Producer

from hpcinsight.schemas.arrow_wire import IPC_MARKER
from hpcinsight.schemas.catalog import GPU_SAMPLES
from hpcinsight.schemas.codec import Codec
from hpcinsight.schemas.derive import to_arrow
from hpcinsight.schemas.events import GpuSample
from tests.conftest import Pipeline, stop
from tests.test_arrow_wire import ipc

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

T0 = (int(time.time()) - 3 * 3600) * 1000  # recent: older rows fall to the tables' TTL


def samples(start: int, n: int) -> list[GpuSample]:
    return [
        GpuSample("n0", k % 8, f"GPU-{k % 8}", T0 + (k // 8) * 1000, gpu_util=float(k % 100)) for k in range(start, start + n)
    ]


def test_columnar_messages_are_stored_row_by_row_and_bad_ones_dead_lettered(pipeline: Pipeline) -> None:
    # two GPUs between the first message's last second and the third's first (else the row kept
    # would be a replay of a stored one, and the sink would rightly drop it)
    out_of_range = to_arrow(GpuSample, [GpuSample("n0", g, f"GPU-{g}", T0 + 19_500, gpu_util=1.0) for g in range(2)])
    out_of_range = out_of_range.set_column(4, out_of_range.schema.field(4), pa.array([1.0, 250.0], pa.float32()))
    good = GPU_SAMPLES.codec.encode(samples(0, 160))
    bad_row = "invalid gpu_sample: `gpu_util` is 250.0, above its maximum 100.0"
    sent: list[tuple[bytes, int, str | None]] = [  # the message, the rows stored of it, its dead letter's reason
        (good, 160, None),
        (
            ipc(out_of_range, {"schema": "gpu_sample", "v": "1"}),
            1,
            "records left out: 1 of 2, the other 1 used; record 1: " + bad_row,
        ),
        (GPU_SAMPLES.codec.encode(samples(160, 8)), 8, None),
        (good[:-100], 0, "malformed Arrow IPC: "),
        (Codec(GpuSample).encode(samples(168, 16)), 16, None),  # JSON: a worker from before the change
        (GPU_SAMPLES.codec.encode_table(to_arrow(GpuSample, samples(184, 40))), 40, None),
    ]
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "enable.idempotence": True})
    for value, _, _ in sent:
        producer.produce(pipeline.topic("gpu.samples"), key=b"n0", value=value)
    assert producer.flush(30) == 0
    assert sent[0][0].startswith(IPC_MARKER)

    sink = pipeline.start("sink", "sink", "--batch-age", "0.3")
    try:
        pipeline.wait_caught_up("clickhouse-sink", ["gpu.samples", "dead.letters"])
        assert sink.poll() is None, "the sink died:\n" + pipeline.log("sink")
    finally:
        assert stop(sink) == 0, pipeline.log("sink")

    stored = pipeline.sql(
        "SELECT _offset AS o, count() AS n, uniqExact(gpu_index, ts) AS d FROM gpu_samples GROUP BY o ORDER BY o"
    )
    assert [(r["o"], r["n"], r["d"]) for r in stored] == [(k, n, n) for k, (_, n, _) in enumerate(sent) if n]
    letters = pipeline.sql("SELECT source_offset, stage, reason, raw, raw_size FROM dead_letters ORDER BY source_offset")
    assert [(d["source_offset"], d["stage"]) for d in letters] == [(1, "sink"), (3, "sink")]
    for letter, k in zip(letters, (1, 3), strict=True):
        reason = sent[k][2]
        assert reason is not None and letter["reason"].startswith(reason), letter
    assert letters[1]["raw_size"] == len(sent[3][0])  # a message refused whole: all of it
    assert letters[0]["raw_size"] < len(sent[1][0])  # of the salvaged one, the row left out
