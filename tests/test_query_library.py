"""The query library (sinks/queries/*.sql) on the real engine (embedded chDB), against known events.

The store holds :mod:`tests.query_scenario`'s story, inserted through the production tables (and
so through the rollup views). Every expected value is computed here from the scenario's records
with numpy, by the query's documented definition; nothing is read back from the queries to make
the expectation.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from hpcinsight.sinks.query import LIBRARY_DIR, QueryFileError, execute, library, parse_query_file, records
from tests import query_scenario as scenario

S = 1000


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    client, sc = scenario.open_store(tmp_path_factory.mktemp("ql") / "ch")
    yield client, sc
    client.close()


def ms(value: dt.datetime) -> int:
    return int(value.replace(tzinfo=dt.UTC).timestamp() * 1000) if value.tzinfo is None else int(value.timestamp() * 1000)


# -- the files --------------------------------------------------------------------------------
def test_every_file_has_a_header_that_matches_its_sql() -> None:
    files = sorted(LIBRARY_DIR.glob("*.sql"))
    assert {f.stem for f in files} == set(library())
    issue_names = {
        "cluster_now",
        "node_status",
        "job_summary",
        "underused_jobs",
        "team_usage",
        "user_gpu_hours",
        "gpu_outliers",
        "straggler_timeline",
        "metric_correlation",
        "job_timeline",
        "allocation_rate",
        "wait_time_by_resource_type",
        "fragmentation",
        "zone_utilization",
        "low_priority_usage",
        "gpu_quantiles",
        "job_quantiles",
        "anomalies",
        "dead_letters",
        "counts",
    }
    assert issue_names <= set(library())
    for f in files:
        text = f.read_text()
        assert text.startswith(f"-- name: {f.stem}\n"), f.name
        q = parse_query_file(f)  # raises on a header that does not match the placeholders
        assert q.doc and q.group in ("monitoring", "diagnostics", "scheduling", "store")
        for p in q.params:
            assert f"{{{p.name}:{p.type}}}" in text  # a clickhouse-client --param_NAME fills it as it stands


@pytest.mark.parametrize(
    "header, error",
    [
        ("-- name: other\n-- group: store\n-- what: x\nSELECT 1", "names it"),
        ("-- name: q\n-- group: store\nSELECT 1", "what"),
        ("-- name: q\n-- group: store\n-- what: x\nSELECT {a:UInt32}", "declares"),
        ("-- name: q\n-- group: store\n-- what: x\n-- param: a String\nSELECT {a:UInt32}", "declares"),
        ("-- name: q\n-- group: nowhere\n-- what: x\nSELECT 1", "group"),
    ],
)
def test_a_file_whose_header_does_not_match_is_refused(tmp_path: Path, header: str, error: str) -> None:
    path = tmp_path / "q.sql"
    path.write_text(header)
    with pytest.raises(QueryFileError, match=error):
        parse_query_file(path)


def test_list_describes_every_query() -> None:
    from hpcinsight.cli import main

    for argv in (["query", "--list", "--format", "json"], ["query", "list", "--format", "json"]):
        out = io.StringIO()
        with redirect_stdout(out):
            assert main(argv) == 0
        listed = json.loads(out.getvalue())
        assert [q["name"] for q in listed] == list(library())
        by_name = {q["name"]: q for q in listed}
        assert by_name["gpu_outliers"]["parameters"][0] == {
            "name": "job",
            "type": "String",
            "default": None,
            "what": "the job id",
        }
        assert Path(by_name["counts"]["file"]).read_text().startswith("-- name: counts")


def test_every_query_runs_with_its_defaults(store) -> None:
    client, _ = store
    for q in library().values():  # latency is measured in bench/query.py, not here
        params = {"job": "job-a"} if q.param("job") else {}
        execute(client, q.name, params)  # ClickHouse accepts every file as it stands


# -- parameters are data, never SQL ----------------------------------------------------------
HOSTILE = [
    "x' OR 1=1 --",
    "job-a'; DROP TABLE gpu_samples; --",
    "job-a\\' OR '1'='1",
    "{job:String}",
    "job-a\n) UNION ALL SELECT 1",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_string_is_a_literal(store, value: str) -> None:
    client, _ = store
    before = client.query("SELECT count() FROM gpu_samples").result_rows[0][0]
    summary = records(client, "job_summary", {"job": value})
    assert [(s["job"], s["state"], s["gpus"], s["anomalies"]) for s in summary] == [(value, "unknown", 0, 0)]
    assert records(client, "gpu_outliers", {"job": value}) == []
    assert records(client, "job_timeline", {"job": value}) == []
    assert client.query("SELECT count() FROM gpu_samples").result_rows[0][0] == before


@pytest.mark.parametrize(
    "params, error",
    [
        ({"since_s": "1; DROP TABLE gpu_samples"}, "since_s.*not a UInt32"),
        ({"since_s": "-1"}, "not a UInt32"),
        ({"since_s": "99999999999"}, "out of range"),
        ({"since_s": "86400 OR 1=1"}, "not a UInt32"),
        ({"threshold_pct": "nan"}, "not a Float64"),
        ({"threshold_pct": "30) OR (1=1"}, "not a Float64"),
        ({"table": "gpu_samples"}, "unknown: table"),
    ],
)
def test_a_hostile_number_or_unknown_name_is_a_clear_error(store, params: dict[str, str], error: str) -> None:
    client, _ = store
    with pytest.raises(ValueError, match=error):
        execute(client, "underused_jobs", params)


def test_values_reach_clickhouse_as_typed_parameters_only(store) -> None:
    """Even past the client's checks, ClickHouse parses the value as its declared type, never as SQL."""
    client, _ = store
    from clickhouse_connect.driver.exceptions import ClickHouseError

    q = library()["underused_jobs"]
    with pytest.raises(ClickHouseError):
        client.query(q.sql, parameters={"threshold_pct": 30, "since_s": "1; DROP TABLE gpu_samples"}, settings={"readonly": 1})
    assert client.query("EXISTS TABLE gpu_samples").result_rows == [(1,)]


