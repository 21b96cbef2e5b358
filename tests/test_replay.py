"""``hpcinsight replay`` without a pipeline: reading and checking the files, the plans it sends, and
the ``step_flags`` query on what the real straggler detector raises."""

from __future__ import annotations

import io
import time
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pytest

from hpcinsight.harness.replay.files import (
    DAY_MS,
    ReplayInputError,
    WindowPlan,
    auto_windows,
    clock_event,
    parse_time_ms,
    place_gpus,
    plan_gpu_util,
    plan_sched,
    plan_steps,
    read_gpu_util,
    read_nodes,
    read_pods,
    read_steps,
    read_table,
    time_slices,
)

NOW = 1_795_000_000_000  # a fixed "now" (ms)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- bad input -----------------------------------------------------------------------------------
def test_a_malformed_row_is_reported_with_its_line_and_skipped(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "steps.csv",
        "\n".join(
            [
                "job,rank,step,duration_s",
                "j,0,0,1.0",
                "j,1,0",  # 3: a missing column
                "j,1,0,fast",  # 4: not a number
                "j,1,0,NaN",  # 5
                "j,1,0,-0.5",  # 6: negative duration
                "",  # blank lines are nothing
                "j,x,1,1.0",  # 8: rank not a whole number
                "j,1,0,1.1",  # 9: good
                "j,1,0,1.2",  # 10: the same rank and step again
                "j,1,1,inf",  # 11
                ",0,2,1.0",  # 12: no job
                "j,0,1,1.0,extra",  # 13: one field too many
            ]
        )
        + "\n",
    )
    rows, bad, has_ts = read_steps(path)
    assert not has_ts
    assert [(r.job, r.rank, r.step, r.duration_s) for r in rows] == [("j", 0, 0, 1.0), ("j", 1, 0, 1.1)]
    assert [b.line for b in bad] == [3, 4, 5, 6, 8, 10, 11, 12, 13]
    reasons = {b.line: b.reason for b in bad}
    assert "3 fields" in reasons[3] and "not a number" in reasons[4] and "finite" in reasons[5]
    assert "negative" in reasons[6] and "whole number" in reasons[8] and "line 9" in reasons[10] and "no job" in reasons[12]


def test_gpu_util_rows_are_checked(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "util.csv",
        "GPU, ts ,Util,job\n"  # header names are trimmed, case-insensitive
        "g0,1662858720,12.5,\n"
        "g0,1662858720,13,\n"  # 3: the same GPU and instant again
        "g1,1662858720000,100,train\n"  # milliseconds
        "g1,2022-09-11T01:13:00Z,101,\n"  # 5: over 100 %
        "g1,2022-09-11T01:14:00,-1,\n"  # 6: negative
        "g2,yesterday,5,\n"  # 7: not a time
        "g2,2022-09-11T01:15:00+02:00,nan,\n",
    )  # 8
    rows, bad = read_gpu_util(path)
    assert [(r.gpu, r.ts_ms, r.util, r.job) for r in rows] == [
        ("g0", 1_662_858_720_000, 12.5, None),
        ("g1", 1_662_858_720_000, 100.0, "train"),
    ]
    assert [b.line for b in bad] == [3, 5, 6, 7, 8]


def test_a_header_without_a_needed_column_refuses_the_file(tmp_path: Path) -> None:
    with pytest.raises(ReplayInputError, match="no column util"):
        read_table(write(tmp_path, "a.csv", "gpu,ts,value\ng,1,2\n"), ("gpu", "ts", "util"))
    with pytest.raises(ReplayInputError, match="empty file"):
        read_table(write(tmp_path, "b.csv", ""), ("gpu",))


def test_strict_refuses_before_anything_starts(tmp_path: Path) -> None:
    from hpcinsight.cli import main

    path = write(tmp_path, "steps.csv", "job,rank,step,duration_s\nj,0,0,1\nj,0,1,-2\nj,0,2\n")
    err = io.StringIO()
    with redirect_stderr(err):
        assert main(["replay", "steps", path, "--strict"]) == 2
    assert "2 malformed rows (--strict)" in err.getvalue()
    assert "line 3: duration_s -2 is negative" in err.getvalue() and "line 4: 3 fields" in err.getvalue()


@pytest.mark.parametrize(
    "text, ms",
    [
        ("1662858720", 1_662_858_720_000),
        ("1662858720.5", 1_662_858_720_500),
        ("1662858720123", 1_662_858_720_123),
        ("2022-09-11T01:12:00Z", 1_662_858_720_000),
        ("2022-09-11 01:12:00", 1_662_858_720_000),
        ("2022-09-11T03:12:00+02:00", 1_662_858_720_000),
    ],
)
def test_times(text: str, ms: int) -> None:
    assert parse_time_ms(text) == ms


