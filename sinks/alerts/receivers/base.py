"""One interface for every receiver kind, like a Telegraf output plugin.

A kind is one module of this package with ``KIND`` (the name used in the YAML as ``<KIND>_configs``)
and ``parse(node) -> config``; the config's ``build(receiver, index, renderer)`` returns an
:class:`Integration`, whose :meth:`Integration.send` delivers one notification or raises
:class:`RetryableError` (try again later) or :class:`RefusedError` (the receiver will never take it).
Errors carry no secret: they are built from redacted text.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

from hpcinsight.core.settings import Secret
from hpcinsight.sinks.alerts import redact
from hpcinsight.sinks.alerts.confnode import Node
from hpcinsight.sinks.alerts.message import Renderer
from hpcinsight.sinks.alerts.model import Notification

COMMON_KEYS = ("send_resolved", "timeout")


class RetryableError(Exception):
    """The receiver did not take the notification this time (down, overloaded, timed out)."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(redact.redact(reason))
        self.retry_after_s = retry_after_s


class RefusedError(Exception):
    """The receiver refused the notification for good (e.g. HTTP 400): retrying cannot help."""

    def __init__(self, reason: str) -> None:
        super().__init__(redact.redact(reason))


@dataclass(frozen=True)
class Common:
    send_resolved: bool = True
    timeout_s: float = 10.0


def parse_common(fields: dict[str, Node]) -> Common:
    return Common(
        send_resolved=fields["send_resolved"].boolean() if "send_resolved" in fields else True,
        timeout_s=fields["timeout"].duration(allow_zero=False) if "timeout" in fields else 10.0,
    )


def parse_url(node: Node, fields: dict[str, Node]) -> tuple[Secret, Node]:
    """The receiver's ``url`` or ``url_file`` (exactly one), as a secret, and where it was given."""
    if ("url" in fields) == ("url_file" in fields):
        raise node.error("give exactly one of url, url_file")
    where = fields.get("url") or fields["url_file"]
    return (fields["url"].secret() if "url" in fields else fields["url_file"].secret(fields["url_file"])), where


def parse_http_url(node: Node, fields: dict[str, Node], what: str = "an http:// or https:// URL") -> Secret:
    url, where = parse_url(node, fields)
    if not url.reveal().startswith(("http://", "https://")):
        raise where.error(f"must be {what}")
    return url


def parse_bearer_token(fields: dict[str, Node]) -> Secret | None:
    """``bearer_token`` or ``bearer_token_file``, if given."""
    if "bearer_token" in fields:
        return fields["bearer_token"].secret()
    if "bearer_token_file" in fields:
        return fields["bearer_token_file"].secret(fields["bearer_token_file"])
    return None


def exception_text(err: BaseException) -> str:
    """What went wrong, redacted, in one line: the kind of error and its message."""
    return redact.redact(f"{type(err).__name__}: {err}").splitlines()[0][:500]


class Integration(abc.ABC):
    kind: ClassVar[str]

    def __init__(self, receiver: str, index: int, common: Common, renderer: Renderer) -> None:
        self.receiver = receiver
        self.id = f"{receiver}/{self.kind}[{index}]"
        self.send_resolved = common.send_resolved
        self.timeout_s = common.timeout_s
        self.renderer = renderer

    @abc.abstractmethod
    def send(self, n: Notification) -> None:
        """Deliver ``n`` or raise :class:`RetryableError` / :class:`RefusedError`."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""
