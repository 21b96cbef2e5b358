"""``hpcinsight whatif store``: scheduler events and node inventory read from the real engine (chDB).

The store holds a small story inserted through the production tables: four 8-GPU nodes in two
zones, a 16-GPU job on two nodes, and 30 one-GPU and 10 two-GPU jobs whose queue waits are
drawn here; the expected waits are those draws, quantiles by numpy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from hpcinsight.schemas.derive import to_arrow
from hpcinsight.schemas.events import NodeInventory, SchedulerEvent
from hpcinsight.whatif.store import jobs_from_events, nodes_from_inventory

S = 1000
ROOT = Path(__file__).resolve().parent.parent
NODES = [f"node-{n:02d}" for n in range(4)]
ZONE = {"node-00": "zone-a", "node-01": "zone-a", "node-02": "zone-b", "node-03": "zone-b"}


def story() -> tuple[list[NodeInventory], list[SchedulerEvent], dict[str, list[float]]]:
    rng = np.random.default_rng(5)
    t0 = (int(time.time()) // 3600 - 1) * 3600 * S
    inventory = [
        NodeInventory(ts=t0, node=n, gpu_count=8, gpu_model="H100", cpus=96.0, memory_bytes=2**40, zone=ZONE[n]) for n in NODES
    ]
    events: list[SchedulerEvent] = []

    def job(
        name: str, team: str, prio: str, gpus: float, submitted: int, scheduled: int, finished: int | None, node: str | None
    ) -> None:
        common = dict(
            source="test",
            job_id=name,
            name=name,
            user=f"u-{team}",
            team=team,
            priority=prio,
            requested_gpus=gpus,
            requested_cpus=8.0,
        )
        events.append(SchedulerEvent(ts=submitted, kind="submitted", **common))
        events.append(SchedulerEvent(ts=scheduled, kind="scheduled", node=node, **common))
        if finished is not None:
            events.append(SchedulerEvent(ts=finished, kind="finished", node=node, status="Succeeded", **common))

    job("job-a", "llm", "high", 16.0, t0, t0 + 60 * S, None, "node-[00-01]")
    job("job-b", "vision", "low", 8.0, t0 + 200 * S, t0 + 300 * S, t0 + 900 * S, "node-02")
    waits: dict[str, list[float]] = {}
    for bucket, n, base, gpus in (("1", 30, 2400, 1.0), ("2-4", 10, 2520, 2.0)):
        waits[bucket] = [float(round(rng.uniform(0, 300), 3)) for _ in range(n)]
        for i, w in enumerate(waits[bucket]):
            sched = t0 + (base + i) * S
            job(f"w{bucket}-{i}", "batch", "normal", gpus, sched - int(w * S), sched, t0 + 2700 * S, None)
    return inventory, sorted(events, key=lambda e: e.ts), waits


def fill_store(client) -> tuple[list[NodeInventory], list[SchedulerEvent], dict[str, list[float]]]:
    """The story's scheduler events and inventory written to a store (tables made first)."""
    from hpcinsight.sinks.clickhouse import ensure_tables

    ensure_tables(client)
    inventory, events, waits = story()
    for table, event, records in (("scheduler_events", SchedulerEvent, events), ("node_inventory", NodeInventory, inventory)):
        n = len(records)
        extra = {"_partition": pa.array([0] * n, pa.uint32()), "_offset": pa.array(range(n), pa.uint64())}
        client.insert_arrow(table, to_arrow(event, records, extra))
    return inventory, events, waits


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path_factory.mktemp('whatif') / 'ch'}")
    inventory, events, waits = fill_store(client)
    yield client, inventory, events, waits
    client.close()


def cli(store_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``hpcinsight`` in a process of its own on the store at ``store_dir`` (an embedded store is
    opened by one process at a time, so the store is filled by another process first)."""
    env = {**os.environ, "CLICKHOUSE_URL": f"chdb://{store_dir}"}
    return subprocess.run(
        [sys.executable, "-m", "hpcinsight.cli", *args], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def test_store_replay_from_the_cli(tmp_path) -> None:
    store_dir = tmp_path / "ch"
    fill = (
        "import clickhouse_connect, sys; from tests.test_whatif_store import fill_store; "
        "c = clickhouse_connect.get_client(dsn='chdb://' + sys.argv[1]); fill_store(c); c.close()"
    )
    subprocess.run([sys.executable, "-c", fill, str(store_dir)], check=True, cwd=ROOT, timeout=300)
    _, _, waits = story()
    result = cli(
        store_dir,
        "whatif",
        "store",
        "--since",
        "3h",
        "--policy",
        "bestfit,fgd",
        "--queue",
        "fifo",
        "--as-recorded",
        "--format",
        "json",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["policy"] for r in rows] == ["bestfit", "fgd", "as recorded"]
    recorded = rows[-1]
    assert recorded["requests"] == 42  # job-a (one gang of two 8-GPU tasks), job-b, 40 small jobs
    for bucket in ("1", "2-4"):
        want = np.quantile(np.array(waits[bucket]), [0.5, 0.95])
        got = recorded["wait_by"]["gpu_bucket"][bucket]
        assert got["count"] == len(waits[bucket])
        assert got["p50"] == pytest.approx(want[0], abs=1e-3) and got["p95"] == pytest.approx(want[1], abs=1e-3)
    assert recorded["wait_by"]["gang"]["gang"] == {"p50": 60.0, "p95": 60.0, "count": 1}
    assert recorded["gpu_hours_by_team"]["vision"] == pytest.approx(8 * 600 / 3600, abs=0.1)
    for r in rows[:2]:
        assert r["unschedulable"] == 0 and r["placed"] == 42  # 32 GPUs: everything fits at some point
        assert set(r["zone_util_pct"]) == {"zone-a", "zone-b"}
    result = cli(store_dir, "whatif", "store", "--since", "1h", "--until", "2h")
    assert result.returncode == 2 and "--until is not after --since" in result.stderr


def test_events_to_jobs_and_nodes(store) -> None:
    _, inventory, events, _ = store
    nodes = nodes_from_inventory(inventory)
    assert [(n.name, n.gpus, n.model, n.zone, n.cpu_milli) for n in nodes][0] == ("node-00", 8, "H100", "zone-a", 96_000)
    jobs = jobs_from_events(events, max_node_gpus=8)
    a = [j for j in jobs if j.name.startswith("job-a")]
    assert len(a) == 2 and all(j.num_gpu == 8 and j.gang == "job-a/job-a" and j.cpu_milli == 4000 for j in a)
    b = next(j for j in jobs if j.name == "job-b/job-b")
    assert (b.team, b.priority, b.num_gpu, b.end - b.start) == ("vision", "low", 8, 600.0)
