"""The Faust worker: moves bytes between Kafka and :class:`streams.processor.SampleProcessor`.

Values are read and written raw; decoding and validation happen in the processor with the
catalog's codecs, so a malformed message becomes a dead letter instead of a Faust
serializer error. Delivery is at-least-once (Faust commits after the agent has handled an
event); the tables downstream collapse replays on their natural keys. After a restart or a
rebalance, :mod:`streams.recovery` rebuilds the windows and open incidents before the new
partitions are processed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import faust

from hpcinsight.config import Settings
from schemas.catalog import ANOMALIES, GPU_SAMPLES_RAW, TOPICS, Topic
from streams.processor import SampleProcessor
from streams.recovery import open_incidents, rebuild_windows
from streams.windows import WindowSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerOptions:
    window_s: float = 60.0
    hop_s: float = 10.0
    instance: str = "0"

    @property
    def window(self) -> WindowSpec:
        return WindowSpec(int(self.window_s * 1000), int(self.hop_s * 1000))


def create_app(settings: Settings, options: WorkerOptions) -> tuple[faust.App, SampleProcessor]:
    app = faust.App(
        f"{settings.kafka.topic_prefix}worker",
        **settings.kafka.faust_options(),
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_compression_type="zstd",
        stream_wait_empty=False,
        # static membership: a restarted worker takes its partitions back at once instead of
        # waiting out the dead member's session
        consumer_group_instance_id=f"{settings.kafka.topic_prefix}worker-{options.instance}",
        broker_session_timeout=30.0,
    )
    topics = {
        t.name: app.topic(settings.topic(t.name), key_serializer="raw", value_serializer="raw", partitions=t.partitions)
        for t in TOPICS
    }
    processor = SampleProcessor(options.window)
    raw_topic = settings.topic(GPU_SAMPLES_RAW.name)
    owned: set[int] = set()
    restored = False

    @app.on_partitions_assigned.connect
    async def rebuild_state(sender: faust.App, assigned: set, **_: object) -> None:
        # Runs while the new partitions are paused: nothing is processed until state is back.
        # Blocking the loop for the replay is deliberate (a few seconds, far below the session timeout).
        nonlocal restored
        log.info("partitions assigned: %s", sorted(assigned))
        mine = {tp.partition for tp in assigned if tp.topic == raw_topic}
        processor.forget(owned - mine)
        new = mine - owned
        owned.clear()
        owned.update(mine)
        conf = settings.kafka.client_config()
        if not restored:
            incidents = open_incidents(conf, settings.topic(ANOMALIES.name))
            processor.restore(incidents)
            restored = True
        if new:
            horizon = options.window.size_ms + 2 * options.window.hop_ms
            rebuild_windows(processor, conf, app.conf.id, raw_topic, new, horizon)

    @app.agent(topics[GPU_SAMPLES_RAW.name], name="gpu-samples")
    async def process_gpu_samples(stream: faust.Stream) -> None:
        async for event in stream.events():
            msg = event.message
            for out in processor.handle(msg.topic, msg.partition, msg.offset, event.key, event.value):
                await topics[out.topic.name].send(key=out.key, value=out.value)

    for source in processor.event_topics():  # e.g. XID events for the GPU fault detector
        async def process_events(stream: faust.Stream, source: Topic = source) -> None:
            async for event in stream.events():
                msg = event.message
                for out in processor.handle_events(source, msg.topic, msg.partition, msg.offset, event.key, event.value):
                    await topics[out.topic.name].send(key=out.key, value=out.value)

        app.agent(topics[source.name], name=f"events-{source.name}")(process_events)

    @app.timer(interval=10.0)
    async def report() -> None:
        log.info("worker stats: %s", processor.stats)

    return app, processor


def run_worker(settings: Settings, options: WorkerOptions, loglevel: str = "WARNING") -> None:
    """Run until SIGINT/SIGTERM; Faust then commits what was processed and leaves the group."""
    app, _ = create_app(settings, options)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
