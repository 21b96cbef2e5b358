"""Scenario files: the library loads, labels come out of faults, and bad files say where they are wrong."""

from __future__ import annotations

import pytest

from hpcinsight.harness.scenario import DETECTORS, ScenarioError, check_library, load, parse

SMALL = """
name: small
seed: 7
duration_s: 300
cluster: {nodes: 4, gpus_per_node: 8, ib_ports: 4}
jobs:
  - {id: train, nodes: 0-3, profile: {base: training, util: 80}}
faults:
  - {kind: thermal, node: 1, gpu: 3, onset_s: 100, end_s: 200}
  - {kind: ib_degrade, node: 2, onset_s: 120, end_s: 220}
  - {kind: straggler, job: train, rank: 9, onset_s: 50, end_s: 250, factor: 1.5}
  - kind: xid
    node: 0
    gpu: 1
    onset_s: 60
    xid: 79
    expect: [{detector: gpu_xid, node: 0, gpu: 1, grace_s: 30}]
expect:
  - {detector: hang, job: train, onset_s: 10, end_s: 20}
"""


def test_the_library_loads_and_covers_every_detector() -> None:
    scenarios = check_library()
    assert len(scenarios) >= 10
    required = {label.detector for s in scenarios for label in s.labels if label.required}
    assert required == set(DETECTORS)
    assert any(not s.faults for s in scenarios), "the library needs false-positive traps"
    nodes = [s.node_prefix for s in scenarios]
    assert len(set(nodes)) == len(nodes)


def test_labels_are_derived_from_faults_with_the_detectors_subjects() -> None:
    sc = parse(SMALL)
    uuid = sc.gpu_uuid(1, 3)
    assert uuid == sc.collectors()[0].gpu(1, 3).uuid
    got = {(lab.detector, lab.subject, lab.onset_s, lab.end_s, lab.grace_s, lab.required) for lab in sc.labels}
    assert ("gpu_health", f"{uuid}/thermal_throttle", 100, 200, 180, True) in got
    assert ("gpu_outlier", uuid, 100, 200, 180, False) in got  # true, not required
    assert ("slow_interconnect", "small-node-02", 120, 220, 180, True) in got
    assert {s for d, s, *_ in got if d == "slow_interconnect" and s != "small-node-02"} == {
        f"small-node-02/mlx5_{p}/1" for p in range(4)
    }
    assert ("straggler", "small.train/rank-9", 50, 250, 180, True) in got
    assert ("gpu_xid", sc.gpu_uuid(0, 1), 60, 60, 30, True) in got  # stated by the fault: a point, its own grace
    assert ("hang", "small.train", 10, 20, 180, True) in got
    assert sc.jobs[0].profile.util == 80 and sc.jobs[0].job_id == "small.train"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("duration_s: [", "not valid YAML (line 1"),
        ("cluster: {nodes: 2}", "missing duration_s"),
        ("duration_s: 100\ncluster: {nodes: 2}\nspeed: 3", "unknown key speed"),
        (
            "duration_s: 100\ncluster: {nodes: 2}\nfaults: [{kind: thermo, node: 0, gpu: 0, onset_s: 1}]",
            "faults[0].kind: unknown fault 'thermo'",
        ),
        (
            "duration_s: 100\ncluster: {nodes: 2}\nfaults: [{kind: thermal, node: 5, gpu: 0, onset_s: 1}]",
            "faults[0].node: node 5 is outside",
        ),
        (
            "duration_s: 100\ncluster: {nodes: 2}\nfaults: [{kind: thermal, node: 1, onset_s: 1}]",
            "faults[0]: a thermal fault needs node and gpu",
        ),
        (
            "duration_s: 100\ncluster: {nodes: 2}\nfaults: [{kind: thermal, node: 1, gpu: 1, onset_s: 50, end_s: 20}]",
            "faults[0].end_s: must be after onset_s",
        ),
        ("duration_s: 100\ncluster: {nodes: 2}\njobs: [{id: a, nodes: 0-1}, {id: b, nodes: 1}]", "both hold GPU"),
        ("duration_s: 100\ncluster: {nodes: 2}\njobs: [{id: a, nodes: 0-1, gpus: [0]}]", "only a job on one node"),
        ("duration_s: 100\ncluster: {nodes: 2}\njobs: [{id: a, nodes: 0, profile: turbo}]", "no profile 'turbo'"),
        ("duration_s: 100\ncluster: {nodes: 2}\njobs: [{id: a, nodes: 0, profile: {util: 140}}]", "utilisation in 0..100"),
        (
            "duration_s: 100\ncluster: {nodes: 1}\njobs: [{id: a, nodes: 0}]\nfaults: [{kind: straggler, job: a, rank: 8, onset_s: 1}]",
            "has 8 ranks, no rank 8",
        ),
        ("duration_s: 100\ncluster: {nodes: 1}\nfaults: [{kind: hang, job: a, onset_s: 1}]", "faults[0].job: no job 'a'"),
        ("duration_s: 100\ncluster: {nodes: 1}\nexpect: [{detector: psychic, node: 0}]", "expect[0].detector: unknown detector"),
        (
            "duration_s: 100\ncluster: {nodes: 1}\nexpect: [{detector: hang, job: a}]",
            "expect[0]: a label of the scenario needs onset_s",
        ),
        ("duration_s: 100\ncluster: {nodes: 1}\nname: Big_Name", "name: expected lower-case"),
    ],
)
def test_bad_scenarios_are_refused_naming_the_place(text: str, message: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse(text, "bad.yaml", default_name="bad")
    assert str(err.value).startswith("bad.yaml: ") and message in str(err.value), str(err.value)


def test_unknown_scenario_names_the_library() -> None:
    with pytest.raises(ScenarioError, match="the library has: .*gpu-throttle"):
        load("no-such-scenario")


def test_the_labels_know_every_detector_the_worker_runs() -> None:
    from hpcinsight.streams.detectors import discover

    assert set(DETECTORS) == {cls.kind for cls in discover()}  # a new detector needs labels in the library
