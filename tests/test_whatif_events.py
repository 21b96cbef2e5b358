"""Event-driven replay: queue disciplines, reservations, gangs with and without zones, deadlocks."""

from __future__ import annotations

import pytest

from hpcinsight.whatif.events import EventConfig, EventSim, requests_from
from hpcinsight.whatif.model import Job, Node, WhatifError
from hpcinsight.whatif.queueing import parse_weights, priority
from hpcinsight.whatif.recorded import as_recorded


def job(
    name: str,
    submit: float,
    run: float | None,
    gpus: int = 1,
    *,
    milli: int = 1000,
    gang: str = "",
    qos: str = "",
    prio: str = "",
    spec: str = "",
    team: str = "",
    cpu: int = 1000,
    never_ran_until: float | None = None,
) -> Job:
    if never_ran_until is not None:
        return Job(name, cpu, 1024, gpus, milli, spec, qos, submit=submit, start=None, end=never_ran_until, priority=prio)
    return Job(
        name,
        cpu,
        1024,
        gpus,
        milli,
        spec,
        qos,
        submit=submit,
        start=submit,
        end=None if run is None else submit + run,
        team=team,
        priority=prio,
        gang=gang,
        gang_size=1,
    )


def sim(nodes, jobs, **kw) -> tuple[EventSim, dict]:
    s = EventSim(nodes, jobs, EventConfig(**{"policy": "bestfit", **kw}))
    return s, s.run()


def waits(s: EventSim) -> dict[str, float]:
    return {r.name: r.start - r.submit for r in s.requests if r.start is not None}


ONE_NODE = [Node("n", 64_000, 262_144, 2, "G2")]


def test_fifo_does_not_block_and_reservations_hold_the_node() -> None:
    jobs = [job("a", 0, 100), job("b", 1, 100, gpus=2), job("c", 2, 100)]
    s, rep = sim(ONE_NODE, jobs)
    assert waits(s) == {"a": 0, "b": 101, "c": 0}  # c slips past b; b waits for both to end
    s, rep = sim(ONE_NODE, jobs, reserve_gpus=2)
    assert waits(s) == {"a": 0, "b": 99, "c": 198}  # b's reservation from t=100 keeps c (ends at 102) off
    assert rep["reservations"] >= 1
    short = [job("a", 0, 100), job("b", 1, 100, gpus=2), job("c", 2, 50)]
    s, _ = sim(ONE_NODE, short, reserve_gpus=2)
    assert waits(s)["c"] == 0 and waits(s)["b"] == 99  # c ends at 52, before the reservation: backfilled


def test_priority_urgent_first_and_weights_change_mid_run() -> None:
    one_gpu = [Node("n", 64_000, 262_144, 1, "G2")]
    jobs = [job("r", 0, 100), job("a", 1, 10), job("u", 2, 10, prio="urgent")]
    s, _ = sim(one_gpu, jobs, queue="fifo")
    assert waits(s) == {"r": 0, "a": 99, "u": 108}
    s, _ = sim(one_gpu, jobs, queue="priority")
    assert waits(s) == {"r": 0, "u": 98, "a": 109}
    older_first = [job("r", 0, 100), job("old", 1, 10), job("new", 2, 10)]
    s, _ = sim(one_gpu, older_first, queue="priority")
    assert waits(s)["old"] == 99  # waited longer: first
    s, _ = sim(one_gpu, older_first, queue="priority", weights=parse_weights("size=1,wait=1;@50:wait=-1"))
    assert waits(s)["new"] == 98  # from t=50 waiting counts against: the newer first
    w = parse_weights("size=2;@10:wait=0").at(20)
    assert (w.size, w.wait) == (2.0, 0.0)
    assert priority(4, 7200, "LS", False, parse_weights("size=1,wait=1,qos=10").at(0)) == 4 + 2 + 20
    with pytest.raises(WhatifError):
        parse_weights("speed=3")


def test_random_pool_is_seeded() -> None:
    nodes = [Node("n", 64_000, 262_144, 1, "G2")]
    jobs = [job("r", 0, 100)] + [job(f"w{i}", 1 + i, 10) for i in range(8)]
    orders = []
    for seed in (1, 1, 2):
        s, _ = sim(nodes, jobs, queue="random", seed=seed)
        orders.append([r.name for r in sorted(s.requests, key=lambda r: r.start)])
    assert orders[0] == orders[1] and orders[0] != orders[2]


