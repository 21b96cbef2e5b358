"""The alert router as a process on the real broker: anomalies produced to the topic reach a local
HTTP receiver grouped, resolved, silenced and deduplicated; a receiver down then up, and a router
SIGKILLed mid-send and restarted, still give each notification exactly once; a malformed anomaly is
dead-lettered and the router goes on."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition

from hpcinsight.schemas.catalog import ANOMALIES, DEAD_LETTERS, SCHEDULER_EVENTS
from hpcinsight.schemas.events import Anomaly, SchedulerEvent
from tests.alerts_receiver import LocalReceiver
from tests.conftest import Pipeline, stop

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

T0 = int(time.time() * 1000) - 600_000


@pytest.fixture
def receiver():
    r = LocalReceiver()
    yield r
    r.stop()


def write_config(path: Path, url: str, **route: object) -> str:
    doc = {
        "global": {"retry": {"initial_backoff": "200ms", "max_backoff": "1s"}},
        "route": {
            "receiver": "hook",
            "group_by": ["kind", "node"],
            "group_wait": "1s",
            "group_interval": "2s",
            "repeat_interval": "1h",
            **route,
        },
        "receivers": [{"name": "hook", "webhook_configs": [{"url": url}]}],
    }
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def anomaly(
    aid: str, state: str = "firing", node: str = "n1", gpu: int = 0, kind: str = "gpu_health", job: str | None = "job-7"
) -> Anomaly:
    ts = T0 if state == "firing" else T0 + 60_000
    return Anomaly(
        aid,
        kind,
        "critical",
        state,
        "gpu",
        f"GPU-{node}-{gpu}",
        ts,
        T0,
        T0,
        ts,
        f"GPU {gpu} of {node} throttles ({state})",
        {"throttled_share": 0.9, "gpu_index": float(gpu)},
        node=node,
        gpu_uuid=f"GPU-{node}-{gpu}",
        job_id=job,
    )


def produce(pipeline: Pipeline, *anomalies: Anomaly, raw: list[bytes] = ()) -> None:
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "enable.idempotence": True})
    for a in anomalies:
        producer.produce(pipeline.topic(ANOMALIES.name), key=a.subject.encode(), value=ANOMALIES.codec.encode([a]))
    for value in raw:
        producer.produce(pipeline.topic(ANOMALIES.name), key=b"x", value=value)
    assert producer.flush(30) == 0


def start_router(pipeline: Pipeline, config: str, name: str = "alerts", crash: str | None = None) -> subprocess.Popen[bytes]:
    return pipeline.start(
        name, "-v", "alerts", "--config", config, extra_env={"HPCINSIGHT_ALERTS_CRASH": crash} if crash else None
    )


def settle(receiver: LocalReceiver, expected: int, quiet_s: float = 5.0) -> list[dict]:
    """The payloads once ``expected`` have come and nothing more came for ``quiet_s``."""
    receiver.wait_for(expected, timeout=90)
    time.sleep(quiet_s)
    return receiver.bodies()


def alert_ids(body: dict, status: str) -> list[str]:
    return sorted(a["fingerprint"] for a in body["alerts"] if a["status"] == status)


def test_grouped_alerts_their_resolution_and_silences_from_the_cli(
    pipeline: Pipeline, receiver: LocalReceiver, tmp_path: Path
) -> None:
    producer = Producer({"bootstrap.servers": pipeline.bootstrap})
    producer.produce(
        pipeline.topic(SCHEDULER_EVENTS.name),
        key=b"job-7",
        value=SCHEDULER_EVENTS.codec.encode([SchedulerEvent(T0, "sim", "job-7", "scheduled", user="alice", team="llm")]),
    )
    assert producer.flush(30) == 0
    added = pipeline.run("silence", "add", "--match", "node=n3", "--duration", "1h", "--comment", "rack work", "--author", "ops")
    silence_id = added.stdout.split()[1].rstrip(":")
    router = start_router(pipeline, write_config(tmp_path / "alerts.yaml", receiver.url()))
    try:
        # the same anomaly twice (an upstream replay) is one alert
        produce(
            pipeline,
            anomaly("a0", gpu=0),
            anomaly("a1", gpu=1),
            anomaly("a1", gpu=1),
            anomaly("b0", node="n2"),
            anomaly("s0", node="n3"),
        )
        bodies = settle(receiver, 2)
        assert len(bodies) == 2, bodies
        by_node = {b["groupLabels"]["node"]: b for b in bodies}
        assert alert_ids(by_node["n1"], "firing") == ["a0", "a1"] and alert_ids(by_node["n2"], "firing") == ["b0"]
        assert by_node["n1"]["commonLabels"]["team"] == "llm" and by_node["n1"]["commonLabels"]["user"] == "alice"

        listed = json.loads(pipeline.run("silence", "list", "--format", "json").stdout)
        assert [(s["id"], s["state"], s["matchers"]) for s in listed] == [(silence_id, "active", ['node="n3"'])]
        pipeline.run("silence", "expire", silence_id)
        assert json.loads(pipeline.run("silence", "list", "--format", "json").stdout) == []
        bodies = settle(receiver, 3)
        assert alert_ids(bodies[2], "firing") == ["s0"]  # told once its silence ended

        produce(
            pipeline, anomaly("a0", "resolved", gpu=0), anomaly("a1", "resolved", gpu=1), anomaly("b0", "resolved", node="n2")
        )
        bodies = settle(receiver, 5)
        assert len(bodies) == 5, bodies
        resolved = {b["groupLabels"]["node"]: b for b in bodies[3:]}
        assert resolved["n1"]["status"] == "resolved" and alert_ids(resolved["n1"], "resolved") == ["a0", "a1"]
        assert alert_ids(resolved["n2"], "resolved") == ["b0"]
        assert len({b["notificationId"] for b in bodies}) == 5
    finally:
        assert stop(router) == 0, pipeline.log("alerts")


def test_a_receiver_down_then_up_gets_each_notification_exactly_once(
    pipeline: Pipeline, receiver: LocalReceiver, tmp_path: Path
) -> None:
    receiver.status = 503
    router = start_router(pipeline, write_config(tmp_path / "alerts.yaml", receiver.url()))
    try:
        produce(pipeline, anomaly("a0"), anomaly("b0", node="n2"))
        pipeline.poll(lambda: receiver.refused >= 4, router)  # both groups' firing messages are being retried
        produce(pipeline, anomaly("a0", "resolved"), anomaly("b0", "resolved", node="n2"))
        time.sleep(4)  # the resolved messages queue behind them
        receiver.status = 200
        bodies = settle(receiver, 4)
    finally:
        assert stop(router) == 0, pipeline.log("alerts")
    assert len(bodies) == 4 and len({b["notificationId"] for b in bodies}) == 4
    for node, aid in (("n1", "a0"), ("n2", "b0")):
        mine = [b for b in bodies if b["groupLabels"]["node"] == node]
        assert [b["status"] for b in mine] == ["firing", "resolved"]  # in order, each once
        assert alert_ids(mine[0], "firing") == [aid] and alert_ids(mine[1], "resolved") == [aid]


def test_a_router_killed_after_deciding_and_before_sending_sends_exactly_once_after_restart(
    pipeline: Pipeline, receiver: LocalReceiver, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "alerts.yaml", receiver.url())
    produce(pipeline, anomaly("a0"), anomaly("b0", node="n2"))
    crashed = start_router(pipeline, config, "alerts-1", crash="after_commit")
    assert crashed.wait(60) == -signal.SIGKILL, pipeline.log("alerts-1")
    assert receiver.requests == 0
    router = start_router(pipeline, config, "alerts-2")
    try:
        bodies = settle(receiver, 2)
        # the state was ahead of the group (killed between the two) and no new anomaly comes to carry
        # a commit: the group must learn it anyway, or the router's lag never clears
        pipeline.wait_caught_up("alert-router", [ANOMALIES.name], timeout=60)
    finally:
        assert stop(router) == 0, pipeline.log("alerts-2")
    assert sorted(b["groupLabels"]["node"] for b in bodies) == ["n1", "n2"]  # each exactly once, no duplicate


def test_a_router_killed_after_a_post_and_before_recording_it_resends_with_the_same_idempotency_key(
    pipeline: Pipeline, receiver: LocalReceiver, tmp_path: Path
) -> None:
    """The one window left (docs/alerts.md): the receiver has it, the router had not yet written so."""
    config = write_config(tmp_path / "alerts.yaml", receiver.url())
    produce(pipeline, anomaly("a0"))
    crashed = start_router(pipeline, config, "alerts-1", crash="after_send")
    assert crashed.wait(60) == -signal.SIGKILL, pipeline.log("alerts-1")
    router = start_router(pipeline, config, "alerts-2")
    try:
        received = receiver.wait_for(2, timeout=60)
        time.sleep(4)
    finally:
        assert stop(router) == 0, pipeline.log("alerts-2")
    assert len(receiver.received) == 2
    keys = [r.headers["Idempotency-Key"] for r in received]
    assert keys[0] == keys[1] and received[0].body == received[1].body  # a receiver drops the copy by its key


def test_a_router_sigkilled_at_random_mid_send_and_restarted_delivers_every_notification_once_by_key(
    pipeline: Pipeline, receiver: LocalReceiver, tmp_path: Path
) -> None:
    receiver.delay_s = 0.3  # a slow receiver: kills land while a POST is under way
    config = write_config(tmp_path / "alerts.yaml", receiver.url(), group_by=["node"])
    nodes = [f"n{k:02d}" for k in range(24)]
    produce(pipeline, *(anomaly(f"a-{n}", node=n) for n in nodes))
    rng = random.Random(11)
    for round_ in range(3):
        router = start_router(pipeline, config, f"alerts-{round_}")
        pipeline.poll(lambda: receiver.requests > 2 + 6 * round_, router)  # noqa: B023 - polled at once, within this round
        time.sleep(rng.uniform(0.0, 0.3))
        router.send_signal(signal.SIGKILL)
        router.wait(30)
    router = start_router(pipeline, config, "alerts-final")
    try:
        settle(receiver, len(nodes))
    finally:
        assert stop(router) == 0, pipeline.log("alerts-final")
    keys = Counter(r.headers["Idempotency-Key"] for r in receiver.received)
    groups = Counter(r.body["groupLabels"]["node"] for r in receiver.received)
    assert len(keys) == len(nodes) and set(groups) == set(nodes)  # every notification, once by its key
    copies = sum(keys.values()) - len(keys)
    assert copies <= 3 * 4, keys  # at most those under way at each kill (4 senders) came twice, with the same key


def test_a_malformed_anomaly_is_dead_lettered_and_the_router_goes_on(
    pipeline: Pipeline, receiver: LocalReceiver, tmp_path: Path
) -> None:
    router = start_router(pipeline, write_config(tmp_path / "alerts.yaml", receiver.url()))
    try:
        bad = [
            b"{not json",
            json.dumps({"schema": "anomaly", "v": 99, "records": []}).encode(),
            json.dumps({"schema": "anomaly", "v": 1, "records": [{"id": "x"}]}).encode(),
        ]
        produce(pipeline, anomaly("a0"), raw=bad)
        produce(pipeline, anomaly("b0", node="n2"))
        bodies = settle(receiver, 2)
        assert sorted(b["groupLabels"]["node"] for b in bodies) == ["n1", "n2"]
        assert router.poll() is None
    finally:
        assert stop(router) == 0, pipeline.log("alerts")
    consumer = Consumer({"bootstrap.servers": pipeline.bootstrap, "group.id": "t", "enable.auto.commit": False})
    consumer.assign([TopicPartition(pipeline.topic(DEAD_LETTERS.name), 0, 0)])
    letters = []
    deadline = time.monotonic() + 30
    while len(letters) < 3 and time.monotonic() < deadline:
        for msg in consumer.consume(10, timeout=1):
            if not msg.error():
                letters += DEAD_LETTERS.codec.decode(msg.value())
    consumer.close()
    assert sorted(d.raw for d in letters) == sorted(bad)
    assert {d.stage for d in letters} == {"alerts"} and {d.source_topic for d in letters} == {pipeline.topic(ANOMALIES.name)}
    reasons = " | ".join(d.reason for d in letters)
    assert "malformed JSON" in reasons and "unknown schema version 99" in reasons and "invalid anomaly" in reasons


def test_a_new_router_tells_what_still_fires_and_a_restarted_one_what_it_missed(
    pipeline: Pipeline, receiver: LocalReceiver, tmp_path: Path
) -> None:
    """Issue 14, item 6: a router started on a topic with history tells no incident that was already
    over (a new deployment does not page about last week), and tells those still firing; a router
    restarted on its state tells, once, an incident that fired and resolved while it was down."""
    config = write_config(tmp_path / "alerts.yaml", receiver.url())
    produce(pipeline, anomaly("old", node="n1"), anomaly("live", node="n2"), anomaly("old", "resolved", node="n1"))
    router = start_router(pipeline, config, "alerts-1")
    try:
        bodies = settle(receiver, 1)
        assert len(bodies) == 1, bodies
        assert bodies[0]["groupLabels"]["node"] == "n2" and alert_ids(bodies[0], "firing") == ["live"]
    finally:
        assert stop(router) == 0, pipeline.log("alerts-1")
    assert "1 over before this router started (not told)" in pipeline.log("alerts-1")

    produce(pipeline, anomaly("missed", node="n3"), anomaly("missed", "resolved", node="n3"))  # while it was down
    router = start_router(pipeline, config, "alerts-2")
    try:
        bodies = settle(receiver, 2)
    finally:
        assert stop(router) == 0, pipeline.log("alerts-2")
    assert len(bodies) == 2, bodies
    assert bodies[1]["groupLabels"]["node"] == "n3" and alert_ids(bodies[1], "resolved") == ["missed"]


def test_sighup_reloads_the_configuration_and_a_bad_file_is_refused(pipeline: Pipeline, tmp_path: Path) -> None:
    """Issue 16, item 5: the router reads its file again on SIGHUP; a bad file is refused with the
    reason, the configuration in force is kept, and nothing decided is lost in the swap."""
    first, second = LocalReceiver(), LocalReceiver()
    config = tmp_path / "alerts.yaml"
    write_config(config, first.url())
    router = start_router(pipeline, str(config))
    try:
        produce(pipeline, anomaly("a0", node="n1"))
        assert len(settle(first, 1, quiet_s=1)) == 1

        config.write_text("route: {receiver: nobody}\nreceivers: [")  # broken YAML
        router.send_signal(signal.SIGHUP)
        pipeline.poll(lambda: "refused on reload" in pipeline.log("alerts"), router)
        produce(pipeline, anomaly("b0", node="n2"))
        assert len(settle(first, 2, quiet_s=1)) == 2  # the old configuration still routes

        write_config(config, second.url())
        router.send_signal(signal.SIGHUP)
        pipeline.poll(lambda: "configuration reloaded" in pipeline.log("alerts"), router)
        produce(pipeline, anomaly("c0", node="n3"), anomaly("a0", "resolved", node="n1"))
        bodies = settle(second, 2, quiet_s=2)
        assert sorted(b["groupLabels"]["node"] for b in bodies) == ["n1", "n3"]  # the resolution follows the alert
        assert len(first.bodies()) == 2
    finally:
        assert stop(router) == 0, pipeline.log("alerts")
        first.stop()
        second.stop()
