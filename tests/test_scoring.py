"""Scoring flags against labels: constructed incidents and labels, including the awkward cases."""

from __future__ import annotations

import pytest

from hpcinsight.harness.eval import flags_from_rows
from hpcinsight.harness.scenario import Label, parse
from hpcinsight.harness.scoring import Flag, score

W = 60.0  # sampling window, s


def label(
    detector: str = "gpu_health",
    subject: str = "GPU-a/thermal_throttle",
    onset: float = 100,
    end: float = 200,
    grace: float = 60,
    required: bool = True,
    scenario: str = "s",
) -> Label:
    return Label(scenario, detector, subject, onset, end, grace, "test fault", required)


def flag(
    fired: float,
    detector: str = "gpu_health",
    subject: str = "GPU-a/thermal_throttle",
    resolved: float | None = None,
    id: str | None = None,
    scenario: str | None = "s",
) -> Flag:
    return Flag(id or f"{detector}-{subject}-{fired}", detector, subject, fired, resolved, scenario)


def test_a_flag_in_the_span_detects_its_label_with_its_delay() -> None:
    result = score([label()], [flag(130, resolved=230)], W)
    s = result.by_detector()["gpu_health"]
    assert (s.labels, s.detected, s.true_flags, s.false_flags, s.refires) == (1, 1, 1, 0, 0)
    assert (s.precision, s.recall, s.f1) == (1.0, 1.0, 1.0)
    assert result.labels[0].delay_s == 30 and s.median_delay_s == 30


def test_a_flag_before_the_onset_is_false_and_does_not_detect() -> None:
    result = score([label(onset=100)], [flag(90, resolved=300)], W)
    s = result.by_detector()["gpu_health"]
    assert (s.detected, s.true_flags, s.false_flags) == (0, 0, 1)
    assert s.precision == 0.0 and s.recall == 0.0 and s.f1 == 0.0
    assert result.flags[0].verdict == "false" and not result.labels[0].detected


def test_grace_after_the_end_counts_and_later_is_false() -> None:
    labels = [label(onset=100, end=100, grace=60)]  # a point fault (ECC, XID, a link flap)
    assert score(labels, [flag(160)], W).labels[0].detected
    late = score(labels, [flag(161)], W)
    assert not late.labels[0].detected and late.flags[0].verdict == "false"


def test_wrong_subject_detector_or_scenario_is_false() -> None:
    flags = [
        flag(120, subject="GPU-b/thermal_throttle"),
        flag(120, detector="gpu_outlier", subject="GPU-a/thermal_throttle"),
        flag(120, scenario="other"),
        flag(120, scenario=None),
    ]
    result = score([label()], flags, W)
    assert [f.verdict for f in result.flags] == ["false"] * 4
    assert not result.labels[0].detected


def test_resolved_then_refired_is_one_detection_and_a_refire_not_a_false_positive() -> None:
    flags = [flag(130, resolved=150, id="a"), flag(170, resolved=260, id="b")]
    result = score([label()], flags, W)
    s = result.by_detector()["gpu_health"]
    assert (s.detected, s.true_flags, s.false_flags, s.refires) == (1, 2, 0, 1)
    assert s.precision == 1.0 and result.labels[0].delay_s == 30 and result.labels[0].flag.id == "a"
    assert [f.refire for f in result.flags] == [False, True]


def test_overlapping_labels_on_one_subject_one_incident_covers_both() -> None:
    # two faults on one GPU, the second starting while the first's incident is open: the detector raises
    # one incident per subject by design, so the second label is detected by the open incident (delay 0)
    labels = [
        label(detector="gpu_outlier", subject="GPU-a", onset=100, end=300),
        label(detector="gpu_outlier", subject="GPU-a", onset=200, end=400),
    ]
    result = score(labels, [flag(130, detector="gpu_outlier", subject="GPU-a", resolved=420)], W)
    assert [r.detected for r in result.labels] == [True, True]
    assert [r.delay_s for r in result.labels] == [30, 0]
    assert [r.covered for r in result.labels] == [False, True]  # fired before the second onset: open, it covers it
    s = result.by_detector()["gpu_outlier"]
    assert (s.labels, s.detected, s.true_flags, s.refires) == (2, 2, 1, 0)


