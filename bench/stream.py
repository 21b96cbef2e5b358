"""Stream processor benchmarks: chain throughput per worker, and end-to-end latency to an anomaly.

``stream_chain``: the whole per-GPU chain in-process (decode, validate, attribute, three sliding
windows and since-start on KLL panes, every detector, encode every output) over node-batched
messages, against decoding the same messages with the catalog codec (what any consumer pays).
The chain runs as the worker runs it, in batches of its ``--batch-max`` messages (``handle_batch``;
``BENCH_CHAIN_BATCH`` sets another size, 0 the message-by-message ``handle``); the one-by-one
figure is reported beside it (``one_by_one_samples_per_s``), and so is the chain with every
sample on a job (``on_jobs_*``: jobs of 8 nodes and the nodes' zones told first, as on a busy
cluster, where the attribution relabels each sample). The worker's collector settings
apply (young collections every 50,000 allocations, none inside a batch).

``stream_worker``: the real ``hpcinsight worker`` process (Faust reading, librdkafka writing)
draining a backlog of node-batched raw samples on a real broker (its rate from the Kafka
timestamps of its first and last output), against a bare confluent-kafka consume-and-decode loop
over the same topic. Also reported: the floor of any Faust worker here, a do-nothing Faust agent
on the same topic (:mod:`bench.faust_floor`). Target: 0.6 of that floor. ``BENCH_WORKER_ARGS``
adds options to the workers of this bench and the latency ones (e.g. ``--batch-max 100``).

``latency``: a sim agent at 1 Hz (1,024 or 10,240 GPUs) with an idle GPU on every node in waves, the
worker and the broker running together (at 10,240 GPUs the agents at nice 19); for every
anomaly, the time from the production of the raw sample that closed its window (its Kafka
timestamp, stamped by the agent's producer) to the anomaly's own Kafka timestamp (stamped by the
worker's producer), same clock. Target p99 <= 2 s (p95 and p50 beside it). The baseline is the same agent's raw message
delivery delay (sample time to broker). Also reported: how long raw messages waited before a
worker processed them (``queued_*``: the worker forwards a node's samples once a batch is
handled, so this is the wait of the last raw message of each node in a batch).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from hpcinsight.agents.sim.gpu import SimConfig, SimGpuCollector
from hpcinsight.agents.sim.scheduler import hostlist, node_names
from hpcinsight.schemas.catalog import (
    ANOMALIES,
    GPU_QUANTILES,
    GPU_SAMPLES,
    GPU_SAMPLES_RAW,
    NODE_INVENTORY,
    SCHEDULER_EVENTS,
)
from hpcinsight.schemas.events import NodeInventory, SchedulerEvent

ROOT = Path(__file__).resolve().parent.parent
GPUS_PER_NODE = 8
#: more options for the benches' workers, to compare settings (e.g. ``--batch-max 100``)
WORKER_ARGS = os.environ.get("BENCH_WORKER_ARGS", "").split()


def _messages(nodes: int, ticks: int, t0: int) -> list[tuple[bytes, bytes]]:
    sim = SimGpuCollector(SimConfig(nodes=nodes, gpus_per_node=GPUS_PER_NODE))
    out = []
    for k in range(ticks):
        samples = sim.sample(t0 + k * 1000)
        for n in range(nodes):
            batch = samples[n * GPUS_PER_NODE : (n + 1) * GPUS_PER_NODE]
            out.append((batch[0].node.encode(), GPU_SAMPLES_RAW.codec.encode(batch)))
    return out


def bench_stream_chain(repeats: int) -> dict[str, float]:
    from hpcinsight.streams.app import GC_YOUNG_THRESHOLD, WorkerOptions, collections_paused
    from hpcinsight.streams.processor import SampleProcessor

    t0 = (int(time.time()) // 3600 - 2) * 3_600_000
    data = _messages(nodes=64, ticks=180, t0=t0)  # 11,520 messages, 92,160 samples, 3 minutes of a 512-GPU cluster
    samples = len(data) * GPUS_PER_NODE

    batch = int(os.environ.get("BENCH_CHAIN_BATCH", str(WorkerOptions().batch_max)))  # the worker's --batch-max
    messages = [("raw", 0, i, key, value) for i, (key, value) in enumerate(data)]

    def one_by_one() -> None:
        processor = SampleProcessor()
        for message in messages:
            processor.handle(*message)

    def batches(on_jobs: bool = False) -> None:
        processor = SampleProcessor()
        if on_jobs:
            processor.observe_scheduler(SCHEDULER_EVENTS.codec.encode(_jobs(nodes=64, t0=t0)), SCHEDULER_EVENTS)
            processor.observe_scheduler(NODE_INVENTORY.codec.encode(_inventory(nodes=64, t0=t0)), NODE_INVENTORY)
        for start in range(0, len(messages), batch):
            with collections_paused():  # as the worker runs it
                processor.handle_batch(messages[start : start + batch])

    def decode() -> None:
        for _key, value in data:
            GPU_SAMPLES_RAW.codec.decode(value)

    from bench.run import best_of

    # the worker's collector settings (streams.app.run_worker), restored after: at CPython's
    # defaults the collector is a quarter of the chain's time (docs/benchmarks.md)
    thresholds = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)
    try:
        single = best_of(one_by_one, max(1, repeats // 2))
        ours = best_of(batches, max(1, repeats // 2)) if batch else single
        on_jobs = best_of(partial(batches, on_jobs=True), max(1, repeats // 2)) if batch else float("nan")
        base = best_of(decode, repeats)
    finally:
        gc.set_threshold(*thresholds)
    return {
        "samples_per_s": samples / ours,
        "baseline_samples_per_s": samples / base,
        "ratio": base / ours,
        "us_per_sample": ours / samples * 1e6,
        "batch_max": float(batch),
        "one_by_one_samples_per_s": samples / single,
        "on_jobs_samples_per_s": samples / on_jobs,
        "on_jobs_us_per_sample": on_jobs / samples * 1e6,
    }


def _jobs(nodes: int, t0: int) -> list[SchedulerEvent]:
    """Jobs of 8 nodes each on the sim cluster, started a minute before its first sample: every
    sample is attributed (its job, user, team, priority), as on a busy cluster."""
    cluster = SimConfig(nodes=nodes, gpus_per_node=GPUS_PER_NODE)
    return [
        SchedulerEvent(
            ts=t0 - 60_000,
            source="bench",
            job_id=f"train-{k}",
            kind="started",
            user=f"user-{k % 3}",
            team=f"team-{k % 2}",
            priority="high",
            requested_gpus=float(8 * GPUS_PER_NODE),
            node=hostlist(cluster, list(range(k * 8, (k + 1) * 8))),
        )
        for k in range(nodes // 8)
    ]


def _inventory(nodes: int, t0: int) -> list[NodeInventory]:
    return [
        NodeInventory(ts=t0 - 60_000, node=name, gpu_count=GPUS_PER_NODE, zone=f"zone-{n // 32}")
        for n, name in enumerate(node_names(SimConfig(nodes=nodes, gpus_per_node=GPUS_PER_NODE)))
    ]


def _env(bootstrap: str, prefix: str, data_dir: str) -> dict[str, str]:
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP": bootstrap,
        "HPCINSIGHT_TOPIC_PREFIX": prefix,
        "HPCINSIGHT_DATA_DIR": data_dir,
        "PYTHONUNBUFFERED": "1",
    }


def _produce(bootstrap: str, topic: str, data: list[tuple[bytes, bytes]], partition: int | None = None) -> None:
    """``data`` (key, value) onto ``topic``, by key or all to ``partition``."""
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": "zstd",
            "linger.ms": 20,
            "partitioner": "murmur2_random",
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    where = {} if partition is None else {"partition": partition}
    for key, value in data:
        producer.produce(topic, value, key, **where)
        producer.poll(0)
    assert producer.flush(120) == 0


def _bare_consume(bootstrap: str, topic: str, expected: int, per_message: Callable[[bytes], int] | None = None) -> float:
    """Seconds a bare confluent-kafka loop takes from its first message until ``per_message``
    (default: decoding it, its GPU samples) has counted ``expected``."""
    from confluent_kafka import Consumer

    count = per_message or (lambda value: len(GPU_SAMPLES_RAW.codec.decode(value)))

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-bare-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen, started = 0, None
    deadline = time.monotonic() + 300
    while seen < expected and time.monotonic() < deadline:
        for msg in consumer.consume(1000, timeout=0.5):
            if msg.error():
                continue
            if started is None:
                started = time.perf_counter()
            seen += count(msg.value())
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return elapsed


def bench_stream_worker(repeats: int) -> dict[str, float]:
    from bench.faust_floor import run_floor
    from hpcinsight.deploy.local.kafka import LocalKafka
    from hpcinsight.schemas.catalog import ensure_topics

    t0 = (int(time.time()) // 3600 - 2) * 3_600_000
    data = _messages(nodes=64, ticks=480, t0=t0)  # 30,720 messages, 245,760 samples: 8 minutes of 512 GPUs
    samples = len(data) * GPUS_PER_NODE
    with tempfile.TemporaryDirectory() as tmp, LocalKafka() as kafka:
        bootstrap = kafka.bootstrap
        prefix = f"bench{uuid.uuid4().hex[:6]}."
        conf = {"bootstrap.servers": bootstrap}
        ensure_topics(conf, prefix)
        raw = prefix + GPU_SAMPLES_RAW.name
        _produce(bootstrap, raw, data)
        base = _bare_consume(bootstrap, raw, samples)
        floor_msgs = run_floor(bootstrap, raw, len(data), tmp)
        ours = _worker_seconds(bootstrap, prefix, tmp, workers=1, expected=len(data))
    return {
        "samples_per_s": samples / ours,
        "baseline_samples_per_s": samples / base,
        "ratio": (samples / ours) / (samples / base),
        "messages": float(len(data)),
        "faust_floor_samples_per_s": floor_msgs * GPUS_PER_NODE,
    }


def _worker_seconds(bootstrap: str, prefix: str, tmp: str, workers: int, expected: int) -> float:
    """Start ``workers`` worker processes in one group on a backlog of ``expected`` raw messages;
    seconds from their first to their last forwarded message (Kafka timestamps: the workers' clock).
    Done when the group has committed every raw message (a batch forwards many in one message, so
    the forwarded messages do not count the raw ones; a commit waits for the outputs before it)."""
    from confluent_kafka import Consumer, TopicPartition

    from hpcinsight.core.kafka import lag, message_count
    from hpcinsight.schemas.catalog import GPU_SAMPLES

    conf = {"bootstrap.servers": bootstrap}
    out = prefix + GPU_SAMPLES.name
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "hpcinsight.cli", "worker", "--instance", str(i), *WORKER_ARGS],
            env=_env(bootstrap, prefix, str(Path(tmp) / f"w{workers}-{i}")),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(workers)
    ]
    try:
        deadline = time.monotonic() + 600
        raw = prefix + GPU_SAMPLES_RAW.name
        assert message_count(conf, [raw])[raw] == expected, "the backlog is not the one produced"
        while lag(conf, f"{prefix}worker", [raw]) > 0:
            assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, "worker died or stalled"
            time.sleep(0.5)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    consumer = Consumer({**conf, "group.id": f"bench-{uuid.uuid4().hex}", "enable.partition.eof": True})
    parts = consumer.list_topics(out, timeout=10).topics[out].partitions
    consumer.assign([TopicPartition(out, p, 0) for p in parts])
    stamps: list[tuple[int, int]] = []  # (timestamp, samples) of each forwarded message
    eof: set[int] = set()
    while len(eof) < len(parts):
        for msg in consumer.consume(5000, timeout=1.0):
            if msg.error():
                eof.add(msg.partition())
            else:
                stamps.append((msg.timestamp()[1], len(GPU_SAMPLES.codec.decode(msg.value()))))
    consumer.close()
    # The first message went out once its batch was done: the span holds the samples after it. As the
    # seconds of all samples at that rate (a message of 8, one by one; up to a batch's 4,000 in batches).
    first, last = min(stamps), max(stamps)
    total = sum(n for _, n in stamps)
    return (last[0] - first[0]) / 1000 * total / (total - first[1])


def bench_scaleout(repeats: int) -> dict[str, float]:
    """Two workers in one group against one worker, the same backlog (each on its own topics).
    On this 2-core machine the broker shares the cores with both workers, so the ratio says how
    much of a second core's worth the second worker gets, not how far the design scales."""
    from hpcinsight.deploy.local.kafka import LocalKafka
    from hpcinsight.schemas.catalog import ensure_topics

    t0 = (int(time.time()) // 3600 - 2) * 3_600_000
    data = _messages(nodes=64, ticks=240, t0=t0)  # 15,360 messages, 122,880 samples
    samples = len(data) * GPUS_PER_NODE
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp, LocalKafka() as kafka:
        for workers in (1, 2):
            prefix = f"scale{workers}{uuid.uuid4().hex[:6]}."
            ensure_topics({"bootstrap.servers": kafka.bootstrap}, prefix)
            _produce(kafka.bootstrap, prefix + GPU_SAMPLES_RAW.name, data)
            seconds[workers] = _worker_seconds(kafka.bootstrap, prefix, tmp, workers=workers, expected=len(data))
    two, one = samples / seconds[2], samples / seconds[1]
    return {"samples_per_s": two, "baseline_samples_per_s": one, "ratio": two / one, "cores": float(os.cpu_count() or 0)}


def _latency(gpus: int, seconds: int, workers: int = 1, agent_nice: int = 0) -> dict[str, float]:
    """Run agent + ``workers`` workers (one group) on one broker for ``seconds``; latency of every anomaly.
    ``agent_nice``: the simulated agents' CPU priority (19: the lowest, as if on hosts of their own)."""
    from confluent_kafka import Consumer, TopicPartition

    from hpcinsight.deploy.local.kafka import LocalKafka
    from hpcinsight.schemas.catalog import ensure_topics

    nodes = gpus // GPUS_PER_NODE
    # waves of idle GPUs: one GPU in every node idles for 25 s, staggered over the run, so
    # anomalies fire all along it; one a node, as a p99 needs many (with one in every 8th node a
    # run at 10,240 GPUs had 160 and its p99 was the second slowest: runs of one build spread 1.3 s)
    idle = [f"{n}:{(n // 8) % GPUS_PER_NODE}@{15 + n % 40}-{40 + n % 40}" for n in range(nodes)]
    with tempfile.TemporaryDirectory() as tmp, LocalKafka() as kafka:
        bootstrap = kafka.bootstrap
        prefix = f"lat{uuid.uuid4().hex[:6]}."
        conf = {"bootstrap.servers": bootstrap}
        ensure_topics(conf, prefix)
        env = _env(bootstrap, prefix, tmp)
        logs = [open(Path(tmp) / f"worker{i}.log", "wb") for i in range(workers)]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "hpcinsight.cli", "worker", "--windows", "10s/5s", "--instance", str(i), *WORKER_ARGS],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            for i, log in enumerate(logs)
        ]
        time.sleep(8 + 4 * (workers - 1))  # let the workers join their group before the data flows
        args = [
            sys.executable,
            "-m",
            "hpcinsight.cli",
            "agent",
            "--backend",
            "sim",
            "--nodes",
            str(nodes),
            "--gpus",
            str(GPUS_PER_NODE),
            "--ticks",
            str(seconds),
            "--interval",
            "1",
        ]
        for spec in idle:
            args += ["--idle", spec]
        agent = subprocess.run(
            args,
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=seconds + 300,
            preexec_fn=(lambda: os.nice(agent_nice)) if agent_nice else None,
        )
        summary = json.loads(agent.stdout.strip().splitlines()[-1])
        time.sleep(5)
        for worker in procs:
            worker.terminate()
        for worker, log in zip(procs, logs):
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
            log.close()

        def read(topic: str) -> list[Any]:
            consumer = Consumer({**conf, "group.id": f"lat-{uuid.uuid4().hex}", "enable.partition.eof": True})
            parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            consumer.assign([TopicPartition(topic, p, 0) for p in parts])
            out, eof = [], set()
            while len(eof) < len(parts):
                for msg in consumer.consume(2000, timeout=1.0):
                    if msg.error():
                        eof.add(msg.partition())
                    else:
                        out.append(msg)
            consumer.close()
            return out

        # when each (gpu, sample ts) reached the broker, and how late after its sample time
        produced: dict[str, list[tuple[int, int]]] = {}
        delivery = []
        arrived: dict[tuple[bytes, int], int] = {}  # (node key, sample time) -> raw message's timestamp
        for msg in read(prefix + GPU_SAMPLES_RAW.name):
            kafka_ts = msg.timestamp()[1]
            for s in GPU_SAMPLES_RAW.codec.decode(msg.value()):
                produced.setdefault(s.gpu_uuid, []).append((s.ts, kafka_ts))
            delivery.append(kafka_ts - s.ts)
            arrived[(s.node.encode(), s.ts)] = kafka_ts
        for series in produced.values():
            series.sort()
        # how long raw messages waited before their worker processed them (the worker forwards a
        # partition's samples of a batch in one message once the batch is handled: its timestamp is
        # then, matched to the raw message of each node's last sample in it)
        queued = []
        for m in read(prefix + GPU_SAMPLES.name):
            last = {s.node: s.ts for s in GPU_SAMPLES.codec.decode(m.value())}
            queued += [m.timestamp()[1] - arrived[k] for k in ((n.encode(), ts) for n, ts in last.items()) if k in arrived]
        lateness_ms = 2000
        latencies = []
        for msg in read(prefix + ANOMALIES.name):
            for a in ANOMALIES.codec.decode(msg.value()):
                if a.kind != "gpu_underused" or a.gpu_uuid is None:
                    continue
                series = produced[a.gpu_uuid]
                i = int(np.searchsorted([t for t, _ in series], a.window_end + lateness_ms))
                if i < len(series):
                    latencies.append(msg.timestamp()[1] - series[i][1])
        if not latencies:  # say why, rather than report nothing
            quantiles = read(prefix + GPU_QUANTILES.name)
            tails = "\n".join((Path(tmp) / f"worker{i}.log").read_text(errors="replace")[-3000:] for i in range(workers))
            print(
                f"latency_{gpus}: no gpu_underused anomaly read; {len(quantiles)} quantile messages, agent {summary}, "
                f"worker exits {[w.returncode for w in procs]}; worker log tails:\n{tails}",
                file=sys.stderr,
                flush=True,
            )
    lat = np.array(latencies, dtype=np.float64) / 1000
    base = np.array(delivery, dtype=np.float64) / 1000
    return {
        "p99_s": float(np.percentile(lat, 99)) if lat.size else float("nan"),
        "baseline_p99_s": float(np.percentile(base, 99)),
        "ratio": float(np.percentile(base, 99) / np.percentile(lat, 99)) if lat.size else float("nan"),
        "p50_s": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p95_s": float(np.percentile(lat, 95)) if lat.size else float("nan"),
        "anomalies": float(lat.size),
        "gpus": float(gpus),
        "ticks": float(summary["ticks"]),
        "dropped": float(summary["dropped"]),
        "workers": float(workers),
        "agent_nice": float(agent_nice),
        "queued_p50_s": float(np.percentile(queued, 50)) / 1000 if queued else float("nan"),
        "queued_p99_s": float(np.percentile(queued, 99)) / 1000 if queued else float("nan"),
    }


def bench_latency_1k(repeats: int) -> dict[str, float]:
    return _latency(1024, 90)


def bench_latency_10k(repeats: int) -> dict[str, float]:
    # One worker, as issue 19 asks. The simulated agents of 1,280 nodes run in one process on the
    # same two cores as the worker and the broker; on a cluster each agent has a host of its own,
    # so here they run at the lowest CPU priority (nice 19) and take only what the worker leaves.
    return _latency(10240, 90, workers=1, agent_nice=19)
