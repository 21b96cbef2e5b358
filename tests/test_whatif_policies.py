"""Each placement policy's score on tiny clusters, worked out by hand (see docs/whatif.md)."""

from __future__ import annotations

import numpy as np
import pytest

from hpcinsight.whatif.engine import Placer
from hpcinsight.whatif.model import Job, Node, WhatifError
from hpcinsight.whatif.policies import POLICIES, make_policy, parse_policies
from hpcinsight.whatif.policies.base import normalize_scores
from hpcinsight.whatif.policies.fgd import FgdPolicy, fragmentation
from hpcinsight.whatif.policies.fit import BestFitPolicy, LeastAllocatedPolicy, MostAllocatedPolicy
from hpcinsight.whatif.policies.gpu import DotProductPolicy, GpuClusteringPolicy, GpuPackingPolicy
from hpcinsight.whatif.state import ClusterState, Shape
from hpcinsight.whatif.typical import typical_shapes

A = Node("a", cpu_milli=32_000, memory_mib=65_536, gpus=4, model="V100M16")
B = Node("b", cpu_milli=64_000, memory_mib=131_072, gpus=8, model="G2")
BOTH = np.array([0, 1])


def job(cpu=4000, mem=8192, num=1, milli=1000, spec="", name="j") -> Job:
    return Job(name=name, cpu_milli=cpu, memory_mib=mem, num_gpu=num, gpu_milli=milli, gpu_spec=spec)


def shape(**kw) -> Shape:
    return Shape.of(job(**kw))


def state() -> ClusterState:
    return ClusterState([A, B])


def test_best_fit_scores_then_normalises() -> None:
    # a: 1 - (28000/128000 + 3000/8000)/2 = 0.703125 -> 70; b: 1 - (60000/128000 + 7000/8000)/2 -> 32
    raw = BestFitPolicy().score(state(), shape(), BOTH)
    assert raw.tolist() == [70, 32]
    assert normalize_scores(raw).tolist() == [100, 0]
    assert normalize_scores(np.array([5, 5])).tolist() == [0, 0]
    assert normalize_scores(np.array([10, 13, 40])).tolist() == [0, 10, 100]  # (13-10)*100//30 = 10: integer


def test_dot_product() -> None:
    # a: dot = 0.25*0.03125 + 0.5*0.125 = 0.0703125 -> 100*(1-0.03515625) -> 96; b: 0.140625 -> 92
    assert DotProductPolicy().score(state(), shape(), BOTH).tolist() == [96, 92]


def test_gpu_packing_three_cases() -> None:
    st = state()
    p = GpuPackingPolicy()
    assert p.score(st, shape(), BOTH).tolist() == [29, 25]  # idle nodes: max(33 - GPUs, GPUs)
    st.gpu_left[0, :4] = [200, 1000, 1000, 500]
    assert p.score(st, shape(num=2, milli=1000), np.array([0])).tolist() == [48]  # two free GPUs on a used node
    assert p.score(st, shape(num=2, milli=200), np.array([0])).tolist() == [93]  # on used GPUs: 100 - (20+50)//10
    assert p.score(st, shape(num=0, milli=0), BOTH).tolist() == [0, 0]


def test_gpu_clustering_affinity_bonus() -> None:
    st = state()
    share = shape(milli=500)
    st.place(share, 0, [0])
    p = GpuClusteringPolicy()
    # a: 25*(8000-3500)//8000 = 14, runs only shares: +75; b idle: 0 + 25
    assert p.score(st, share, BOTH).tolist() == [89, 25]
    assert p.score(st, shape(), BOTH).tolist() == [14, 25]  # a runs another kind: +0
    st.release(share, 0, [0])
    assert st.affinity[0] == {}


def test_most_and_least_allocated() -> None:
    # a: cpu 12, mem 12, gpu 25 -> 16; b: 6, 6, 12 -> 8
    assert MostAllocatedPolicy().score(state(), shape(), BOTH).tolist() == [16, 8]
    # a: 87, 87, 75 -> 83; b: 93, 93, 87 -> 91
    assert LeastAllocatedPolicy().score(state(), shape(), BOTH).tolist() == [83, 91]


