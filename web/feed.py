"""Fills a :class:`ClusterState` from Kafka in a background thread.

A sink (:class:`~hpcinsight.core.consumer.TopicSink`) with partitions assigned by hand (no group
membership, nothing committed): each topic starts a look-back before now, found with
``offsets_for_times``, so a service started mid-run shows the last samples, the anomalies still
open, and the latest quantiles and KPIs at once, then follows the topics live. It owns no topic:
what it cannot decode or apply is skipped and counted (the topic's owner dead-letters it); of a
message with some bad records, the others are used, as the worker and the sink use them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer, Message

from hpcinsight.core.consumer import TopicSink
from hpcinsight.core.kafka import broker_retry, new_consumer
from hpcinsight.schemas.catalog import (
    ANOMALIES,
    GPU_QUANTILES,
    GPU_SAMPLES,
    JOB_QUANTILES,
    NODE_INVENTORY,
    SCHEDULING_KPIS,
    Topic,
)
from hpcinsight.web.state import ClusterState

log = logging.getLogger("hpcinsight.web.feed")

#: topic -> (how far back to start, seconds; the state method that takes its records)
FEEDS: dict[Topic, tuple[float, str]] = {
    GPU_SAMPLES: (30, "add_samples"),
    GPU_QUANTILES: (3600, "add_gpu_quantiles"),
    JOB_QUANTILES: (3600, "add_job_quantiles"),
    ANOMALIES: (7 * 86400, "add_anomalies"),
    SCHEDULING_KPIS: (3600, "add_kpis"),
    NODE_INVENTORY: (30 * 86400, "add_inventory"),
}


class Feed(TopicSink):
    #: the broker away: wait this long before asking again
    WEATHER_WAIT_S = 1.0
    POLL_MESSAGES = 2000

    def __init__(self, state: ClusterState, client_config: dict[str, Any], prefix: str) -> None:
        super().__init__()
        self.state, self.conf, self.prefix = state, client_config, prefix
        self.thread = threading.Thread(target=self._run, name="kafka-feed", daemon=True)
        self.error: str | None = None
        self.assigned = threading.Event()
        self._routes: dict[str, tuple[Topic, Callable[[list[Any]], None]]] = {}

    @property
    def skipped(self) -> int:
        """Records decoded or applied in vain (the sink dead-letters the stored ones)."""
        return self.stats.skipped

    def start(self) -> Feed:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(10)

    def _assign(self, consumer: Any) -> dict[str, tuple[Topic, Callable[[list[Any]], None]]]:
        from confluent_kafka import TopicPartition

        routes: dict[str, tuple[Topic, Callable[[list[Any]], None]]] = {}
        wanted: list[TopicPartition] = []
        now_ms = int(time.time() * 1000)
        for topic, (lookback_s, method) in FEEDS.items():
            name = topic.full_name(self.prefix)
            meta = consumer.list_topics(name, timeout=10).topics.get(name)
            if meta is None or meta.error is not None or not meta.partitions:
                raise RuntimeError(f"topic {name} is not there (create the topics first: hpcinsight topics --create)")
            routes[name] = (topic, getattr(self.state, method))
            wanted += [TopicPartition(name, p, now_ms - int(lookback_s * 1000)) for p in meta.partitions]
        found = broker_retry(lambda: consumer.offsets_for_times(wanted, timeout=10), 30)
        # past the end of the look-back (nothing that recent): the end, i.e. -1 from offsets_for_times
        consumer.assign([tp if tp.offset >= 0 else TopicPartition(tp.topic, tp.partition, -1) for tp in found])
        return routes

    def _apply(self, topic: str, apply: Any, records: list[Any]) -> None:
        """Hand ``records`` to the live state; a record it cannot take is skipped (logged and
        counted), never the feed: the view must outlive any message."""
        try:
            apply(records)
        except Exception:  # noqa: BLE001 - find the culprit one record at a time
            for record in records:
                try:
                    apply([record])
                except Exception as err:  # noqa: BLE001 - see above
                    self.stats.skipped += 1
                    log.warning("the live state refused a record of %s: %s: %s", topic, type(err).__name__, err)

    # -- the sink's own: a look-back assignment, decode by topic, the live state as delivery ------
    def new_consumer(self) -> Consumer:
        return new_consumer(
            self.conf, f"{self.prefix}web-{uuid.uuid4().hex[:8]}", offset_reset="latest", extra={"fetch.wait.max.ms": 200}
        )

    def take_partitions(self, consumer: Consumer, first: bool) -> None:
        while not self.stop_event.is_set():
            try:
                self._routes = self._assign(consumer)
                break
            except Exception as err:  # noqa: BLE001 - topics not created yet, broker starting: retry
                self.error = str(err)
                self.stop_event.wait(1.0)
        else:
            return
        self.error = None
        self.assigned.set()

    def decode(self, msg: Message) -> list[Any]:
        """The message's records; of a refused one, those that decode alone, as the worker and the
        sink use them (a scheduler adapter's one bad inventory must not hide its other nodes). The
        rest is counted as skipped: the topic's owner dead-letters it."""
        return self.decode_salvaging(msg, self._routes[msg.topic()][0].codec)

    def deliver(self, batch: Sequence[tuple[Message, list[Any]]]) -> None:
        by_topic: dict[str, list[Any]] = {}
        for msg, records in batch:
            if records:
                by_topic.setdefault(msg.topic(), []).extend(records)
        for name, records in by_topic.items():
            self._apply(name, self._routes[name][1], records)

    def _run(self) -> None:
        self.run_loop(self.stop_event)
