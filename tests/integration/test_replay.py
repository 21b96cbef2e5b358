"""``hpcinsight replay`` through Kafka, the Faust worker and the ClickHouse sink, on recorded data.

* steps: a generated file with a straggler rank and an unevenly loaded job (and malformed rows):
  the printed flags name the rank and the steps around the slow span;
* gpu-util: 10 pods x 3 hours of the real Alibaba GenAI utilisation series: every printed p50/p95
  is within the sketches' rank-error bound of numpy's on the same values, and the idle pods are
  flagged under-used;
* sched: the first 300 pods of the openb trace: the KPI table equals the independent pandas
  computation of tests/test_kpis_openb.py on the same events, and the printed waits are its.
"""

from __future__ import annotations

import csv
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import Pipeline, rank_error_ok

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
GENAI = DATA / "alibaba-genai-2026" / "pod_gpu_duty_cycle_anon.tar.gz"
OPENB = DATA / "alibaba-openb-2023"
DAY_MS = 86_400_000


def replay(pipeline: Pipeline, *args: str) -> tuple[list[dict], str]:
    """Run the replay into the test's store; its JSON rows and its notes (stderr)."""
    result = pipeline.run("replay", *args, "--format", "json", "--store", f"chdb://{pipeline.store}", timeout=300)
    return json.loads(result.stdout), result.stderr


def test_steps_replay_names_the_straggler_rank_and_its_steps(pipeline: Pipeline, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    path = tmp_path / "steps.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["job", "rank", "step", "duration_s"])
        for step in range(300):  # rank 5 of 8 is 35 % slower in steps 50-149
            for rank in range(8):
                w.writerow(
                    ["train-a", rank, step, f"{rng.normal(1.0, 0.02) * (1.35 if rank == 5 and 50 <= step < 150 else 1.0):.4f}"]
                )
        for step in range(60):  # uneven from step to step, no single culprit
            for rank in range(4):
                w.writerow(["train-b", rank, step, f"{rng.lognormal(0, 0.25):.4f}"])
        f.write("train-a,3,999\ntrain-a,3,1000,-1\ntrain-a,3,1001,NaN\n")  # lines 2642-2644
    flags, notes = replay(pipeline, "steps", str(path))
    assert "line 2642: 3 fields" in notes and "line 2643: duration_s -1 is negative" in notes and "line 2644" in notes
    assert [(f["job"], f["flag"], f["rank"], f["state"]) for f in flags] == [
        ("train-a", "straggler", 5, "resolved"),
        ("train-b", "imbalance", None, "open"),
    ]
    a, b = flags
    # windows of 20 steps; it resolves after the straggler's quiet time too (60 s, a step a second without a ts column)
    assert a["first_step"] <= 50 < a["first_step"] + 20 and 149 <= a["last_step"] < 149 + 20 + 60, a
    assert 20 < a["slower_pct"] < 50 and (b["first_step"], b["last_step"]) == (0, 59) and b["mean_cov"] > 0.1
    assert pipeline.sql("SELECT count() AS n FROM step_metrics FINAL")[0]["n"] == 300 * 8 + 60 * 4


PODS_IDLE = ["673d36875994141502007792b4b4588c", "9032a0105d8d339ccb95470f4535e9e8"]  # 0 % all of the first 3 h
PODS = [
    *PODS_IDLE,
    "4679f355d4cb3ce3f577d45b87911032",
    "3fa8c0fcbd73508ae6cf1c521d80c208",
    "0ec705c2842d35b28efbea446e2c9255",
    "3ed83727fd0a4a21f681882036a57972",
    "cbfb6b40cb1caa54ab6de789bb801645",
    "a3466e4941ffb60d69c82e6354ee3097",
    "2a879423614836f63138bd4162830d8b",
    "58c43bcd9763c4cc785712bb28ba86fc",
]


@pytest.mark.skipif(not GENAI.is_file(), reason=f"the GenAI utilisation series is not at {GENAI}")
def test_genai_utilisation_replay_matches_numpy_and_flags_the_idle_pods(pipeline: Pipeline, tmp_path: Path) -> None:
    with tarfile.open(GENAI) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".csv"))
        frame = pd.read_csv(tar.extractfile(member))
    start = frame.timestamp_anon.min()
    part = frame[frame.container_ip.isin(PODS) & (frame.timestamp_anon < start + 3 * 3600)]
    path = tmp_path / "genai.csv"
    part.rename(columns={"container_ip": "gpu", "timestamp_anon": "ts", "value": "util"})[["gpu", "ts", "util"]].to_csv(
        path, index=False
    )
    values = {pod: rows.value.to_numpy(np.float32) for pod, rows in part.groupby("container_ip")}
    assert set(values) == set(PODS)

    started = time.monotonic()
    gpus, notes = replay(pipeline, "gpu-util", str(path), "--job-per-gpu")
    print(f"\nreplayed {len(part)} samples of {len(PODS)} pods in {time.monotonic() - started:.1f} s\n{notes}")
    assert "times shifted by" in notes and "windows 10m/5m,1h/20m" in notes
    assert sorted(g["gpu_id"] for g in gpus) == sorted(PODS)
    exact = {
        r["gpu_uuid"]: r
        for r in pipeline.sql(
            "SELECT gpu_uuid, argMax(count, window_end) AS count, argMax(p50, window_end) AS p50, argMax(p95, window_end) AS p95 "
            "FROM gpu_quantiles FINAL WHERE metric = 'gpu_util' AND window = 'since_start' GROUP BY gpu_uuid"
        )
    }
    for g in gpus:
        v = values[g["gpu_id"]]
        assert g["job"] == g["gpu_id"] and g["samples"] == v.size == exact[g["gpu_id"]]["count"]
        for q, name in ((0.5, "p50"), (0.95, "p95")):
            stored = exact[g["gpu_id"]][name]
            assert rank_error_ok(v, q, stored), (g["gpu_id"], name, stored)  # within the sketch's bound (1 %)
            assert g[name] == pytest.approx(round(stored, 1), abs=1e-9)  # printed: the stored value to 0.1
    stored_samples = pipeline.sql("SELECT count() AS n, countIf(gpu_util IS NULL) AS closing FROM gpu_samples FINAL")[0]
    assert stored_samples == {"n": len(part) + len(PODS), "closing": len(PODS)}  # one closing sample per GPU
    for pod in PODS_IDLE:
        row = next(g for g in gpus if g["gpu_id"] == pod)
        assert row["p95"] == 0 and "gpu_underused (firing)" in row["anomalies"]
    underused = {
        r["job_id"]: r["states"]
        for r in pipeline.sql(
            "SELECT job_id, groupUniqArray(state) AS states FROM anomalies FINAL WHERE kind = 'job_underused' GROUP BY job_id"
        )
    }
    for pod in PODS_IDLE:
        assert underused[pod] == ["firing"]  # under-used from after the warm-up to the end