# -- gpu-util ------------------------------------------------------------------------------------
def test_gpu_ids_get_a_deterministic_place() -> None:
    ids = [f"pod-{i:02d}" for i in range(10)] + ["n7/gpu3", "n7/gpu03", "replay-000/gpu1"]
    places = place_gpus(reversed(ids))
    assert places == place_gpus(ids)
    assert places["n7/gpu3"] == ("n7", 3) and places["replay-000/gpu1"] == ("replay-000", 1)
    assert places["n7/gpu03"] == ("replay-000", 0)  # not NODE/gpuN as written: a place in order, like the others
    assert [places[f"pod-{i:02d}"] for i in range(10)] == [
        ("replay-000", 2),
        ("replay-000", 3),
        ("replay-000", 4),
        ("replay-000", 5),
        ("replay-000", 6),
        ("replay-000", 7),
        ("replay-001", 0),
        ("replay-001", 1),
        ("replay-001", 2),
        ("replay-001", 3),
    ]  # replay-000 GPU 1 was taken
    assert len(set(places.values())) == len(ids)


def test_windows_follow_the_sampling_interval() -> None:
    assert auto_windows(1000) == "1m/10s,5m/1m,1h/20m"  # the worker's own
    assert auto_windows(57_000) == "10m/5m,1h/20m"
    assert auto_windows(600_000) == "2h/1h,12h/4h"
    plan = WindowPlan.of("10m/5m,1h/20m")
    assert (plan.since_start_every_ms, plan.base_ms, plan.max_size_ms) == (300_000, 300_000, 3_600_000)
    # a GPU whose last sample is at 01:12:34 closes at the next since-start instant after its pane: 01:15 + lateness
    last = parse_time_ms("2022-09-11T01:12:34Z")
    assert plan.closing_ms(last) == parse_time_ms("2022-09-11T01:15:00Z") + 2000


def test_gpu_util_plan(tmp_path: Path) -> None:
    lines = ["gpu,ts,util,job"]
    for i in range(120):
        lines += [f"a,{1662858720 + 57 * i},{i % 50},", f"b,{1662858720 + 57 * i},0,", f"c,{1662858720 + 57 * i},3,other"]
    lines.append("d,1662858720,4,")
    rows, bad = read_gpu_util(write(tmp_path, "rec.csv", "\n".join(lines) + "\n"))
    assert not bad
    g = plan_gpu_util(rows, "rec", False, None, NOW)
    assert g.interval_ms == 57_000 and g.plan.windows == "10m/5m,1h/20m"
    assert g.shift_ms % DAY_MS == 0 and NOW - DAY_MS < max(s.ts for s in g.samples) <= NOW  # ends within the last day
    assert g.jobs == {"a": "rec", "b": "rec", "c": "other", "d": "rec"}  # the job column wins
    closing = [s for s in g.samples if s.gpu_util is None]
    assert sorted(s.gpu_uuid for s in closing) == ["a", "b", "c", "d"]
    for s in closing:
        last = max(x.ts for x in g.samples if x.gpu_uuid == s.gpu_uuid and x.gpu_util is not None)
        assert s.ts == g.plan.closing_ms(last - g.shift_ms) + g.shift_ms and last < s.ts <= last + g.plan.max_size_ms
    assert len(g.samples) == len(rows) + 4
    per_gpu = plan_gpu_util(rows, "rec", True, None, NOW)
    assert per_gpu.jobs == {"a": "a", "b": "b", "c": "other", "d": "d"}
    slices = time_slices(g.samples, per_slice=100)
    assert sum(map(len, slices)) == len(g.samples) and len(slices) > 3
    assert all(a[-1].ts < b[0].ts for a, b in zip(slices, slices[1:]))  # an instant is never cut
    spans = time_slices(g.samples, per_slice=10**6, max_span_ms=3_600_000)  # and a stretch spans at most this
    assert len(spans) == 2 and all(s[-1].ts - s[0].ts < 3_600_000 for s in spans)


# -- steps ---------------------------------------------------------------------------------------
def test_step_times_are_accumulated_per_rank(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "s.csv",
        "job,rank,step,duration_s\n"
        + "".join(f"j,{r},{s},{1.0 + 0.5 * r}\n" for s in range(3) for r in range(3))
        + "k,0,0,2\nk,3,0,2\n",
    )
    rows, bad, has_ts = read_steps(path)
    s = plan_steps(rows, has_ts, NOW)
    assert s.world == {"j": 3, "k": 4} and s.generated_ts
    ends = {(m.job_id, m.rank, m.step): m.ts for m in s.metrics}
    assert ends[("j", 2, 2)] == NOW  # the last step ends now
    assert ends[("j", 0, 1)] - ends[("j", 0, 0)] == 1000 and ends[("j", 2, 1)] - ends[("j", 2, 0)] == 2000
    assert ends[("j", 2, 0)] - ends[("j", 0, 0)] == 1000  # every rank starts at the same instant
    assert [(m.job_id, m.step, m.rank) for m in s.metrics] == sorted((m.job_id, m.step, m.rank) for m in s.metrics)


