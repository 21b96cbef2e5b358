"""Scheduling KPIs on small event sequences whose every number is worked out by hand in the comments."""

from __future__ import annotations

import random

import pytest

from hpcinsight.schemas.events import NodeInventory, SchedulerEvent, SchedulingKpi
from hpcinsight.streams.kpis import KpiConfig, SchedulingKpis, gpu_bucket, job_class

T0 = 1_764_000_000_000  # a multiple of 60 s: boundaries fall on T0 + k * 60_000
S = 1000
B1, B2 = T0 + 60 * S, T0 + 120 * S

Key = tuple[str, str, str, int]


def inv(node: str, gpus: int, model: str | None = None, zone: str | None = None) -> NodeInventory:
    return NodeInventory(ts=T0, node=node, gpu_count=gpus, gpu_model=model, zone=zone)


def ev(
    job: str,
    kind: str,
    at_s: float,
    gpus: float | None = None,
    node: str | None = None,
    gpu_ids: tuple[str, ...] = (),
    **extra: str,
) -> SchedulerEvent:
    return SchedulerEvent(
        ts=T0 + round(at_s * S),
        source="test",
        job_id=job,
        kind=kind,
        requested_gpus=gpus,
        node=node,
        gpu_ids=list(gpu_ids),
        name=job,
        **extra,
    )


def run(
    events: list[SchedulerEvent | NodeInventory], config: KpiConfig | None = None, until: int | None = None
) -> tuple[SchedulingKpis, dict[Key, SchedulingKpi]]:
    kpis = SchedulingKpis(config or KpiConfig(lateness_s=0))
    rows: list[SchedulingKpi] = []
    for e in events:
        rows.extend(kpis.observe(e))
    if until is not None:
        rows.extend(kpis.advance(until))
    keyed = {(r.kpi, r.dimension, r.group, r.ts): r for r in rows}
    assert len(keyed) == len(rows), "one row per (kpi, dimension, group, ts)"
    return kpis, keyed


def value(rows: dict[Key, SchedulingKpi], kpi: str, dim: str, group: str, ts: int) -> float:
    return rows[kpi, dim, group, ts].value


NODES = [inv("n1", 8, "A", "z1"), inv("n2", 8, "A", "z2"), inv("n3", 2, "B")]
JOB1 = dict(team="t1", user="u1", priority="low", qos="BE")
JOB2 = dict(team="t2", user="u2", priority="high", qos="LS")
STORY = [
    *NODES,
    ev("j1", "submitted", 1, 4, **JOB1),
    ev("j2", "submitted", 2, 0.5, **JOB2),
    ev("j1", "scheduled", 3, 4, "n1", ("n1/gpu0", "n1/gpu1", "n1/gpu2", "n1/gpu3"), **JOB1),
    ev("j3", "submitted", 5, 16),  # never scheduled: queued
    ev("j2", "scheduled", 12, 0.5, "n3", ("n3/gpu0",), **JOB2),
    ev("j1", "finished", 90, 4, "n1", ("n1/gpu0", "n1/gpu1", "n1/gpu2", "n1/gpu3"), **JOB1),
    ev("j4", "submitted", 120),  # CPU job; its time closes the second boundary
]


