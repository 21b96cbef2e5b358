"""``python -m tests.chaos.store``: the embedded store alone under its own faults, fast.

The sink's real write path (:class:`hpcinsight.sinks.clickhouse_sink.TableWriter`, the catalog's
tables, rollups and migrations) inserts a block of 64 GPU samples every 50 ms from a child
process into a store on a small loop-mounted ext4, while the campaign kills it (-9), stops it
(SIGTERM) and fills the disk, at random. Each inserted block is recorded after its insert
returned, so at the end every recorded block must be in ``gpu_samples`` and counted once in the
rollup. It reproduced finding F5 in 10 minutes (a merged part of empty files, detached on the
next start with 686 blocks in it) where the whole-pipeline campaign needs hours; see
docs/chaos-results.md.

    python -m tests.chaos.store --minutes 10 --seed 1 --run-dir /tmp/store-chaos

Needs root (mount). Exit status 0 when nothing was lost, 1 otherwise, 2 when it cannot run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.chaos.harness import FullDisk

GPUS = 64


def store_url(mount: Path) -> str:
    return f"chdb://{mount / 'clickhouse'}"


def writer(mount: Path, progress: Path, t0: int) -> None:
    """The child: insert blocks until SIGTERM, recording each one after its insert returned.
    Block ``k`` is stamped ``t0 + k`` seconds (``t0``: the campaign's start, the same for every
    writer it starts, and recent, or the tables' TTL would drop the rows)."""
    from hpcinsight.core.settings import ClickHouseSettings
    from hpcinsight.schemas.catalog import by_name
    from hpcinsight.schemas.events import GpuSample
    from hpcinsight.sinks.clickhouse import connect, ensure_tables
    from hpcinsight.sinks.clickhouse_sink import TableWriter

    settings = ClickHouseSettings(url=store_url(mount))
    client = connect(settings, writer=True)
    ensure_tables(client, settings)
    topic = by_name("gpu.samples")
    table_writer = TableWriter(client, background=False)
    done = [int(x) for x in progress.read_text().split()] if progress.exists() else []
    block = max(done) + 1 if done else 0  # the last one may be inserted again: its dedup token is the same
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    with open(progress, "a") as out:
        while not stopping:
            samples = [
                GpuSample(
                    node=f"n{g // 8}",
                    gpu_index=g % 8,
                    gpu_uuid=f"GPU-{g}",
                    ts=t0 + block * 1000,
                    gpu_util=float((block + g) % 100),
                )
                for g in range(GPUS)
            ]
            raws = [topic.codec.encode([s]) for s in samples]
            rejected = table_writer.add(topic, raws, [0] * GPUS, list(range(block * GPUS, (block + 1) * GPUS)))
            assert not rejected, rejected[:2]
            table_writer.submit()
            out.write(f"{block}\n")
            out.flush()
            block += 1
            time.sleep(0.05)
    table_writer.close()
    client.close()


def check(mount: Path, progress: Path) -> dict[str, Any]:
    from hpcinsight.core.settings import ClickHouseSettings
    from hpcinsight.sinks.clickhouse import connect

    client = connect(ClickHouseSettings(url=store_url(mount)), writer=True)
    try:
        blocks = {int(x) for x in progress.read_text().split()}
        stored = {row[0] for row in client.query(f"SELECT DISTINCT intDiv(_offset, {GPUS}) FROM gpu_samples").result_rows}
        missing = sorted(blocks - stored)
        return {
            "blocks_recorded": len(blocks),
            "rows_final": client.query("SELECT count() FROM gpu_samples FINAL").result_rows[0][0],
            "rollup_samples": client.query("SELECT sum(samples) FROM gpu_rollup_1m").result_rows[0][0],
            "missing_blocks": len(missing),
            "first_missing": missing[:10],
            "detached": client.query("SELECT table, name, reason FROM system.detached_parts").result_rows,
        }
    finally:
        client.close()


def campaign(run_dir: Path, minutes: float, seed: int) -> int:
    disk = FullDisk(run_dir / "storefs")
    disk.mount()
    if not disk.mounted:
        print(f"cannot run: {disk.skip_reason}", file=sys.stderr)
        return 2
    progress, log = run_dir / "progress.txt", open(run_dir / "writer.log", "a")
    progress.unlink(missing_ok=True)
    rng = random.Random(seed)
    t0 = int(time.time()) * 1000
    start = lambda: subprocess.Popen(
        [sys.executable, "-m", "tests.chaos.store", "--writer", str(disk.mount_point), str(progress), str(t0)],
        stdout=log,
        stderr=log,
    )
    child, faults, ok = start(), {"kill": 0, "term": 0, "disk": 0}, False
    try:
        end = time.monotonic() + minutes * 60
        while time.monotonic() < end:
            time.sleep(rng.uniform(4, 12))
            kind = rng.choice(["kill", "term", "disk", "disk"])
            faults[kind] += 1
            print(time.strftime("%H:%M:%S"), kind, flush=True)
            if kind == "disk":
                disk.fill()
                time.sleep(rng.uniform(5, 12))
                disk.free()
                continue
            child.kill() if kind == "kill" else child.terminate()
            child.wait()
            child = start()
        child.terminate()
        child.wait()
        result = check(disk.mount_point, progress)
        ok = result["missing_blocks"] == 0 and result["rollup_samples"] == result["blocks_recorded"] * GPUS
        print(json.dumps({"faults": faults, **result, "verdict": "PASS" if ok else "FAIL"}, default=str))
    finally:
        if child.poll() is None:
            child.kill()
        disk.unmount(keep=not ok)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.store", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--run-dir", type=Path, default=None, help="kept; a failed run keeps the store image in it")
    parser.add_argument("--writer", nargs=3, metavar=("MOUNT", "PROGRESS", "T0"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.writer:
        writer(Path(args.writer[0]), Path(args.writer[1]), int(args.writer[2]))
        return 0
    run_dir = args.run_dir or Path(f"/tmp/hpcinsight-store-chaos-{os.getpid()}")
    run_dir.mkdir(parents=True, exist_ok=True)
    return campaign(run_dir, args.minutes, args.seed)


if __name__ == "__main__":
    sys.exit(main())
