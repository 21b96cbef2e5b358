"""Stragglers and imbalance from per-rank step times: quiet when healthy, named rank when not."""

from __future__ import annotations

import random

from hpcinsight.schemas.events import StepMetric
from hpcinsight.streams.detectors import discover
from hpcinsight.streams.detectors.straggler import StragglerConfig, StragglerDetector

T0 = 1_764_000_000_000
RANKS = 8


def steps(n: int, duration, shuffle: bool = False):
    rng = random.Random(9)
    for s in range(n):
        batch = [StepMetric("job-1", r, RANKS, s, T0 + s * 1000, duration(s, r), node=f"n{r // 4}") for r in range(RANKS)]
        if shuffle:
            rng.shuffle(batch)
        yield from batch


def run(det: StragglerDetector, events) -> list:
    return [a for e in events for a in det.observe(e)]


def test_healthy_noisy_ranks_raise_nothing() -> None:
    rng = random.Random(1)
    assert run(StragglerDetector(), steps(300, lambda s, r: rng.gauss(1.0, 0.02), shuffle=True)) == []


def test_a_slow_rank_is_named_then_resolves() -> None:
    rng = random.Random(2)
    slow = lambda s, r: rng.gauss(1.0, 0.02) * (1.3 if r == 3 and 30 <= s < 90 else 1.0)
    raised = run(StragglerDetector(StragglerConfig(window=20)), steps(160, slow, shuffle=True))
    assert [(a.state, a.subject, a.subject_type) for a in raised] == [
        ("firing", "job-1/rank-3", "rank"),
        ("resolved", "job-1/rank-3", "rank"),
    ]
    firing = raised[0]
    assert firing.evidence["rank"] == 3 and firing.evidence["slowest_share"] >= 0.6 and firing.node == "n0"
    assert 0.2 < firing.evidence["slower_than_median"] < 0.4 and "rank 3 of job job-1 is the straggler" in firing.message
    assert raised[0].id == raised[1].id


def test_imbalance_without_a_single_culprit() -> None:
    rng = random.Random(3)
    raised = run(StragglerDetector(), steps(100, lambda s, r: rng.uniform(0.7, 1.3)))
    assert raised and {a.subject for a in raised} == {"job-1/imbalance"} and raised[0].state == "firing"
    assert raised[0].evidence["mean_cov"] > 0.1 and "imbalanced" in raised[0].message


def test_ranks_reporting_in_batches_are_still_joined_per_step() -> None:
    rng = random.Random(4)
    by_rank = sorted(steps(60, lambda s, r: rng.gauss(1.0, 0.02) * (1.5 if r == 6 else 1.0)), key=lambda m: (m.rank, m.step))
    raised = run(StragglerDetector(), by_rank)  # all of rank 0's steps, then rank 1's, ...
    assert [(a.state, a.subject) for a in raised] == [("firing", "job-1/rank-6")]


def test_discovered() -> None:
    assert StragglerDetector in discover()


def job_steps(n: int, ranks: int, duration, node_of) -> list[StepMetric]:
    return [
        StepMetric("job-1", r, ranks, s, T0 + s * 2000, duration(s, r), node=node_of(r)) for s in range(n) for r in range(ranks)
    ]


def test_one_slow_rank_is_one_straggler_incident_and_no_imbalance() -> None:
    """Shape 1 of issue 18: one rank at 1.2-2.3x for ~130 steps: one straggler incident, no imbalance."""
    rng = random.Random(11)
    slow = lambda s, r: rng.gauss(1.0, 0.02) * (rng.uniform(1.2, 2.3) if r == 5 and 200 <= s < 330 else 1.0)
    raised = run(StragglerDetector(), job_steps(500, 16, slow, lambda r: f"n{r // 8}"))
    assert [(a.state, a.subject) for a in raised] == [("firing", "job-1/rank-5"), ("resolved", "job-1/rank-5")]
    assert 185 <= raised[0].evidence["first_step"] and raised[0].evidence["last_step"] <= 225  # found in the span