def test_allocation_fragmentation_and_waits_of_a_small_story() -> None:
    _, rows = run(STORY)
    at = lambda kpi, dim="cluster", group="all", ts=B1: value(rows, kpi, dim, group, ts)
    # boundary 1: j1 holds 4 GPUs of n1 (model A, zone z1), j2 half of n3/gpu0 (model B, no zone); 18 GPUs in all
    assert (at("allocated_gpus"), at("total_gpus"), at("allocation_rate")) == (4.5, 18, 0.25)
    assert rows["allocated_gpus", "cluster", "all", B1].count == 2 and rows["total_gpus", "cluster", "all", B1].count == 3
    assert (at("allocation_rate", "gpu_model", "A"), at("allocation_rate", "gpu_model", "B")) == (4 / 16, 0.5 / 2)
    assert [at("allocation_rate", "zone", z) for z in ("z1", "z2", "unknown")] == [0.5, 0, 0.25]
    # free whole GPUs: n1 4 (partly used: stranded), n2 8 (untouched), n3 1 (gpu0 is shared, so busy: stranded)
    assert (at("free_gpus"), at("stranded_gpus"), at("fragmented_nodes")) == (13, 5, 2)
    assert rows["free_gpus", "cluster", "all", B1].count == 3 and rows["stranded_gpus", "cluster", "all", B1].count == 2
    assert at("stranded_share") == pytest.approx(5 / 13, rel=1e-12)
    assert at("queued_jobs") == 1  # j3
    # waits 2 s (j1) and 10 s (j2): linear p50 = 6, p95 = 2 + 0.95 * 8
    assert at("queue_wait_p50_s") == 6 and at("queue_wait_p95_s") == pytest.approx(9.6, rel=1e-12)
    assert (
        rows["queue_wait_p50_s", "cluster", "all", B1].count == 2
        and rows["queue_wait_p50_s", "cluster", "all", B1].interval_s == 60
    )
    assert (at("queue_wait_p95_s", "gpu_bucket", "2-4"), at("queue_wait_p95_s", "gpu_bucket", "frac")) == (2, 10)
    assert [at("queue_wait_p50_s", d, g) for d, g in (("gpu_model", "A"), ("qos", "LS"), ("priority", "low"))] == [2, 10, 2]
    # GPU-hours: 4 GPUs x 57 s + 0.5 x 48 s = 252 GPU-s
    assert at("gpu_hours") == pytest.approx(252 / 3600, rel=1e-12)
    assert at("gpu_hours", "team", "t1") == pytest.approx(4 * 57 / 3600, rel=1e-12) and at("allocated_gpus", "user", "u2") == 0.5
    assert [at("allocated_gpus", "job_class", c) for c in ("small", "medium", "large")] == [0.5, 4, 0]
    assert (at("allocated_gpus", "priority", "low"), at("allocation_share", "priority", "low")) == (4, 4 / 4.5)
    # boundary 2: j1 finished at 90 s; only j2 holds; nothing was scheduled in the interval
    at2 = lambda kpi, dim="cluster", group="all": value(rows, kpi, dim, group, B2)
    assert (at2("allocated_gpus"), at2("free_gpus"), at2("stranded_gpus"), at2("allocation_share", "priority", "low")) == (
        0.5,
        17,
        1,
        0,
    )
    assert at2("gpu_hours") == pytest.approx((4 * 30 + 0.5 * 60) / 3600, rel=1e-12)
    assert (
        at2("gpu_hours", "team", "t1") == pytest.approx(4 * 30 / 3600, rel=1e-12)
        and rows["gpu_hours", "team", "t1", B2].count == 1
    )
    assert ("allocated_gpus", "team", "t1", B2) not in rows  # holds nothing at the boundary
    assert not any(k[0].startswith("queue_wait") and k[3] == B2 for k in rows) and not any(k[0].startswith("gang") for k in rows)
    assert {k[3] for k in rows} == {B1, B2}  # the event at 120 s closes B2; nothing later


def test_duplicates_and_disorder_within_the_lateness_change_nothing() -> None:
    cfg = KpiConfig(lateness_s=30)
    _, once = run(STORY, cfg, until=B2)
    twice = [e for e in STORY for _ in range(2)]
    kpis, doubled = run(twice, cfg, until=B2)
    # inventory upserts are idempotent (not counted); j4 at 120 s is not applied before B2
    assert doubled == once and kpis.duplicates == len(STORY) - 3 - 1
    rng = random.Random(7)
    for _ in range(20):  # disorder of up to 20 s, below the 30 s lateness
        jittered = sorted(STORY, key=lambda e: e.ts + rng.uniform(0, 20_000) if isinstance(e, SchedulerEvent) else 0)
        assert run(jittered, cfg, until=B2)[1] == once


def test_a_finish_that_comes_late_is_applied_at_the_next_boundary() -> None:
    events = [
        *NODES,
        ev("j", "scheduled", 0, 1, "n2", ("n2/gpu0",)),
        ev("x", "submitted", 60),
        ev("j", "finished", 30),
        ev("y", "submitted", 120),
    ]
    kpis, rows = run(events)  # lateness 0: B1 closes at the event of 60 s, before the finish (30 s) arrives
    assert kpis.late == 1 and [value(rows, "allocated_gpus", "cluster", "all", b) for b in (B1, B2)] == [1, 0]
    assert value(rows, "gpu_hours", "cluster", "all", B1) == pytest.approx(60 / 3600)
    assert value(rows, "gpu_hours", "cluster", "all", B2) == 0
    kpis, rows = run(events, KpiConfig(lateness_s=60), until=B2)  # within the lateness: applied in order
    assert kpis.late == 0 and value(rows, "allocated_gpus", "cluster", "all", B1) == 0
    assert value(rows, "gpu_hours", "cluster", "all", B1) == pytest.approx(30 / 3600)


