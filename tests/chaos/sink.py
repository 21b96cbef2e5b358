"""``python -m tests.chaos.sink``: the sink killed -9 again and again, many times mid-insert.

The whole-pipeline campaign kills the sink a few times in half an hour; an insert cut short
between ``gpu_samples`` and its rollup views (finding F11, docs/chaos-results.md) needs a kill
inside the few milliseconds between the table's part and the views' parts. Here the sink is the
only process under fault: a real broker, the worker's ``gpu.samples`` messages produced all along
(with replays, ticks the worker forwarded twice, as after its restart), and the real
``hpcinsight sink`` with small batches, so that it inserts all along, killed at random ``--kills``
times; then a last sink drains the topic. Every sample must be in ``gpu_samples``
once and counted once in each rollup.

    python -m tests.chaos.sink --kills 30 --seed 1

Exit status 0 when every check passed, 1 otherwise. ``KAFKA_BOOTSTRAP`` picks an existing broker.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from hpcinsight.schemas.catalog import GPU_SAMPLES, ensure_topics
from hpcinsight.schemas.events import GpuSample
from tests.conftest import Pipeline

GPUS_PER_NODE = 8


def produce(bootstrap: str, topic: str, nodes: int, ticks: int, rate: float, replays: int, rng: random.Random) -> None:
    """Each node's ticks as one message each, ``rate`` ticks a second (so the sink inserts all
    along the campaign, as it does behind a live worker), and ``replays`` runs of 20 ticks sent
    twice (new offsets, same samples, as the worker forwards after a restart)."""
    t0 = (int(time.time()) // 3600 - 3) * 3_600_000  # recent: older rows fall to the tables' TTL
    replayed_after = set(rng.sample(range(1, ticks), min(replays, ticks - 1)))
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20})

    def tick(node: str, n: int, k: int) -> bytes:
        return GPU_SAMPLES.codec.encode(
            [
                GpuSample(node, g, f"GPU-{node}-{g}", t0 + k * 1000, gpu_util=float((k + g) % 101), job_id=f"job-{n % 5}")
                for g in range(GPUS_PER_NODE)
            ]
        )

    started = time.monotonic()
    for k in range(ticks):
        time.sleep(max(0.0, started + k / rate - time.monotonic()))
        for n in range(nodes):
            node = f"n{n:03d}"
            producer.produce(topic, key=node.encode(), value=tick(node, n, k))
            if k in replayed_after:  # the last 20 ticks forwarded again, at new offsets
                for j in range(max(0, k - 19), k + 1):
                    producer.produce(topic, key=node.encode(), value=tick(node, n, j))
        producer.poll(0)
    assert producer.flush(60) == 0


def campaign(bootstrap: str, run_dir: Path, kills: int, seed: int, nodes: int, ticks: int, rate: float) -> dict[str, Any]:
    rng = random.Random(seed)
    prefix = f"sinkchaos{uuid.uuid4().hex[:6]}."
    ensure_topics({"bootstrap.servers": bootstrap}, prefix)
    expected = ticks * nodes * GPUS_PER_NODE
    feed = threading.Thread(
        target=produce,
        args=(bootstrap, prefix + GPU_SAMPLES.name, nodes, ticks, rate, max(1, ticks // 200), random.Random(seed + 1)),
        daemon=True,
    )
    feed.start()
    pipeline = Pipeline(bootstrap, prefix, run_dir / "clickhouse", run_dir)
    sink = ["sink", "--batch-rows", "2000", "--batch-age", "0.05"]
    for _ in range(kills):
        proc = pipeline.start("sink", *sink)
        # past the start (imports, the store, the group: about 3 s here), then at random
        time.sleep(rng.uniform(3.0, 6.0))
        proc.kill()
        proc.wait(30)
    feed.join()
    final = pipeline.run(*sink, "--idle-exit", "5", timeout=600, check=False)
    lines = final.stdout.strip().splitlines()
    last = (
        json.loads(lines[-1]) if final.returncode == 0 and lines else {"exit": final.returncode, "stderr": final.stderr[-2000:]}
    )
    log_text = pipeline.log("sink") + final.stderr
    counts = pipeline.sql(
        "SELECT (SELECT count() FROM gpu_samples FINAL) AS final, (SELECT uniqExact(gpu_uuid, ts) FROM gpu_samples) AS distinct_n, "
        "(SELECT sum(samples) FROM gpu_rollup_1m) AS rollup_1m, (SELECT sum(samples) FROM gpu_rollup_1h) AS rollup_1h, "
        "(SELECT sum(samples) FROM job_rollup_1m) AS job_rollup_1m",
    )[0]
    checks = {
        "the last sink drained the topic and exited 0": final.returncode == 0,
        "every sample stored once": int(counts["final"]) == int(counts["distinct_n"]) == expected,
        "each rollup counts each sample once": all(
            int(counts[k]) == expected for k in ("rollup_1m", "rollup_1h", "job_rollup_1m")
        ),
    }
    return {
        "kills": kills,
        "seed": seed,
        "samples": expected,
        **{k: int(v) for k, v in counts.items()},
        "inserts_done_again": log_text.count("done again"),
        "resumed_from_store": log_text.count("from ClickHouse"),
        "last_sink": last,
        "checks": checks,
        "verdict": "PASS" if all(checks.values()) else "FAIL",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.sink", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--ticks", type=int, default=6000, help="of every node, produced during the campaign")
    parser.add_argument("--rate", type=float, default=40.0, help="ticks a second")
    parser.add_argument("--run-dir", type=Path, default=None, help="logs and the store (default: a temp dir)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hpcinsight-sink-chaos-") as tmp:
        run_dir = args.run_dir or Path(tmp)
        run_dir.mkdir(parents=True, exist_ok=True)
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
        if bootstrap:
            result = campaign(bootstrap, run_dir, args.kills, args.seed, args.nodes, args.ticks, args.rate)
        else:
            from hpcinsight.deploy.local.kafka import LocalKafka

            with LocalKafka(run_dir / "kafka", heap="512m") as kafka:
                result = campaign(kafka.bootstrap, run_dir, args.kills, args.seed, args.nodes, args.ticks, args.rate)
    print(json.dumps(result, default=str))
    return 0 if result["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
