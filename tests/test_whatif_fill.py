"""Fill mode: the FGD authors' experiment, on a slice and (one seed) on the real default trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpcinsight.whatif.anchor import compare, published_value
from hpcinsight.whatif.fill import curve, run_fill, workload
from hpcinsight.whatif.model import Job, Node
from hpcinsight.whatif.readers import read_nodes, read_pods
from hpcinsight.whatif.typical import typical_shapes

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "alibaba-openb-2023"
needs_trace = pytest.mark.skipif(not (DATA / "openb_pod_list_default.csv").exists(), reason="openb trace not in ../shared/data")


def job(name: str, cpu: int = 4000, num: int = 1, milli: int = 1000) -> Job:
    return Job(name=name, cpu_milli=cpu, memory_mib=1024, num_gpu=num, gpu_milli=milli)


def test_typical_shapes_popularity_cut() -> None:
    jobs = (
        [job(f"a{i}") for i in range(5)]
        + [job(f"b{i}", milli=500) for i in range(3)]
        + [job("c", num=0, milli=0), job("d", num=2)]
    )
    all_kept = typical_shapes(jobs)  # 95% of 10 pods needs all four shapes
    assert len(all_kept) == 4 and all_kept.freq.sum() == pytest.approx(1.0)
    assert all_kept.num.tolist()[:2] == [1, 1] and all_kept.milli.tolist()[:2] == [1000, 500]
    assert all_kept.num.tolist()[2:] == [2, 0]  # equally popular: the larger shape first
    cut = typical_shapes(jobs, threshold=80)  # 8 of 10 pods: the two popular shapes, renormalised
    assert cut.freq.tolist() == pytest.approx([5 / 8, 3 / 8])


def test_curve_bins_by_rounded_arrived_percent() -> None:
    # 10 GPUs: arrivals at 5%, 10%, 14%, 16%, 20% of 10,000 milli
    arrived = np.array([500, 1000, 1400, 1600, 2000])
    allocated = np.array([500, 1000, 1000, 1000, 1500])
    got = curve(arrived, allocated, total_gpus=10, top=20)
    assert got[10] == 10.0 and got[20] == 15.0
    assert got[14] == 10.0 and got[16] == 10.0
    assert got[15] == 10.0  # none at 15%: the mean of 14-16%
    assert 0 not in got and 3 not in got


def slice_cluster() -> tuple[list[Job], list[Node]]:
    rng = np.random.default_rng(7)
    jobs = []
    for i in range(400):
        kind = rng.choice(["share", "one", "multi", "cpu"], p=[0.4, 0.4, 0.05, 0.15])
        if kind == "share":
            jobs.append(job(f"p{i:04d}", cpu=int(rng.integers(1, 8)) * 1000, milli=int(rng.choice([250, 460, 500]))))
        elif kind == "one":
            jobs.append(job(f"p{i:04d}", cpu=int(rng.integers(2, 16)) * 1000))
        elif kind == "multi":
            jobs.append(job(f"p{i:04d}", cpu=32000, num=int(rng.choice([2, 4, 8]))))
        else:
            jobs.append(job(f"p{i:04d}", cpu=int(rng.integers(1, 32)) * 1000, num=0, milli=0))
    nodes = [Node(f"n{i:03d}", 96_000, 393_216, 8, "G2") for i in range(30)] + [
        Node(f"t{i:03d}", 104_000, 393_216, 2, "T4") for i in range(20)
    ]
    return jobs, nodes


def test_fill_on_a_slice_is_consistent_and_seeded() -> None:
    jobs, nodes = slice_cluster()
    order, ranks = workload(jobs, nodes, seed=42)
    demand = sum(j.total_gpu_milli for j in order)
    assert demand <= 1.3 * 280_000 and len(order) > len(jobs)  # inflated past the capacity, not past 130%
    assert sorted(ranks.tolist()) == list(range(len(nodes)))
    runs = {p: run_fill(jobs, nodes, p, 42) for p in ("random", "firstfit", "bestfit", "fgd", "gpupacking")}
    for name, run in runs.items():
        assert (np.diff(run.arrived_milli) >= 0).all() and (run.allocated_milli <= run.arrived_milli).all()
        st = run.final_state
        assert (st.gpu_left >= 0).all() and (st.cpu_left >= 0).all() and (st.mem_left >= 0).all()
        assert st.allocated_milli() == run.allocated_milli[-1], name
        assert run.failed > 0  # 130% of the GPUs cannot all fit
        c = run.curve()
        assert c[50] == pytest.approx(50, abs=1.5)  # below capacity nearly everything fits
        assert 60 < c[130] <= 100
    again = run_fill(jobs, nodes, "fgd", 42)
    assert again.allocated_milli.tolist() == runs["fgd"].allocated_milli.tolist()
    other = run_fill(jobs, nodes, "fgd", 43)
    assert other.allocated_milli.tolist() != runs["fgd"].allocated_milli.tolist()
    assert runs["fgd"].curve()[130] > runs["random"].curve()[130]


def test_anchor_comparison_shape() -> None:
    assert published_value("fgd", 42, 130) == 95.29
    rows = compare({"fgd": {42: {100: 95.0, 130: 95.5}, 43: {100: 95.2, 130: 95.3}}})
    by_level = {c.level: c for c in rows}
    assert by_level[130].theirs == round((95.29 + 95.32) / 2, 2)
    assert by_level[130].ours == 95.4 and by_level[130].within


@needs_trace
@pytest.mark.parametrize("policy", ["bestfit", "fgd"])
def test_real_trace_one_seed_near_the_published_figure(policy: str) -> None:
    """Seed 42 on the default trace against the FGD authors' seed-42 figures.

    Our random stream is not Go's, so a seed's shuffle differs from theirs and only the
    statistics agree: the bound is 0.5 pp per seed (their seeds spread 0.1-0.15 pp around their
    mean); the mean over ten seeds is checked against 0.3 pp by ``python -m bench.run whatif``.
    FGD takes about 7 s here.
    """
    jobs = read_pods(DATA / "openb_pod_list_default.csv")
    nodes = read_nodes(DATA / "openb_node_list_gpu_node.csv")
    c = run_fill(jobs, nodes, policy, 42).curve()
    for level in (100, 130):
        assert abs(c[level] - published_value(policy, 42, level)) <= 0.5, (level, c[level])
