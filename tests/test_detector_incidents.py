"""The incident table every detector pages through: fire after, hysteresis, resolve after, quiet time, folding,
gaps, ids, and incidents taken back after a restart. Each rule is driven here on its own, with no detector."""

from __future__ import annotations

from hpcinsight.schemas.events import Anomaly
from hpcinsight.streams.detectors.incidents import Hygiene, Incident, Incidents, State, anomaly_id

T0 = 1_764_000_000_000


def at(s: float) -> int:
    return T0 + int(s * 1000)


def run(
    table: Incidents[str], judgments: list[tuple[float, bool, bool | None]], key: str = "gpu-a"
) -> list[tuple[float, State, Incident]]:
    """Judge ``key`` at each (second, fire, clear); the transitions, with the second each happened."""
    out = []
    for s, fire, clear in judgments:
        got = table.judge(key, key, at(s), fire=fire, clear=clear)
        if got is not None:
            out.append((s, got[0], got[1]))
    return out


def fired_record(incident: Incident, kind: str, ts: int) -> Anomaly:
    """What the anomalies topic holds for an incident that fired (the worker reads it back after a restart)."""
    return Anomaly(
        id=incident.id,
        kind=kind,
        severity=incident.severity,
        state="firing",
        subject_type="gpu",
        subject=incident.subject,
        ts=ts,
        started_at=incident.started_at,
        window_start=incident.started_at,
        window_end=ts,
        message="",
        evidence={},
    )


def test_fires_after_n_judgments_and_the_time_both_and_starts_at_the_first() -> None:
    table: Incidents[str] = Incidents("k", Hygiene.of(fire_after=3, fire_after_s=25))
    got = run(table, [(0, True, None), (10, True, None), (20, True, None), (30, True, None), (40, True, None)])
    # three judgments by 20 s, but only 20 s of it: the fourth (30 s after the first) fires
    assert [(s, state) for s, state, _ in got] == [(30, "firing")]
    assert got[0][2].started_at == at(0) and got[0][2].id == anomaly_id("k", "gpu-a", at(0))


def test_a_judgment_without_the_condition_restarts_the_count() -> None:
    table: Incidents[str] = Incidents("k", Hygiene.of(fire_after=2))
    assert run(table, [(0, True, None), (10, False, None), (20, True, None)]) == []
    assert not table.building("nope") and table.building("gpu-a") and table.get("gpu-a") is None
    (firing,) = run(table, [(30, True, None)])
    assert firing[1] == "firing" and firing[2].started_at == at(20)


def test_since_dates_the_start_back_to_when_the_evidence_began() -> None:
    table: Incidents[str] = Incidents("k")
    got = table.judge("gpu-a", "gpu-a", at(60), fire=True, since=at(0), severity="critical")
    assert got is not None and got[1].started_at == at(0) and got[1].severity == "critical"


def test_resolves_after_n_clear_judgments_spanning_the_time() -> None:
    table: Incidents[str] = Incidents("k", Hygiene.of(resolve_after=2, resolve_after_s=15))
    got = run(table, [(0, True, None), (10, False, None), (20, False, None), (30, False, None), (40, False, None)])
    # two clear judgments by 20 s, 10 s apart; the third is 20 s after the first clear one
    assert [(s, state) for s, state, _ in got] == [(0, "firing"), (30, "resolved")]
    assert got[0][2].id == got[1][2].id and table.get("gpu-a") is None


def test_between_the_thresholds_holds_neither_firing_nor_resolving() -> None:
    table: Incidents[str] = Incidents("k", Hygiene.of(fire_after=1, resolve_after=2))
    # fire=False, clear=False: over the resolve threshold, under the fire threshold
    got = run(table, [(0, True, None), (10, False, True), (20, False, False), (30, False, True), (40, False, True)])
    assert [(s, state) for s, state, _ in got] == [(0, "firing"), (40, "resolved")]  # the hold broke the first run
    assert run(table, [(50, False, False), (60, False, False)], key="gpu-b") == []  # nothing building from holds


