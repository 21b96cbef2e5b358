"""A worker whose fetch skips messages goes back for them: every sample forwarded, once.

The chaos campaign lost one message of a partition with no process killed: Faust's fetch skipped
it (streams.offsets says how) and its commit went past it. Here the real worker's consumer is made
to skip ahead mid-partition, as that fetch did, by a seek past 40 messages it has not read. The
stages must notice the hole, seek back, and forward every sample exactly once.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from confluent_kafka import Producer

from hpcinsight.agents.sim.gpu import SimConfig, SimGpuCollector
from hpcinsight.core.kafka import read_to_end
from hpcinsight.schemas.catalog import GPU_SAMPLES, GPU_SAMPLES_RAW
from tests.conftest import Pipeline, stop

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

NODES, GPUS, TICKS = 16, 8, 60
T0 = (int(time.time()) // 3600 - 3) * 3_600_000
SKIP = 40

# The worker as the CLI runs it, with small fetches (a few messages each, so that the read position
# moves slowly through the backlog) and one fault: once a raw partition has been read past 20
# messages with more than 80 left, its consumer seeks 40 messages ahead of what it has read.
WORKER = textwrap.dedent(
    f"""
    import os
    from hpcinsight.core.settings import load
    from hpcinsight.streams.app import WorkerOptions, run_worker

    settings = load(os.environ)
    raw = settings.topic("{GPU_SAMPLES_RAW.name}")

    def skip_ahead_once(app):
        app.conf.consumer_max_fetch_size = 4096
        done = []

        @app.timer(interval=0.05)
        async def skip_ahead():
            if done:
                return
            consumer = app.consumer
            for tp in consumer.assignment():
                read, high = consumer._read_offset.get(tp), consumer.highwater(tp)
                if tp.topic == raw and read is not None and high is not None and read >= 20 and high - read > 80:
                    done.append(tp)
                    await consumer.seek_wait({{tp: read + {SKIP}}})
                    print(f"skipped ahead in partition {{tp.partition}}: from {{read}} to {{read + {SKIP}}}", flush=True)
                    return

    run_worker(settings, WorkerOptions(), on_app=skip_ahead_once)
    """
)


def _produce(p: Pipeline) -> set[tuple[str, int]]:
    sim = SimGpuCollector(SimConfig(nodes=NODES, gpus_per_node=GPUS))
    # one message a record batch: the broker returns whole batches, so a fetch of 4 KiB holds a few
    # messages and a skip of 40 cannot land inside what the consumer has already fetched
    producer = Producer({**p.client_config(), "linger.ms": 0, "batch.num.messages": 1, "partitioner": "murmur2_random"})
    sent = set()
    for k in range(TICKS):
        samples = sim.sample(T0 + k * 1000)
        sent |= {(s.gpu_uuid, s.ts) for s in samples}
        for n in range(NODES):
            batch = samples[n * GPUS : (n + 1) * GPUS]
            producer.produce(p.topic(GPU_SAMPLES_RAW.name), GPU_SAMPLES_RAW.codec.encode(batch), batch[0].node.encode())
            producer.poll(0)
    assert producer.flush(60) == 0
    return sent


def test_a_fetch_that_skips_messages_is_sent_back_for_them(pipeline: Pipeline) -> None:
    p = pipeline
    sent = _produce(p)
    log = open(p.logs / "worker.log", "ab")
    worker = subprocess.Popen([sys.executable, "-c", WORKER], env=p.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        p.poll(lambda: "skipped ahead" in p.log("worker"), worker)
        p.wait_caught_up("worker", [GPU_SAMPLES_RAW.name], timeout=120)
    finally:
        stop(worker)

    forwarded = [
        (s.gpu_uuid, s.ts)
        for m in read_to_end(p.client_config(), p.topic(GPU_SAMPLES.name), f"read-{uuid.uuid4().hex}")
        for s in GPU_SAMPLES.codec.decode(m.value())
    ]
    missing = sent - set(forwarded)
    assert not missing, f"{len(missing)} of {len(sent)} samples never forwarded, e.g. {sorted(missing)[:3]}"
    assert len(forwarded) == len(sent), f"{len(forwarded) - len(sent)} samples forwarded twice"
    assert "seeking back to" in p.log("worker"), p.log("worker")[-3000:]
