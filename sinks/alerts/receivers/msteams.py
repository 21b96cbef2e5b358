"""Microsoft Teams: the URL of a Teams *Workflows* webhook (Power Automate, ``.../workflows/ID/
triggers/manual/paths/invoke?...&sig=...``), the way Teams takes incoming webhooks since Microsoft
retired the Office 365 connectors, or apprise's ``workflows://`` form. Messages are Adaptive Cards.

YAML::

    msteams_configs:
      - url: ${TEAMS_WORKFLOW_URL}
"""

from __future__ import annotations

import re

from hpcinsight.sinks.alerts.confnode import Node
from hpcinsight.sinks.alerts.receivers._chat import ChatConfig, parse_chat

KIND = "msteams"


def convert(url: str) -> str | None:
    if url.startswith(("workflow://", "workflows://")):
        return url
    if re.match(r"https://[^/]+/.*workflows/[^/]+/triggers/manual/paths/invoke", url):
        return url
    return None


def parse(node: Node) -> ChatConfig:
    return parse_chat(
        node,
        KIND,
        "NotifyWorkflows",
        convert,
        "a Teams Workflows webhook URL (https://.../workflows/ID/triggers/manual/paths/invoke?...) "
        "or workflows:// URL; Office 365 connector URLs are retired",
    )
