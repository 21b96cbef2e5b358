"""YAML files (the alert router's configuration) read safely, with errors that never quote the file."""

from __future__ import annotations

from typing import Any


class YamlSyntaxError(ValueError):
    """A YAML file that does not parse: where, and what, without quoting the file's text (a line of
    a configuration file may hold a secret, and YAML's own message quotes it)."""

    def __init__(self, line: int | None, column: int | None, problem: str) -> None:
        super().__init__(problem)
        self.line, self.column, self.problem = line, column, problem


def load_yaml(text: str) -> Any:
    """``yaml.safe_load``, with a syntax error turned into :class:`YamlSyntaxError`."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise YamlSyntaxError(
            mark.line + 1 if mark else None,
            mark.column + 1 if mark else None,
            getattr(err, "problem", None) or type(err).__name__,
        ) from None
