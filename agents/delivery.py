"""Delivery that loses nothing: every message goes through the on-disk spool to Kafka.

The sampling loop only appends to :class:`hpcinsight.agents.spool.Spool` (a local write), so it never
blocks on the network. A sender thread reads the spool in order and produces with an
idempotent confluent-kafka producer (``acks=all``, no message timeout): librdkafka retries
for as long as the broker is away, without duplicates and in order per partition. At most
``window`` messages are in flight; the rest wait on disk, so an outage of any length costs
disk (bounded), not memory. The spool's cursor advances only over messages the broker has
acknowledged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError

from hpcinsight.agents.spool import Position, Spool
from hpcinsight.core.kafka import new_producer

log = logging.getLogger(__name__)


@dataclass
class DeliveryStats:
    appended: int = 0
    delivered: int = 0
    spilled: int = 0  # appended while the broker was unreachable or the window full: waited on disk
    failed: int = 0  # refused by the broker for good (e.g. too large); counted, not retried
    broker_errors: int = 0

    @property
    def dropped(self) -> int:
        return self.failed


class Delivery:
    def __init__(
        self, client_config: dict[str, Any], spool_dir: Path, max_spool_bytes: int = 1 << 30, window: int = 10_000
    ) -> None:
        self.spool = Spool(spool_dir, max_bytes=max_spool_bytes)
        self.window = window
        self.stats = DeliveryStats()
        self._producer = new_producer(
            client_config,
            extra={
                # the Java client's partitioner, which Faust (aiokafka) uses too: a key lands in the same
                # partition whoever produces it, so topics keyed alike stay co-partitioned
                "partitioner": "murmur2_random",
                "compression.type": "zstd",
                "linger.ms": 20,
                "message.timeout.ms": 0,  # retry for as long as it takes; the spool bounds memory
                "error_cb": self._on_error,
            },
        )
        self._inflight: deque[list[Any]] = deque()  # [end position, done]
        self.broker_down = False
        self._last_logged: dict[int, float] = {}
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._wake = threading.Event()  # set by send and close: an idle sender sleeps until then
        self._thread = threading.Thread(target=self._run, name="kafka-delivery", daemon=True)
        self._thread.start()

    # -- called by the sampling loop -----------------------------------------------------
    def send(self, topic: str, key: str | bytes, value: bytes) -> None:
        if self.broker_down or len(self._inflight) >= self.window:
            self.stats.spilled += 1
        self.spool.append(topic, key.encode() if isinstance(key, str) else key, value)
        self.stats.appended += 1
        self._idle.clear()
        self._wake.set()

    # -- sender thread -------------------------------------------------------------------
    def _on_error(self, err: KafkaError) -> None:
        self.stats.broker_errors += 1
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE):
            self.broker_down = True
        now = time.monotonic()
        if now - self._last_logged.get(err.code(), -1e9) > 60:  # once a minute per kind, not per retry
            self._last_logged[err.code()] = now
            log.warning("kafka: %s (messages wait in the spool; repeats of this are not logged for 60 s)", err)

    def _on_delivery(self, entry: list[Any]) -> Any:
        def callback(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                self.stats.failed += 1
                log.error("message refused by the broker, counted as dropped: %s", err)
            else:
                self.stats.delivered += 1
                self.broker_down = False
            entry[1] = True

        return callback

    def _run(self) -> None:
        last_ack = time.monotonic()
        unsaved: Position | None = None  # acknowledged, not yet recorded in the spool (at most every 0.5 s)
        while True:
            stopping = self._stop.is_set()  # then read nothing new: hear back about what is out, and end
            room = self.window - len(self._inflight)
            records = self.spool.read(min(room, 1000)) if room > 0 and not stopping else []
            for record in records:
                entry: list[Any] = [record.end, False]
                self._inflight.append(entry)
                while True:
                    try:
                        self._producer.produce(
                            record.topic, key=record.key, value=record.value, on_delivery=self._on_delivery(entry)
                        )
                        break
                    except BufferError:
                        self._producer.poll(0.1)
            self._producer.poll(0.05 if not records else 0)
            if (got := self._pop_acknowledged()) is not None:
                unsaved = got
            if unsaved is not None and (time.monotonic() - last_ack > 0.5 or not self._inflight or stopping):
                self.spool.ack(unsaved)
                unsaved, last_ack = None, time.monotonic()
            if stopping:
                # close() has waited as long as it would: what is still unacknowledged stays in the
                # spool and is sent by the next start (a thread left polling an unreachable broker
                # would outlive its agent, and touch a spool already closed)
                return
            if not records and not self._inflight:
                self._idle.set()
                # nothing to send or to hear back about: sleep until the next send (at 1 Hz, most of
                # the second) rather than look at the spool 20 times a second; callbacks (errors,
                # logs) are still served at least every half second
                self._wake.wait(0.5)
                self._wake.clear()

    def _pop_acknowledged(self) -> Position | None:
        """Take the messages the broker has acknowledged, in order, off the in-flight queue; the
        spool position after the last of them (None: no new acknowledgement)."""
        acked: Position | None = None
        while self._inflight and self._inflight[0][1]:
            acked = self._inflight.popleft()[0]
        return acked

    # -- shutdown ------------------------------------------------------------------------
    def drain(self, timeout: float) -> bool:
        """Wait until everything appended has been acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._idle.wait(0.1) and self.stats.delivered + self.stats.failed >= self.stats.appended:
                return True
        return False

    def close(self, drain_timeout: float = 60.0) -> bool:
        drained = self.drain(drain_timeout)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self._producer.flush(5)
        if not self._thread.is_alive() and (acked := self._pop_acknowledged()) is not None:
            self.spool.ack(acked)  # what the flush heard back about is not sent again by the next start
        self.spool.close()
        return drained
