"""Mattermost: an incoming-webhook URL (``https://chat.example.com/hooks/TOKEN``, any host, port
and path prefix) or apprise's ``mmost://`` / ``mmosts://`` form. Posts as user ``hpcinsight``.

YAML::

    mattermost_configs:
      - url: ${MATTERMOST_WEBHOOK_URL}
"""

from __future__ import annotations

from urllib.parse import urlsplit

from hpcinsight.sinks.alerts.confnode import Node
from hpcinsight.sinks.alerts.receivers._chat import APP_ID, ChatConfig, parse_chat

KIND = "mattermost"


def convert(url: str) -> str | None:
    if url.startswith(("mmost://", "mmosts://")):
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or "/hooks/" not in parts.path:
        return None
    prefix, _, token = parts.path.rpartition("/hooks/")
    token = token.strip("/")
    if not token or "/" in token:
        return None
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    schema = "mmosts" if parts.scheme == "https" else "mmost"
    return f"{schema}://{APP_ID}@{host}{prefix.rstrip('/')}/{token}"


def parse(node: Node) -> ChatConfig:
    return parse_chat(
        node, KIND, "NotifyMattermost", convert, "a Mattermost incoming-webhook URL (https://HOST/hooks/TOKEN) or mmost:// URL"
    )
