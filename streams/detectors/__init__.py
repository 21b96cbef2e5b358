"""Anomaly detectors: one module each, found automatically.

A detector is a subclass of :class:`Detector` in a module of this package. It declares the
event types it reads in ``inputs`` and returns :class:`hpcinsight.schemas.events.Anomaly` records from
:meth:`Detector.observe`. Adding a detector is adding one module (and its test); nothing
else changes.

A detector measures; when to page is not its own business. It keeps its incidents in an
:class:`hpcinsight.streams.detectors.incidents.Incidents` table, which decides when a condition has
held long enough to fire, when it has cleared long enough to resolve, what a re-fire within the
quiet time folds into, the id of each incident, and how one fired before a worker restart comes
back (:meth:`Detector.restore`). So every detector pages the same way, and a new one gets it for free.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import msgspec

from hpcinsight.schemas.events import Event, GpuQuantiles
from hpcinsight.streams.detectors.incidents import anomaly_id as anomaly_id  # the ids are the incident table's
from hpcinsight.streams.rolling import SINCE_START

C = TypeVar("C")


class Detector(abc.ABC, Generic[C]):
    """Reads events of the types in ``inputs`` and raises anomalies."""

    kind: ClassVar[str]
    inputs: ClassVar[tuple[type[Event], ...]]
    config_type: ClassVar[type[Any]]

    def __init__(self, config: C | None = None) -> None:
        self.config: C = config if config is not None else self.config_type()

    @abc.abstractmethod
    def observe(self, event: Event) -> list[Event]:
        """Update state with one event; return the anomalies it fires or resolves."""

    def bind(self, context: StreamContext) -> None:
        """Learn the worker's set-up before the first event: every :class:`WindowChoice` of the
        detector judges the worker's shortest window unless its config names one. (Guessing it from
        the first windows seen is unreliable in the job stage, where windows of several sizes can be
        released in any order after a restart.)"""
        for value in vars(self).values():
            if isinstance(value, WindowChoice):
                value.default = context.shortest_window

    def restore(self, open_incidents: list[Any]) -> None:
        """Take back incidents this detector had fired and not resolved before a restart
        (read from the anomalies topic), so they resolve under their own id, never twice.

        ``open_incidents`` are the firing records of this detector's kind. A detector maps each one
        it owns to its key and hands it to :meth:`Incidents.restore`, with whatever of its own state
        the record's evidence can give back (a baseline, a count)."""


@dataclass(frozen=True)
class StreamContext:
    """What the worker tells its detectors about itself (see :meth:`Detector.bind`)."""

    shortest_window: str | None = None  # label of the shortest sliding window the worker emits


class WindowChoice:
    """Which of the GPU quantile windows a detector judges: ``label``, or the shortest sliding one.

    The worker emits several sliding windows (1m, 5m, 1h) and a since-start view; detectors of
    momentary behaviour want the shortest, which is also the first to close after a GPU appears.
    """

    def __init__(self, label: str | None = None) -> None:
        self.label = label
        self.default: str | None = None  # the worker's shortest window, once bound (see Detector.bind)
        self._shortest: int | None = None

    def accepts(self, q: GpuQuantiles | Any) -> bool:  # anything with window, window_start, window_end
        if self.label is not None:
            return q.window == self.label
        if self.default is not None:
            return q.window == self.default
        # unbound (a detector used on its own): the shortest window seen so far
        if q.window == SINCE_START:
            return False
        size = q.window_end - q.window_start
        if self._shortest is None or size < self._shortest:
            self._shortest = size
        return size == self._shortest


def build(settings: Mapping[str, Mapping[str, Any]] | None = None) -> list[Detector[Any]]:
    """One instance of every detector, configured from ``settings`` (``{kind: {setting: value}}``,
    the config file's ``[detectors.<kind>]`` tables); raises ``ValueError`` naming what is wrong."""
    classes = {cls.kind: cls for cls in discover()}
    settings = settings or {}
    unknown = sorted(set(settings) - set(classes))
    if unknown:
        raise ValueError(f"no detector {', '.join(unknown)}; known: {', '.join(classes)}")
    out = []
    for kind, cls in classes.items():
        values = dict(settings.get(kind, {}))
        names = {f.name for f in dataclasses.fields(cls.config_type)}
        extra = sorted(set(values) - names)
        if extra:
            raise ValueError(f"detector {kind} has no setting {', '.join(extra)}; its settings: {', '.join(sorted(names))}")
        try:
            config = msgspec.convert(values, cls.config_type, strict=False)
        except msgspec.ValidationError as err:
            raise ValueError(f"detector {kind}: {err}") from None
        out.append(cls(config))
    return out


def discover() -> list[type[Detector[Any]]]:
    """Every concrete Detector defined in this package's modules."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    found: list[type[Detector[Any]]] = []
    stack = list(Detector.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if not getattr(cls, "__abstractmethods__", None):
            found.append(cls)
    return sorted(found, key=lambda c: c.kind)