def test_an_open_true_incident_covers_a_later_label_but_a_false_one_does_not() -> None:
    labels = [label(subject="GPU-a", onset=100, end=150, grace=0), label(subject="GPU-a", onset=300, end=400, grace=0)]
    covered = score(labels, [flag(120, subject="GPU-a", resolved=None)], W)
    assert [(r.detected, r.covered, r.delay_s) for r in covered.labels] == [(True, False, 20), (True, True, 0)]
    resolved_before = score(labels, [flag(120, subject="GPU-a", resolved=250)], W)
    assert [r.detected for r in resolved_before.labels] == [True, False]
    # a false flag raised before any fault and left open proves nothing about the fault that follows
    false_open = score([label(subject="GPU-a", onset=300, end=400)], [flag(50, subject="GPU-a")], W)
    assert not false_open.labels[0].detected and false_open.flags[0].verdict == "false"


def test_a_flag_matching_only_an_allowed_label_counts_neither_way() -> None:
    labels = [label(), label(detector="gpu_outlier", subject="GPU-a", required=False)]
    result = score(labels, [flag(130), flag(140, detector="gpu_outlier", subject="GPU-a")], W)
    by = result.by_detector()
    assert by["gpu_outlier"].allowed_flags == 1 and by["gpu_outlier"].precision is None and by["gpu_outlier"].recall is None
    assert by["gpu_outlier"].labels == 0  # allowed labels are not owed
    assert by["gpu_health"].precision == 1.0


def test_missed_labels_and_false_flags_make_precision_recall_and_f1() -> None:
    labels = [label(subject=f"GPU-{i}", onset=100) for i in range(4)]
    flags = [flag(110, subject="GPU-0"), flag(400, subject="GPU-0"), flag(120, subject="GPU-1"), flag(130, subject="GPU-9")]
    s = score(labels, flags, W).by_detector()["gpu_health"]
    assert (s.labels, s.detected, s.true_flags, s.false_flags) == (4, 2, 2, 2)
    assert s.precision == 0.5 and s.recall == 0.5 and s.f1 == pytest.approx(0.5)
    assert s.median_delay_s == 15


def test_every_detector_gets_a_row_and_no_flags_means_no_precision() -> None:
    by = score([label()], [], W).by_detector(("gpu_health", "hang"))
    assert set(by) == {"gpu_health", "hang"}
    assert by["gpu_health"].precision is None and by["gpu_health"].recall == 0.0 and by["gpu_health"].f1 == 0.0
    assert by["hang"].precision is None and by["hang"].recall is None and by["hang"].f1 is None


def test_incidents_from_anomaly_rows_are_assigned_to_their_scenario() -> None:
    sc = parse(
        """
duration_s: 100
cluster: {nodes: 2}
jobs: [{id: train, nodes: 0-1}]
""",
        default_name="demo-a",
    )
    t0 = 1_000_000
    rows = [
        ("i1", "gpu_xid", "GPU-x", "demo-a-node-01", None, "firing", t0 + 5000),
        ("i1", "gpu_xid", "GPU-x", "demo-a-node-01", None, "resolved", t0 + 9000),
        ("i2", "hang", "demo-a.train", None, "demo-a.train", "firing", t0 + 7000),
        ("i3", "hang", "x.train", None, "x.train", "firing", t0 + 8000),
        ("i4", "gpu_xid", "GPU-y", "demo-a-node-00", None, "resolved", t0 + 9000),  # resolved without a firing: no incident
    ]
    flags = flags_from_rows(rows, [sc], t0)
    assert [(f.id, f.fired_s, f.resolved_s, f.scenario) for f in flags] == [
        ("i1", 5.0, 9.0, "demo-a"),
        ("i2", 7.0, None, "demo-a"),
        ("i3", 8.0, None, None),
    ]


def test_chatter_is_incidents_per_detected_condition_and_time_to_resolve_counts_from_the_fault_end() -> None:
    labels = [label(onset=100, end=200), label(subject="GPU-b/thermal_throttle", onset=100, end=200)]
    flags = [
        flag(130, resolved=150, id="a"),
        flag(170, resolved=260, id="b"),  # one fault, two pages
        flag(120, subject="GPU-b/thermal_throttle", id="c"),
    ]  # the other never resolved
    s = score(labels, flags, W).by_detector()["gpu_health"]
    assert s.detected == 2 and s.true_flags == 3 and s.chatter == 1.5
    assert s.resolve_s == [0.0, 60.0] and s.unresolved == 1 and s.median_resolve_s == 30.0
    open_ended = Label("s", "gpu_health", "GPU-c/x", 100, 600, 60, "to the end", True, ends=False)
    t = score([open_ended], [flag(110, subject="GPU-c/x")], W).by_detector()["gpu_health"]
    assert t.chatter == 1.0 and t.resolve_s == [] and t.unresolved == 0  # a fault lasting to the end has no resolve time
