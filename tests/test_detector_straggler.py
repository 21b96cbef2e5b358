"""Stragglers and imbalance from per-rank step times: quiet when healthy, named rank when not."""

from __future__ import annotations

import random

from schemas.events import StepMetric
from streams.detectors import discover
from streams.detectors.straggler import StragglerConfig, StragglerDetector

T0 = 1_764_000_000_000
RANKS = 8


def steps(n: int, duration, shuffle: bool = False):  # type: ignore[no-untyped-def]
    rng = random.Random(9)
    for s in range(n):
        batch = [StepMetric("job-1", r, RANKS, s, T0 + s * 1000, duration(s, r), node=f"n{r // 4}") for r in range(RANKS)]
        if shuffle:
            rng.shuffle(batch)
        yield from batch


def run(det: StragglerDetector, events) -> list:  # type: ignore[no-untyped-def]
    return [a for e in events for a in det.observe(e)]


def test_healthy_noisy_ranks_raise_nothing() -> None:
    rng = random.Random(1)
    assert run(StragglerDetector(), steps(300, lambda s, r: rng.gauss(1.0, 0.02), shuffle=True)) == []


def test_a_slow_rank_is_named_then_resolves() -> None:
    rng = random.Random(2)
    slow = lambda s, r: rng.gauss(1.0, 0.02) * (1.3 if r == 3 and 30 <= s < 90 else 1.0)  # noqa: E731
    raised = run(StragglerDetector(StragglerConfig(window=20)), steps(160, slow, shuffle=True))
    assert [(a.state, a.subject, a.subject_type) for a in raised] == [
        ("firing", "job-1/rank-3", "rank"), ("resolved", "job-1/rank-3", "rank")
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
