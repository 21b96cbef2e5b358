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

from sinks.alerts import redact
from sinks.alerts.confnode import Node
from sinks.alerts.message import Renderer
from sinks.alerts.model import Notification

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
