"""Reading a YAML configuration with errors that name the key path (``route.routes[1].group_wait``).

Strings may reference environment variables as ``${NAME}``, so webhook URLs and tokens stay out of
the file; a value that came from one is a secret. Error messages name keys and variables, never
values that could be secrets.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hpcinsight.core.durations import parse_seconds
from hpcinsight.core.settings import ConfigError, Secret
from hpcinsight.sinks.alerts import redact

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Node:
    """A value of the configuration and where it sits."""

    def __init__(self, value: Any, path: str, source: str, env: Mapping[str, str] | None = None) -> None:
        self.value, self.path, self.source = value, path, source
        self.env = os.environ if env is None else env

    @property
    def where(self) -> str:
        return f"{self.source}: {self.path}" if self.path else self.source

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"{self.where}: {message}")

    def child(self, key: str | int, value: Any) -> Node:
        path = f"{self.path}[{key}]" if isinstance(key, int) else (f"{self.path}.{key}" if self.path else key)
        return Node(value, path, self.source, self.env)

    # -- shapes ------------------------------------------------------------------------
    def mapping(self, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, Node]:
        if not isinstance(self.value, dict):
            raise self.error(f"must be a mapping with keys among {', '.join(allowed)}")
        unknown = [str(k) for k in self.value if k not in allowed]
        if unknown:
            raise self.error(f"unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(allowed)}")
        missing = [k for k in required if self.value.get(k) is None]
        if missing:
            raise self.error(f"missing required key(s) {', '.join(missing)}")
        return {k: self.child(k, v) for k, v in self.value.items() if v is not None}

    def items(self) -> Iterator[Node]:
        if not isinstance(self.value, list):
            raise self.error("must be a list")
        return (self.child(i, v) for i, v in enumerate(self.value))

    # -- scalars -----------------------------------------------------------------------
    def string(self) -> str:
        if isinstance(self.value, bool) or not isinstance(self.value, (str, int, float)):
            raise self.error("must be a string")
        return self._expand(str(self.value))[0]

    def secret(self, file_key_node: Node | None = None) -> Secret:
        """A credential (URL or token), from the value (``${VAR}`` allowed) or from a file."""
        if file_key_node is not None:
            path = Path(file_key_node.string())
            try:
                value = path.read_text().strip()
            except OSError as err:
                raise file_key_node.error(f"cannot read the file: {err.strerror}") from None
        else:
            if isinstance(self.value, bool) or not isinstance(self.value, str):
                raise self.error("must be a string")
            value = self._expand(self.value)[0]
        if not value:
            raise (file_key_node or self).error("is empty")
        redact.register(value)
        return Secret(value)

    def boolean(self) -> bool:
        if not isinstance(self.value, bool):
            raise self.error("must be true or false")
        return self.value

    def integer(self, minimum: int = 0) -> int:
        if isinstance(self.value, bool) or not isinstance(self.value, int) or self.value < minimum:
            raise self.error(f"must be a whole number >= {minimum}")
        return self.value

    def duration(self, allow_zero: bool = True) -> float:
        seconds = parse_seconds(self.string(), self.where)  # Alertmanager's forms: 1h30m, 0s; a unit always
        if seconds <= 0 and not allow_zero:
            raise self.error("must be longer than 0")
        return seconds

    def _expand(self, text: str) -> tuple[str, bool]:
        used = False

        def value_of(m: re.Match[str]) -> str:
            nonlocal used
            used = True
            name = m.group(1)
            if name not in self.env:
                raise self.error(f"environment variable {name} is not set")
            return self.env[name]

        return _ENV_REF.sub(value_of, text), used
