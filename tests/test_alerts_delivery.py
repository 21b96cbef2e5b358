"""Delivery over real HTTP to a local receiver: the Alertmanager webhook format, retries with backoff
until a receiver is back (each notification arriving once), refusals dead-lettered, a slow receiver
not delaying another, rate limits, apprise chat delivery, and no secret in any log or error."""

from __future__ import annotations

import logging
import random
import threading
import time
from pathlib import Path

import pytest

from hpcinsight.schemas.events import Anomaly
from hpcinsight.sinks.alerts import config as alerts_config
from hpcinsight.sinks.alerts import redact
from hpcinsight.sinks.alerts.config import RateLimit, RetryConfig
from hpcinsight.sinks.alerts.delivery import Dispatcher, TokenBucket, backoff_s
from hpcinsight.sinks.alerts.engine import Engine
from hpcinsight.sinks.alerts.message import Renderer
from hpcinsight.sinks.alerts.model import Notification
from hpcinsight.sinks.alerts.router import build_integrations
from hpcinsight.sinks.alerts.store import OutboxRow, StateStore, read_outbox
from tests.alerts_receiver import LocalReceiver

T0 = int(time.time() * 1000) - 120_000
FAST_RETRY = {"initial_backoff": "100ms", "max_backoff": "400ms", "give_up_after": "1h"}


@pytest.fixture
def receiver():
    r = LocalReceiver()
    yield r
    r.stop()


def notifications(count: int, group_by: str = "...") -> list[Notification]:
    """``count`` real notifications from the engine: one GPU fault each, grouped by every label."""
    config = alerts_config.parse(
        {"route": {"receiver": "r", "group_by": [group_by], "group_wait": "0s"}, "receivers": [{"name": "r"}]}
    )
    e = Engine(config)
    for k in range(count):
        e.observe_anomaly(
            Anomaly(
                f"a{k}",
                "gpu_health",
                "critical",
                "firing",
                "gpu",
                f"GPU-{k}",
                T0,
                T0 - 60_000,
                T0 - 60_000,
                T0,
                f"GPU {k} of n1 throttles for heat",
                {"throttled_share": 0.8, "gpu_index": float(k)},
                node="n1",
                gpu_uuid=f"GPU-{k}",
                job_id="j1",
            ),
            T0,
        )
    return e.tick(T0)


class Setup:
    """A state store, a config with receivers, and a dispatcher sending its outbox."""

    def __init__(self, tmp_path: Path, receivers: list[dict], retry: dict | None = None) -> None:
        doc = {"global": {"retry": retry or FAST_RETRY}, "route": {"receiver": receivers[0]["name"]}, "receivers": receivers}
        self.config = alerts_config.parse(doc, "test.yaml")
        self.store = StateStore(tmp_path)
        self.failed: list[tuple[OutboxRow, str]] = []
        built = build_integrations(self.config, Renderer())
        self.integrations = {i[0].id: (i, limit) for items in built.values() for i, limit in items}
        self.dispatcher = Dispatcher(
            self.integrations, self.store.path, self.config.retry, lambda row, reason: self.failed.append((row, reason))
        )

    def send(self, ns: list[Notification], integration: str) -> list[OutboxRow]:
        rows = self.store.commit(Engine(self.config).take_changes(), {}, [(n, integration, "t") for n in ns])
        assert self.dispatcher.submit(rows) == []
        return rows

    def close(self) -> None:
        self.dispatcher.close(5)
        self.store.close()

    def outbox(self) -> list[dict]:
        return read_outbox(self.store.dir, ("pending", "sent", "failed", "skipped"))


def webhook(name: str, url: str, **extra) -> dict:
    return {"name": name, "webhook_configs": [{"url": url, **extra}]}