def test_quiet_time_folds_a_re_fire_into_the_open_incident_as_an_episode() -> None:
    table: Incidents[str] = Incidents("k", Hygiene.of(quiet_s=60))
    got = run(
        table, [(0, True, None), (10, False, None), (30, True, None), (40, False, None), (90, False, None), (100, False, None)]
    )
    # one incident; its second episode at 30 s; it resolves once 60 s passed since the condition last held
    assert [(s, state) for s, state, _ in got] == [(0, "firing"), (90, "resolved")]
    assert got[1][2].episodes == 2 and got[1][2].last_bad == at(30)
    (again,) = run(table, [(200, True, None)])  # after the resolution: a new incident, a new id
    assert again[2].id != got[0][2].id and again[2].episodes == 1


def test_judgments_further_apart_than_the_gap_restart_the_runs() -> None:
    table: Incidents[str] = Incidents("k", Hygiene.of(fire_after_s=60, max_gap_s=30))
    assert run(table, [(0, True, None), (20, True, None), (100, True, None), (120, True, None)]) == []
    (firing,) = run(table, [(140, True, None), (160, True, None)])
    assert firing[0] == 160 and firing[2].started_at == at(100)


def test_close_resolves_now_and_forget_drops_quietly() -> None:
    table: Incidents[str] = Incidents("k", Hygiene.of(quiet_s=600))
    (firing,) = run(table, [(0, True, None)])
    run(table, [(0, True, None)], key="gpu-b")
    closed = table.close("gpu-a")
    assert closed is firing[2] and table.close("gpu-a") is None and table.get("gpu-a") is None
    table.forget("gpu-b")
    assert list(table.open_items()) == [] and run(table, [(10, False, None)], key="gpu-b") == []


def test_keys_are_independent() -> None:
    table: Incidents[tuple[str, int]] = Incidents("k")
    a = table.judge(("gpu-a", 1), "gpu-a/1", at(0), fire=True)
    b = table.judge(("gpu-a", 2), "gpu-a/2", at(0), fire=True)
    assert a is not None and b is not None and a[1].id != b[1].id
    assert sorted(k for k, _ in table.open_items()) == [("gpu-a", 1), ("gpu-a", 2)]


def test_an_incident_taken_back_after_a_restart_resolves_once_under_its_own_id() -> None:
    hygiene = Hygiene.of(quiet_s=60)
    before: Incidents[str] = Incidents("k", hygiene)
    (firing,) = run(before, [(0, True, None), (30, True, None)])
    after: Incidents[str] = Incidents("k", hygiene)  # the restarted worker's table, from the record alone
    restored = after.restore("gpu-a", fired_record(firing[2], "k", at(30)))
    assert (restored.id, restored.subject, restored.started_at, restored.severity) == (firing[2].id, "gpu-a", at(0), "warning")
    assert run(after, [(40, True, None)]) == []  # still the same incident: no second page
    got = run(after, [(50, False, None), (90, False, None), (100, False, None), (110, False, None)])
    assert [(s, state) for s, state, _ in got] == [(100, "resolved")]  # quiet counted from the last bad (40 s)
    assert got[0][2].id == firing[2].id


def test_restore_keeps_the_subject_the_id_was_made_from() -> None:
    table: Incidents[str] = Incidents("k")
    first = table.judge("x", "job-1/node-1", at(0), fire=True)
    assert first is not None
    record = fired_record(first[1], "k", at(0))
    again: Incidents[str] = Incidents("k")
    assert again.restore("x", record).subject == "job-1/node-1"
    assert again.restore("x", record, subject="job-1/other").subject == "job-1/other"


def test_seconds_are_converted_and_counts_are_at_least_one() -> None:
    h = Hygiene.of(fire_after=0, fire_after_s=1.5, resolve_after=-2, resolve_after_s=0.25, quiet_s=60, max_gap_s=30)
    assert h == Hygiene(1, 1500, 1, 250, 60_000, 30_000)
    assert Hygiene.of().max_gap_ms is None