def test_an_end_before_the_start_and_unknown_jobs_are_harmless() -> None:
    events = [
        *NODES,
        ev("ghost", "finished", 30, 2, "n1", ("n1/gpu0", "n1/gpu1")),  # never seen: remembered as over
        ev("nobody", "deleted", 3),
        ev("bare", "started", 4),  # started, never scheduled or submitted: runs, no GPUs, no wait
        ev("neg", "scheduled", 5, -3, "n9"),  # nonsense request on an unknown node
        ev("z", "submitted", 61),  # closes B1 (lateness 0)
        ev("ghost", "scheduled", 10, 2, "n1", ("n1/gpu0", "n1/gpu1")),  # the start of the ended job, late: ignored
        ev("ghost", "submitted", 5, 2),  # ignored too
        ev("y", "submitted", 121),  # closes B2
    ]
    kpis, rows = run(events)
    for b in (B1, B2):
        assert value(rows, "allocated_gpus", "cluster", "all", b) == 0 and value(rows, "free_gpus", "cluster", "all", b) == 18
    assert value(rows, "queued_jobs", "cluster", "all", B1) == 0 and value(rows, "queued_jobs", "cluster", "all", B2) == 1  # z
    assert (kpis.ignored, kpis.late, kpis.tracked_jobs) == (2, 2, 3)  # bare, neg, z
    assert not any(k[0].startswith("queue_wait") for k in rows)
    assert kpis.observe("not an event") == [] and kpis.ignored == 3


def test_finished_jobs_are_forgotten_and_memory_stays_bounded() -> None:
    kpis = SchedulingKpis(KpiConfig(lateness_s=0, max_ended=50))
    for i in range(500):
        for kind, at in (("submitted", i), ("scheduled", i + 0.5), ("finished", i + 0.7)):
            kpis.observe(ev(f"j{i}", kind, at, 1, "n1", ("n1/gpu0",)))
    kpis.advance(T0 + 600 * S)
    assert kpis.tracked_jobs == 0 and len(kpis._ended) == 50 and kpis.queued == 0


def test_a_requeued_job_runs_again_and_waits_from_its_preemption() -> None:
    events = [
        *NODES,
        ev("r", "submitted", 0, 8),
        ev("r", "scheduled", 1, 8, "n1"),  # no gpu_ids: 8 GPUs of n1 are busy all the same
        ev("r", "preempted", 20, 8, "n1", status="REQUEUED"),
        ev("r", "scheduled", 50, 8, "n2"),  # waited 30 s since the preemption
        ev("r", "scheduled", 1, 8, "n1"),  # a duplicate of the first run's start, after the preemption
        ev("z", "submitted", 80),  # 80 - 15 s of lateness: closes B1
    ]
    kpis, rows = run(events, KpiConfig(lateness_s=15))
    assert kpis.duplicates == 1
    assert value(rows, "allocated_gpus", "gpu_model", "A", B1) == 8 and value(rows, "free_gpus", "cluster", "all", B1) == 8 + 2
    assert rows["queue_wait_p50_s", "cluster", "all", B1].count == 2
    assert value(rows, "queue_wait_p50_s", "cluster", "all", B1) == 15.5  # waits 1 s and 30 s
    assert value(rows, "queue_wait_p95_s", "cluster", "all", B1) == pytest.approx(1 + 0.95 * 29, rel=1e-12)
    assert value(rows, "gpu_hours", "cluster", "all", B1) == pytest.approx(8 * (19 + 10) / 3600)


def test_gang_jobs_span_nodes_or_outgrow_the_largest_node() -> None:
    events = [
        *NODES,
        ev("g1", "submitted", 0, 16),
        ev("g1", "scheduled", 4, 16, "n1", tuple(f"n{n}/gpu{i}" for n in (1, 2) for i in range(8))),
        ev("g2", "submitted", 0, 12),
        ev("g2", "scheduled", 10, 12, "n3"),  # no ids, but 12 > 8 GPUs of the largest node
        ev("s", "submitted", 0, 1),
        ev("s", "scheduled", 1, 1, "n3", ("n3/gpu0",)),
        ev("z", "submitted", 61),
    ]
    _, rows = run(events)
    assert value(rows, "gang_wait_p50_s", "cluster", "all", B1) == 7 and rows["gang_wait_p95_s", "cluster", "all", B1].count == 2
    assert value(rows, "free_gpus", "cluster", "all", B1) == 0  # n1, n2 by ids; n3: 12 anonymous GPUs cap at its 2
    assert (
        value(rows, "allocated_gpus", "job_class", "large", B1) == 28
        and value(rows, "queue_wait_p50_s", "gpu_bucket", ">8", B1) == 7
    )