@pytest.mark.skipif(not (OPENB / "openb_pod_list_default.csv").is_file(), reason=f"the openb trace is not at {OPENB}")
def test_openb_replay_kpis_equal_the_independent_pandas_computation(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpcinsight.agents.scheduler.trace import NODE_FILE, POD_FILE, OpenbTraceCollector, TraceConfig
    from hpcinsight.streams.kpis import KpiConfig
    from tests import test_kpis_openb as reference

    pods, interval_ms = 300, 6 * 3_600_000
    t0 = (int(time.time() * 1000) // DAY_MS + 2) * DAY_MS
    waits, notes = replay(
        pipeline,
        "sched",
        str(OPENB / POD_FILE),
        str(OPENB / NODE_FILE),
        "--limit",
        str(pods),
        "--kpi-interval",
        "6h",
        "--step",
        "1d",
        "--start",
        str(t0),
        "--section",
        "waits",
    )
    assert f"{pods} pods" in notes and "KPI interval 21600 s" in notes

    # the reference: the same pods through the openb adapter itself, the KPIs recomputed in pandas
    collector = OpenbTraceCollector(TraceConfig(data_dir=OPENB, start_ms=t0, speedup=1.0, limit=pods))
    records = collector.sample(t0) + collector.sample(t0 + 10**12)
    monkeypatch.setattr(reference, "CONFIG", KpiConfig(interval_s=interval_ms / 1000, lateness_s=10.0))
    monkeypatch.setattr(reference, "I_MS", interval_ms)
    want = reference.expected_rows(records)
    last = int(want.ts.max())
    got = pd.DataFrame(
        pipeline.sql(
            "SELECT kpi, dimension, `group`, toUnixTimestamp64Milli(ts) AS ts, value, count, interval_s FROM scheduling_kpis FINAL"
        )
    )
    assert got.ts.max() >= last  # the replay closed the interval of the last event
    got = got[got.ts <= last]
    both = got.merge(want, on=reference.KEY, how="outer", suffixes=("", "_want"), indicator=True)
    only = both[both._merge != "both"]
    assert only.empty, f"rows on one side only:\n{only[[*reference.KEY, '_merge']].head(20)}"
    close = np.isclose(both.value, both.value_want, rtol=1e-9, atol=1e-12)
    assert close.all(), both.loc[~close, [*reference.KEY, "value", "value_want"]].head(20)
    assert (both["count"] == both.count_want).all() and (both.interval_s == both.interval_s_want).all()
    assert len(both) > 10_000 and set(got.kpi) >= {"allocation_rate", "queue_wait_p95_s", "stranded_gpus", "allocation_share"}

    # what it printed is the query library's reading of those rows
    stored = pd.DataFrame(
        pipeline.sql(
            "SELECT toUnixTimestamp64Milli(ts) AS ts, value, count FROM scheduling_kpis FINAL "
            "WHERE kpi = 'queue_wait_p50_s' AND dimension = 'cluster'"
        )
    )
    cluster = next(w for w in waits if w["resource"] == "cluster")
    assert cluster["jobs"] == stored["count"].sum() > 200
    assert cluster["wait_p50_s"] == pytest.approx(round((stored.value * stored["count"]).sum() / stored["count"].sum(), 1))
