"""The floor under any Faust worker here: a do-nothing agent reading a topic, and what moves it.

As a process (``python -m bench.faust_floor worker -l warn``), run by :mod:`bench.stream` and by
:func:`bench_faust_floor`, it reads the broker, topic and message count from the environment,
iterates the topic without looking at a message, prints ``FLOOR <messages/s>`` (from its first
message) and ``FLOOR_ASSIGNED <messages/s>`` (from the partitions' assignment, every fetch
included) once it has seen them all, and exits. ``FLOOR_SETTINGS`` (JSON) adds Faust app
settings (fetch size, poll records, stream buffer, ...), ``FLOOR_TAKE`` reads batches through
``Stream.take`` instead of one event at a time, and ``FLOOR_IDLE_S`` ends a run that stops short
(``FLOOR_SHORT <seen>``, exit 3), so a miscount shows instead of hanging.

:func:`bench_faust_floor` (``bench.run faust_floor``) measures that floor in one run on one
broker: today's messages (one node's 8 GPU samples), larger messages (a node's whole tick, GPUs
and IB ports, and 8 ticks of a node), Faust's consumer and stream settings, and a bare
confluent-kafka loop on the same topic. The unit that matters is GPU samples/s: Faust's cost is
mostly per message, so a message carrying more samples moves the floor most.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NODES, TICKS, GPUS, PORTS = 64, 480, 8, 8  # 245,760 GPU samples: 8 minutes of 512 GPUs, as bench.stream's worker bench
BIG = 8  # ticks of one node in one message for the largest messages
MIB = 1024**2


def _app() -> Any:
    """The do-nothing app, configured from the environment (a process of its own per variant)."""
    import faust

    bootstrap, topic_name, expected = os.environ["FLOOR_BOOTSTRAP"], os.environ["FLOOR_TOPIC"], int(os.environ["FLOOR_MESSAGES"])
    take, idle_s = int(os.environ.get("FLOOR_TAKE", "0")), float(os.environ.get("FLOOR_IDLE_S", "30"))
    app = faust.App(
        f"floor-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        datadir=os.environ.get("FLOOR_DATADIR", "/tmp/hpcinsight-faust-floor"),
        **json.loads(os.environ.get("FLOOR_SETTINGS", "{}")),
    )
    topic = app.topic(topic_name, key_serializer="raw", value_serializer="raw")
    seen = {"n": 0, "start": 0.0, "last": 0.0, "assigned": 0.0}

    def count(n: int) -> None:
        now = time.perf_counter()
        if seen["n"] == 0:
            seen["start"] = now
        seen["n"] += n
        seen["last"] = now
        if seen["n"] >= expected:
            print(f"FLOOR {seen['n'] / (now - seen['start']):.1f}", file=sys.stderr, flush=True)  # bench.stream reads it
            print(f"FLOOR_ASSIGNED {seen['n'] / (now - seen['assigned']):.1f}", file=sys.stderr, flush=True)
            os._exit(0 if seen["n"] == expected else 4)  # more than the topic holds: a miscount

    @app.on_partitions_assigned.connect
    async def assigned(sender: faust.App, assigned: set[Any], **_: object) -> None:
        seen["assigned"] = seen["assigned"] or time.perf_counter()  # the first assignment: every fetch comes after it

    @app.agent(topic)
    async def drain(stream: faust.Stream) -> None:
        if take:
            async for batch in stream.take(take, within=0.05):
                count(len(batch))
        else:
            async for _event in stream.events():
                count(1)

    @app.timer(1.0)
    async def stalled() -> None:
        if seen["n"] and time.perf_counter() - seen["last"] > idle_s:
            print(f"FLOOR_SHORT {seen['n']}", file=sys.stderr, flush=True)
            os._exit(3)

    return app


def run_floor(bootstrap: str, topic: str, messages: int, data_dir: str) -> float:
    """Messages/s of one do-nothing Faust app with Faust's defaults draining ``messages`` from
    ``topic``, from its first message (as ``stream_worker`` times the worker)."""
    return floor_rates(bootstrap, topic, messages, data_dir)[0]


def floor_rates(
    bootstrap: str,
    topic: str,
    messages: int,
    data_dir: str,
    settings: dict[str, Any] | None = None,
    take: int = 0,
    idle_s: float = 15,
) -> tuple[float, float]:
    """Messages/s from the first message and from the partitions' assignment. The first fetch
    arrives before the first message: a large fetch size takes much of a backlog out of the first
    clock (one 8 MiB fetch per partition holds all of bench_faust_floor's compressed topic), not
    out of the second."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.faust_floor", "worker", "-l", "warn"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={
            **os.environ,
            "FLOOR_BOOTSTRAP": bootstrap,
            "FLOOR_TOPIC": topic,
            "FLOOR_MESSAGES": str(messages),
            "FLOOR_DATADIR": str(Path(data_dir) / uuid.uuid4().hex[:8]),
            "FLOOR_SETTINGS": json.dumps(settings or {}),
            "FLOOR_TAKE": str(take),
            "FLOOR_IDLE_S": str(idle_s),
        },
    )
    first = re.search(r"FLOOR ([0-9.]+)", proc.stderr)  # Faust logs what the app prints: "[...] [WARNING] FLOOR 1234.5"
    since = re.search(r"FLOOR_ASSIGNED ([0-9.]+)", proc.stderr)
    if proc.returncode != 0 or first is None or since is None:
        raise RuntimeError(f"floor app on {topic} ended {proc.returncode}:\n{proc.stderr[-3000:]}")
    return float(first.group(1)), float(since.group(1))


