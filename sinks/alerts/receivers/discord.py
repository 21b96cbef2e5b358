"""Discord: a channel webhook URL (``https://discord.com/api/webhooks/ID/TOKEN``) or apprise's
``discord://`` form.

YAML::

    discord_configs:
      - url: ${DISCORD_WEBHOOK_URL}
"""

from __future__ import annotations

from hpcinsight.sinks.alerts.confnode import Node
from hpcinsight.sinks.alerts.receivers._chat import ChatConfig, parse_chat

KIND = "discord"


def convert(url: str) -> str | None:
    if url.startswith(("https://discord.com/api/webhooks/", "https://discordapp.com/api/webhooks/", "discord://")):
        return url
    return None


def parse(node: Node) -> ChatConfig:
    return parse_chat(
        node,
        KIND,
        "NotifyDiscord",
        convert,
        "a Discord webhook URL (https://discord.com/api/webhooks/ID/TOKEN) or discord:// URL",
    )
