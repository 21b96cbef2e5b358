"""Prompt fetches for the worker's Faust consumer: how long the broker may hold a fetch.

Faust builds its aiokafka consumer with a fixed ``fetch_max_wait_ms`` of 1,500 and no setting
for it. aiokafka keeps one fetch in flight per broker, asking only for the partitions with nothing
buffered; a partition the worker drains meanwhile waits until that fetch comes back, which the
broker holds until one of its partitions has data or the wait is out. With a live flow (agents
at 1 Hz) the worker then sat idle for up to a second while a tick's messages were at the broker
(measured at 10,240 GPUs: a raw message waited 1.1 s at the median, half of it this; docs/streams.md).
A short wait returns such a fetch soon, so the drained partitions are asked for again; an idle
worker pays one small request per wait.
"""

from __future__ import annotations

from typing import Any

import faust
from faust import transport as faust_transport
from faust.transport.drivers import aiokafka as faust_aiokafka


class _PromptConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # the constructor's fetch_max_wait_ms, which Faust fixes: read when start() builds the fetcher
        consumer._fetch_max_wait_ms = transport.fetch_max_wait_ms
        return consumer


class _PromptConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> Any:
        return _PromptConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _PromptTransport(faust_aiokafka.Transport):
    Consumer = _PromptConsumer
    fetch_max_wait_ms = 1_500  # Faust's; set per app by prompt_fetches


def prompt_fetches(app: faust.App, max_wait_ms: int) -> None:
    """Give ``app`` (its consumer not yet made) a transport whose consumer fetches with
    ``max_wait_ms`` as its longest wait."""
    if max_wait_ms <= 0:
        raise ValueError(f"fetch wait: more than 0 ms, got {max_wait_ms}")
    base = faust_transport.by_url(app.conf.broker_consumer[0])
    if not issubclass(_PromptTransport, base):
        raise ValueError(f"prompt fetches need Faust's aiokafka transport, not {base.__name__}")
    transport = _PromptTransport(app.conf.broker_consumer, app)
    transport.fetch_max_wait_ms = max_wait_ms
    app.transport = transport
