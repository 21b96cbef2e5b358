"""Generic JSON webhook in Alertmanager's format (version 4), so existing receivers work.

Payload: ``version``, ``groupKey``, ``truncatedAlerts``, ``status``, ``receiver``, ``groupLabels``,
``commonLabels``, ``commonAnnotations``, ``externalURL`` and ``alerts`` (each with ``status``,
``labels``, ``annotations``, ``startsAt``, ``endsAt``, ``generatorURL``, ``fingerprint``), plus
``notificationId``. The same id is sent as the ``Idempotency-Key`` header: a notification that is
sent again after a crash (see docs/alerts.md) carries the same key, so a receiver can drop the copy.

YAML (under a receiver)::

    webhook_configs:
      - url: ${ONCALL_WEBHOOK_URL}      # or url_file: /run/secrets/oncall-url
        bearer_token: ${ONCALL_TOKEN}   # optional (or bearer_token_file)
        max_alerts: 0                   # 0: all; otherwise the rest is counted in truncatedAlerts
        send_resolved: true
        timeout: 10s
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, ClassVar
from urllib.parse import urlsplit

import requests

from hpcinsight.core.settings import Secret
from hpcinsight.sinks.alerts.confnode import Node
from hpcinsight.sinks.alerts.message import Renderer, rfc3339
from hpcinsight.sinks.alerts.model import Alert, Notification
from hpcinsight.sinks.alerts.receivers.base import (
    COMMON_KEYS,
    Common,
    Integration,
    RefusedError,
    RetryableError,
    exception_text,
    parse_bearer_token,
    parse_common,
    parse_http_url,
)

KIND = "webhook"

try:
    _VERSION = version("hpcinsight")
except PackageNotFoundError:  # a source tree not installed
    _VERSION = "dev"


@dataclass(frozen=True)
class WebhookConfig:
    kind: ClassVar[str] = KIND
    url: Secret
    common: Common
    bearer_token: Secret | None = None
    max_alerts: int = 0

    def build(self, receiver: str, index: int, renderer: Renderer) -> WebhookIntegration:
        return WebhookIntegration(receiver, index, self, renderer)

    def describe(self) -> str:
        return f"webhook (Alertmanager v4 JSON), url ********{', bearer token' if self.bearer_token else ''}"


def parse(node: Node) -> WebhookConfig:
    f = node.mapping(("url", "url_file", "bearer_token", "bearer_token_file", "max_alerts", *COMMON_KEYS))
    return WebhookConfig(
        parse_http_url(node, f), parse_common(f), parse_bearer_token(f), f["max_alerts"].integer() if "max_alerts" in f else 0
    )


def _common(dicts: list[dict[str, str]]) -> dict[str, str]:
    if not dicts:
        return {}
    out = dict(dicts[0])
    for d in dicts[1:]:
        out = {k: v for k, v in out.items() if d.get(k) == v}
    return out


def payload(n: Notification, renderer: Renderer, max_alerts: int = 0, send_resolved: bool = True) -> dict[str, Any]:
    """The Alertmanager webhook body of ``n`` (resolved alerts left out without ``send_resolved``)."""
    alerts: list[Alert] = n.alerts if send_resolved else list(n.firing)
    annotations = [renderer.annotations(a) for a in alerts]
    shown = alerts[:max_alerts] if max_alerts else alerts
    return {
        "version": "4",
        "groupKey": n.group_key,
        "truncatedAlerts": len(alerts) - len(shown),
        "status": n.status,
        "receiver": n.receiver,
        "groupLabels": dict(n.group_labels),
        "commonLabels": _common([a.labels for a in alerts]),
        "commonAnnotations": _common(annotations),
        "externalURL": _origin(renderer.dashboard_url) if renderer.dashboard_url else "",
        "notificationId": n.id,
        "alerts": [
            {
                "status": "firing" if a.firing else "resolved",
                "labels": dict(a.labels),
                "annotations": ann,
                "startsAt": rfc3339(a.starts_at),
                "endsAt": rfc3339(a.ends_at),
                "generatorURL": ann.get("dashboard", ""),
                "fingerprint": a.id,
            }
            for a, ann in zip(shown, annotations)
        ],
    }


class WebhookIntegration(Integration):
    kind = KIND

    def __init__(self, receiver: str, index: int, config: WebhookConfig, renderer: Renderer) -> None:
        super().__init__(receiver, index, config.common, renderer)
        self.config = config
        self._session = requests.Session()

    def send(self, n: Notification) -> None:
        headers = {"Idempotency-Key": n.id, "User-Agent": f"hpcinsight-alerts/{_VERSION}"}
        if self.config.bearer_token is not None:
            headers["Authorization"] = f"Bearer {self.config.bearer_token.reveal()}"
        body = payload(n, self.renderer, self.config.max_alerts, self.send_resolved)
        try:
            response = self._session.post(
                self.config.url.reveal(), json=body, headers=headers, timeout=self.timeout_s, allow_redirects=False
            )
        except requests.RequestException as err:
            raise RetryableError(exception_text(err)) from None
        status = response.status_code
        response.close()
        if 200 <= status < 300:
            return
        if status in (408, 425, 429) or status >= 500:
            raise RetryableError(f"HTTP {status}", _retry_after(response.headers.get("Retry-After")))
        raise RefusedError(f"HTTP {status}")

    def close(self) -> None:
        self._session.close()


def _origin(url: str) -> str:
    """Scheme and host of the dashboard: Alertmanager's externalURL is where its UI lives."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: the backoff decides