def test_a_slurm_job_on_a_host_list_holds_its_gpus_on_each_of_its_nodes() -> None:
    events = [
        inv("gpu01", 8, "H100", "z1"),
        inv("gpu02", 8, "H100", "z2"),
        inv("gpu03", 8, "H100", "z2"),
        ev("mn", "submitted", 0, 16),
        ev("mn", "scheduled", 5, 16, "gpu[01-02]"),  # no GPU ids: Slurm names nodes
        ev("one", "submitted", 0, 2),
        ev("one", "scheduled", 1, 2, "gpu03"),
        ev("z", "submitted", 61),
    ]
    _, rows = run(events)
    at = lambda kpi, dim="cluster", group="all": value(rows, kpi, dim, group, B1)
    assert (at("allocated_gpus"), at("allocation_rate", "zone", "z1"), at("allocation_rate", "zone", "z2")) == (18, 1, 10 / 16)
    assert rows["allocated_gpus", "zone", "z2", B1].count == 2 and rows["allocated_gpus", "cluster", "all", B1].count == 2
    # both of its nodes are full: only gpu03's 6 free GPUs remain, stranded beside the 2-GPU job
    assert (at("free_gpus"), at("stranded_gpus"), at("fragmented_nodes")) == (6, 6, 1)
    assert at("gang_wait_p50_s") == 5 and rows["gang_wait_p50_s", "cluster", "all", B1].count == 1


def test_a_node_of_a_gang_job_moved_to_another_zone_takes_its_own_share_along() -> None:
    events = [
        inv("g1", 8, "H100", "z1"),
        inv("g2", 8, "H100", "z1"),
        ev("mn", "scheduled", 5, 16, "g[1-2]"),
        ev("z", "submitted", 61),
    ]
    kpis, rows = run(events)
    assert value(rows, "allocated_gpus", "zone", "z1", B1) == 16 and rows["allocated_gpus", "zone", "z1", B1].count == 2
    rows2 = kpis.observe(NodeInventory(ts=B1 + 1000, node="g2", gpu_count=8, gpu_model="H100", zone="z2"))
    rows2 += kpis.advance(B2)
    at = {(r.kpi, r.group): (r.value, r.count) for r in rows2 if r.dimension == "zone"}
    assert at["allocated_gpus", "z1"] == (8, 1) and at["allocated_gpus", "z2"] == (8, 1)
    rows3 = kpis.observe(ev("mn", "finished", 130, 16, "g[1-2]")) + kpis.advance(B2 + 60_000)
    after = {(r.kpi, r.group): r.value for r in rows3 if r.dimension == "zone"}
    assert after["allocated_gpus", "z1"] == after["allocated_gpus", "z2"] == 0 and all(r.value >= 0 for r in rows3)


def test_inventory_after_the_jobs_moves_their_allocation_to_the_node_model() -> None:
    events = [ev("a", "scheduled", 1, 2, "late-node", ("late-node/gpu0", "late-node/gpu1")), ev("x", "submitted", 60)]
    kpis, rows = run(events)
    assert (
        value(rows, "allocated_gpus", "gpu_model", "unplaced", B1) == 2
        and ("allocation_rate", "gpu_model", "unplaced", B1) not in rows
    )
    rows2 = kpis.observe(NodeInventory(ts=B1 + 1, node="late-node", gpu_count=4, gpu_model="H100", zone="z9")) + kpis.advance(B2)
    got = {(r.kpi, r.dimension, r.group): r.value for r in rows2}
    assert got["allocation_rate", "gpu_model", "H100"] == 0.5 and got["allocation_rate", "zone", "z9"] == 0.5
    assert ("allocated_gpus", "gpu_model", "unplaced") not in got and got["stranded_gpus", "cluster", "all"] == 2


def test_a_long_gap_is_crossed_without_emitting_every_empty_interval() -> None:
    kpis, rows = run(
        [*NODES, ev("a", "scheduled", 1, 1, "n1", ("n1/gpu0",)), ev("b", "submitted", 1000 * 60 + 5)],
        KpiConfig(lateness_s=0, max_catchup_intervals=3),
    )
    assert sorted({k[3] for k in rows}) == [T0 + k * 60 * S for k in (998, 999, 1000)] and kpis.skipped_intervals == 997
    assert value(rows, "allocated_gpus", "cluster", "all", T0 + 998 * 60 * S) == 1
    assert value(rows, "gpu_hours", "cluster", "all", T0 + 998 * 60 * S) == pytest.approx(60 / 3600)