def test_fgd_fragmentation_and_score() -> None:
    typical = typical_shapes([job(cpu=1000)])  # one typical shape: one whole GPU
    st = state()
    acc = np.ones((1, 1), dtype=bool)
    assert fragmentation(np.array([32000]), np.array([[1000, 1000, 1000, 1000]]), acc, typical).tolist() == [0.0]
    assert fragmentation(np.array([32000]), np.array([[500, 1000, 0, 0]]), acc, typical).tolist() == [500.0]
    assert fragmentation(np.array([500]), np.array([[500, 1000, 0, 0]]), acc, typical).tolist() == [1500.0]  # lacks CPU
    p = FgdPolicy(typical)
    # a share of 500 on an idle GPU strands 500: 100*sigmoid(-0.5) = 37.75 -> 37
    assert p.score(st, shape(milli=500), np.array([0])).tolist() == [37]
    st.gpu_left[0, :4] = [1000, 500, 1000, 1000]
    st._touch(0)  # changed behind the state's back: say so, as place/release do
    # on the half-used GPU it un-strands 500: 100*sigmoid(0.5) = 62.2 -> 62; FGD picks that GPU
    assert p.score(st, shape(milli=500), np.array([0])).tolist() == [62]
    assert p.gpus(st, shape(milli=500), 0) == [1]
    # a job that changes nothing the typical shape can use scores exactly 50
    assert p.score(st, shape(num=0, milli=0, cpu=100), np.array([0])).tolist() == [50]


def test_ties_go_to_the_fixed_node_order_and_gpus_best_fit() -> None:
    st = state()
    rng = np.random.default_rng(0)
    first = Placer(st, make_policy("firstfit", [], rng), rank=np.array([1, 0]), rng=rng)
    got = first.pick(shape())
    assert got is not None and got.node == 1  # b ranks first
    st.gpu_left[1, :3] = [300, 600, 700]
    assert st.best_fit_gpus(shape(milli=550), 1) == [1]  # the tightest GPU that fits
    assert st.best_fit_gpus(shape(num=2, milli=1000), 1) == [3, 4]  # the first fully free ones


def test_filter_gpu_spec_memory_and_never_fits() -> None:
    st = state()
    rng = np.random.default_rng(0)
    placer = Placer(st, make_policy("bestfit", [], rng), rank=np.arange(2), rng=rng)
    assert placer.pick(shape(spec="G2")).node == 1
    assert placer.pick(shape(spec="T4")) is None
    assert placer.pick(shape(mem=100_000)).node == 1
    assert placer.pick(shape(num=8)).node == 1
    assert not st.fits_empty(shape(spec="T4"))
    assert st.fits_empty(shape(num=8))


def test_scores_stay_right_after_placements() -> None:
    """The per-shape cache rescoring only changed nodes gives what scoring everything gives."""
    rng = np.random.default_rng(3)
    jobs = [
        job(cpu=int(c), milli=int(m), mem=int(mem), name=str(i))
        for i, (c, m, mem) in enumerate(
            zip(rng.integers(1000, 8000, 60), rng.choice([250, 500, 1000], 60), rng.choice([4096, 30_000], 60))
        )
    ]
    nodes = [Node(f"n{i}", 64_000, 262_144, int(g), "G2") for i, g in enumerate(rng.choice([2, 4, 8], 12))]
    for name in ("bestfit", "fgd", "gpupacking", "mostallocated"):
        st = ClusterState(nodes)
        placer = Placer(st, make_policy(name, jobs, rng), rank=np.arange(len(nodes)), rng=rng)
        for j in jobs:
            s = Shape.of(j)
            cand, scores = placer.candidates(s)
            fresh_ok = st.feasible(s, np.arange(len(nodes)))
            assert cand.tolist() == np.flatnonzero(fresh_ok).tolist()
            fresh = placer.policy.score(st, s, cand)
            if placer.policy.normalize:
                fresh = normalize_scores(fresh)
            assert scores.tolist() == fresh.tolist(), name
            placer.place(s)
        assert (st.gpu_left >= 0).all() and (st.cpu_left >= 0).all()


def test_policy_names() -> None:
    assert set(POLICIES) == {
        "random",
        "firstfit",
        "bestfit",
        "mostallocated",
        "leastallocated",
        "dotprod",
        "gpupacking",
        "gpuclustering",
        "fgd",
    }
    assert parse_policies("fgd, BestFit,mostallocated+profile") == ["fgd", "bestfit", "mostallocated+profile"]
    with pytest.raises(WhatifError, match="unknown policy 'tetris'"):
        parse_policies("fgd,tetris")


