"""Collector kinds: how the agent finds, configures and builds its collectors.

A collector module declares a *kind* (its name in the config file's ``[agent.collectors.<kind>]``
table), a typed config (a frozen dataclass whose defaults are the agent's and whose
``__post_init__`` raises :class:`SettingError` naming the setting), and a factory from that
config to the collectors it runs; :func:`collector_kind` registers them. :func:`build` makes
the agent's collectors from such tables (or from typed configs, as the scenario runner passes
them), and :func:`discover` imports every module of the agents package so their kinds are
known. Adding a collector is one module plus its test, in the way of Telegraf's inputs and the
OpenTelemetry Collector's receiver factories; nothing else is edited.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgspec

from hpcinsight.agents.base import Collector

C = TypeVar("C")
Factory = Callable[[Any], list[Collector[Any]]]

#: ``field(metadata=PYTHON_ONLY)``: a setting only Python callers give (a sim workload), never a config table
PYTHON_ONLY: Mapping[str, bool] = {"table": False}


class SettingError(ValueError):
    """One setting of a collector's config is wrong: ``str()`` is ``"<setting>: <problem>"``."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting


def check(ok: bool, setting: str, problem: str) -> None:
    """Raise :class:`SettingError` unless ``ok``: the one-line validation configs use."""
    if not ok:
        raise SettingError(setting, problem)


@dataclass(frozen=True)
class CollectorKind(Generic[C]):
    """A registered kind: its name, its config type and the factory that makes its collectors."""

    kind: str
    config_type: type[C]
    factory: Callable[[C], list[Collector[Any]]]

    @property
    def where(self) -> str:
        return f"[agent.collectors.{self.kind}]"

    def settings(self) -> list[str]:
        """The keys its config table may hold."""
        return [
            f.name
            for f in dataclasses.fields(self.config_type)  # type: ignore[arg-type]  # a dataclass by contract
            if f.init and f.metadata.get("table", True)
        ]

    def config(self, table: Mapping[str, Any] | C) -> C:
        """The typed config from a config table (or the config itself); raises ``ValueError`` naming
        the table and the setting, e.g. ``[agent.collectors.gpu_sim] gpus: must be between 1 and 16``."""
        if isinstance(table, self.config_type):
            return table
        if not isinstance(table, Mapping):
            raise ValueError(f"{self.where} must be a table of settings, got {type(table).__name__}")
        allowed = self.settings()
        extra = sorted(set(table) - set(allowed))
        if extra:
            raise ValueError(f"{self.where} has no setting {', '.join(extra)}; its settings: {', '.join(allowed)}")
        hints = typing.get_type_hints(self.config_type)
        values = {}
        for name, value in table.items():
            try:
                values[name] = _coerce(value, hints[name])
            except (msgspec.ValidationError, ValueError, TypeError, NotImplementedError) as err:
                raise ValueError(f"{self.where} {name}: {_plain(err)}") from None
        try:
            return self.config_type(**values)
        except SettingError as err:
            raise ValueError(f"{self.where} {err}") from None

    def build(self, config: C) -> list[Collector[Any]]:
        try:
            return self.factory(config)
        except SettingError as err:
            raise ValueError(f"{self.where} {err}") from None


_KINDS: dict[str, CollectorKind[Any]] = {}


def collector_kind(
    kind: str, config_type: type[C]
) -> Callable[[Callable[[C], list[Collector[Any]]]], Callable[[C], list[Collector[Any]]]]:
    """Register the decorated factory as collector kind ``kind``, configured by ``config_type``
    (a frozen dataclass). The same factory registered again (a module imported twice) is kept
    once; a second factory for a kind already taken is an error."""
    if not dataclasses.is_dataclass(config_type):
        raise TypeError(f"collector kind {kind}: its config must be a dataclass, not {config_type!r}")

    def register(factory: Callable[[C], list[Collector[Any]]]) -> Callable[[C], list[Collector[Any]]]:
        have = _KINDS.get(kind)
        if have is not None and _name(have.factory) != _name(factory):
            raise ValueError(f"collector kind {kind} is taken by {_name(have.factory)}")
        _KINDS[kind] = CollectorKind(kind, config_type, factory)
        return factory

    return register


def unregister(kind: str) -> None:
    """Forget a kind (a test's own, or a plugin being reloaded)."""
    _KINDS.pop(kind, None)


def discover() -> dict[str, CollectorKind[Any]]:
    """Every registered kind, after importing each module of the agents package (which registers
    the kinds they define); kinds registered by other packages already imported are included."""
    package = importlib.import_module("hpcinsight.agents")
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        importlib.import_module(info.name)
    return dict(sorted(_KINDS.items()))


def build(tables: Mapping[str, Any]) -> list[Collector[Any]]:
    """The collectors of every kind in ``tables`` (``{kind: table or typed config}``, in order).

    Every config is checked before any collector is made, and collectors already made are
    closed if a later one fails, so a typo never leaves NVML handles or watch threads behind."""
    known = discover()
    unknown = [kind for kind in tables if kind not in known]
    if unknown:
        raise ValueError(f"[agent.collectors] no collector kind {', '.join(unknown)}; known: {', '.join(known)}")
    configs = [(known[kind], known[kind].config(table)) for kind, table in tables.items()]
    out: list[Collector[Any]] = []
    try:
        for kind, config in configs:
            out += kind.build(config)
    except BaseException:
        for collector in out:
            collector.close()
        raise
    return out


def _coerce(value: Any, hint: Any) -> Any:
    """A table value as the config field's type: strings become specs through the type's
    ``parse`` (``"thermal:0:3@30-90"``), and paths; the rest is msgspec's lax conversion."""
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        if hasattr(item, "parse"):
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise ValueError(f"expected a list of {item.__name__} specs, got {type(value).__name__}")
            return tuple(item.parse(v) if isinstance(v, str) else msgspec.convert(v, item, strict=False) for v in value)
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):  # a nested table: its keys are checked too
        allowed = {f.name for f in dataclasses.fields(hint) if f.init}
        extra = sorted(set(value) - allowed)
        if extra:
            raise ValueError(f"no setting {', '.join(extra)}; its settings: {', '.join(sorted(allowed))}")
    return msgspec.convert(value, hint, strict=False, dec_hook=_decode)


def _decode(hint: Any, value: Any) -> Any:
    if hint is Path:
        if isinstance(value, str):
            return Path(value)
        raise TypeError(f"expected a path (a string), got {type(value).__name__}")
    raise NotImplementedError(f"no conversion to {hint!r}")


def _plain(err: Exception) -> str:
    text = str(err).replace("`", "")
    return text.removesuffix(" - at $")


def _name(factory: Factory) -> str:
    return f"{factory.__module__}.{factory.__qualname__}"