def test_gang_all_or_nothing_within_a_zone() -> None:
    nodes = [
        Node("n1", 64_000, 262_144, 4, "G2", zone="z1"),
        Node("n2", 64_000, 262_144, 2, "G2", zone="z2"),
        Node("n3", 64_000, 262_144, 2, "G2", zone="z2"),
    ]
    jobs = [job("x", 0, 1000, gpus=3), job("g-0", 1, 100, gpus=2, gang="g"), job("g-1", 1, 100, gpus=2, gang="g")]
    s, rep = sim(nodes, jobs)
    g = next(r for r in s.requests if r.name == "g")
    assert g.gang and g.start == 1
    assert {s.state.zones[node] for _, node, _ in g.ran_on} == {"z2"}
    assert rep["wait_by"]["gang"]["gang"]["count"] == 1


def test_a_gang_that_can_never_fit_is_unschedulable_or_deadlocks_without_gangs() -> None:
    nodes = [Node("n", 64_000, 262_144, 4, "G2")]
    jobs = [job(f"big-{i}", 0, 100, gpus=2, gang="big") for i in range(3)] + [job("small", 5, 10)]
    s, rep = sim(nodes, jobs, gang="zone")
    assert rep["unschedulable"] == 1 and rep["gang_deadlocks"] == 0
    assert waits(s)["small"] == 0
    s, rep = sim(nodes, jobs, gang="none")
    assert rep["gang_deadlocks"] >= 1 and rep["unschedulable"] == 0
    assert rep["gang_held_idle_gpu_hours"] > 0
    assert "big" not in waits(s)


def test_two_gangs_interleaved_deadlock_without_gang_scheduling() -> None:
    nodes = [Node("n1", 64_000, 262_144, 2, "G2"), Node("n2", 64_000, 262_144, 2, "G2")]
    jobs = [job("x", 0, 10, gpus=2), job("y", 0, 10, gpus=2)]
    jobs += [job(f"g1-{i}", 5, 100, gang="g1") for i in range(3)] + [job(f"g2-{i}", 6, 100, gang="g2") for i in range(3)]
    s, rep = sim(nodes, jobs, gang="none")
    assert rep["gang_deadlocks"] >= 1 and rep["gang_evictions"] >= 1
    got = waits(s)
    assert got["g1"] == 5 and got["g2"] == 104  # g1 completes once g2 is evicted; g2 runs after it
    s, rep = sim(nodes, jobs, gang="zone")
    assert rep["gang_deadlocks"] == 0 and waits(s)["g1"] == 5 and waits(s)["g2"] == 104


def test_withdrawn_unschedulable_and_indicators() -> None:
    nodes = [Node("n", 64_000, 262_144, 1, "G2", zone="z")]
    jobs = [
        job("r", 0, 3600, team="t1", qos="BE", prio="low"),
        job("w", 10, None, never_ran_until=100),
        job("t4", 20, 10, spec="T4"),
        job("s", 30, 3600, milli=500, team="t2"),
    ]
    s, rep = sim(nodes, jobs)
    assert rep["withdrawn_waiting"] == 1 and rep["unschedulable"] == 1 and rep["never_placed"] == 2
    assert rep["gpu_hours_by_team"] == {"t1": 1.0, "t2": 0.5}
    assert rep["low_priority_small_share_pct"] == pytest.approx(100 / 1.5, abs=0.01)
    assert rep["wait_by"]["gpu_bucket"]["frac"]["p50"] == 3570
    assert 0 < rep["gpu_alloc_pct"] <= 100 and rep["zone_util_pct"]["z"] == rep["gpu_alloc_pct"]
    assert rep["zone_use_by_class_pct"] == {"z": {"small": 100.0}}


def test_as_recorded_waits_and_allocation() -> None:
    nodes = [Node("n", 64_000, 262_144, 4, "G2")]
    jobs = [
        Job("a", 1000, 1024, 2, 1000, submit=0, start=10, end=110),
        Job("b", 1000, 1024, 1, 500, submit=50, start=50, end=110),
        Job("c", 1000, 1024, 1, 1000, submit=60, start=None, end=80),
    ]
    rep, series = as_recorded(nodes, jobs)
    assert rep["wait_s"]["count"] == 2 and rep["wait_by"]["gpu_bucket"]["2-4"]["p50"] == 10
    assert rep["never_placed"] == 1
    # 2 GPUs for 100 s and 0.5 for 60 s over 110 s of 4 GPUs
    assert rep["gpu_alloc_pct"] == pytest.approx(100 * (200 + 30) / 110 / 4, abs=0.01)
    assert series[-1][1] == 0


def test_requests_group_gangs() -> None:
    reqs = requests_from([job("a-0", 0, 10, gang="a"), job("a-1", 0, 10, gang="a"), job("b", 1, 10)])
    assert [(r.name, r.gang, len(r.tasks), r.gpus) for r in reqs] == [("a", True, 2, 2.0), ("b", False, 1, 1.0)]