def test_profiles_keep_cpu_jobs_off_gpu_hosts() -> None:
    cpu_host = Node("c", 64_000, 131_072, 0)
    st = ClusterState([A, cpu_host])
    rng = np.random.default_rng(0)
    from hpcinsight.whatif.profiles import profile_filter

    plain = Placer(st, make_policy("mostallocated", [], rng), np.arange(2), rng)
    typed = Placer(
        st, make_policy("mostallocated", [], rng), np.arange(2), rng, allowed=profile_filter("mostallocated+profile", st)
    )
    cpu_job = shape(num=0, milli=0, cpu=16_000, mem=8192)
    assert plain.pick(cpu_job).node == 0  # the GPU host is the busier fit (its small CPU)
    assert typed.pick(cpu_job).node == 1
    assert typed.pick(shape()).node == 0


def test_fgd_share_scores_equal_recomputing_every_candidate_state() -> None:
    rng = np.random.default_rng(11)
    jobs = [
        job(cpu=int(c), milli=int(m), num=int(n), name=str(i))
        for i, (c, m, n) in enumerate(
            zip(rng.integers(1000, 16000, 200), rng.choice([200, 460, 500, 1000, 1000], 200), rng.choice([1, 1, 1, 2], 200))
        )
    ]
    jobs = [j if j.gpu_milli == 1000 or j.num_gpu == 1 else Job(j.name, j.cpu_milli, j.memory_mib, 1, j.gpu_milli) for j in jobs]
    typical = typical_shapes(jobs)
    nodes = [Node(f"n{i}", 64_000, 262_144, 8, "G2") for i in range(80)]
    st = ClusterState(nodes)
    st.gpu_left[:] = rng.choice([0, 100, 300, 540, 800, 1000], size=st.gpu_left.shape)
    st.cpu_left[:] = rng.integers(0, 64_000, len(nodes))
    p = FgdPolicy(typical)
    share = shape(milli=460, cpu=6000)
    idx = np.arange(len(nodes))
    got, before = p._share_scores_incremental(st, share, idx)
    direct, _ = p._share_scores_direct(st, share, idx)
    assert got.tolist() == direct.tolist()
    acc = np.ones((len(nodes), len(typical)), dtype=bool)
    for g in range(8):
        after_left = st.gpu_left.copy()
        after_left[:, g] -= share.milli
        after = fragmentation(st.cpu_left - share.score_cpu, after_left, acc, typical)
        want = (1.0 / (1.0 + np.exp(-(before - after) / 1000)) * 100).astype(np.int64)
        want = np.where(st.gpu_left[:, g] >= share.milli, want, -1)
        assert got[:, g].tolist() == want.tolist(), g


def test_fgd_fragmentation_over_all_shapes_at_once_is_bit_equal_to_one_shape_at_a_time() -> None:
    """The vectorised form must give the same bits as the definition (shape by shape, summed in
    order): FGD scores truncate, so one ulp can move a job to another node."""
    from hpcinsight.whatif.policies.fgd import _fragmentation_by_shape

    rng = np.random.default_rng(5)
    jobs = [
        job(cpu=int(c), milli=int(m), num=int(n), name=str(i))
        for i, (c, m, n) in enumerate(
            zip(rng.integers(0, 16000, 300), rng.choice([0, 250, 500, 1000], 300), rng.choice([0, 1, 2, 4, 8], 300))
        )
    ]
    typical = typical_shapes(jobs)
    assert len(typical) > 5
    for lead in ((1,), (7,), (40,), (6, 8)):
        gpu = rng.choice([0, 125, 250, 500, 1000], size=(*lead, 8))
        cpu = rng.integers(0, 64_000, size=lead)
        acc = rng.random((*lead, len(typical))) < 0.8
        got, want = fragmentation(cpu, gpu, acc, typical), _fragmentation_by_shape(cpu, gpu, acc, typical)
        assert got.shape == want.shape and got.tobytes() == want.tobytes(), lead


def test_fgd_picks_the_same_gpu_for_a_share_whether_or_not_the_node_was_just_scored() -> None:
    rng = np.random.default_rng(3)
    jobs = [job(cpu=4000, milli=int(m), name=str(i)) for i, m in enumerate(rng.choice([200, 300, 500, 1000], 100))]
    nodes = [Node(f"n{i}", 64_000, 262_144, 8, "G2") for i in range(10)]
    st = ClusterState(nodes)
    st.gpu_left[:] = rng.choice([0, 200, 350, 600, 1000], size=st.gpu_left.shape)
    share = shape(milli=300, cpu=4000)
    scored, fresh = FgdPolicy(typical_shapes(jobs)), FgdPolicy(typical_shapes(jobs))
    scored.score(st, share, np.arange(len(nodes)))
    for n in range(len(nodes)):
        if (st.gpu_left[n] >= share.milli).any():
            assert scored.gpus(st, share, n) == fresh.gpus(st, share, n), n
