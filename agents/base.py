"""The one interface every collector implements (after Telegraf's input plugins).

A collector is built from its own small config, returns the records of one tick from
:meth:`Collector.sample`, and releases what it holds in :meth:`Collector.close`. It does
not know about Kafka: the runner groups its records into one message per node per tick
and sends them to the collector's topic from the catalog.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import ClassVar, Generic, TypeVar

from hpcinsight.schemas.catalog import Topic
from hpcinsight.schemas.events import Event

C = TypeVar("C")


class Collector(abc.ABC, Generic[C]):
    """A source of events sampled at a fixed interval."""

    #: catalog topic the records go to
    topic: ClassVar[Topic]
    #: topics of other event types this collector also emits (e.g. node inventory)
    extra_topics: ClassVar[tuple[Topic, ...]] = ()

    @classmethod
    def topic_for(cls, record: Event) -> Topic:
        """The topic of one record, by its event type."""
        for topic in (cls.topic, *cls.extra_topics):
            if type(record) is topic.event:
                return topic
        raise TypeError(f"{cls.__name__} emitted a {type(record).__name__}, which none of its topics carries")

    def __init__(self, config: C) -> None:
        self.config = config

    @abc.abstractmethod
    def sample(self, now_ms: int) -> Sequence[Event]:
        """Read the source once; ``now_ms`` is the tick's timestamp (epoch ms, UTC).

        Each record carries a ``node`` field; a failure of one device must not stop the
        others (return what could be read).
        A sequence, not a list, so a collector may say ``list[GpuSample]`` (lists are invariant).
        """

    def close(self) -> None:
        """Release handles (NVML, files). Called once, also after an error."""

    def __enter__(self) -> Collector[C]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