def test_buckets_classes_and_config() -> None:
    buckets = ["cpu", "cpu", "frac", "1", "1", "2-4", "2-4", "5-8", "5-8", ">8"]
    assert [gpu_bucket(g) for g in (None, 0, 0.3, 1, 1.5, 2, 4, 5, 8, 9)] == buckets
    assert [job_class(g) for g in (0.5, 1, 2, 8, 8.5)] == ["small", "small", "medium", "medium", "large"]
    for bad in (dict(interval_s=0), dict(interval_s=0.0005), dict(lateness_s=-1), dict(max_ended=-1)):
        with pytest.raises(ValueError):
            KpiConfig(**bad)


def test_the_first_boundary_comes_from_the_earliest_event_not_the_first_to_arrive() -> None:
    # partitions interleave: the event at 0.9 min arrives after the one at 1.5 min
    config = KpiConfig(interval_s=60.0, lateness_s=60.0)
    kpis = SchedulingKpis(config)
    rows = kpis.observe(ev("b", "scheduled", 90, gpus=2, node="n0"))
    rows += kpis.observe(ev("a", "scheduled", 54, gpus=4, node="n0")) + kpis.observe(inv("n0", 8))
    rows += kpis.advance(T0 + 180_000)
    assert kpis.late == 0
    alloc = {r.ts - T0: r.value for r in rows if (r.kpi, r.dimension) == ("allocated_gpus", "cluster")}
    assert alloc == {60_000: 4.0, 120_000: 6.0, 180_000: 6.0}


def test_utilisation_of_what_is_held_by_job_class_team_and_user() -> None:
    kpis = SchedulingKpis(KpiConfig(interval_s=60.0, lateness_s=0.0))
    rows = kpis.observe(inv("n0", 8)) + kpis.observe(inv("n1", 8))
    rows += kpis.observe(ev("big", "scheduled", 1, gpus=8, node="n0", team="llm", user="alice"))
    rows += kpis.observe(ev("one", "scheduled", 2, gpus=1, node="n1", team="llm", user="bob"))
    rows += kpis.observe(ev("two", "scheduled", 3, gpus=1, node="n1", team="cv", user="carol"))
    kpis.observe_usage("big", 90.0)
    kpis.observe_usage("one", 10.0)  # "two" has no usage yet: left out, and counted out
    rows += kpis.advance(T0 + 60_000)
    util = {(r.dimension, r.group): (round(r.value, 6), r.count) for r in rows if r.kpi == "gpu_util_mean_pct"}
    assert util == {
        ("cluster", "all"): (round((8 * 90 + 10) / 9, 6), 2),
        ("job_class", "medium"): (90.0, 1),
        ("job_class", "small"): (10.0, 1),
        ("team", "llm"): (round((8 * 90 + 10) / 9, 6), 2),
        ("user", "alice"): (90.0, 1),
        ("user", "bob"): (10.0, 1),
    }


def test_the_worker_kpi_lateness_option_decides_when_an_interval_closes() -> None:
    """``hpcinsight worker --kpi-lateness``: the same late finish, 30 s behind the event that would
    close its interval, is counted in order with 45 s and a boundary late with the default 10 s."""
    from hpcinsight.streams.app import WorkerOptions

    events = [
        *NODES,
        ev("j", "scheduled", 0, 1, "n2", ("n2/gpu0",)),
        ev("x", "submitted", 60 + 12),
        ev("j", "finished", 30),
        ev("y", "submitted", 200),
    ]
    default = WorkerOptions().processor_config().kpis
    assert default.lateness_s == 10
    kpis, rows = run(events, default)
    assert kpis.late == 1 and value(rows, "allocated_gpus", "cluster", "all", B1) == 1
    patient = WorkerOptions(kpi_lateness_s=45).processor_config().kpis
    kpis, rows = run(events, patient)
    assert kpis.late == 0 and value(rows, "allocated_gpus", "cluster", "all", B1) == 0


def test_the_worker_refuses_a_kpi_lateness_it_cannot_read(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from hpcinsight.cli import main

    monkeypatch.setenv("KAFKA_BOOTSTRAP", "127.0.0.1:9")  # never reached: the option is refused first
    for bad in ("soon", "-5s", "1e9h"):
        assert main(["worker", f"--kpi-lateness={bad}"]) == 2
        assert "hpcinsight worker:" in capsys.readouterr().err
