"""The agent loop: sample on a fixed schedule and send one message per node per tick.

Ticks are scheduled on the monotonic clock at ``start + k * interval`` so the period never
drifts; a tick that overruns is skipped (and counted), never bunched. The producer is
idempotent with ``acks=all``, so a retry inside librdkafka never duplicates a message, and
``close`` flushes everything that was accepted before it returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException, Producer

from agents.base import Collector

log = logging.getLogger(__name__)


@dataclass
class AgentStats:
    ticks: int = 0
    skipped_ticks: int = 0
    messages: int = 0
    records: int = 0
    delivered: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class KafkaSender:
    """An idempotent, compressing producer that counts what the broker acknowledged."""

    def __init__(self, client_config: dict[str, Any]) -> None:
        conf = {
            **client_config,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "zstd",
            "linger.ms": 20,
            "message.timeout.ms": 300_000,
        }
        self._producer = Producer(conf)
        self.stats = AgentStats()

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.stats.delivered += 1
        else:
            self.stats.failed += 1
            if len(self.stats.errors) < 20:
                self.stats.errors.append(str(err))
            log.error("delivery failed: %s", err)

    def send(self, topic: str, key: str, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(topic, key=key.encode(), value=value, on_delivery=self._on_delivery)
                break
            except BufferError:  # local queue full: let librdkafka drain, then retry
                self._producer.poll(0.1)
        self._producer.poll(0)
        self.stats.messages += 1

    def flush(self, timeout: float = 60.0) -> int:
        """Wait for acknowledgements; returns how many messages are still undelivered."""
        return self._producer.flush(timeout)


def run_agent(
    collector: Collector[Any],
    sender: KafkaSender,
    topic: str,
    interval_s: float = 1.0,
    ticks: int | None = None,
    speed: float = 1.0,
    stop: threading.Event | None = None,
) -> AgentStats:
    """Sample ``collector`` every ``interval_s`` until ``ticks`` are done or ``stop`` is set.

    With ``speed`` > 1 the clock of the samples runs faster than real time (a replay or a
    simulation compressed for tests): sample timestamps still advance by ``interval_s``.
    """
    if interval_s <= 0 or speed <= 0:
        raise ValueError("interval and speed must be positive")
    stop = stop or threading.Event()
    stats = sender.stats
    codec = collector.topic.codec
    period = interval_s / speed
    interval_ms = int(round(interval_s * 1000))
    start_mono = time.monotonic()
    start_ms = (int(time.time() * 1000) // interval_ms) * interval_ms
    k = 0
    while not stop.is_set() and (ticks is None or stats.ticks < ticks):
        now_ms = start_ms + k * interval_ms if speed != 1.0 else int(time.time() * 1000)
        by_node: dict[str, list[Any]] = defaultdict(list)
        for record in collector.sample(now_ms):
            by_node[record.node].append(record)  # type: ignore[attr-defined]
        for node, records in by_node.items():
            sender.send(topic, node, codec.encode(records))
            stats.records += len(records)
        stats.ticks += 1
        k += 1
        next_at = start_mono + k * period
        late = time.monotonic() - next_at
        if late > 0:  # overran: skip the ticks we missed rather than bunch them up
            missed = int(late // period) + 1
            stats.skipped_ticks += missed
            k += missed
            next_at = start_mono + k * period
        stop.wait(max(0.0, next_at - time.monotonic()))
    left = sender.flush()
    if left:
        raise KafkaException(f"{left} messages were not acknowledged by the broker before the agent stopped")
    return stats
