"""Any service apprise supports (Telegram, Rocket.Chat, Google Chat, Zulip, ntfy, email, ...), by
its apprise URL (https://github.com/caronc/apprise/wiki).

YAML::

    apprise_configs:
      - url: ${ZULIP_APPRISE_URL}      # e.g. zulip://botname@org/TOKEN/stream
"""

from __future__ import annotations

from hpcinsight.sinks.alerts.confnode import Node
from hpcinsight.sinks.alerts.receivers._chat import ChatConfig, parse_chat

KIND = "apprise"


def parse(node: Node) -> ChatConfig:
    return parse_chat(node, KIND, None, lambda url: url, "an apprise URL")
