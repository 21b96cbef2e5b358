"""One grammar for every duration a flag, setting or file takes: ``500ms``, ``90s``, ``5m``, ``1h30m``, ``2d``.

The worker, the replay, the alert router and diagnose each had a grammar of their own (one took
``1h30m`` and ``2d``, another only ``90s``); here a value that works for one works for all, and a
bad one is refused with the name of the setting it was given to. A duration is one or more
``<number><unit>`` terms (units ``ms``, ``s``, ``m``, ``h``, ``d``; decimals allowed, no spaces
inside). A bare number is read only where a setting took one before, in that setting's unit
(``plain="s"``). Sums are exact (fractions), then rounded once, so ``0.1s`` is 100 ms.
"""

from __future__ import annotations

import re
from fractions import Fraction

from hpcinsight.core.settings import ConfigError

#: milliseconds per unit, largest first (the formatter's order)
UNITS_MS: dict[str, int] = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}
EXAMPLES = "e.g. 500ms, 90s, 5m, 1h30m, 2d"

_NUMBER = r"\d+(?:\.\d+)?"
_TERM = re.compile(rf"({_NUMBER})(ms|s|m|h|d)")  # "ms" before "m" and "s": 5ms is five milliseconds
_PLAIN = re.compile(_NUMBER)


def _milliseconds(text: str, setting: str, plain: str | None) -> Fraction:
    body = str(text).strip()
    if plain is not None and _PLAIN.fullmatch(body):
        return Fraction(body) * UNITS_MS[plain]
    pos, total = 0, Fraction(0)
    while body and pos < len(body):
        m = _TERM.match(body, pos)
        if m is None:
            break
        total += Fraction(m.group(1)) * UNITS_MS[m.group(2)]
        pos = m.end()
    if not body or pos != len(body):
        raise ConfigError(f"{setting}: {text!r} is not a duration ({EXAMPLES})")
    return total


def parse_ms(text: str, setting: str, *, plain: str | None = None) -> int:
    """``text`` in whole milliseconds; ``ConfigError`` naming ``setting`` if it is not a duration.

    ``plain``: the unit of a bare number (``"s"``, ``"ms"``, ...), or None where a unit is required."""
    return round(_milliseconds(text, setting, plain))


def parse_seconds(text: str, setting: str, *, plain: str | None = None) -> float:
    """``text`` in seconds (``250ms`` is 0.25); otherwise as :func:`parse_ms`."""
    return float(_milliseconds(text, setting, plain) / 1000)


def format_ms(ms: int) -> str:
    """The text :func:`parse_ms` reads back as ``ms``: ``5_400_000`` -> ``1h30m``, ``0`` -> ``0s``."""
    if ms < 0:
        raise ValueError(f"a duration is not negative, got {ms} ms")
    parts = []
    for unit, size in UNITS_MS.items():
        n, ms = divmod(ms, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts) or "0s"


def describe_ms(ms: float) -> str:
    """A duration for a person, rounded to the unit that fits (``45 s``, ``12 min``, ``1.5 h``, ``3 d``)."""
    s = round(ms / 1000)
    if s % 86400 == 0 and s:
        return f"{s // 86400} d"
    if s >= 86400:
        return f"{s / 86400:.1f} d"
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min" if s >= 60 else f"{s} s"