def test_a_job_is_required_and_sql_runs_read_only(store, tmp_path: Path) -> None:
    client, _ = store
    with pytest.raises(ValueError, match="needs --param job"):
        execute(client, "gpu_outliers", {})
    with pytest.raises(ValueError, match="neither a named query"):
        execute(client, "DROP TABLE gpu_samples", {})
    with pytest.raises(ValueError, match="one statement at a time"):
        execute(client, "SELECT 1; DROP TABLE gpu_samples", {})
    outfile = tmp_path / "out.tsv"
    with pytest.raises(ValueError, match="INTO OUTFILE is not accepted"):  # chDB would write it despite readonly=1
        execute(client, f"SELECT * FROM numbers(1) INTO  OUTFILE '{outfile}'", {})
    assert not outfile.exists()
    from clickhouse_connect.driver.exceptions import ClickHouseError

    with pytest.raises(ClickHouseError, match="readonly"):  # readonly=1 on every statement
        execute(client, "WITH 1 AS x SELECT x FROM gpu_samples SETTINGS max_threads = 1", {})
    assert client.query("EXISTS TABLE gpu_samples").result_rows == [(1,)]


# -- monitoring ------------------------------------------------------------------------------
def test_job_summary(store) -> None:
    client, sc = store
    [s] = records(client, "job_summary", {"job": "job-a"})
    latest = {
        q.metric: q
        for q in sc.job_quantiles
        if q.job_id == "job-a" and q.window_end == max(x.window_end for x in sc.job_quantiles if x.job_id == "job-a")
    }
    samples = [x for x in sc.samples if x.job_id == "job-a"]
    assert (s["user"], s["team"], s["priority"], s["state"]) == ("ann", "llm", "high", "running")
    assert s["queue_wait_s"] == (sc.a_start - sc.t0) / 1000
    assert s["gpus"] == len({x.gpu_uuid for x in samples}) == 16 and s["nodes"] == 2
    assert ms(s["started"]) == sc.a_start and s["ended"] is None
    assert s["duration_s"] == pytest.approx((max(x.ts for x in samples) - sc.a_start) / 1000, abs=60)
    assert (s["util_p25"], s["util_p50"], s["util_p95"]) == tuple(
        round(getattr(latest["gpu_util"], p), 1) for p in ("p25", "p50", "p95")
    )
    assert s["samples"] == len(samples)
    assert s["power_p50_w"] == round(latest["power_w"].p50, 1)
    # its own anomalies, and the XID on one of its GPUs (XID incidents carry no job); not job-c's
    mine = {a.id for a in sc.anomalies if a.job_id == "job-a" or a.gpu_uuid == scenario.uuid(*scenario.XID_GPU)}
    still_open = {i for i in mine if not any(a.id == i and a.state == "resolved" for a in sc.anomalies)}
    assert (s["anomalies"], s["open_anomalies"], s["critical_anomalies"]) == (len(mine), len(still_open), 1)
    [b] = records(client, "job_summary", {"job": "job-b"})
    assert b["state"] == "finished" and b["duration_s"] == scenario.B_SECONDS


