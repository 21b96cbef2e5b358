"""A second worker joining while the first drains a backlog in batches: every sample counted once.

The per-GPU stage takes batches from Faust (``take_events``); a batch can hold messages fetched
before a rebalance, which Faust fetches again afterwards from the committed offsets. Every GPU
reports every second here, so each closed window of a GPU's utilisation must count exactly the
ticks inside it: a message processed twice counts twice, a message skipped and never fetched again
counts nothing (and its samples are missing from ``gpu.samples``).
"""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Producer

from hpcinsight.agents.sim.gpu import SimConfig, SimGpuCollector
from hpcinsight.core.kafka import lag, read_to_end
from hpcinsight.schemas.catalog import GPU_QUANTILES, GPU_SAMPLES, GPU_SAMPLES_RAW
from tests.conftest import Pipeline, stop

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

NODES, GPUS, TICKS = 64, 8, 400
T0 = (int(time.time()) // 3600 - 3) * 3_600_000
WORKER = ("worker", "--windows", "10s/5s", "--since-start-every", "10s", "--checkpoint-every", "10s")


def _produce(p: Pipeline) -> None:
    sim = SimGpuCollector(SimConfig(nodes=NODES, gpus_per_node=GPUS))
    producer = Producer({**p.client_config(), "linger.ms": 20, "partitioner": "murmur2_random"})
    for k in range(TICKS):
        samples = sim.sample(T0 + k * 1000)
        for n in range(NODES):
            batch = samples[n * GPUS : (n + 1) * GPUS]
            producer.produce(p.topic(GPU_SAMPLES_RAW.name), GPU_SAMPLES_RAW.codec.encode(batch), batch[0].node.encode())
            producer.poll(0)
    assert producer.flush(60) == 0


def _read(p: Pipeline, name: str) -> list[bytes]:
    return [m.value() for m in read_to_end(p.client_config(), p.topic(name), f"read-{uuid.uuid4().hex}")]


def test_a_rebalance_mid_backlog_counts_every_sample_once(pipeline: Pipeline) -> None:
    p = pipeline
    _produce(p)
    backlog = NODES * TICKS
    raw = [p.topic(GPU_SAMPLES_RAW.name)]
    a = p.start("worker-a", *WORKER, "--instance", "a")
    b = None
    try:
        p.poll(lambda: lag(p.client_config(), f"{p.prefix}worker", raw) < 0.95 * backlog, a)  # a is under way
        b = p.start("worker-b", *WORKER, "--instance", "b")
        p.poll(lambda: "partitions [" in p.log("worker-b"), a, b)
        rebalanced_at = lag(p.client_config(), f"{p.prefix}worker", raw)
        p.wait_caught_up("worker", [GPU_SAMPLES_RAW.name], timeout=600)
    finally:
        for proc in (a, b):
            if proc is not None:
                stop(proc)
    assert rebalanced_at > 0, "a drained the backlog before b joined: no rebalance mid-backlog was tested"

    forwarded = {(s.gpu_uuid, s.ts) for v in _read(p, GPU_SAMPLES.name) for s in GPU_SAMPLES.codec.decode(v)}
    assert len(forwarded) == NODES * GPUS * TICKS  # every sample, at least once

    def ticks_in(start: int, end: int) -> int:  # ticks k with start <= T0 + k s < end
        return max(0, min(TICKS, -(-(end - T0) // 1000)) - max(0, -(-(start - T0) // 1000)))

    wrong, checked = [], 0
    for value in _read(p, GPU_QUANTILES.name):
        for q in GPU_QUANTILES.codec.decode(value):
            if q.metric == "gpu_util" and q.window == "10s":
                checked += 1
                exact = ticks_in(q.window_start, q.window_end)
                if q.count != exact:
                    wrong.append((q.gpu_uuid, q.window_start, q.count, exact))
    assert checked >= NODES * GPUS * (TICKS // 5 - 4)
    assert not wrong, f"{len(wrong)} of {checked} windows miscounted, e.g. {wrong[:5]}"