def test_step_times_given_are_shifted_by_whole_days(tmp_path: Path) -> None:
    path = write(
        tmp_path, "s.csv", "job,rank,step,duration_s,ts,node\nj,0,0,1,2022-09-11T01:00:00Z,n1\nj,1,0,1,2022-09-11T01:00:01Z,\n"
    )
    rows, bad, has_ts = read_steps(path)
    s = plan_steps(rows, has_ts, NOW)
    assert has_ts and not bad and s.shift_ms % DAY_MS == 0 and NOW - DAY_MS < s.last_ms <= NOW
    assert [m.node for m in s.metrics] == ["n1", None]


# -- sched ---------------------------------------------------------------------------------------
OPENB = Path(__file__).resolve().parents[2] / "shared" / "data" / "alibaba-openb-2023"


@pytest.mark.skipif(not (OPENB / "openb_pod_list_default.csv").is_file(), reason=f"the openb trace is not at {OPENB}")
def test_sched_events_are_the_openb_adapters() -> None:
    from hpcinsight.agents.scheduler.trace import NODE_FILE, POD_FILE, OpenbTraceCollector, TraceConfig

    pods, people, bad = read_pods(str(OPENB / POD_FILE), limit=500)
    nodes, bad_nodes = read_nodes(str(OPENB / NODE_FILE))
    assert not bad and not bad_nodes and not people and len(pods) == 500
    t0 = (NOW // DAY_MS + 3) * DAY_MS
    sc = plan_sched(pods, people, nodes, NOW, start_ms=t0)
    collector = OpenbTraceCollector(TraceConfig(data_dir=OPENB, start_ms=t0, speedup=1.0, limit=500))
    records = collector.sample(t0) + collector.sample(t0 + 10**12)
    assert sc.inventory + sc.events == records
    assert (sc.placed, sc.unplaced) == (len(collector.placements), collector.unplaced)
    assert sc.interval_ms == 3_600_000 and sc.step_ms == 7 * DAY_MS  # 149 days: hourly KPIs, weekly rows
    with pytest.raises(ReplayInputError, match="ahead"):
        plan_sched(pods, people, nodes, NOW, start_ms=NOW - 1)


@pytest.mark.skipif(not (OPENB / "openb_pod_list_default.csv").is_file(), reason=f"the openb trace is not at {OPENB}")
def test_clock_events_move_the_kpis_on_and_change_nothing() -> None:
    from hpcinsight.streams.kpis import KpiConfig, SchedulingKpis

    pods, people, _ = read_pods(str(OPENB / "openb_pod_list_default.csv"), limit=300)
    nodes, _ = read_nodes(str(OPENB / "openb_node_list_gpu_node.csv"))
    sc = plan_sched(pods, people, nodes, NOW, interval_s=3600)
    ticks = [clock_event(t) for t in range(sc.t0_ms + 7 * DAY_MS, sc.last_ms, 7 * DAY_MS)]
    end = (sc.last_ms // sc.interval_ms + 1) * sc.interval_ms

    def rows(records: list) -> list:
        kpis = SchedulingKpis(KpiConfig(interval_s=3600))
        out = [row for r in sorted(records, key=lambda r: r.ts) for row in kpis.observe(r)] + kpis.advance(end)
        return out

    plain = rows(sc.inventory + sc.events)
    assert rows(sc.inventory + sc.events + ticks) == plain and len({r.ts for r in plain}) > 3000


def test_sched_user_and_team_columns(tmp_path: Path) -> None:
    pods = write(
        tmp_path,
        "pods.csv",
        "name,creation_time,scheduled_time,deletion_time,num_gpu,gpu_milli,user,team\n"
        "p1,0,10,100,1,1000,ann,llm\np2,5,,50,2,1000,,\np1,6,7,8,1,1000,x,y\np3,9,8,7,1,1000,,\n",
    )
    nodes = write(tmp_path, "nodes.csv", "sn,gpu,model\nn1,8,A100\nn2,x,A100\nn1,8,A100\n")
    got, people, bad = read_pods(pods)
    assert [p.name for p in got] == ["p1", "p2"] and people == {"p1": ("ann", "llm")}
    assert [b.line for b in bad] == [4, 5]  # p1 again; times out of order
    inventory, bad_nodes = read_nodes(nodes)
    assert [n.node for n in inventory] == ["n1"] and [b.line for b in bad_nodes] == [3, 4]
    sc = plan_sched(got, people, inventory, NOW)
    assert {(e.job_id, e.kind, e.user, e.team) for e in sc.events} >= {
        ("p1", "scheduled", "ann", "llm"),
        ("p2", "submitted", None, None),
    }
    assert sc.t0_ms >= NOW + 3_600_000 and sc.t0_ms % sc.step_ms == 0 and sc.people


# -- the step_flags query on the real detector's output -------------------------------------------
def test_step_flags_spans_and_ranks(tmp_path: Path) -> None:
    import clickhouse_connect

    from hpcinsight.schemas.events import StepMetric
    from hpcinsight.sinks.clickhouse import ensure_tables
    from hpcinsight.sinks.query import records
    from hpcinsight.streams.detectors.straggler import StragglerDetector
    from tests.query_scenario import Scenario, insert

    rng = np.random.default_rng(3)
    start = int(time.time() * 1000) - 3_600_000  # the query looks back a day from now
    sc = Scenario(t0=start, a_start=start)
    detector = StragglerDetector()
    for step in range(300):  # rank 5 of 8 is 35 % slower from step 50 to 149
        for rank in range(8):
            d = float(rng.normal(1.0, 0.02) * (1.35 if rank == 5 and 50 <= step < 150 else 1.0))
            sc.steps.append(
                StepMetric(job_id="ja", rank=rank, world_size=8, step=step, ts=sc.t0 + step * 1000 + rank, duration_s=d)
            )
    for step in range(60):  # uneven, no culprit
        for rank in range(4):
            sc.steps.append(
                StepMetric(
                    job_id="jb",
                    rank=rank,
                    world_size=4,
                    step=step,
                    ts=sc.t0 + step * 1000,
                    duration_s=float(rng.lognormal(0, 0.25)),
                )
            )
    for m in sc.steps:
        sc.anomalies += detector.observe(m)
    assert {a.state for a in sc.anomalies if a.job_id == "ja"} == {"firing", "resolved"}
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / 'ch'}")
    try:
        ensure_tables(client)
        insert(client, sc)
        rows = records(client, "step_flags", {})
    finally:
        client.close()
    assert [(r["job"], r["flag"], r["rank"], r["state"]) for r in rows] == [
        ("ja", "straggler", 5, "resolved"),
        ("jb", "imbalance", None, "open"),
    ]
    ja, jb = rows
    # it resolves a window after the episode and the detector's quiet time (60 s, a step a second) later
    assert ja["first_step"] <= 50 < ja["first_step"] + 20 and 149 <= ja["last_step"] < 149 + 20 + 60
    fired = next(a for a in sc.anomalies if a.job_id == "ja" and a.state == "firing")
    cleared = next(a for a in sc.anomalies if a.job_id == "ja" and a.state == "resolved")
    assert (ja["first_step"], ja["last_step"]) == (fired.evidence["first_step"], cleared.evidence["first_step"] - 1)
    assert ja["slower_pct"] == round(100 * fired.evidence["slower_than_median"], 1) and ja["slower_pct"] > 15
    assert (jb["first_step"], jb["last_step"]) == (0, 59) and jb["mean_cov"] > 0.1 and jb["slower_pct"] is None


def test_replay_steps_prints_the_speed_groups(tmp_path: Path) -> None:
    """Two speed groups (ranks 4-7 at 1.7x) for the whole run: one row naming the slow ranks, the factor, the steps."""
    import clickhouse_connect

    from hpcinsight.harness.replay.run import speed_groups
    from hpcinsight.schemas.events import StepMetric
    from hpcinsight.sinks.clickhouse import ensure_tables
    from hpcinsight.streams.detectors.straggler import StragglerDetector
    from tests.query_scenario import Scenario, insert

    rng = np.random.default_rng(5)
    start = int(time.time() * 1000) - 3_600_000
    sc = Scenario(t0=start, a_start=start)
    detector = StragglerDetector()
    for step in range(150):
        for rank in range(8):
            d = float(rng.normal(1.0, 0.02) * (1.7 if rank >= 4 else 1.0))
            sc.steps.append(
                StepMetric(
                    job_id="jg", rank=rank, world_size=8, step=step, ts=sc.t0 + step * 2000, duration_s=d, node=f"n{rank // 4}"
                )
            )
    for m in sc.steps:
        sc.anomalies += detector.observe(m)
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / 'ch'}")
    try:
        ensure_tables(client)
        insert(client, sc)
        columns, rows = speed_groups(client, {"jg"})
    finally:
        client.close()
    assert columns[:4] == ["job", "slow_ranks", "other_ranks", "factor"]
    assert len(rows) == 1
    job, slow, other, factor, first, last, state, shared = rows[0]
    assert (job, slow, other, state) == ("jg", "4-7", "0-3", "open") and 1.6 < factor < 1.8
    assert first == 0 and last == 149 and "all on node n1" in shared