def test_the_webhook_speaks_alertmanagers_format_with_an_idempotency_key(tmp_path: Path, receiver: LocalReceiver) -> None:
    s = Setup(tmp_path, [webhook("oncall", receiver.url("/am"))])
    [n] = notifications(1)
    s.send([n], "oncall/webhook[0]")
    [got] = receiver.wait_for(1)
    s.close()
    assert got.path == "/am" and got.headers["Idempotency-Key"] == n.id
    body = got.body
    assert {k: body[k] for k in ("version", "status", "receiver", "truncatedAlerts", "notificationId")} == {
        "version": "4",
        "status": "firing",
        "receiver": "r",
        "truncatedAlerts": 0,
        "notificationId": n.id,
    }
    assert body["groupKey"] == n.group_key and body["groupLabels"] == n.group_labels
    [alert] = body["alerts"]
    assert alert["status"] == "firing" and alert["fingerprint"] == "a0" and alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert alert["startsAt"].endswith("Z") and alert["startsAt"].startswith(time.strftime("%Y-%m-%dT", time.gmtime(T0 / 1000)))
    assert alert["labels"] == {
        "alertname": "gpu_health",
        "kind": "gpu_health",
        "severity": "critical",
        "subject_type": "gpu",
        "subject": "GPU-0",
        "node": "n1",
        "gpu_uuid": "GPU-0",
        "gpu": "0",
        "job": "j1",
    }
    assert alert["annotations"]["summary"] == "GPU 0 of n1 throttles for heat"
    assert alert["annotations"]["diagnose"] == "hpcinsight diagnose j1"
    assert body["commonLabels"]["node"] == "n1"


def test_max_alerts_truncates_and_counts_the_rest(tmp_path: Path, receiver: LocalReceiver) -> None:
    s = Setup(tmp_path, [webhook("r", receiver.url(), max_alerts=2)])
    [n] = notifications(5, group_by="node")
    s.send([n], "r/webhook[0]")
    [got] = receiver.wait_for(1)
    s.close()
    assert len(got.body["alerts"]) == 2 and got.body["truncatedAlerts"] == 3


def test_a_receiver_down_then_up_gets_each_notification_exactly_once(tmp_path: Path, receiver: LocalReceiver) -> None:
    s = Setup(tmp_path, [webhook("r", receiver.url())])
    receiver.status = 503
    ns = notifications(4)
    s.send(ns, "r/webhook[0]")
    time.sleep(1.5)
    assert receiver.received == [] and receiver.refused >= 3  # retried, with backoff
    receiver.status = 200
    receiver.wait_for(4)
    time.sleep(0.5)
    s.close()
    assert sorted(b["notificationId"] for b in receiver.bodies()) == sorted(n.id for n in ns)
    rows = s.outbox()
    assert [r["state"] for r in rows] == ["sent"] * 4 and rows[0]["attempts"] > 1


def test_a_groups_notifications_keep_their_order_across_parallel_senders(tmp_path: Path, receiver: LocalReceiver) -> None:
    """Firing then resolved, for many groups at once, through a receiver that was down: per group in order."""
    config = alerts_config.parse(
        {
            "route": {"receiver": "r", "group_by": ["..."], "group_wait": "0s", "group_interval": "1s"},
            "receivers": [{"name": "r"}],
        }
    )
    e = Engine(config)
    for k in range(12):
        e.observe_anomaly(
            Anomaly(f"a{k}", "hang", "critical", "firing", "job", f"j{k}", T0, T0, T0, T0, "stuck", {}, job_id=f"j{k}"), T0
        )
    firing = e.tick(T0)
    for k in range(12):
        e.observe_anomaly(
            Anomaly(
                f"a{k}", "hang", "critical", "resolved", "job", f"j{k}", T0 + 5, T0, T0, T0 + 5, "moving", {}, job_id=f"j{k}"
            ),
            T0 + 5,
        )
    resolved = e.tick(T0 + 1000)
    s = Setup(tmp_path, [{**webhook("r", receiver.url()), "max_in_flight": 4}])
    receiver.status = 503
    s.send(firing + resolved, "r/webhook[0]")
    time.sleep(1.0)
    receiver.status = 200
    receiver.wait_for(24)
    s.close()
    by_group: dict[str, list[str]] = {}
    for b in receiver.bodies():
        by_group.setdefault(b["groupKey"], []).append(b["status"])
    assert len(by_group) == 12 and all(v == ["firing", "resolved"] for v in by_group.values()), by_group