def test_two_speed_groups_are_one_imbalance_incident_and_the_late_extremes_are_stragglers() -> None:
    """Shape 2 of issue 18: ten ranks in two speed groups for the whole life (five at 1.5-2x), two of the
    slow group 5-7x late near the end: one imbalance incident naming the slow group for the whole life, and
    a straggler incident for each late rank; not 26 + 13."""
    rng = random.Random(12)
    factor = {5: 1.5, 6: 1.6, 7: 1.75, 8: 1.9, 9: 2.0}

    def duration(s: int, r: int) -> float:
        d = rng.gauss(1.0, 0.03) * factor.get(r, 1.0) * rng.uniform(0.95, 1.05)
        if r in (8, 9) and s >= 700:
            d *= rng.uniform(5.0, 7.0) / factor[r]
        return d

    raised = run(StragglerDetector(), job_steps(800, 10, duration, lambda r: f"node-{r // 5}"))
    imbalance = [a for a in raised if a.subject == "job-1/imbalance"]
    assert [a.state for a in imbalance] == ["firing"]  # one incident, open for the whole life
    assert imbalance[0].evidence["first_step"] == 0 and 1.5 < imbalance[0].evidence["factor"] < 2.0
    assert {k for k in imbalance[0].evidence if k.startswith("slow_rank_")} == {f"slow_rank_{r}" for r in range(5, 10)}
    assert "ranks 5-9" in imbalance[0].message and "all on node node-1" in imbalance[0].message
    stragglers = [(a.state, a.subject) for a in raised if a.subject != "job-1/imbalance"]
    assert stragglers == [("firing", "job-1/rank-8"), ("firing", "job-1/rank-9")] or stragglers == [
        ("firing", "job-1/rank-9"),
        ("firing", "job-1/rank-8"),
    ]
    assert all(a.evidence["first_step"] >= 690 for a in raised if a.subject != "job-1/imbalance")


def test_speed_groups_need_a_real_gap() -> None:
    from hpcinsight.streams.detectors.straggler import speed_groups

    rng = random.Random(13)
    spread = {r: rng.uniform(0.8, 1.3) for r in range(16)}  # one wide, even spread: no groups
    assert len(speed_groups(spread, 0.2, 2.5, 2)) == 1
    two = {r: (1.0 if r < 8 else 1.6) * rng.uniform(0.98, 1.02) for r in range(16)}
    assert [sorted(g) for g in speed_groups(two, 0.2, 2.5, 2)] == [list(range(8)), list(range(8, 16))]
    close = {r: (1.0 if r < 8 else 1.1) * rng.uniform(0.99, 1.01) for r in range(16)}  # a real gap but a small effect
    assert len(speed_groups(close, 0.2, 2.5, 2)) == 1


def test_a_job_that_scales_its_world_size_starts_afresh() -> None:
    rng = random.Random(14)
    before = [StepMetric("job-1", r, 16, s, T0 + s * 1000, rng.gauss(1.0, 0.02)) for s in range(100) for r in range(16)]
    after = [
        StepMetric("job-1", r, 8, s, T0 + s * 1000, rng.gauss(1.0, 0.02) * (1.4 if r == 2 else 1.0))
        for s in range(100, 200)
        for r in range(8)
    ]
    raised = run(StragglerDetector(), before + after)
    assert [(a.state, a.subject) for a in raised] == [("firing", "job-1/rank-2")]
    assert raised[0].evidence["world_size"] == 8


def test_a_node_whose_ranks_stall_together_is_one_slow_group_not_four_stragglers() -> None:
    """Data-loader stalls on one node: its ranks wait 1.4-2.6x each step (a fresh wait each step). The node is the
    finding: one imbalance incident naming its ranks and the node, no straggler incident; also when it is half the job."""
    for ranks, per_node, slow_node in ((16, 4, 2), (8, 4, 1)):
        rng = random.Random(15 + ranks)

        def duration(s: int, r: int, slow_node: int = slow_node, per_node: int = per_node) -> float:
            d = rng.gauss(1.0, 0.02)  # noqa: B023 - the durations are drawn within this run
            return d * rng.uniform(1.4, 2.6) if r // per_node == slow_node and 100 <= s < 300 else d  # noqa: B023 - the durations are drawn within this run

        raised = run(StragglerDetector(), job_steps(400, ranks, duration, lambda r, per_node=per_node: f"n{r // per_node}"))
        assert [(a.state, a.subject) for a in raised] == [("firing", "job-1/imbalance"), ("resolved", "job-1/imbalance")], ranks
        first, last = slow_node * per_node, slow_node * per_node + per_node - 1
        assert f"ranks {first}-{last}" in raised[0].message and f"all on node n{slow_node}" in raised[0].message
        assert (
            100 - 20 <= raised[0].evidence["first_step"] and raised[0].evidence["last_step"] <= 130
        )  # its window holds the onset


def test_a_straggler_open_before_a_restart_is_taken_back_and_resolves_once() -> None:
    rng = random.Random(2)
    slow = lambda s, r: rng.gauss(1.0, 0.02) * (1.3 if r == 3 and 30 <= s < 90 else 1.0)
    events = list(steps(160, slow))
    cut = next(i for i, e in enumerate(events) if e.step == 70)
    first = StragglerDetector(StragglerConfig(window=20))
    (firing,) = run(first, events[:cut])
    second = StragglerDetector(StragglerConfig(window=20))  # the restarted worker: a fresh job view and the record
    second.restore([firing])
    raised = run(second, events[cut:])
    assert [(a.state, a.id, a.subject, a.started_at) for a in raised] == [
        ("resolved", firing.id, "job-1/rank-3", firing.started_at)
    ]
