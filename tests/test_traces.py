"""Trace scenarios: a recorded utilisation series becomes an evaluation scenario labelled by its idle spells."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcinsight.harness.scenario import ScenarioError, TraceMissing, parse, trace_place
from hpcinsight.harness.traces import idle_spells


def test_idle_spells_join_short_bursts_and_keep_long_ones_apart() -> None:
    minutes = [0] * 20 + [50] * 3 + [0] * 10 + [80] * 15 + [1] * 5 + [40] * 30
    # the 3-minute burst does not end the first spell; the 15-minute one does
    assert idle_spells(minutes, idle_pct=10, merge_min=10) == [(0, 33), (48, 53)]
    assert idle_spells([90.0] * 30, 10, 10) == []


def write_trace(path: Path, pods: dict[str, list[float]]) -> None:
    lines = ["value,timestamp_anon,container_ip"]
    for pod, series in pods.items():
        lines += [f"{v},{1_662_858_720 + 60 * m},{pod}" for m, v in enumerate(series)]
    path.write_text("\n".join(lines) + "\n")


def test_a_trace_scenario_is_labelled_from_its_data(tmp_path: Path) -> None:
    idle_pod = [0.0] * 120  # idle for two hours: one spell, and its service is under-used
    bursty = ([0.0] * 30 + [70.0] * 20) * 2 + [0.0] * 20  # three spells split by 20-minute bursts
    write_trace(tmp_path / "trace.csv", {"a-pod": idle_pod, "b-pod": bursty, "c-pod": [90.0] * 120})
    doc = f"description: test\ntrace: {{file: {tmp_path / 'trace.csv'}, pods: 3, hours: 2, per_job: 1}}\n"
    sc = parse(doc, str(tmp_path / "t.yaml"), default_name="tr")
    assert not sc.simulated and sc.duration_s == 7200 and len(sc.trace.series) == 3
    spells = sorted(
        (trace_place(sc, p)[2], lab.onset_s, lab.end_s)
        for p in sc.trace.series
        for lab in sc.labels
        if lab.detector == "gpu_underused" and lab.subject == trace_place(sc, p)[2]
    )
    a, b = trace_place(sc, "a-pod")[2], trace_place(sc, "b-pod")[2]
    assert [s[1:] for s in spells if s[0] == a] == [(0.0, 7200.0)]
    assert [s[1:] for s in spells if s[0] == b] == [(0.0, 1800.0), (3000.0, 4800.0), (6000.0, 7200.0)]
    under = [lab for lab in sc.labels if lab.detector == "job_underused"]
    # after the warm-up, under 5% of the GPU-minutes since start busy: all along for the idle pod, until its first
    # burst for the bursty one; never for the busy one
    assert [(lab.subject, lab.onset_s, lab.end_s) for lab in under] == [
        (trace_place(sc, "a-pod")[3], 600.0, 7200.0),
        (trace_place(sc, "b-pod")[3], 600.0, 1860.0),
    ]
    assert trace_place(sc, "c-pod")[0] == "tr-node-02"  # one pod a job, one job a node


def test_a_missing_or_short_trace_is_said(tmp_path: Path) -> None:
    with pytest.raises(TraceMissing, match="is not there"):
        parse("trace: {file: nowhere.tar.gz}\n", str(tmp_path / "t.yaml"), default_name="tr")
    write_trace(tmp_path / "short.csv", {"a": [0.0] * 10})
    with pytest.raises(ScenarioError, match="only 0 pods have every minute"):
        parse(f"trace: {{file: {tmp_path / 'short.csv'}, pods: 1, hours: 1}}\n", str(tmp_path / "t.yaml"), default_name="tr")
