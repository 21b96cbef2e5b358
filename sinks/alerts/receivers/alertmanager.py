"""The operator's own Prometheus Alertmanager as a receiver: alerts pushed to ``/api/v2/alerts``.

Operators who already run an Alertmanager want hpcinsight's alerts beside Prometheus' there, with
its routing, silences and inhibition. The router then acts as an alert *source* (as Prometheus
does): each alert of a notification is posted with its labels (``alertname`` is the anomaly's
kind), annotations, ``startsAt``, ``generatorURL`` (the dashboard link) and, once resolved,
``endsAt``. A firing alert is posted with ``endsAt`` ``resend_ttl`` ahead (default 24 h): the
route's ``repeat_interval`` (default 4 h) posts it again before that, and if hpcinsight stops
for good, Alertmanager resolves it by itself instead of keeping a stale page forever. Posting
the same alert again is harmless: Alertmanager deduplicates by labels.

YAML (under a receiver)::

    alertmanager_configs:
      - url: http://alertmanager.monitoring:9093   # the base URL (or url_file)
        bearer_token_file: /run/secrets/am-token      # optional (or bearer_token)
        resend_ttl: 24h
        send_resolved: true
        timeout: 10s
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import requests

from hpcinsight.core.settings import Secret
from hpcinsight.sinks.alerts.confnode import Node
from hpcinsight.sinks.alerts.message import Renderer, rfc3339
from hpcinsight.sinks.alerts.model import Notification
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

KIND = "alertmanager"


@dataclass(frozen=True)
class AlertmanagerConfig:
    kind: ClassVar[str] = KIND
    url: Secret
    common: Common
    bearer_token: Secret | None = None
    resend_ttl_s: float = 24 * 3600.0

    def build(self, receiver: str, index: int, renderer: Renderer) -> AlertmanagerIntegration:
        return AlertmanagerIntegration(receiver, index, self, renderer)

    def describe(self) -> str:
        return (
            f"alertmanager (/api/v2/alerts), url ********, firing alerts expire {self.resend_ttl_s / 3600:g} h "
            f"after their last post{', bearer token' if self.bearer_token else ''}"
        )


def parse(node: Node) -> AlertmanagerConfig:
    f = node.mapping(("url", "url_file", "bearer_token", "bearer_token_file", "resend_ttl", *COMMON_KEYS))
    url = parse_http_url(node, f, "the Alertmanager's http:// or https:// base URL")
    ttl = f["resend_ttl"].duration(allow_zero=False) if "resend_ttl" in f else 24 * 3600.0
    return AlertmanagerConfig(url, parse_common(f), parse_bearer_token(f), ttl)


def postable_alerts(
    n: Notification, renderer: Renderer, send_resolved: bool, resend_ttl_s: float, now_ms: int
) -> list[dict[str, Any]]:
    """The body of ``POST /api/v2/alerts`` for ``n`` (Alertmanager's ``postableAlerts``)."""
    out = []
    for a in n.alerts:
        if not a.firing and not send_resolved:
            continue
        annotations = renderer.annotations(a)
        ends = a.ends_at if not a.firing else now_ms + int(resend_ttl_s * 1000)
        alert: dict[str, Any] = {
            "labels": dict(a.labels),
            "annotations": annotations,
            "startsAt": rfc3339(a.starts_at),
            "endsAt": rfc3339(ends),
        }
        if annotations.get("dashboard"):
            alert["generatorURL"] = annotations["dashboard"]
        out.append(alert)
    return out


class AlertmanagerIntegration(Integration):
    kind = KIND

    def __init__(self, receiver: str, index: int, config: AlertmanagerConfig, renderer: Renderer) -> None:
        super().__init__(receiver, index, config.common, renderer)
        self.config = config
        self._session = requests.Session()

    def send(self, n: Notification) -> None:
        body = postable_alerts(n, self.renderer, self.send_resolved, self.config.resend_ttl_s, int(time.time() * 1000))
        if not body:
            return
        headers = {"Content-Type": "application/json"}
        if self.config.bearer_token is not None:
            headers["Authorization"] = f"Bearer {self.config.bearer_token.reveal()}"
        url = self.config.url.reveal().rstrip("/") + "/api/v2/alerts"
        try:
            response = self._session.post(url, json=body, headers=headers, timeout=self.timeout_s, allow_redirects=False)
        except requests.RequestException as err:
            raise RetryableError(exception_text(err)) from None
        status, text = response.status_code, response.text[:300]
        response.close()
        if 200 <= status < 300:
            return
        if status in (408, 429) or status >= 500:
            raise RetryableError(f"HTTP {status}")
        raise RefusedError(f"HTTP {status}: {text}")  # 400: Alertmanager said what it refused

    def close(self) -> None:
        self._session.close()
