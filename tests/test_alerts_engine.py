"""The alert router's logic on a fake clock: routing, grouping, dedup, repeat, resolve, inhibition,
silences, and state that survives a restart (through the real SQLite store)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcinsight.schemas.events import Anomaly, SchedulerEvent, Silence
from hpcinsight.sinks.alerts import config as alerts_config
from hpcinsight.sinks.alerts.engine import Engine
from hpcinsight.sinks.alerts.message import Renderer
from hpcinsight.sinks.alerts.model import Notification
from hpcinsight.sinks.alerts.store import StateStore

T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC
S = 1000  # ms


def make_config(route: dict | None = None, **extra) -> alerts_config.AlertsConfig:
    receivers = [{"name": n, "webhook_configs": [{"url": f"http://127.0.0.1:9/{n}"}]} for n in ("ops", "oncall", "llm", "alice")]
    data = {
        "route": route
        or {
            "receiver": "ops",
            "group_by": ["kind", "node"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
        },
        "receivers": receivers,
        **extra,
    }
    return alerts_config.parse(data, "test.yaml")


def anomaly(
    aid: str,
    state: str = "firing",
    kind: str = "gpu_health",
    node: str = "n1",
    gpu: int | None = 3,
    ts: int = T0,
    severity: str = "warning",
    subject_type: str = "gpu",
    job: str | None = None,
    evidence: dict | None = None,
    started_at: int | None = None,
) -> Anomaly:
    subject = f"GPU-{node}-{gpu}" if subject_type == "gpu" else node if subject_type == "node" else job or "?"
    ev = {"p95_pct": 2.0} if evidence is None else evidence
    if gpu is not None:
        ev = {**ev, "gpu_index": float(gpu)}
    return Anomaly(
        aid,
        kind,
        severity,
        state,
        subject_type,
        subject,
        ts,
        started_at or T0,
        T0,
        ts,
        f"{kind} on {subject} ({state})",
        ev,
        node=node,
        gpu_uuid=f"GPU-{node}-{gpu}" if subject_type == "gpu" else None,
        job_id=job,
    )


def ids(n: Notification) -> tuple[list[str], list[str]]:
    return [a.id for a in n.firing], [a.id for a in n.resolved]


def test_a_new_group_waits_group_wait_then_sends_its_alerts_together() -> None:
    e = Engine(make_config())
    e.observe_anomaly(anomaly("a1", gpu=1), T0)
    e.observe_anomaly(anomaly("a2", gpu=2), T0 + 5 * S)
    e.observe_anomaly(anomaly("b1", node="n2"), T0 + 5 * S)  # another node: another group
    assert e.tick(T0 + 29 * S) == []
    sent = e.tick(T0 + 30 * S)
    assert [ids(n) for n in sent] == [(["a1", "a2"], [])]
    assert sent[0].group_labels == {"kind": "gpu_health", "node": "n1"} and sent[0].receiver == "ops"
    assert [ids(n) for n in e.tick(T0 + 35 * S)] == [(["b1"], [])]


def test_the_same_anomaly_id_is_one_alert_and_replays_change_nothing() -> None:
    e = Engine(make_config())
    for _ in range(3):
        e.observe_anomaly(anomaly("a1"), T0)
    assert len(e.tick(T0 + 30 * S)) == 1
    assert e.observe_anomaly(anomaly("a1"), T0 + 40 * S) == "duplicate"  # a replay of the firing message
    e.observe_anomaly(anomaly("a1", "resolved", ts=T0 + 60 * S), T0 + 60 * S)
    e.observe_anomaly(anomaly("a1", "resolved", ts=T0 + 60 * S), T0 + 61 * S)
    sent = e.tick(T0 + 330 * S)
    assert [ids(n) for n in sent] == [([], ["a1"])]
    assert not e.groups and not e.alerts
    # the whole incident replayed later (an upstream stage re-read its input): remembered, not re-sent
    assert e.observe_anomaly(anomaly("a1"), T0 + 400 * S) == "duplicate"
    assert e.observe_anomaly(anomaly("a1", "resolved", ts=T0 + 60 * S), T0 + 400 * S) == "duplicate"
    assert e.tick(T0 + 1000 * S) == [] and not e.groups


def test_later_alerts_wait_for_the_group_interval() -> None:
    e = Engine(make_config())
    e.observe_anomaly(anomaly("a1", gpu=1), T0)
    assert len(e.tick(T0 + 30 * S)) == 1
    e.observe_anomaly(anomaly("a2", gpu=2), T0 + 40 * S)
    assert e.tick(T0 + 329 * S) == []
    sent = e.tick(T0 + 330 * S)
    assert [ids(n) for n in sent] == [(["a1", "a2"], [])]  # the group's whole firing set, the new one with it


def test_a_long_firing_group_repeats_every_repeat_interval_and_only_then() -> None:
    e = Engine(make_config())
    e.observe_anomaly(anomaly("a1"), T0)
    first = e.tick(T0 + 30 * S)
    quiet = [n for k in range(1, 48) for n in e.tick(T0 + 30 * S + k * 300 * S)]  # every group_interval for ~4 h
    assert quiet == []
    repeat = e.tick(T0 + 30 * S + 48 * 300 * S)  # 4 h after the first
    assert [ids(n) for n in repeat] == [(["a1"], [])]
    assert repeat[0].id != first[0].id and repeat[0].seq == 2


def test_the_resolution_is_sent_and_the_group_closes() -> None:
    e = Engine(make_config())
    e.observe_anomaly(anomaly("a1", gpu=1), T0)
    e.observe_anomaly(anomaly("a2", gpu=2), T0)
    e.tick(T0 + 30 * S)
    e.observe_anomaly(anomaly("a1", "resolved", gpu=1, ts=T0 + 100 * S), T0 + 100 * S)
    [n] = e.tick(T0 + 330 * S)
    assert ids(n) == (["a2"], ["a1"]) and n.status == "firing"
    assert n.resolved[0].ends_at == T0 + 100 * S and "resolved" in (n.resolved[0].resolved_message or "")
    e.observe_anomaly(anomaly("a2", "resolved", gpu=2, ts=T0 + 400 * S), T0 + 400 * S)
    [n] = e.tick(T0 + 630 * S)
    assert ids(n) == ([], ["a2"]) and n.status == "resolved"
    assert not e.groups and not e.sent and not e.alerts


def test_an_alert_that_fires_and_resolves_within_group_wait_is_never_sent() -> None:
    e = Engine(make_config())
    e.observe_anomaly(anomaly("a1"), T0)
    e.observe_anomaly(anomaly("a1", "resolved", ts=T0 + 10 * S), T0 + 10 * S)
    assert e.tick(T0 + 30 * S) == [] and not e.groups


def test_an_incident_read_with_its_resolution_is_told_once_as_resolved_when_it_lasted_group_wait() -> None:
    # the router catching up (after a restart, or a burst from upstream) reads both messages at once:
    # what is told depends on the incident's own timestamps, not on how late it was read
    e = Engine(make_config())
    e.observe_anomaly(anomaly("long"), T0 + 500 * S)
    e.observe_anomaly(anomaly("long", "resolved", ts=T0 + 45 * S), T0 + 500 * S)  # fired 45 s >= group_wait 30 s
    e.observe_anomaly(anomaly("flap", gpu=4), T0 + 500 * S)
    e.observe_anomaly(anomaly("flap", "resolved", gpu=4, ts=T0 + 20 * S), T0 + 500 * S)  # 20 s: a flap
    [n] = e.tick(T0 + 530 * S)
    assert ids(n) == ([], ["long"]) and n.status == "resolved"
    assert (n.resolved[0].starts_at, n.resolved[0].ends_at) == (T0, T0 + 45 * S)
    assert e.tick(T0 + 5000 * S) == [] and not e.groups and not e.alerts


def test_an_incident_read_late_is_not_told_where_a_live_router_would_have_muted_it() -> None:
    e = Engine(make_config({"receiver": "ops", "group_by": ["node"], "group_wait": "30s", "group_interval": "1m"}))
    # its node's fault fired over the same span: inhibited, even though both have resolved since
    e.observe_anomaly(anomaly("node-down", kind="slow_interconnect", subject_type="node", gpu=None), T0 + 500 * S)
    e.observe_anomaly(anomaly("gpu-n1", gpu=1), T0 + 500 * S)
    e.observe_anomaly(anomaly("gpu-n1", "resolved", gpu=1, ts=T0 + 60 * S), T0 + 500 * S)
    e.observe_anomaly(
        anomaly("node-down", "resolved", kind="slow_interconnect", subject_type="node", gpu=None, ts=T0 + 90 * S), T0 + 500 * S
    )
    assert [ids(n) for n in e.tick(T0 + 530 * S)] == [([], ["node-down"])]
    # silenced at the flush that saw it firing: its resolution is not told either
    e.observe_silence(silence("s1", ["node=n2"], T0, T0 + 600 * S))
    e.observe_anomaly(anomaly("quiet", node="n2"), T0 + 540 * S)
    assert e.tick(T0 + 570 * S) == []
    e.observe_anomaly(anomaly("quiet", "resolved", node="n2", ts=T0 + 610 * S), T0 + 610 * S)
    assert e.tick(T0 + 700 * S) == []
    # a receiver that does not take resolutions hears nothing of an incident it never heard fire
    e = Engine(
        alerts_config.parse(
            {
                "route": {"receiver": "ops", "group_wait": "30s"},
                "receivers": [{"name": "ops", "webhook_configs": [{"url": "http://127.0.0.1:9/ops", "send_resolved": False}]}],
            },
            "test.yaml",
        )
    )
    e.observe_anomaly(anomaly("long"), T0 + 500 * S)
    e.observe_anomaly(anomaly("long", "resolved", ts=T0 + 45 * S), T0 + 500 * S)
    assert e.tick(T0 + 530 * S) == []


def test_routing_by_kind_severity_team_user_job_and_node_with_continue_and_default() -> None:
    route = {
        "receiver": "ops",
        "group_by": ["..."],
        "group_wait": "0s",
        "routes": [
            {"matchers": ["severity=critical"], "receiver": "oncall", "continue": True},
            {
                "matchers": ["team=llm", 'kind=~"job_.*|gpu_underused"'],
                "receiver": "llm",
                "routes": [{"matchers": ["user=alice"], "receiver": "alice"}],
            },
            {"matchers": ['node=~"n9[0-9]"', 'job!=""'], "receiver": "oncall"},
        ],
    }
    e = Engine(make_config(route))
    e.observe_scheduler(SchedulerEvent(T0, "sim", "j1", "scheduled", user="alice", team="llm"))
    e.observe_scheduler(SchedulerEvent(T0, "sim", "j2", "scheduled", user="bob", team="llm"))
    cases = {
        # continue goes on to the siblings; the parent (default) takes only what no child took
        "crit": (anomaly("crit", severity="critical", kind="gpu_xid", job="j1"), {"oncall"}),
        "crit-llm": (anomaly("crit-llm", severity="critical", kind="gpu_underused", job="j2"), {"oncall", "llm"}),
        "alice": (anomaly("alice", kind="gpu_underused", job="j1"), {"alice"}),
        "bob": (anomaly("bob", kind="job_underused", subject_type="job", gpu=None, job="j2"), {"llm"}),
        "n95": (anomaly("n95", node="n95", job="j3"), {"oncall"}),
        "n95-nojob": (anomaly("n95-nojob", node="n95"), {"ops"}),
    }
    for a, _ in cases.values():
        e.observe_anomaly(a, T0)
    got: dict[str, set[str]] = {}
    for n in e.tick(T0):
        for a in n.firing:
            got.setdefault(a.id, set()).add(n.receiver)
    assert got == {k: v for k, (_, v) in cases.items()}


def test_alerts_carry_the_job_owner_from_the_scheduler_and_what_the_anomaly_says() -> None:
    e = Engine(make_config())
    e.observe_scheduler(SchedulerEvent(T0, "sim", "j1", "submitted", user="alice", team="llm"))
    e.observe_anomaly(anomaly("x", kind="gpu_xid", job="j1", evidence={"xid": 79.0, "drain": 1.0}), T0)
    labels = e.alerts["x"].labels
    assert labels == {
        "alertname": "gpu_xid",
        "kind": "gpu_xid",
        "severity": "warning",
        "subject_type": "gpu",
        "subject": "GPU-n1-3",
        "node": "n1",
        "gpu_uuid": "GPU-n1-3",
        "gpu": "3",
        "job": "j1",
        "user": "alice",
        "team": "llm",
        "drain": "true",
    }


def test_a_node_fault_mutes_that_nodes_gpu_alerts_and_only_while_it_fires() -> None:
    e = Engine(make_config({"receiver": "ops", "group_by": ["node"], "group_wait": "30s", "group_interval": "1m"}))
    e.observe_anomaly(anomaly("node-down", kind="slow_interconnect", subject_type="node", gpu=None, severity="critical"), T0)
    e.observe_anomaly(anomaly("gpu-n1", gpu=1), T0)
    e.observe_anomaly(anomaly("gpu-n2", node="n2", gpu=1), T0)
    sent = {n.group_labels["node"]: ids(n) for n in e.tick(T0 + 30 * S)}
    assert sent == {"n1": (["node-down"], []), "n2": (["gpu-n2"], [])}
    e.observe_anomaly(
        anomaly("node-down", "resolved", kind="slow_interconnect", subject_type="node", gpu=None, ts=T0 + 60 * S), T0 + 60 * S
    )
    [n] = e.tick(T0 + 90 * S)
    assert ids(n) == (["gpu-n1"], ["node-down"])  # the GPU alert shows once its node's fault is gone


def test_a_drain_xid_mutes_the_other_gpus_of_its_node_but_two_drain_xids_do_not_mute_each_other() -> None:
    e = Engine(make_config({"receiver": "ops", "group_by": ["node"], "group_wait": "0s"}))
    drain = {"xid": 79.0, "drain": 1.0}
    e.observe_anomaly(anomaly("xid-g0", kind="gpu_xid", gpu=0, evidence=drain, severity="critical"), T0)
    e.observe_anomaly(anomaly("xid-g1", kind="gpu_xid", gpu=1, evidence=drain, severity="critical"), T0)
    e.observe_anomaly(anomaly("hot-g2", kind="gpu_health", gpu=2), T0)
    e.observe_anomaly(anomaly("hot-n2", kind="gpu_health", node="n2", gpu=2), T0)
    sent = {n.group_labels["node"]: ids(n)[0] for n in e.tick(T0)}
    assert sent == {"n1": ["xid-g0", "xid-g1"], "n2": ["hot-n2"]}


def test_inhibit_rules_from_the_config_replace_the_default() -> None:
    e = Engine(make_config({"receiver": "ops", "group_by": ["node"], "group_wait": "0s"}, inhibit_rules=[]))
    e.observe_anomaly(anomaly("node-down", subject_type="node", gpu=None), T0)
    e.observe_anomaly(anomaly("gpu-n1"), T0)
    assert [sorted(ids(n)[0]) for n in e.tick(T0)] == [["gpu-n1", "node-down"]]


def silence(sid: str, matchers: list[str], start: int, end: int, ts: int = T0) -> Silence:
    return Silence(sid, ts, matchers, start, end, "alice", "maintenance")


def test_a_silence_mutes_matching_alerts_until_it_expires() -> None:
    e = Engine(make_config({"receiver": "ops", "group_by": ["kind", "node"], "group_wait": "30s", "group_interval": "1m"}))
    e.observe_silence(silence("s1", ["kind=gpu_xid", 'node=~"n1|n3"'], T0, T0 + 120 * S))
    e.observe_anomaly(anomaly("xid-n1", kind="gpu_xid"), T0)
    e.observe_anomaly(anomaly("xid-n2", kind="gpu_xid", node="n2"), T0)
    e.observe_anomaly(anomaly("hot-n1", kind="gpu_health"), T0)
    sent = sorted(a for n in e.tick(T0 + 30 * S) for a in ids(n)[0])
    assert sent == ["hot-n1", "xid-n2"]
    assert e.tick(T0 + 90 * S) == []  # still silenced
    [n] = e.tick(T0 + 150 * S)  # the silence ended at 120 s
    assert ids(n) == (["xid-n1"], [])


def test_expiring_a_silence_early_unmutes_and_an_older_version_cannot_revive_it() -> None:
    e = Engine(make_config({"receiver": "ops", "group_wait": "0s", "group_interval": "1m"}))
    e.observe_silence(silence("s1", ["node=n1"], T0, T0 + 3600 * S))
    e.observe_anomaly(anomaly("a1"), T0)
    assert e.tick(T0) == []
    e.observe_silence(silence("s1", ["node=n1"], T0, T0 + 30 * S, ts=T0 + 30 * S))  # `silence expire`
    e.observe_silence(silence("s1", ["node=n1"], T0, T0 + 3600 * S))  # an older version, read late
    assert [ids(n) for n in e.tick(T0 + 60 * S)] == [(["a1"], [])]


def test_a_muted_alert_still_resolves_for_those_who_heard_it_fire() -> None:
    e = Engine(make_config({"receiver": "ops", "group_wait": "0s", "group_interval": "1m"}))
    e.observe_anomaly(anomaly("a1"), T0)
    assert len(e.tick(T0)) == 1
    e.observe_silence(silence("s1", ["kind=gpu_health"], T0 + 10 * S, T0 + 3600 * S))
    e.observe_anomaly(anomaly("a1", "resolved", ts=T0 + 20 * S), T0 + 20 * S)
    assert [ids(n) for n in e.tick(T0 + 60 * S)] == [([], ["a1"])]


def test_a_group_silenced_after_it_was_told_does_not_repeat_and_comes_back_when_unsilenced() -> None:
    e = Engine(make_config({"receiver": "ops", "group_wait": "0s", "group_interval": "1m", "repeat_interval": "10m"}))
    e.observe_anomaly(anomaly("a1"), T0)
    assert len(e.tick(T0)) == 1
    e.observe_silence(silence("s1", ["node=n1"], T0 + 10 * S, T0 + 3600 * S))
    assert [n for k in range(1, 60) for n in e.tick(T0 + k * 60 * S)] == []  # no repeat while silenced
    assert [ids(n) for n in e.tick(T0 + 3660 * S)] == [(["a1"], [])]


def test_notification_ids_are_stable_and_differ_for_each_notification() -> None:
    def run() -> list[str]:
        e = Engine(make_config())
        e.observe_anomaly(anomaly("a1"), T0)
        out = e.tick(T0 + 30 * S)
        e.observe_anomaly(anomaly("a1", "resolved", ts=T0 + 40 * S), T0 + 40 * S)
        return [n.id for n in out + e.tick(T0 + 330 * S)]

    first = run()
    assert first == run() and len(set(first)) == 2


def test_the_message_says_what_where_since_when_evidence_and_how_to_dig_in() -> None:
    e = Engine(make_config())
    e.observe_scheduler(SchedulerEvent(T0, "sim", "j1", "scheduled", user="alice", team="llm"))
    e.observe_anomaly(anomaly("a1", kind="gpu_underused", job="j1", evidence={"p95_pct": 1.5, "threshold_pct": 10.0}), T0)
    [n] = e.tick(T0 + 90 * S)
    r = Renderer("https://grafana.example.com/d/x?var-job={job}&var-node={node}&from={from_ms}")
    text = r.title(n) + "\n" + r.body(n)
    for part in (
        "[FIRING:1]",
        "gpu_underused",
        "GPU 3 (GPU-n1-3)",
        "node n1",
        "job j1 (user alice, team llm)",
        "gpu_underused on GPU-n1-3 (firing)",
        "since 2026-01-01 00:00:00 UTC (1 min 30 s ago)",
        "p95_pct=1.5",
        "threshold_pct=10",
        "`hpcinsight diagnose j1`",
        f"https://grafana.example.com/d/x?var-job=j1&var-node=n1&from={T0 - 900 * S}",
    ):
        assert part in text, (part, text)
    assert "dashboard" not in Renderer().body(n)  # no link unless configured


def test_state_survives_a_restart_through_the_store(tmp_path: Path) -> None:
    """What was sent, open groups and their timers, tombstones and silences come back after a restart."""
    config = make_config({"receiver": "ops", "group_by": ["node"], "group_wait": "30s", "group_interval": "1m"})

    def commit(store: StateStore, e: Engine) -> None:
        store.commit(e.take_changes(), {("t", 0): 1}, [])

    store = StateStore(tmp_path)
    e = Engine(config)
    e.observe_anomaly(anomaly("a1", gpu=1), T0)
    e.observe_anomaly(anomaly("gone"), T0)
    e.observe_anomaly(anomaly("gone", "resolved", ts=T0 + S), T0 + S)
    e.observe_silence(silence("s1", ["gpu=2"], T0, T0 + 3600 * S))
    assert len(e.tick(T0 + 30 * S)) == 1
    e.observe_anomaly(anomaly("a2", gpu=2), T0 + 40 * S)  # silenced
    e.observe_anomaly(anomaly("a3", gpu=3), T0 + 45 * S)  # due at the next interval
    commit(store, e)
    store.close()

    store = StateStore(tmp_path)
    e2 = Engine(config)
    e2.load(**store.load(), now_ms=T0 + 50 * S)
    assert e2.next_due_ms() == T0 + 90 * S
    assert e2.observe_anomaly(anomaly("gone"), T0 + 50 * S) == "duplicate"
    [n] = e2.tick(T0 + 90 * S)
    assert ids(n) == (["a1", "a3"], [])  # a1 not news, a3 is; a2 silenced
    e2.observe_anomaly(anomaly("a1", "resolved", gpu=1, ts=T0 + 100 * S), T0 + 100 * S)
    commit(store, e2)
    store.close()

    store = StateStore(tmp_path)
    e3 = Engine(config)
    e3.load(**store.load(), now_ms=T0 + 120 * S)
    [n] = e3.tick(T0 + 150 * S)
    assert ids(n) == (["a3"], ["a1"])
    store.close()


def test_a_second_router_on_the_same_state_is_refused(tmp_path: Path) -> None:
    from hpcinsight.sinks.alerts.store import StateError

    store = StateStore(tmp_path)
    with pytest.raises(StateError, match="another alert router"):
        StateStore(tmp_path)
    store.bind("cluster-a", "p.")
    with pytest.raises(StateError, match="belongs to Kafka cluster 'cluster-a'"):
        store.bind("cluster-b", "p.")
    store.bind("cluster-b", "p.", reset=True)
    store.close()


def test_groups_of_a_route_removed_from_the_config_are_routed_afresh(tmp_path: Path) -> None:
    before = make_config({"receiver": "ops", "group_wait": "0s", "routes": [{"matchers": ["node=n1"], "receiver": "oncall"}]})
    store = StateStore(tmp_path)
    e = Engine(before)
    e.observe_anomaly(anomaly("a1"), T0)
    assert [n.receiver for n in e.tick(T0)] == ["oncall"]
    store.commit(e.take_changes(), {}, [])
    after = make_config({"receiver": "ops", "group_wait": "0s"})
    e2 = Engine(after)
    e2.load(**store.load(), now_ms=T0 + S)
    assert [(n.receiver, ids(n)) for n in e2.tick(T0 + S)] == [("ops", (["a1"], []))]
    store.close()
