"""Label matchers, as Alertmanager writes them: ``name=value``, ``name!=value``, ``name=~regex``,
``name!~regex``. Values may be double-quoted (``severity="critical"``); a regex must match the whole
value. A label an alert does not have matches as the empty string, so ``job=""`` finds alerts with
no job.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_FORM = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$", re.DOTALL)


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str
    value: str
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """One matcher from its text; ``ValueError`` says what is wrong with it."""
        if not isinstance(text, str):
            raise ValueError(f"a matcher is a string like 'severity=critical', got {type(text).__name__}")
        m = _FORM.match(text)
        if m is None:
            raise ValueError(f"{text!r} is not a matcher: write NAME=VALUE, NAME!=VALUE, NAME=~REGEX or NAME!~REGEX")
        name, op, value = m.groups()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError(f"{text!r}: the quoted value is not a valid string") from None
        regex = None
        if op in ("=~", "!~"):
            try:
                regex = re.compile(f"(?:{value})\\Z", re.DOTALL)
            except re.error as err:
                raise ValueError(f"{text!r}: not a valid regular expression: {err}") from None
        return cls(name, op, value, regex)

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.name, "")
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        hit = self._regex.match(value) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f"{self.name}{self.op}{json.dumps(self.value)}"


def matches_all(matchers: tuple[Matcher, ...] | list[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)
