"""Secrets never reach a log line, an error message or ``--help``.

Receiver URLs carry their credential in the URL itself (a Slack or Mattermost webhook's path *is*
the token), and the libraries that send them log URLs at debug level (apprise, urllib3) or put them
in exception messages (requests). So every secret the configuration holds is registered here, with
the parts of it a library may print on their own (path segments, query values, user info), and
:func:`redact` replaces any of them in a text. :func:`install` puts a filter on every logging
handler so that no record leaves the process unredacted, whoever logged it.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import parse_qsl, unquote, urlsplit

MASK = "********"

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


def _looks_secret(part: str) -> bool:
    """A URL part worth hiding on its own: a token, an id, a signature; not a plain word like 'hooks'."""
    if len(part) >= 20:
        return True
    return len(part) >= 6 and not re.fullmatch(r"[a-z][a-z-]*", part)


def register(value: str) -> None:
    """Hide ``value`` and, if it is a URL, the parts of it that carry the credential."""
    global _pattern
    if not value:
        return
    found = {value}
    parts = urlsplit(value) if "://" in value else None
    if parts is not None:
        if parts.password:
            found.add(parts.password)
            found.add(unquote(parts.password))
        if parts.path.strip("/") or parts.query:
            found.add(parts.path + (f"?{parts.query}" if parts.query else ""))
        for segment in parts.path.split("/"):
            if _looks_secret(segment):
                found.update({segment, unquote(segment)})
        for _, query_value in parse_qsl(parts.query):
            if _looks_secret(query_value):
                found.add(query_value)
    elif len(value) < 4:
        return  # too short to hide without mangling every message
    with _lock:
        before = len(_secrets)
        _secrets.update(s for s in found if len(s) >= 4)
        if len(_secrets) != before:
            ordered = sorted(_secrets, key=len, reverse=True)  # longest first: a URL before its parts
            _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def redact(text: object) -> str:
    """``text`` with every registered secret replaced by ``********``."""
    text = str(text)
    pattern = _pattern
    return text if pattern is None else pattern.sub(MASK, text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and traceback) with the secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _pattern is None:
            return True
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text = None, None
            record.msg = f"{record.msg}\n{redact(text)}"
        return True


_FILTER = RedactingFilter()


def install() -> None:
    """Filter every handler of the root logger (call after logging is configured), and lower the
    chatter of the HTTP libraries, whose debug lines name URLs."""
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    for name in ("apprise", "urllib3"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
