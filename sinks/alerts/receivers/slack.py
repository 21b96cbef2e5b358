"""Slack: an incoming-webhook URL (``https://hooks.slack.com/services/T.../B.../...``), a Slack
workflow webhook, or apprise's ``slack://`` form (bot tokens, channels).

YAML::

    slack_configs:
      - url: ${SLACK_WEBHOOK_URL}
"""

from __future__ import annotations

from hpcinsight.sinks.alerts.confnode import Node
from hpcinsight.sinks.alerts.receivers._chat import ChatConfig, parse_chat

KIND = "slack"


def convert(url: str) -> str | None:
    return url if url.startswith(("https://hooks.slack.com/", "slack://")) else None


def parse(node: Node) -> ChatConfig:
    return parse_chat(node, KIND, "NotifySlack", convert, "a Slack webhook URL (https://hooks.slack.com/...) or slack:// URL")