def test_underused_jobs(store) -> None:
    client, sc = store
    latest: dict[str, float] = {}
    for q in sorted((q for q in sc.job_quantiles if q.metric == "gpu_util"), key=lambda q: q.window_end):
        latest[q.job_id] = q.p95
    for threshold in (30.0, 99.0):
        got = records(client, "underused_jobs", {"threshold_pct": threshold})
        assert sorted(r["job"] for r in got) == sorted(j for j, p95 in latest.items() if round(p95, 1) < threshold)
    [b] = records(client, "underused_jobs", {})
    b_views = [q for q in sc.job_quantiles if q.job_id == "job-b" and q.metric == "gpu_util"]
    running_s = (max(q.window_end for q in b_views) - min(q.window_start for q in b_views)) / 1000
    assert (b["job"], b["gpus"], b["running_s"], b["gpu_hours"]) == ("job-b", 8, running_s, round(8 * running_s / 3600, 2))


def _kpi_rows(sc, kpi: str, dimension: str, group: str | None = None):
    return [k for k in sc.kpis if k.kpi == kpi and k.dimension == dimension and (group is None or k.group == group)]


def test_team_usage_and_user_gpu_hours(store) -> None:
    client, sc = store
    cluster = sum(k.value for k in _kpi_rows(sc, "gpu_hours", "cluster"))
    teams = {r["team"]: r for r in records(client, "team_usage", {})}
    for team in ("llm", "vision", "batch"):
        hours = sum(k.value for k in _kpi_rows(sc, "gpu_hours", "team", team))
        assert teams[team]["gpu_hours"] == round(hours, 3) > 0
        assert teams[team]["share_pct"] == round(100 * hours / cluster, 1)
        util = [k.value for k in _kpi_rows(sc, "gpu_util_mean_pct", "team", team)]
        assert teams[team]["util_mean_pct"] == (round(float(np.mean(util)), 1) if util else None)
    assert teams["batch"]["jobs"] == 40 and teams["llm"]["jobs"] == 1
    users = {r["user"]: r for r in records(client, "user_gpu_hours", {})}
    assert users["bob"]["team"] == "vision"
    assert users["ann"]["gpu_hours"] == round(sum(k.value for k in _kpi_rows(sc, "gpu_hours", "user", "ann")), 3)


def test_cluster_now_and_node_status(store) -> None:
    client, sc = store
    within = int(time.time() - sc.t0 / 1000) + 60
    now = records(client, "cluster_now", {"within_s": within})
    last = {}
    for x in sc.samples:
        if x.ts >= last.get((x.node, x.gpu_index), x).ts:
            last[(x.node, x.gpu_index)] = x
    assert len(now) == len(last) == 32
    for row in now:
        x = last[(row["node"], row["gpu"])]
        assert (ms(row["last_seen"]), row["job"], row["util"]) == (x.ts, x.job_id, round(x.gpu_util, 1))
        assert row["open_anomalies"] == ("gpu_xid" if (x.node, x.gpu_index) == scenario.XID_GPU else "")
    nodes = {r["node"]: r for r in records(client, "node_status", {"within_s": within})}
    assert nodes["node-00"]["status"] == "attention" and nodes["node-00"]["xids"] == 1
    assert nodes["node-00"]["anomaly_kinds"] == "gpu_xid, straggler"
    assert [nodes[n]["status"] for n in ("node-01", "node-02", "node-03")] == ["ok", "ok", "ok"]
    assert nodes["node-01"]["util_mean"] == round(float(np.mean([x.gpu_util for x in sc.samples if x.node == "node-01"])), 1)
    # nothing reported in the last minute: every node is silent, still listed from the inventory
    quiet = records(client, "node_status", {"within_s": 1})
    assert {(r["node"], r["status"], r["reporting"]) for r in quiet} == {(n, "silent", 0) for n in scenario.NODES}


