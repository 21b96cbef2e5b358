"""An insert cut short between ``gpu_samples`` and its rollup views is completed by the next sink.

The chaos campaign's finding: a sink killed while its store pushed a batch to the views (with the
embedded store, a kill of the sink is a kill of the store) left 1,024 samples in ``gpu_samples``
and none in ``gpu_rollup_1m``, and the restarted sink resumed after them. Here the store fails
every push to the rollups with a constraint no row meets (ClickHouse has written the table's block
by then, as on a full disk), the sink is killed while retrying, the constraint is dropped, and a
new sink must leave every sample counted once in every rollup.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from confluent_kafka import Producer

from hpcinsight.schemas.catalog import GPU_SAMPLES
from hpcinsight.schemas.events import GpuSample
from tests.conftest import ROOT, Pipeline

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

T0 = (int(time.time()) // 3600 - 3) * 3_600_000  # recent: older rows fall to the tables' TTL
MESSAGES, GPUS = 350, 8

STORE = """
import sys
from hpcinsight.core.settings import load
from hpcinsight.sinks.clickhouse import connect
client = connect(load().clickhouse, writer=True)
for statement in sys.argv[1:]:
    client.command(statement)
"""
# the rollup refuses every row, after ClickHouse has written the table's block
ROLLUP_REFUSES = ["ALTER TABLE gpu_rollup_1m ADD CONSTRAINT refuse_all CHECK ts < toDateTime('2000-01-01')"]
ROLLUP_TAKES = ["ALTER TABLE gpu_rollup_1m DROP CONSTRAINT refuse_all"]


def on_store(pipeline: Pipeline, statements: list[str]) -> None:
    subprocess.run([sys.executable, "-c", STORE, *statements], env=pipeline.env, cwd=ROOT, check=True, timeout=120)


def stored(pipeline: Pipeline) -> dict[str, int]:
    tables = ("gpu_samples", "gpu_rollup_1m", "gpu_rollup_1h")
    sums = ", ".join(f"(SELECT {'count()' if t == 'gpu_samples' else 'sum(samples)'} FROM {t}) AS {t}" for t in tables)
    return {k: int(v or 0) for k, v in pipeline.sql(f"SELECT {sums}")[0].items()}


def test_an_insert_cut_short_between_the_table_and_its_views_is_completed(pipeline: Pipeline) -> None:
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "enable.idempotence": True, "linger.ms": 20})
    # a worker's replay inside the batch (ticks 250-299 forwarded again): the batch read again
    # must drop it as the first read did, or the rollups would count those samples twice
    ticks = [*range(300), *range(250, 300), *range(300, MESSAGES)]
    for k in ticks:
        node = f"n{k % 4}"
        records = [GpuSample(node, g, f"GPU-{node}-{g}", T0 + k * 1000, gpu_util=float(g)) for g in range(GPUS)]
        producer.produce(pipeline.topic("gpu.samples"), key=node.encode(), value=GPU_SAMPLES.codec.encode(records))
    assert producer.flush(30) == 0
    expected = MESSAGES * GPUS

    pipeline.run("db", "migrate")
    on_store(pipeline, ROLLUP_REFUSES)
    sink = pipeline.start("sink-1", "sink", "--batch-rows", "100000", "--batch-age", "1")
    pipeline.poll(lambda: "failed (try 2)" in pipeline.log("sink-1"), sink)
    sink.kill()
    sink.wait(30)
    on_store(pipeline, ROLLUP_TAKES)
    cut_short = stored(pipeline)
    # the fault as found: the table has the batch, the rollups have none of it
    assert cut_short["gpu_samples"] > 0 and cut_short["gpu_rollup_1m"] == cut_short["gpu_rollup_1h"] == 0, cut_short

    final = pipeline.run("sink", "--batch-rows", "100000", "--idle-exit", "5")
    stats = json.loads(final.stdout.strip().splitlines()[-1])
    assert stored(pipeline) == {"gpu_samples": expected, "gpu_rollup_1m": expected, "gpu_rollup_1h": expected}
    assert pipeline.sql("SELECT uniqExact(gpu_uuid, ts) AS n FROM gpu_samples")[0] == {"n": expected}
    assert stats["inserts_redone"] >= 1, stats
