"""The alert router's YAML: validated at start-up, every error naming the key path, none showing a secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpcinsight.core.settings import ConfigError
from hpcinsight.sinks.alerts import config as alerts_config
from hpcinsight.sinks.alerts.matchers import Matcher

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "sinks" / "alerts" / "alerts.example.yaml"
SECRET_ENV = {
    "MATTERMOST_WEBHOOK_URL": "https://chat.example.com/hooks/mm7token4secret9",
    "ONCALL_WEBHOOK_URL": "https://oncall.example.com/hook/Oncall5Secret",
    "ONCALL_TOKEN": "tok-Bearer8Secret",
    "TEAMS_WORKFLOW_URL": "https://prod-1.westeurope.logic.azure.com:443/workflows/abc123def/triggers/manual/paths/invoke"
    "?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=TeamsSig6Secret",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0001/B0001/Slack3Secret3Slack3Secret",
}
SECRET_PARTS = ("mm7token4secret9", "Oncall5Secret", "Bearer8Secret", "TeamsSig6Secret", "Slack3Secret")


def test_the_example_configuration_is_valid_and_prints_without_secrets() -> None:
    config = alerts_config.load(EXAMPLE, env=SECRET_ENV)
    assert set(config.receivers) == {"ops-chat", "oncall", "llm-team"}
    assert [r.receiver for r in config.route.walk()] == ["ops-chat", "oncall", "llm-team"]
    child = config.route.routes[0]
    assert child.continue_ and child.group_by == ("node",) and child.group_wait_s == 10
    assert child.group_interval_s == 300 and child.repeat_interval_s == 4 * 3600  # inherited
    assert config.receivers["llm-team"].rate_limit is not None and str(config.receivers["llm-team"].rate_limit) == "20/m"
    text = config.describe()
    assert "NotifyMattermost" in text and "NotifyWorkflows" in text and "NotifySlack" in text
    assert not any(part in text for part in SECRET_PARTS), text


def test_defaults_are_alertmanagers() -> None:
    config = alerts_config.parse({"route": {"receiver": "r"}, "receivers": [{"name": "r"}]})
    r = config.route
    assert (r.group_by, r.group_wait_s, r.group_interval_s, r.repeat_interval_s) == ((), 30, 300, 4 * 3600)
    assert config.inhibit_rules == alerts_config.DEFAULT_INHIBIT_RULES
    assert (
        alerts_config.parse({"route": {"receiver": "r"}, "receivers": [{"name": "r"}], "inhibit_rules": []}).inhibit_rules == ()
    )


BASE = {"route": {"receiver": "ops"}, "receivers": [{"name": "ops", "webhook_configs": [{"url": "http://127.0.0.1:9/x"}]}]}


def with_(path: str, value: object) -> dict:
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    node = doc
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if k.isdigit() else node[k]
    node[keys[-1]] = value
    return doc


@pytest.mark.parametrize(
    "doc, message",
    [
        (with_("colour", "red"), "test.yaml: unknown key(s) colour; known: global, route, receivers, inhibit_rules"),
        (with_("route.receiver", "nobody"), "route.receiver: receiver 'nobody' is not defined under receivers"),
        (with_("route.group_wait", "soon"), "route.group_wait: 'soon' is not a duration"),
        (with_("route.group_interval", "0s"), "route.group_interval: must be longer than 0"),
        (with_("route.group_by", ["kind", "nod"]), "route.group_by[1]: unknown label 'nod'; alerts carry: alertname, kind"),
        (with_("route.group_by", ["...", "kind"]), "route.group_by: '...' (group by every label) stands alone"),
        (with_("route.matchers", ["kind=x"]), "route: the root route matches everything"),
        (with_("route.routes", [{"receiver": "ops"}]), "route.routes[0]: a child route needs matchers"),
        (
            with_("route.routes", [{"matchers": ["severity=~(crit"]}]),
            "route.routes[0].matchers[0]: 'severity=~(crit': not a valid regular expression",
        ),
        (with_("route.routes", [{"matchers": ["severity"]}]), "route.routes[0].matchers[0]: 'severity' is not a matcher"),
        (with_("route.routes", [{"matchers": ["sev=critical"]}]), "route.routes[0].matchers[0]: unknown label 'sev'"),
        (
            with_("route.routes", [{"matchers": ["node=n1"], "routes": [{"matchers": ["job=j"], "continue": "yes"}]}]),
            "route.routes[0].routes[0].continue: must be true or false",
        ),
        (with_("receivers.0.rate_limit", "fast"), "receivers[0].rate_limit: write COUNT/UNIT"),
        (with_("receivers.0.webhook_configs", [{"url": "ftp://x/y"}]), "receivers[0].webhook_configs[0].url: must be an http"),
        (with_("receivers.0.webhook_configs", [{}]), "receivers[0].webhook_configs[0]: give exactly one of url, url_file"),
        (with_("receivers.0.webhook_configs", [{"url": "http://x/y", "timeout": "forever"}]), "webhook_configs[0].timeout"),
        (with_("receivers.0.email_configs", []), "receivers[0]: unknown key(s) email_configs"),
        (
            with_("receivers.0.alertmanager_configs", [{"url": "am:9093"}]),
            "alertmanager_configs[0].url: must be the Alertmanager's",
        ),
        (
            with_("receivers.0.alertmanager_configs", [{"url": "http://am:9093", "resend_ttl": "0s"}]),
            "alertmanager_configs[0].resend_ttl: must be longer than 0",
        ),
        (with_("receivers", [{"name": "ops"}, {"name": "ops"}]), "receivers[1]: receiver 'ops' is defined twice"),
        (
            with_("inhibit_rules", [{"source_matchers": ["kind=x"], "target_matchers": ["kind=y"], "equal": ["host"]}]),
            "inhibit_rules[0].equal[0]: unknown label 'host'",
        ),
        (with_("global", {"dashboard_url": "https://g/d?job={jobid}"}), "global.dashboard_url: unknown placeholder(s) {jobid}"),
        (with_("global", {"retry": {"initial_backoff": "10s", "max_backoff": "1s"}}), "global.retry: max_backoff is shorter"),
    ],
)
def test_errors_name_the_key_path(doc: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        alerts_config.parse(doc, "test.yaml")
    assert message in str(err.value)


@pytest.mark.parametrize(
    "kind, url, service",
    [
        ("slack", "https://hooks.slack.com/services/T0001/B0001/Slack3Secret3Slack3Secret", "NotifySlack"),
        ("discord", "https://discord.com/api/webhooks/123456/Disc4Secret", "NotifyDiscord"),
        ("msteams", SECRET_ENV["TEAMS_WORKFLOW_URL"], "NotifyWorkflows"),
        ("mattermost", "https://chat.example.com/mm/hooks/mm7token4secret9", "NotifyMattermost"),
        ("mattermost", "mmost://chat.example.com/mm7token4secret9", "NotifyMattermost"),
        ("apprise", "json://127.0.0.1:8080/alerts", "NotifyJSON"),
    ],
)
def test_each_chat_kind_takes_its_services_urls(kind: str, url: str, service: str) -> None:
    config = alerts_config.parse({"route": {"receiver": "r"}, "receivers": [{"name": "r", f"{kind}_configs": [{"url": url}]}]})
    [integration] = config.receivers["r"].integrations
    assert integration.kind == kind and integration.service == service


def test_a_mattermost_webhook_url_keeps_its_host_port_and_path() -> None:
    from hpcinsight.sinks.alerts.receivers.mattermost import convert

    assert convert("https://chat.example.com:8443/mm/hooks/tok123") == "mmosts://hpcinsight@chat.example.com:8443/mm/tok123"
    assert convert("http://127.0.0.1:8065/hooks/tok123") == "mmost://hpcinsight@127.0.0.1:8065/tok123"
    assert convert("https://chat.example.com/api/v4/posts") is None


@pytest.mark.parametrize(
    "kind, url, message",
    [
        ("slack", "https://discord.com/api/webhooks/123456/Disc4Secret", "not a Slack webhook URL"),
        ("msteams", "https://example.webhook.office.com/webhookb2/Old9Secret/IncomingWebhook/x/y", "connector URLs are retired"),
        ("mattermost", "https://chat.example.com/api/Mm8Secret", "not a Mattermost incoming-webhook URL"),
        ("apprise", "nosuchservice://Apprise7Secret", "apprise does not accept this URL"),
        ("apprise", "https://discord.com/api/webhooks/123456/Disc4Secret", None),  # apprise takes it: Discord
    ],
)
def test_a_wrong_url_is_refused_without_showing_it(kind: str, url: str, message: str | None) -> None:
    doc = {"route": {"receiver": "r"}, "receivers": [{"name": "r", f"{kind}_configs": [{"url": "${URL}"}]}]}
    if message is None:
        alerts_config.parse(doc, "a.yaml", env={"URL": url})
        return
    with pytest.raises(ConfigError) as err:
        alerts_config.parse(doc, "a.yaml", env={"URL": url})
    assert f"a.yaml: receivers[0].{kind}_configs[0].url: " in str(err.value) and message in str(err.value)
    assert not any(v in str(err.value) for v in ("Disc4Secret", "Old9Secret", "Mm8Secret", "Apprise7Secret"))


def test_secrets_come_from_the_environment_or_a_file(tmp_path: Path) -> None:
    (tmp_path / "url").write_text("https://oncall.example.com/hook/File2Secret\n")
    doc = {
        "route": {"receiver": "r"},
        "receivers": [
            {
                "name": "r",
                "webhook_configs": [{"url_file": str(tmp_path / "url")}, {"url": "${HOOK}", "bearer_token": "${TOKEN}"}],
            }
        ],
    }
    config = alerts_config.parse(doc, "a.yaml", env={"HOOK": "https://h.example.com/x/Env1Secret", "TOKEN": "Tok3Secret"})
    first, second = config.receivers["r"].integrations
    assert first.url.reveal() == "https://oncall.example.com/hook/File2Secret"
    assert second.url.reveal() == "https://h.example.com/x/Env1Secret" and second.bearer_token.reveal() == "Tok3Secret"
    assert not any(v in repr(config) for v in ("File2Secret", "Env1Secret", "Tok3Secret"))
    with pytest.raises(ConfigError, match=r"receivers\[0\].webhook_configs\[1\].url: environment variable HOOK is not set"):
        alerts_config.parse(doc, "a.yaml", env={"TOKEN": "x"})
    doc["receivers"][0]["webhook_configs"][0]["url_file"] = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"url_file: cannot read the file"):
        alerts_config.parse(doc, "a.yaml", env={"HOOK": "http://x/y", "TOKEN": "x"})


def test_a_yaml_syntax_error_gives_line_and_column_but_not_the_line(tmp_path: Path) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text(
        "route:\n  receiver: r\nreceivers:\n  - name: r\n    webhook_configs:\n"
        "      - url: https://h.example.com/Yaml4Secret: [\n"
    )
    with pytest.raises(ConfigError) as err:
        alerts_config.load(path)
    assert "not valid YAML at line" in str(err.value) and "Yaml4Secret" not in str(err.value)


def test_the_cli_check_and_help_never_print_a_secret() -> None:
    env = {**os.environ, **SECRET_ENV}
    for args in (["alerts", "--config", str(EXAMPLE), "--check"], ["alerts", "--help"], ["silence", "add", "--help"]):
        out = subprocess.run(
            [sys.executable, "-m", "hpcinsight.cli", *args], env=env, capture_output=True, text=True, cwd=ROOT, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert not any(part in out.stdout + out.stderr for part in SECRET_PARTS)
    broken = subprocess.run(
        [sys.executable, "-m", "hpcinsight.cli", "alerts", "--config", str(EXAMPLE), "--check"],
        env={k: v for k, v in env.items() if k != "ONCALL_TOKEN"},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert broken.returncode == 2 and "environment variable ONCALL_TOKEN is not set" in broken.stderr


@pytest.mark.parametrize(
    "text, labels, hit",
    [
        ("kind=gpu_xid", {"kind": "gpu_xid"}, True),
        ('kind="gpu_xid"', {"kind": "gpu_xid"}, True),
        ("kind!=gpu_xid", {"kind": "gpu_xid"}, False),
        ("node=~n1[0-9]", {"node": "n12"}, True),
        ("node=~n1[0-9]", {"node": "n123"}, False),  # anchored
        ("node!~n1.*", {"node": "n2"}, True),
        ('job=""', {}, True),  # a missing label is the empty string
        ('comment="a = b"', {"comment": "a = b"}, True),
    ],
)
def test_matchers(text: str, labels: dict, hit: bool) -> None:
    assert Matcher.parse(text).matches(labels) is hit


def test_durations() -> None:
    """Alertmanager's forms (the shared grammar, a unit always: no bare number)."""
    waits = [
        alerts_config.parse(with_("route.group_wait", t), "test.yaml").route.group_wait_s
        for t in ("30s", "5m", "1h30m", "2d", "250ms", "0s")
    ]
    assert waits == [30, 300, 5400, 172800, 0.25, 0]
    for bad in ("", "5", "m5", "5 m", "1h-5m"):
        with pytest.raises(ConfigError, match=f"test.yaml: route.group_wait: '{bad}' is not a duration"):
            alerts_config.parse(with_("route.group_wait", bad), "test.yaml")