def test_a_receiver_off_the_network_then_back_gets_each_notification_once(tmp_path: Path, receiver: LocalReceiver) -> None:
    s = Setup(tmp_path, [webhook("r", receiver.url())])
    receiver.stop()  # connection refused
    ns = notifications(3)
    s.send(ns, "r/webhook[0]")
    time.sleep(1.0)
    receiver.start()
    receiver.wait_for(3)
    time.sleep(0.5)
    s.close()
    assert sorted(b["notificationId"] for b in receiver.bodies()) == sorted(n.id for n in ns)
    assert s.outbox()[0]["attempts"] > 1


def test_a_refusal_is_dead_lettered_at_once_and_the_queue_goes_on(tmp_path: Path, receiver: LocalReceiver) -> None:
    s = Setup(tmp_path, [webhook("r", receiver.url())])
    receiver.status = 400
    first, second = notifications(2)
    s.send([first], "r/webhook[0]")
    deadline = time.monotonic() + 10
    while not s.failed and time.monotonic() < deadline:
        time.sleep(0.05)
    receiver.status = 200
    s.send([second], "r/webhook[0]")
    receiver.wait_for(1)
    s.close()
    assert receiver.requests == 2  # the refused one was not retried
    [(row, reason)] = s.failed
    assert row.nid == first.id and "HTTP 400" in reason
    assert [r["state"] for r in s.outbox()] == ["failed", "sent"]


def test_a_notification_is_dead_lettered_when_retries_give_up(tmp_path: Path, receiver: LocalReceiver) -> None:
    s = Setup(tmp_path, [webhook("r", receiver.url())], retry={**FAST_RETRY, "give_up_after": "1s"})
    receiver.status = 503
    s.send(notifications(1), "r/webhook[0]")
    deadline = time.monotonic() + 60
    while not s.failed and time.monotonic() < deadline:
        time.sleep(0.1)
    s.close()
    [(_, reason)] = s.failed
    assert "gave up after" in reason and "HTTP 503" in reason


def test_a_slow_receiver_does_not_delay_another(tmp_path: Path, receiver: LocalReceiver) -> None:
    slow = LocalReceiver()
    slow.gate = threading.Event()  # the slow receiver hangs until released: ordering, not timing
    try:
        s = Setup(tmp_path, [webhook("slow", slow.url()), webhook("fast", receiver.url())])
        ns = notifications(3)
        s.send(ns, "slow/webhook[0]")
        s.send(ns, "fast/webhook[0]")
        receiver.wait_for(3, timeout=30)  # all three reached the fast one while the slow one hangs
        assert not slow.received, slow.requests
        slow.gate.set()
        slow.wait_for(3, timeout=30)
        s.close()
    finally:
        slow.gate.set()
        slow.stop()


def test_a_rate_limit_delays_notifications_and_drops_none(tmp_path: Path, receiver: LocalReceiver) -> None:
    s = Setup(tmp_path, [{**webhook("r", receiver.url()), "rate_limit": "2/s"}])
    s.send(notifications(6), "r/webhook[0]")
    got = receiver.wait_for(6, timeout=20)
    s.close()
    times = [g.at - got[0].at for g in got]
    # then 2 a second: 4 more take at least 2 s (a lower bound: a slow machine cannot break it; the
    # burst of the bucket's size going at once is checked on a fake clock in test_token_bucket_and_backoff)
    assert times[-1] >= 1.7
    assert len({b["notificationId"] for b in receiver.bodies()}) == 6