# -- diagnostics -----------------------------------------------------------------------------
def _bucket_means(sc, job: str, bucket_ms: int) -> dict[tuple[str, int, int], tuple[float, float, float]]:
    acc: dict[tuple[str, int, int], list[tuple[float, float, float]]] = {}
    for x in sc.samples:
        if x.job_id == job:
            acc.setdefault((x.node, x.gpu_index, x.ts // bucket_ms * bucket_ms), []).append(
                (x.gpu_util, x.power_w, x.sm_clock_mhz)
            )
    return {k: tuple(np.mean(np.array(v, dtype=np.float32), axis=0, dtype=np.float64)) for k, v in acc.items()}


def _robust_z(values: dict, floors=(3.0, 15.0, 50.0)) -> dict:
    """Per bucket: each GPU's robust z for each metric against the bucket's GPUs (numpy's median)."""
    out = {}
    for bucket in {k[2] for k in values}:
        keys = [k for k in values if k[2] == bucket]
        m = np.array([values[k] for k in keys])
        med = np.median(m, axis=0)
        mad = np.median(np.abs(m - med), axis=0)
        z = (m - med) / np.maximum(1.4826 * mad, floors)
        for k, zk in zip(keys, z):
            out[k] = zk
    return out


@pytest.mark.parametrize("bucket_s", [30, 60])  # 30 s from gpu_samples, whole minutes from gpu_rollup_1m
def test_gpu_outliers_name_the_slow_gpu_with_numpy_robust_z(store, bucket_s: int) -> None:
    client, sc = store
    got = records(client, "gpu_outliers", {"job": "job-a", "bucket_s": bucket_s})
    z = _robust_z(_bucket_means(sc, "job-a", bucket_s * S))
    per_gpu: dict[tuple[str, int], list] = {}
    for (node, gpu, _b), zk in z.items():
        per_gpu.setdefault((node, gpu), []).append(np.abs(zk).max())
    assert (got[0]["node"], got[0]["gpu"]) == scenario.SLOW
    assert got[0]["anomalies"] == "gpu_outlier" and got[0]["z_util"] < -5 and got[0]["util"] < got[0]["peers_util"] - 30
    for row in got:
        worst = np.array(per_gpu[(row["node"], row["gpu"])])
        assert row["buckets"] == len(worst)
        assert row["outlying_buckets"] == int((worst > 5).sum())
        assert row["max_abs_z"] == pytest.approx(worst.max(), abs=0.051)
    # the slow span, to the bucket
    slow = got[0]
    start, end = sc.a_start + scenario.SLOW_SPAN[0] * S, sc.a_start + scenario.SLOW_SPAN[1] * S
    assert start - bucket_s * S < ms(slow["first_outlying"]) <= start + bucket_s * S
    assert end - bucket_s * S <= ms(slow["last_outlying"]) < end + bucket_s * S
    assert all(r["outlying_buckets"] == 0 for r in got[1:])


def test_metric_correlation_equals_numpy(store) -> None:
    client, sc = store
    bucket = 60 * S
    gpu = _bucket_means(sc, "job-a", bucket)
    ib_acc: dict[tuple[str, int], dict[int, float]] = {}
    for x in sc.ib:
        per_ts = ib_acc.setdefault((x.node, x.ts // bucket * bucket), {})
        per_ts[x.ts] = per_ts.get(x.ts, 0.0) + x.xmit_bytes_per_s + x.rcv_bytes_per_s
    ib = {k: float(np.mean(list(v.values()))) for k, v in ib_acc.items()}
    step_acc: dict[tuple[str, int], list[float]] = {}
    for st in sc.steps:
        step_acc.setdefault((st.node, st.ts // bucket * bucket), []).append(st.duration_s)
    step = {k: float(np.median(v)) for k, v in step_acc.items()}
    keys = sorted(gpu)
    columns = {
        "gpu_util": [gpu[k][0] for k in keys],
        "power_w": [gpu[k][1] for k in keys],
        "sm_clock_mhz": [gpu[k][2] for k in keys],
        "ib_bytes_per_s": [ib[(k[0], k[2])] for k in keys],
        "step_s": [step[(k[0], k[2])] for k in keys],
    }
    got = records(client, "metric_correlation", {"job": "job-a", "bucket_s": 60})
    assert len(got) == 10
    for row in got:
        expected = np.corrcoef(columns[row["metric_a"]], columns[row["metric_b"]])[0, 1]
        assert row["r"] == pytest.approx(expected, abs=0.0011), row
        assert row["n"] == len(keys)
    # strongest first: power follows utilisation; IB throughput and step time move against each other
    assert [(r["metric_a"], r["metric_b"]) for r in got[:2]] == [("gpu_util", "power_w"), ("ib_bytes_per_s", "step_s")]
    assert got[0]["r"] > 0.95 and got[1]["r"] < -0.5


def test_straggler_timeline(store) -> None:
    client, sc = store
    got = records(client, "straggler_timeline", {"job": "job-a", "bucket_s": 60})
    by_step: dict[int, list] = {}
    for st in sc.steps:
        by_step.setdefault(st.step, []).append(st)
    ratios: dict[tuple[int, int], list[float]] = {}
    slowest: dict[tuple[int, int], list[bool]] = {}
    for steps in by_step.values():
        med = float(np.median([s.duration_s for s in steps]))
        worst = max(steps, key=lambda s: s.duration_s).rank
        for s in steps:
            key = (s.ts // 60000 * 60000, s.rank)
            ratios.setdefault(key, []).append(s.duration_s / med)
            slowest.setdefault(key, []).append(s.rank == worst)
    assert len(got) == len(ratios)
    for row in got:
        key = (ms(row["bucket"]), row["rank"])
        assert row["vs_median"] == pytest.approx(float(np.median(ratios[key])), abs=0.0006)
        assert row["slowest_share"] == pytest.approx(float(np.mean(slowest[key])), abs=0.0006)
    rank3 = [r for r in got if r["rank"] == scenario.STRAGGLER_RANK]
    assert all(r["vs_median"] > 1.25 and r["slowest_share"] > 0.9 and r["node"] == "node-00" for r in rank3)


def test_job_gpu_and_ib_timelines(store) -> None:
    client, sc = store
    means = _bucket_means(sc, "job-a", 20 * S)
    got = records(client, "job_gpu_timeline", {"job": "job-a", "bucket_s": 20})
    assert len(got) == len(means)
    for row in got:
        assert row["util"] == pytest.approx(means[(row["node"], row["gpu"], ms(row["bucket"]))][0], abs=0.006)
    ib = records(client, "job_ib_timeline", {"job": "job-a", "bucket_s": 60})
    low = [r for r in ib if r["gb_per_s"] < 10]  # 2 ports of ~3 GB/s against ~10 GB/s
    span = {sc.a_start // 60000 * 60000 + m * 60000 for m in range(scenario.IB_SPAN[0] // 60, scenario.IB_SPAN[1] // 60)}
    assert {r["node"] for r in low} == {"node-01"} and {ms(r["bucket"]) for r in low} == span


def test_job_timeline_tells_the_story_in_order(store) -> None:
    client, sc = store
    got = records(client, "job_timeline", {"job": "job-a", "bucket_s": 300})
    assert [r["ts"] for r in got] == sorted(r["ts"] for r in got)
    events = [(r["source"], r["event"], r["subject"]) for r in got if r["source"] != "gpus" and r["source"] != "steps"]
    assert events == [
        ("scheduler", "submitted", ""),
        ("scheduler", "scheduled", "node-[00-01]"),
        ("anomaly", "straggler firing (warning)", "job-a/rank-3"),
        ("anomaly", "gpu_outlier firing (warning)", scenario.uuid(*scenario.SLOW)),
        ("anomaly", "slow_interconnect firing (warning)", "node-01"),
        ("anomaly", "slow_interconnect resolved (warning)", "node-01"),
        ("anomaly", "gpu_outlier resolved (warning)", scenario.uuid(*scenario.SLOW)),
        ("anomaly", "gpu_xid firing (critical)", scenario.uuid(*scenario.XID_GPU)),  # no job_id: found by its GPU
    ]
    summaries = [r for r in got if r["source"] == "gpus"]
    assert len(summaries) == len({x.ts // (300 * S) for x in sc.samples if x.job_id == "job-a"})
    slow_bucket = [r for r in summaries if ms(r["ts"]) == (sc.a_start + 600 * S) // (300 * S) * (300 * S)]
    assert "lowest node-01/5 " in slow_bucket[0]["detail"]


# -- scheduling ------------------------------------------------------------------------------
def _by_step(rows, step_ms: int, value=lambda k: k.value) -> dict[int, float]:
    acc: dict[int, list[float]] = {}
    for k in rows:
        acc.setdefault(k.ts // step_ms * step_ms, []).append(value(k))
    return {t: float(np.mean(v)) for t, v in acc.items()}


def test_allocation_rate_is_rebucketed_by_step(store) -> None:
    client, sc = store
    for step in (600, 1800):
        got = records(client, "allocation_rate", {"step_s": step})
        expected = _by_step(_kpi_rows(sc, "allocation_rate", "cluster"), step * S)
        assert {ms(r["t"]): r["allocation_rate"] for r in got} == {t: round(v, 4) for t, v in expected.items()}
        counts = _by_step(_kpi_rows(sc, "allocation_rate", "cluster"), step * S, value=lambda k: 1.0)
        assert (
            all(
                r["snapshots"]
                == len([k for k in _kpi_rows(sc, "allocation_rate", "cluster") if k.ts // (step * S) * step * S == ms(r["t"])])
                for r in got
            )
            and counts
        )
    zones = records(client, "allocation_rate", {"step_s": 3600, "dimension": "zone"})
    assert {r["group"] for r in zones} == {k.group for k in _kpi_rows(sc, "allocation_rate", "zone")}


def test_wait_time_p95_by_resource_type(store) -> None:
    client, sc = store
    got = {(r["resource"], r["group"]): r for r in records(client, "wait_time_by_resource_type", {})}
    # one KPI interval holds every one-GPU job: the p95 is exactly numpy's over their waits
    one = got[("gpu_bucket", "1")]
    assert one["jobs"] == len(sc.waits["1"])
    assert one["wait_p95_s"] == round(float(np.quantile(sc.waits["1"], 0.95)), 1)
    assert one["wait_p50_s"] == round(float(np.median(sc.waits["1"])), 1)
    # across intervals: the job-weighted mean of the intervals' p95, and the worst one
    for key in got:
        dim = "cluster" if key[0] == "multi_node" else key[0]
        prefix = "gang_wait" if key[0] == "multi_node" else "queue_wait"
        rows = _kpi_rows(sc, f"{prefix}_p95_s", dim, key[1])
        assert got[key]["jobs"] == sum(k.count for k in rows)
        assert got[key]["wait_p95_s"] == round(sum(k.value * k.count for k in rows) / sum(k.count for k in rows), 1)
        assert got[key]["worst_interval_p95_s"] == round(max(k.value for k in rows), 1)
    assert ("gpu_bucket", "2-4") in got and got[("gpu_bucket", "2-4")]["intervals"] >= 2


def test_fragmentation_low_priority_and_zones(store) -> None:
    client, sc = store
    frag = records(client, "fragmentation", {"step_s": 600})
    stranded = _by_step(_kpi_rows(sc, "stranded_gpus", "cluster"), 600 * S)
    assert {ms(r["t"]): r["stranded_gpus"] for r in frag} == {t: round(v, 2) for t, v in stranded.items()}
    assert max(r["stranded_max"] for r in frag) == max(k.value for k in _kpi_rows(sc, "stranded_gpus", "cluster"))
    fgd = _kpi_rows(sc, "fgd_fragmentation_gpus", "cluster")
    assert fgd and max(k.value for k in fgd) > 0  # the scenario's jobs said their shapes
    want = _by_step(fgd, 600 * S)
    assert {ms(r["t"]): r["fgd_fragmented_gpus"] for r in frag if ms(r["t"]) in want} == {t: round(v, 2) for t, v in want.items()}
    rate = _by_step(_kpi_rows(sc, "fgd_fragmentation_rate", "cluster"), 600 * S)
    assert {ms(r["t"]): r["fgd_rate"] for r in frag if ms(r["t"]) in rate} == {t: round(v, 4) for t, v in rate.items()}
    assert max(r["fgd_max"] for r in frag if ms(r["t"]) in want) == max(k.value for k in fgd)
    low = records(client, "low_priority_usage", {"step_s": 600})
    share = _by_step(_kpi_rows(sc, "allocation_share", "priority", "low"), 600 * S)
    assert {ms(r["t"]): r["low_priority_share"] for r in low} == {t: round(v, 4) for t, v in share.items()}
    assert max(r["low_priority_share"] for r in low) > 0  # job-b and job-c are low priority
    zones = {r["zone"]: r for r in records(client, "zone_utilization", {})}
    for zone in ("zone-a", "zone-b"):
        utils = [x.gpu_util for x in sc.samples if scenario.ZONE[x.node] == zone]
        assert zones[zone]["util_mean_pct"] == round(float(np.mean(np.array(utils, dtype=np.float32), dtype=np.float64)), 1)
        assert zones[zone]["total_gpus"] == 16 and zones[zone]["gpus_reporting"] == 16
