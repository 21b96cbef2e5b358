"""The agent loop: sample every collector on a fixed schedule, one message per key per tick.

Ticks are scheduled on the monotonic clock at ``start + k * interval`` so the period never
drifts; a tick that overruns is skipped (and counted), never bunched. Records are grouped by
their topic's key (node for samples, job for scheduler events) into one message each, checked
as the worker will decode it (:mod:`hpcinsight.agents.fit`), and handed to
:class:`hpcinsight.agents.delivery.Delivery`, which never blocks on the network. Every
``health_interval_s`` the agent reports its own counters as an ``AgentHealth`` event, and
optionally on a Prometheus ``/metrics`` endpoint.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hpcinsight.agents.base import Collector
from hpcinsight.agents.delivery import Delivery
from hpcinsight.agents.fit import FitStats, fitted
from hpcinsight.core import metrics
from hpcinsight.core.metrics import MetricsServer
from hpcinsight.schemas.catalog import AGENT_HEALTH, Topic
from hpcinsight.schemas.events import AgentHealth

log = logging.getLogger(__name__)


@dataclass
class AgentStats:
    ticks: int = 0
    skipped_ticks: int = 0
    records: int = 0
    messages: int = 0
    errors: int = 0
    #: logical topic name -> [messages, records]
    by_topic: dict[str, list[int]] = field(default_factory=dict)
    #: readings outside their schema's range, sent as unknown, and records left out (agents.fit)
    fit: FitStats = field(default_factory=FitStats)


class Metrics(MetricsServer):
    """The agent's counters on a Prometheus endpoint (prometheus-client)."""

    def __init__(self, port: int, stats: AgentStats, delivery: Delivery, host: str = "127.0.0.1") -> None:
        super().__init__(host, port, lambda: agent_metric_families(stats, delivery))


def agent_metric_families(stats: AgentStats, delivery: Delivery) -> Iterator[Any]:
    d = delivery.stats
    yield from metrics.counters(
        [
            ("hpcinsight_agent_ticks", stats.ticks, "ticks sampled"),
            ("hpcinsight_agent_tick_overruns", stats.skipped_ticks, "ticks skipped because sampling overran"),
            ("hpcinsight_agent_records", stats.records, "records taken"),
            ("hpcinsight_agent_collector_errors", stats.errors, "collector failures"),
            (
                "hpcinsight_agent_values_out_of_range",
                stats.fit.values_nulled,
                "readings outside their schema's range, sent as unknown",
            ),
            ("hpcinsight_agent_records_left_out", stats.fit.records_left_out, "records the worker would refuse, not sent"),
            ("hpcinsight_agent_messages_appended", d.appended, "messages written to the spool"),
            ("hpcinsight_agent_messages_delivered", d.delivered, "messages acknowledged by Kafka"),
            ("hpcinsight_agent_messages_spilled", d.spilled, "messages that waited on disk"),
            ("hpcinsight_agent_messages_dropped", d.dropped + delivery.spool.dropped, "messages lost (spool bound, refusal)"),
        ]
    )
    yield metrics.gauge("hpcinsight_agent_spool_bytes", "bytes waiting in the spool", delivery.spool.backlog_bytes())


def health_event(node: str, agent: str, stats: AgentStats, delivery: Delivery, now_ms: int) -> AgentHealth:
    d = delivery.stats
    return AgentHealth(
        ts=now_ms,
        node=node,
        agent=agent,
        samples_taken=stats.records,
        messages_sent=d.delivered,
        messages_spilled=d.spilled,
        messages_dropped=d.dropped + delivery.spool.dropped,
        spool_bytes=delivery.spool.backlog_bytes(),
        errors=stats.errors,
        tick_overruns=stats.skipped_ticks,
    )


def run_agent(
    collectors: list[Collector[Any]],
    delivery: Delivery,
    topic_prefix: str,
    interval_s: float = 1.0,
    ticks: int | None = None,
    speed: float = 1.0,
    stop: threading.Event | None = None,
    health_interval_s: float = 10.0,
    agent_name: str = "agent",
    node: str | None = None,
    stats: AgentStats | None = None,
    start_ms: int | None = None,
    catch_up: bool = False,
) -> AgentStats:
    """Sample ``collectors`` every ``interval_s`` until ``ticks`` are done or ``stop`` is set.

    With ``speed`` > 1 the clock of the samples runs faster than real time (a simulation
    compressed for tests): sample timestamps still advance by ``interval_s``. ``start_ms`` puts
    the first tick of such a sim clock at that time (e.g. in the past, so a compressed run never
    stamps samples ahead of the wall clock). With ``catch_up`` an overrun tick is not skipped: the
    next follows at once and the run falls behind real time instead (it does not rush to make up for
    it afterwards, nor after the process was paused), so a simulation gives the same samples however
    loaded the machine is.
    """
    if interval_s <= 0 or speed <= 0:
        raise ValueError("interval and speed must be positive")
    stop = stop or threading.Event()
    node = node or socket.gethostname()
    stats = stats if stats is not None else AgentStats()
    period = interval_s / speed
    interval_ms = int(round(interval_s * 1000))
    start_mono = time.monotonic()
    synthetic = speed != 1.0 or start_ms is not None
    if start_ms is None:
        start_ms = (int(time.time() * 1000) // interval_ms) * interval_ms
    next_health = 0
    k = 0
    while not stop.is_set() and (ticks is None or stats.ticks < ticks):
        now_ms = start_ms + k * interval_ms if synthetic else int(time.time() * 1000)
        for collector in collectors:
            try:
                records = collector.sample(now_ms)
                grouped: dict[tuple[Topic, str], list[Any]] = defaultdict(list)
                for record in records:
                    topic = collector.topic_for(record)
                    grouped[(topic, str(getattr(record, topic.key)))].append(record)
            except Exception:  # a broken source must not stop the others
                stats.errors += 1
                log.exception("collector %s failed", type(collector).__name__)
                continue
            for (topic, key), group in grouped.items():
                value, sent = fitted(topic, group, stats.fit)  # as the worker will decode it: no glitch costs the message
                if value is None:
                    continue
                delivery.send(topic.full_name(topic_prefix), key, value)
                stats.messages += 1
                counts = stats.by_topic.setdefault(topic.name, [0, 0])
                counts[0] += 1
                counts[1] += sent
            stats.records += len(records)
        stats.ticks += 1
        if now_ms >= next_health:
            event = health_event(node, agent_name, stats, delivery, now_ms)
            delivery.send(AGENT_HEALTH.full_name(topic_prefix), node, AGENT_HEALTH.codec.encode([event]))
            next_health = now_ms + int(health_interval_s * 1000)
        k += 1
        next_at = start_mono + k * period
        late = time.monotonic() - next_at
        if late > 0 and catch_up:  # overran (or was paused): go on from now, one tick at a time, no burst
            start_mono += late
            next_at = time.monotonic()
        elif late > 0:  # overran: skip the ticks we missed rather than bunch them up
            missed = int(late // period) + 1
            stats.skipped_ticks += missed
            k += missed
            next_at = start_mono + k * period
        stop.wait(max(0.0, next_at - time.monotonic()))
    final = health_event(node, agent_name, stats, delivery, start_ms + k * interval_ms if synthetic else int(time.time() * 1000))
    delivery.send(AGENT_HEALTH.full_name(topic_prefix), node, AGENT_HEALTH.codec.encode([final]))
    return stats