def test_token_bucket_and_backoff() -> None:
    now = [0.0]
    bucket = TokenBucket(RateLimit(3, 60.0), clock=lambda: now[0])
    assert [bucket.wait_s() for _ in range(3)] == [0, 0, 0]
    assert bucket.wait_s() == pytest.approx(20.0)
    now[0] = 20.0
    assert bucket.wait_s() == 0
    retry = RetryConfig(1.0, 60.0, 3600.0)
    rng = random.Random(7)
    for attempt, base in ((1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (20, 60.0)):
        delays = [backoff_s(attempt, retry, rng=rng) for _ in range(200)]
        assert base / 2 <= min(delays) and max(delays) <= base and len(set(delays)) > 100  # jittered
    assert backoff_s(1, retry, retry_after_s=30.0) >= 30.0 and backoff_s(1, retry, retry_after_s=9999) <= 60.0


def test_mattermost_through_apprise_posts_the_message_to_the_webhook(tmp_path: Path, receiver: LocalReceiver) -> None:
    s = Setup(tmp_path, [{"name": "chat", "mattermost_configs": [{"url": receiver.url("/mm/hooks/mmtoken123")}]}])
    [n] = notifications(1)
    s.send([n], "chat/mattermost[0]")
    [got] = receiver.wait_for(1)
    s.close()
    assert got.path == "/mm/hooks/mmtoken123" and got.body["username"] == "hpcinsight"
    text = got.body["text"]
    for part in (
        "[FIRING:1]",
        "CRITICAL gpu_health",
        "GPU 0 (GPU-0)",
        "node n1",
        "job j1",
        "GPU 0 of n1 throttles for heat",
        "since",
        "evidence: gpu_index=0, throttled_share=0.8",
        "hpcinsight diagnose j1",
    ):
        assert part in text, (part, text)
    assert s.outbox()[0]["state"] == "sent"


def test_an_apprise_receiver_that_is_down_is_retried_until_it_is_back(tmp_path: Path, receiver: LocalReceiver) -> None:
    s = Setup(tmp_path, [{"name": "chat", "mattermost_configs": [{"url": receiver.url("/hooks/mmtoken123")}]}])
    receiver.status = 500
    s.send(notifications(2), "chat/mattermost[0]")
    time.sleep(1.0)
    receiver.status = 200
    receiver.wait_for(2)
    time.sleep(0.3)
    s.close()
    assert len(receiver.received) == 2 and receiver.refused >= 2


def test_no_secret_in_logs_errors_or_the_outbox(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Receivers that fail (refused connections), with every library logging at DEBUG."""
    caplog.set_level(logging.DEBUG)
    redact.install()
    s = Setup(
        tmp_path,
        [
            {
                "name": "hook",
                "webhook_configs": [{"url": "http://127.0.0.1:9/hook/Hook5Secret?sig=Sig5Secret", "bearer_token": "Tok5Secret"}],
            },
            {"name": "chat", "mattermost_configs": [{"url": "http://127.0.0.1:9/hooks/mm5secret5token"}]},
        ],
        retry={**FAST_RETRY, "give_up_after": "1s"},
    )
    ns = notifications(1)
    s.send(ns, "hook/webhook[0]")
    s.send(ns, "chat/mattermost[0]")
    deadline = time.monotonic() + 60
    while len(s.failed) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    s.close()
    assert len(s.failed) == 2
    seen = caplog.text + "".join(r for _, r in s.failed) + "".join(str(r["error"]) for r in s.outbox())
    assert "127.0.0.1" in seen and "dead-lettered" in seen  # the failures were logged...
    for secret in ("Hook5Secret", "Sig5Secret", "Tok5Secret", "mm5secret5token"):
        assert secret not in seen  # ...without a secret


def test_the_webhook_links_the_dashboard_when_one_is_configured() -> None:
    from hpcinsight.sinks.alerts.receivers.webhook import payload

    [n] = notifications(1)
    body = payload(n, Renderer("https://grafana.example.com/d/hpc?var-job={job}&var-node={node}"))
    assert body["externalURL"] == "https://grafana.example.com"
    [alert] = body["alerts"]
    assert alert["generatorURL"] == "https://grafana.example.com/d/hpc?var-job=j1&var-node=n1"
    assert alert["annotations"]["dashboard"] == alert["generatorURL"]
    assert payload(n, Renderer())["externalURL"] == "" and "dashboard" not in payload(n, Renderer())["alerts"][0]["annotations"]