def test_silence_matchers_from_the_command_line_are_checked() -> None:
    from hpcinsight.sinks.alerts.silences import parse_matchers

    assert parse_matchers(["kind=gpu_xid", "node=~n1[0-9]"]) == ['kind="gpu_xid"', 'node=~"n1[0-9]"']
    for bad, message in (
        ([], "at least one --match"),
        (["host=n1"], "unknown label 'host'"),
        (["node=~(n1"], "not a valid regular expression"),
        (["node"], "is not a matcher"),
    ):
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            parse_matchers(bad)


def test_alertmanager_alerts_carry_start_end_labels_and_link() -> None:
    from hpcinsight.sinks.alerts.message import Renderer
    from hpcinsight.sinks.alerts.model import Alert, Notification
    from hpcinsight.sinks.alerts.receivers.alertmanager import postable_alerts

    labels = {"alertname": "gpu_health", "kind": "gpu_health", "node": "n1"}
    firing = Alert("a1", labels, "GPU 3 throttles", {"x": 1.0}, starts_at=1_767_225_600_000, updated_at=1_767_225_660_000)
    over = Alert(
        "a2",
        {**labels, "node": "n2"},
        "GPU 1 throttles",
        {},
        1_767_225_600_000,
        1_767_225_900_000,
        ends_at=1_767_225_900_000,
        resolved_message="back to normal",
    )
    n = Notification("id", "g", "am", 1, 0, {"kind": "gpu_health"}, [firing], [over])
    now = 1_767_226_000_000
    body = postable_alerts(n, Renderer("https://g/d?node={node}"), send_resolved=True, resend_ttl_s=3600, now_ms=now)
    assert [b["labels"]["node"] for b in body] == ["n1", "n2"]
    assert body[0]["startsAt"] == "2026-01-01T00:00:00.000Z" and body[0]["endsAt"] == "2026-01-01T01:06:40.000Z"
    assert body[1]["endsAt"] == "2026-01-01T00:05:00.000Z" and body[1]["annotations"]["resolution"] == "back to normal"
    assert body[0]["generatorURL"] == "https://g/d?node=n1"
    assert [b["labels"]["node"] for b in postable_alerts(n, Renderer(None), False, 3600, now)] == ["n1"]