def _tick_messages() -> dict[str, list[tuple[bytes, bytes]]]:
    """The same GPU samples three ways: one node's GPUs a message (today), a node's whole tick
    (GPUs and IB ports, one JSON object holding both catalog batches), and BIG ticks of a node."""
    from hpcinsight.agents.sim.gpu import SimConfig, SimGpuCollector
    from hpcinsight.agents.sim.ib import SimIbCollector, SimIbConfig
    from hpcinsight.schemas.catalog import GPU_SAMPLES_RAW, IB_SAMPLES_RAW

    gpu_sim = SimGpuCollector(SimConfig(nodes=NODES, gpus_per_node=GPUS))
    ib_sim = SimIbCollector(SimIbConfig(nodes=NODES, ports=PORTS))
    t0 = (int(time.time()) // 3600 - 2) * 3_600_000
    out: dict[str, list[tuple[bytes, bytes]]] = {"gpu": [], "tick": [], "ticks8": []}
    held: list[tuple[list[Any], list[Any]]] = [([], []) for _ in range(NODES)]
    for k in range(TICKS):
        gpus, ports = gpu_sim.sample(t0 + k * 1000), ib_sim.sample(t0 + k * 1000)
        for n in range(NODES):
            g, i = gpus[n * GPUS : (n + 1) * GPUS], ports[n * PORTS : (n + 1) * PORTS]
            key = g[0].node.encode()
            out["gpu"].append((key, GPU_SAMPLES_RAW.codec.encode(g)))
            out["tick"].append((key, _node_message(GPU_SAMPLES_RAW.codec.encode(g), IB_SAMPLES_RAW.codec.encode(i))))
            held[n][0].extend(g)
            held[n][1].extend(i)
            if k % BIG == BIG - 1:
                gs, ps = held[n]
                out["ticks8"].append((key, _node_message(GPU_SAMPLES_RAW.codec.encode(gs), IB_SAMPLES_RAW.codec.encode(ps))))
                held[n] = ([], [])
    return out


def _node_message(gpu_batch: bytes, ib_batch: bytes) -> bytes:
    return b'{"gpu":' + gpu_batch + b',"ib":' + ib_batch + b"}"


#: every setting above that could help at once, and batches through take
ALL: dict[str, Any] = {"consumer_max_fetch_size": 8 * MIB, "stream_buffer_maxsize": 131_072, "broker_check_crcs": False}
#: the variants: (name, topic, Faust settings, take batch); topics "gpu" (today), "tick", "ticks8"
VARIANTS: list[tuple[str, str, dict[str, Any], int]] = [
    ("a_today", "gpu", {}, 0),
    ("b_node_tick", "tick", {}, 0),
    ("b_8_ticks", "ticks8", {}, 0),
    ("c_fetch_8mib", "gpu", {"consumer_max_fetch_size": 8 * MIB}, 0),
    ("c_poll_500", "gpu", {"broker_max_poll_records": 500}, 0),
    ("c_buffer_128k", "gpu", {"stream_buffer_maxsize": 131_072}, 0),
    ("c_no_crc", "gpu", {"broker_check_crcs": False}, 0),
    ("c_take_1000", "gpu", {}, 1000),
    ("c_fetch_32mib", "gpu", {"consumer_max_fetch_size": 32 * MIB}, 0),
    ("c_all", "gpu", ALL, 1000),
    ("bc_node_tick_all", "tick", ALL, 1000),
    ("bc_8_ticks_all", "ticks8", ALL, 1000),
]


def bench_faust_floor(repeats: int) -> dict[str, float]:
    """Every variant in one run on one broker, best of ``repeats`` (at most 3: about 4 minutes here)."""
    from bench.stream import GPUS_PER_NODE, _bare_consume, _produce
    from hpcinsight.core.topics import create_topics
    from hpcinsight.deploy.local.kafka import LocalKafka
    from hpcinsight.schemas.catalog import GPU_SAMPLES_RAW

    data = _tick_messages()
    # the same 8-tick messages 4 times over: 15,360 messages, a drain of seconds like the others
    # (3,840 took under a second, most of it Faust's own start after the assignment)
    data["ticks8"] *= 4
    gpu_per_message = {"gpu": GPUS_PER_NODE, "tick": GPUS_PER_NODE, "ticks8": GPUS_PER_NODE * BIG}
    best: dict[str, float] = {}  # messages/s, best of the repeats: "<variant>" from assignment, "<variant>_first"

    def keep(name: str, rate: float) -> None:
        best[name] = max(best.get(name, 0.0), rate)

    with tempfile.TemporaryDirectory() as tmp, LocalKafka() as kafka:
        bootstrap, run_id = kafka.bootstrap, uuid.uuid4().hex[:6]
        topics = {name: f"floor{run_id}.{name}" for name in data}
        specs = [dataclasses.replace(GPU_SAMPLES_RAW, name=name) for name in data]  # 6 partitions, like the raw topic
        create_topics({"bootstrap.servers": bootstrap}, specs, f"floor{run_id}.")
        for name, messages in data.items():
            _produce(bootstrap, topics[name], messages)
        n = len(data["gpu"])
        for _ in range(max(1, min(repeats, 3))):
            for variant, source, settings, take in VARIANTS:
                first, since = floor_rates(bootstrap, topics[source], len(data[source]), tmp, settings, take)
                keep(variant, since)
                keep(f"{variant}_first", first)
            keep("d_bare_count_first", n / _bare_consume(bootstrap, topics["gpu"], n, per_message=lambda _value: 1))
            keep("d_bare_decode_first", n / _bare_consume(bootstrap, topics["gpu"], n * GPUS_PER_NODE))
    out: dict[str, float] = {}
    for variant, source, _, _ in [*VARIANTS, ("d_bare_count", "gpu", {}, 0), ("d_bare_decode", "gpu", {}, 0)]:
        for clock in ("", "_first"):
            if variant + clock not in best:
                continue  # the bare loops have only the first-message clock
            rate, base = best[variant + clock], best["a_today" + clock]
            out[f"{variant}{clock}_messages_per_s"] = rate
            out[f"{variant}{clock}_samples_per_s"] = rate * gpu_per_message[source]
            out[f"{variant}{clock}_ratio"] = rate * gpu_per_message[source] / (base * GPUS_PER_NODE)
    for name, messages in data.items():
        out[f"bytes_per_message_{name}"] = sum(len(v) for _, v in messages) / len(messages)
    today, bare = best["a_today_first"], best["d_bare_count_first"]  # both from their first message, as stream_worker
    return {"samples_per_s": today * GPUS_PER_NODE, "baseline_samples_per_s": bare * GPUS_PER_NODE, "ratio": today / bare, **out}


if __name__ == "__main__":
    if "--without-web" not in sys.argv:  # Faust's worker command serves its web page unless told, whatever the app says
        sys.argv.append("--without-web")
    _app().main()
