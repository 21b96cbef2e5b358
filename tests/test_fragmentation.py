"""The live FGD fragmentation (streams) agrees with the simulator's (whatif) on the same cluster and jobs.

Both are written apart (components never import each other), so this is what keeps them the same
measure: a random cluster of mixed GPU models and CPUs, a random workload (CPU-only jobs, GPU shares,
whole GPUs, jobs tied to one model), placed by the simulator's own state; the stream sees the same
inventory and the jobs' events, and its per-node, per-zone and cluster rows must equal what whatif's
``fragmentation`` gives with whatif's typical shapes of the same jobs.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from hpcinsight.schemas.events import NodeInventory, SchedulerEvent
from hpcinsight.streams.fragmentation import ShapeWindow, task_shape
from hpcinsight.streams.kpis import KpiConfig, SchedulingKpis
from hpcinsight.whatif.model import Job, Node
from hpcinsight.whatif.policies.fgd import fragmentation as whatif_fragmentation
from hpcinsight.whatif.state import ClusterState, Shape
from hpcinsight.whatif.typical import typical_shapes

T0 = 1_764_000_000_000


def _cluster(rng: random.Random) -> list[Node]:
    kinds = [(8, "V100M32", 96_000), (8, "A100", 128_000), (4, "T4", 32_000), (2, "P100", 64_000), (8, "", 96_000)]
    nodes = []
    for i in range(60):
        gpus, model, cpu = rng.choice(kinds)
        nodes.append(Node(f"n{i:02d}", cpu, 512_000, gpus, model, f"z{i % 3}"))
    return nodes


def _jobs(rng: random.Random, n: int) -> list[Job]:
    shapes = [
        (0, 0, 4000, ""),
        (1, 500, 8000, ""),
        (1, 250, 4000, ""),
        (1, 1000, 6000, ""),
        (2, 1000, 16_000, ""),
        (4, 1000, 32_000, "A100"),
        (8, 1000, 64_000, ""),
        (1, 1000, 12_000, "V100M32|A100"),
        (0, 0, 0, ""),
    ]
    weights = [8, 10, 6, 20, 6, 3, 2, 4, 1]
    jobs = []
    for i in range(n):
        num, milli, cpu, spec = rng.choices(shapes, weights)[0]
        jobs.append(Job(f"j{i}", cpu, 1024, num, milli, spec))
    return jobs


def _requested(job: Job) -> float:
    return float(job.num_gpu) if job.gpu_milli >= 1000 or job.num_gpu == 0 else job.gpu_milli / 1000


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_live_fragmentation_equals_the_simulators_on_the_same_state(seed: int) -> None:
    rng = random.Random(seed)
    nodes, jobs = _cluster(rng), _jobs(rng, 400)
    state = ClusterState(nodes)
    placed: dict[str, tuple[str, list[int]]] = {}
    for job in jobs:  # fill the cluster at random, as far as the jobs fit
        shape = Shape.of(job)
        fits = np.flatnonzero(state.feasible(shape, np.arange(len(state))))
        if len(fits):
            node = int(rng.choice(list(fits)))
            gpus = state.best_fit_gpus(shape, node) if shape.wants_gpu else []
            state.place(shape, node, gpus)
            placed[job.name] = (state.names[node], gpus)
    typical = typical_shapes(jobs)
    access = np.stack([state.access(spec) for spec in typical.spec], axis=1)
    want = whatif_fragmentation(state.cpu_left, state.gpu_left, access, typical)
    assert want.sum() > 0 and len(placed) > 100

    kpis = SchedulingKpis(KpiConfig(interval_s=60.0, lateness_s=0.0))
    records: list[NodeInventory | SchedulerEvent] = [
        NodeInventory(ts=T0, node=n.name, gpu_count=n.gpus, gpu_model=n.model or None, cpus=n.cpu_milli / 1000, zone=n.zone)
        for n in nodes
    ]
    for k, job in enumerate(jobs):
        common = {
            "source": "test",
            "job_id": job.name,
            "name": job.name,
            "requested_gpus": _requested(job),
            "requested_cpus": job.cpu_milli / 1000,
            "gpu_model": job.gpu_spec or None,
        }
        records.append(SchedulerEvent(ts=T0 + 1 + k, kind="submitted", **common))
        if job.name in placed:
            node, gpus = placed[job.name]
            records.append(
                SchedulerEvent(ts=T0 + 1 + k, kind="scheduled", node=node, gpu_ids=[f"{node}/gpu{g}" for g in gpus], **common)
            )
    rows = [row for r in records for row in kpis.observe(r)] + kpis.advance(T0 + 60_000)
    frag = {(r.dimension, r.group): r.value for r in rows if r.kpi == "fgd_fragmentation_gpus"}
    held = {name for name, _ in placed.values()}
    for i, name in enumerate(state.names):
        if name in held:
            assert frag[("node", name)] == want[i] / 1000, name  # the same sums in the same order: bit-equal
        else:
            assert ("node", name) not in frag  # idle nodes have no row of their own
    for zone in ("z0", "z1", "z2"):
        ix = [i for i, n in enumerate(nodes) if n.zone == zone]
        assert frag[("zone", zone)] == pytest.approx(want[ix].sum() / 1000, rel=1e-12)
    assert frag[("cluster", "all")] == pytest.approx(want.sum() / 1000, rel=1e-12)
    rate = next(r.value for r in rows if r.kpi == "fgd_fragmentation_rate")
    assert rate == pytest.approx(want.sum() / state.gpu_left.sum(), rel=1e-12)


def _whatif_typical(jobs: list[Job]) -> tuple[list[tuple[int, int, int, str]], list[float]]:
    t = typical_shapes(jobs)
    return list(zip(t.cpu.tolist(), t.milli.tolist(), t.num.tolist(), t.spec, strict=True)), t.freq.tolist()


def test_the_typical_shapes_are_the_simulators_and_follow_the_window() -> None:
    jobs = _jobs(random.Random(7), 500)
    window, small = ShapeWindow(window=10_000), ShapeWindow(window=50)
    for job in jobs:
        shape = task_shape(_requested(job), job.cpu_milli / 1000, job.gpu_spec)
        window.add(shape)
        small.add(shape)
    got = window.typical()
    assert (list(got.shapes), list(got.freq)) == _whatif_typical(jobs)
    assert 1 < len(got.shapes) < 9  # the 95% cut-off dropped the rarest shapes
    got = small.typical()  # only the last 50 jobs count
    assert (list(got.shapes), list(got.freq)) == _whatif_typical(jobs[-50:]) != _whatif_typical(jobs)
