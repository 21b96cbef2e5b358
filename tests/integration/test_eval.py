"""`hpcinsight eval` end to end on one small scenario: broker, worker, sink and sim agent, then the scores."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Pipeline

pytestmark = [pytest.mark.kafka, pytest.mark.integration]
SCENARIO = ROOT / "tests" / "data" / "scenarios" / "eval-smoke.yaml"


def test_eval_scores_a_small_scenario_through_the_pipeline(pipeline: Pipeline, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpcinsight.cli",
            "eval",
            "--scenario",
            str(SCENARIO),
            "--out",
            str(out),
            "--speed",
            "10",
            "--job-wait",
            "5",
        ],  # 16 GPUs, one partition each node: nothing lags far
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=400,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "gpu_health" in result.stdout and "precision" in result.stdout
    with open(out / "results.csv") as fh:
        rows = {r["detector"]: r for r in csv.DictReader(fh) if r["scenario"] == "ALL"}
    for detector in ("gpu_health", "gpu_xid", "straggler"):  # each fault found, on its subject, in time
        row = rows[detector]
        assert (row["labels"], row["detected"], row["false_flags"]) == ("1", "1", "0"), row
        assert float(row["median_delay_windows"]) <= 3, row
    assert all(r["false_flags"] == "0" for r in rows.values()), rows  # nothing raised anywhere else
    with open(out / "flags.csv") as fh:
        flags = list(csv.DictReader(fh))
    assert {f["verdict"] for f in flags} <= {"true", "allowed"}
    assert (out / "eval-smoke.png").stat().st_size > 10_000
    assert "| gpu_health | 1 | 1 |" in (out / "results.md").read_text()
    # scoring again from the stored run (as after editing labels) gives the same table, without a pipeline
    before = (out / "results.csv").read_text()
    again = subprocess.run(
        [sys.executable, "-m", "hpcinsight.cli", "eval", "--rescore", "--out", str(out), "--no-plots"],
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "results.csv").read_text() == before
