"""What a worker holds while it takes its series back from ``stream.state`` after a restart.

Every series checkpoints once a minute of event time, about 13 KB each, and the topic is
compacted only once a segment closes and the cleaner runs: until then it holds a checkpoint a
series a minute (1.8 million an hour at 10,240 GPUs). The rebuild reads all of it.

``restore``: the checkpoints of 512 GPUs (1,536 series), each written 10 times, as ten minutes
would leave them uncompacted, on a real broker; :func:`hpcinsight.streams.recovery.rebuild_gpu_stage`
takes them back into a fresh processor. Measured with :mod:`tracemalloc` (Python's allocations,
the consumed messages' bytes included): ``mb_held`` the rebuild's peak; the baseline, reading and
decoding the same messages keeping nothing. ``restored_mb`` is what the restored state itself
weighs (the checkpoints kept, one a series), the least any rebuild holds. ``seconds``: the rebuild.
"""

from __future__ import annotations

import time
import uuid

GPUS, COPIES = 512, 10


def _checkpoints() -> list[tuple[bytes, bytes]]:
    """(series key, message) of every series of GPUS simulated GPUs after 20 minutes of samples."""
    from hpcinsight.agents.sim.gpu import SimConfig, SimGpuCollector
    from hpcinsight.schemas.catalog import GPU_SAMPLES_RAW, STREAM_STATE
    from hpcinsight.streams.processor import SampleProcessor

    nodes = GPUS // 8
    sim, processor = SimGpuCollector(SimConfig(nodes=nodes, gpus_per_node=8)), SampleProcessor()
    t0 = (int(time.time()) // 3600 - 2) * 3_600_000
    latest: dict[bytes, bytes] = {}
    for k in range(20 * 60):
        samples = sim.sample(t0 + k * 1000)
        batch = [
            ("raw", 0, k * nodes + n, b"n%d" % n, GPU_SAMPLES_RAW.codec.encode(samples[n * 8 : (n + 1) * 8]))
            for n in range(nodes)
        ]
        for out in processor.handle_batch(batch):
            if out.topic is STREAM_STATE and out.key is not None:
                latest[out.key] = out.value
    return list(latest.items())


def bench_restore(repeats: int) -> dict[str, float]:
    from bench.run import traced_peak
    from bench.stream import _produce
    from hpcinsight.core.kafka import iter_to_end
    from hpcinsight.deploy.local.kafka import LocalKafka
    from hpcinsight.schemas.catalog import GPU_SAMPLES_RAW, STREAM_STATE, ensure_topics
    from hpcinsight.streams.processor import SampleProcessor
    from hpcinsight.streams.recovery import rebuild_gpu_stage

    checkpoints = _checkpoints()
    restored_bytes = sum(len(v) for _, v in checkpoints)
    with LocalKafka() as kafka:
        prefix = f"bench{uuid.uuid4().hex[:6]}."
        conf = {"bootstrap.servers": kafka.bootstrap}
        ensure_topics(conf, prefix)
        state = STREAM_STATE.full_name(prefix)
        _produce(kafka.bootstrap, state, checkpoints * COPIES, partition=0)
        messages = len(checkpoints) * COPIES

        def bare() -> int:
            n = 0
            for msg in iter_to_end(conf, state, "bench-read", partitions={0}):
                n += len(STREAM_STATE.codec.decode(msg.value()))
            return n

        def rebuild() -> tuple[int, int]:
            return rebuild_gpu_stage(SampleProcessor(), conf, f"{prefix}worker", GPU_SAMPLES_RAW.full_name(prefix), state, {0})

        base, seen = min((traced_peak(bare) for _ in range(max(1, repeats // 2))), key=lambda r: r[0])
        assert seen == messages
        best, seconds = float("inf"), float("inf")
        for _ in range(max(1, repeats // 2)):
            start = time.perf_counter()
            peak, (series, _) = traced_peak(rebuild)
            seconds = min(seconds, time.perf_counter() - start)
            best = min(best, peak)
            assert series == len(checkpoints)
    return {
        "mb_held": best / 1e6,
        "baseline_mb_held": base / 1e6,
        "ratio": base / best,
        "restored_mb": restored_bytes / 1e6,
        "topic_mb": restored_bytes * COPIES / 1e6,
        "series": float(len(checkpoints)),
        "messages": float(messages),
        "seconds": seconds,
    }
