"""Chat receivers through apprise (Slack, Mattermost, Microsoft Teams, Discord, and any apprise URL).

Each chat kind module only says which URLs it accepts and how they become an apprise URL; this
module holds what they share: parsing, the apprise plugin (timeouts set, apprise's own retries off:
the router retries with its backoff), the Markdown message, and turning apprise's verdict into
:class:`RetryableError`. Apprise reports success or failure but not whether a failure would pass on
a retry, so every failure is retried until the delivery's ``max_retry``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hpcinsight.core.settings import Secret
from hpcinsight.sinks.alerts import redact
from hpcinsight.sinks.alerts.confnode import Node
from hpcinsight.sinks.alerts.message import Renderer
from hpcinsight.sinks.alerts.model import Notification
from hpcinsight.sinks.alerts.receivers.base import COMMON_KEYS, Common, Integration, RetryableError, parse_common, parse_url

APP_ID = "hpcinsight"


@dataclass(frozen=True)
class ChatConfig:
    kind: str
    service: str  # the apprise plugin class expected, e.g. NotifySlack
    apprise_url: Secret
    common: Common

    def build(self, receiver: str, index: int, renderer: Renderer) -> ChatIntegration:
        return ChatIntegration(receiver, index, self, renderer)

    def describe(self) -> str:
        return f"{self.kind} via apprise ({self.service}), url ********"


def instantiate(url: str):
    import apprise

    asset = apprise.AppriseAsset(app_id=APP_ID, app_desc="hpcinsight alert router")
    return apprise.Apprise.instantiate(url, asset=asset, suppress_exceptions=True)


def parse_chat(node: Node, kind: str, service: str | None, convert: Callable[[str], str | None], expected: str) -> ChatConfig:
    """``url`` (or ``url_file``) of a ``kind`` receiver, checked by apprise at start-up.

    ``convert`` maps an accepted URL to its apprise URL (None: not one of ours); ``service`` is the
    apprise plugin class it must load (None: any); ``expected`` says in words what is accepted.
    """
    f = node.mapping(("url", "url_file", *COMMON_KEYS))
    url, where = parse_url(node, f)
    converted = convert(url.reveal())
    if converted is None:
        raise where.error(f"not {expected}")
    redact.register(converted)
    plugin = instantiate(converted)
    if plugin is None:
        raise where.error(f"apprise does not accept this URL as {expected}")
    loaded = type(plugin).__name__
    if service is not None and loaded != service:
        raise where.error(f"this URL is for apprise's {loaded}, not {expected}")
    return ChatConfig(kind, loaded, Secret(converted), parse_common(f))


class ChatIntegration(Integration):
    def __init__(self, receiver: str, index: int, config: ChatConfig, renderer: Renderer) -> None:
        self.kind = config.kind  # type: ignore[misc]  # one class serves every chat kind
        super().__init__(receiver, index, config.common, renderer)
        import apprise

        self._format = apprise.NotifyFormat.MARKDOWN
        self._apprise = apprise.Apprise(asset=apprise.AppriseAsset(app_id=APP_ID, app_desc="hpcinsight alert router"))
        plugin = instantiate(config.apprise_url.reveal())
        if plugin is None:  # checked at start-up; only a changed apprise could get here
            raise RuntimeError(f"{self.id}: apprise no longer accepts the configured URL")
        plugin.socket_connect_timeout = min(4.0, self.timeout_s)
        plugin.socket_read_timeout = self.timeout_s
        if hasattr(plugin, "include_image"):
            plugin.include_image = False  # no apprise logo next to every alert
        self._apprise.add(plugin)
        self.service = type(plugin).__name__

    def send(self, n: Notification) -> None:
        if not self.send_resolved and not n.firing:
            return
        if not self.send_resolved:
            n = Notification(n.id, n.group_key, n.receiver, n.seq, n.created_at, n.group_labels, n.firing, [])
        result = self._apprise.notify(title=self.renderer.title(n), body=self.renderer.body(n), body_format=self._format)
        if result:
            return
        reasons = [e.message for e in getattr(result, "logs", lambda: [])() if e.level in ("WARNING", "ERROR")]
        raise RetryableError(f"{self.service} did not take the notification: {'; '.join(reasons)[:400] or 'no reason given'}")
