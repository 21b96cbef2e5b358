"""The Faust worker: moves bytes between Kafka and :class:`hpcinsight.streams.processor.SampleProcessor`.

Values are read and written raw; decoding and validation happen in the processor with the
catalog's codecs, so a malformed message becomes a dead letter instead of a Faust serializer
error. Delivery is at-least-once (Faust commits after the agent has handled an event); the tables
downstream collapse replays on their natural keys.

Agents (one per input topic): raw GPU samples (per-GPU stage), raw IB samples (attribution),
GPU sketches (job stage, co-partitioned with the scheduler events by job), and each topic a
detector reads. Besides, every worker follows the whole scheduler and inventory topics (outside
the consumer group) to keep its attribution table complete. After a restart or a rebalance,
:mod:`hpcinsight.streams.recovery` rebuilds the state before the new partitions are processed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import faust
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition
from faust.types import TP

from hpcinsight.core import metrics
from hpcinsight.core.consumer import DeadLetterOut
from hpcinsight.core.durations import parse_ms
from hpcinsight.core.kafka import (
    committed_offsets,
    new_consumer,
    new_producer,
    offsets_consumer,
    partition_counts,
    produce_queued,
    watermarks,
    while_broker_away,
)
from hpcinsight.core.settings import Settings
from hpcinsight.schemas.catalog import (
    ANOMALIES,
    DEAD_LETTERS,
    GPU_SAMPLES,
    GPU_SAMPLES_RAW,
    GPU_SKETCHES,
    IB_SAMPLES_RAW,
    JOB_QUANTILES,
    NODE_INVENTORY,
    SCHEDULER_EVENTS,
    SCHEDULING_KPIS,
    STEP_METRICS_RAW,
    STREAM_STATE,
    TOPICS,
    Topic,
)
from hpcinsight.schemas.events import DeadLetter
from hpcinsight.streams.detectors import build as build_detectors
from hpcinsight.streams.fetching import prompt_fetches
from hpcinsight.streams.jobs import JobStageConfig
from hpcinsight.streams.kpis import KpiConfig
from hpcinsight.streams.offsets import Check, OffsetGuard
from hpcinsight.streams.priority import GpuStageFirst
from hpcinsight.streams.processor import Handler, Message, Output, ProcessorConfig, SampleProcessor
from hpcinsight.streams.recovery import last_message, open_incidents, rebuild_gpu_stage, rebuild_job_stage
from hpcinsight.streams.rolling import DEFAULT_WINDOWS, RollingConfig
from hpcinsight.streams.windows import WindowSpec

log = logging.getLogger(__name__)


def parse_windows(text: str, setting: str = "--windows") -> tuple[WindowSpec, ...]:
    """``1m/10s,5m/1m,1h/20m``: sliding windows as SIZE/HOP (durations; a bare number is seconds)."""
    specs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        size, sep, hop = part.partition("/")
        if not sep:
            raise ValueError(f"window {part!r}: write SIZE/HOP, e.g. 1m/10s")
        specs.append(WindowSpec(parse_ms(size, setting, plain="s"), parse_ms(hop, setting, plain="s")))
    if not specs:
        raise ValueError("at least one window is needed")
    return tuple(specs)


@dataclass(frozen=True)
class WorkerOptions:
    windows: tuple[WindowSpec, ...] = DEFAULT_WINDOWS
    lateness_s: float = 2.0
    since_start_every_s: float = 60.0
    checkpoint_every_s: float = 60.0
    replay_margin_s: float = 30.0
    replay_reach_s: float | None = None  # 5 minutes, or what a restart needs where that is more
    kpi_interval_s: float = 60.0
    #: a KPI interval closes this long after its end (event time, or wall time for a quiet scheduler)
    kpi_lateness_s: float = 10.0
    job_wait_s: float = 10.0
    instance: str = "0"
    #: the per-GPU stage takes up to this many raw messages at a time (see create_app) ...
    #: 100: what a batch saves is spent by then (a worker drains a backlog as fast as at 500), and
    #: a batch's outputs wait for its last message: at 500 anomalies waited twice as long
    batch_max: int = 100
    #: ... or what came within this long, whichever is first (the latency a batch can add)
    batch_wait_s: float = 0.05
    #: the longest the broker may hold the consumer's fetch (streams.fetching: Faust's 1.5 s
    #: left a live worker idle with messages waiting)
    fetch_wait_s: float = 0.05
    #: the longest the job stage holds off while the per-GPU stage has a backlog (streams.priority);
    #: None: a fifth of the job wait, at most 2 s
    gpu_first_s: float | None = None

    def __post_init__(self) -> None:
        if self.batch_max < 1:
            raise ValueError(f"--batch-max: at least 1 message, got {self.batch_max}")
        if self.batch_wait_s <= 0:  # Faust's take waits forever for a full batch without one
            raise ValueError(f"--batch-wait: more than 0, got {self.batch_wait_s * 1000:g} ms")
        if self.fetch_wait_s < 0.001:
            raise ValueError(f"--fetch-wait: at least 1 ms, got {self.fetch_wait_s * 1000:g} ms")
        if self.gpu_first_s is not None and not 0 <= self.gpu_first_s <= self.job_wait_s / 2:
            raise ValueError(
                f"--gpu-first: from 0 to half of --job-wait ({self.job_wait_s / 2:g} s), got {self.gpu_first_s:g} s: "
                "the job stage waits for its GPUs that long, a hold must stay well within it"
            )

    @property
    def job_hold_s(self) -> float:
        """The longest the job stage holds off for the per-GPU stage (see :attr:`gpu_first_s`)."""
        return min(2.0, self.job_wait_s / 5) if self.gpu_first_s is None else self.gpu_first_s

    def processor_config(self) -> ProcessorConfig:
        since_ms, checkpoint_ms = int(self.since_start_every_s * 1000), int(self.checkpoint_every_s * 1000)
        # the base pane: the largest duration every hop and period is a multiple of
        base = math.gcd(since_ms, checkpoint_ms, *(w.hop_ms for w in self.windows))
        rolling = RollingConfig(
            windows=self.windows,
            base_ms=base,
            lateness_ms=int(self.lateness_s * 1000),
            since_start_every_ms=since_ms,
        )
        return ProcessorConfig(
            rolling=rolling,
            checkpoint_every_ms=checkpoint_ms,
            replay_margin_ms=int(self.replay_margin_s * 1000),
            replay_reach_ms=None if self.replay_reach_s is None else int(self.replay_reach_s * 1000),
            kpis=KpiConfig(interval_s=self.kpi_interval_s, lateness_s=self.kpi_lateness_s),
            jobs=JobStageConfig(wait_s=self.job_wait_s, stale_s=3 * self.job_wait_s),
        )


class GuardedGaps:
    """Faust counts a jump in a partition's offsets as handled (meant for compaction and
    transaction markers) and may commit past it, so a message its fetch skipped was committed
    unhandled. In the topics the stages guard (streams.offsets), only a gap the guard confirmed
    with the broker counts."""

    def __init__(self, consumer: Any, topics: set[str]) -> None:
        self.topics = frozenset(topics)
        self._add = consumer._add_gap
        consumer._add_gap = self._unless_guarded  # Faust's fetch loop calls it by this name

    async def _unless_guarded(self, tp: TP, offset_from: int, offset_to: int) -> None:
        if tp.topic not in self.topics:
            await self._add(tp, offset_from, offset_to)

    async def confirm_gap(self, tp: TP, first: int, last: int) -> None:
        """Offsets ``first`` to ``last`` are not in the partition: a commit may pass them."""
        await self._add(tp, first, last)


JOB_QUANTILES_LOOKBACK_MS = 5 * 60_000
#: how often the worker's consumer refreshes its metadata, whatever happens (see create_app)
METADATA_MAX_AGE_MS = 10_000


def leads_kpis(assigned: Iterable[Any], inventory_topic: str) -> bool:
    """Whether a worker assigned ``assigned`` publishes the scheduling KPIs: it owns partition 0 of
    the inventory topic, which the catalog makes single. Owning any of its partitions made every
    owner a publisher where the topic was created with more (each KPI row published twice or more)."""
    return any(tp.topic == inventory_topic and tp.partition == 0 for tp in assigned)


def samples_co_partitioned(settings: Settings) -> bool:
    """Whether the broker lists as many partitions for the stored GPU samples as for the raw ones,
    so that the worker can forward a raw partition's samples to the same partition (see
    ``SampleProcessor._gpu_outputs``); topics an operator created with other counts: by node key.
    A state topic with fewer partitions than the raw samples is refused in words (ValueError): a
    raw partition's checkpoints go to the state partition of its number, where its rebuild reads
    them. librdkafka refuses a message for a partition the topic lacks when it is produced, so
    either would fail the stage on every batch. The catalog's count stands for a topic not there."""
    topics = (GPU_SAMPLES_RAW, GPU_SAMPLES, STREAM_STATE)
    names = [settings.topic(t.name) for t in topics]
    with offsets_consumer(settings.kafka.client_config(), f"{settings.kafka.topic_prefix}worker-metadata") as consumer:
        listed = partition_counts(consumer, names)
    raw, stored, state = (listed.get(name, t.partitions) for name, t in zip(names, topics, strict=True))
    if state < raw:
        raise ValueError(
            f"{settings.topic(STREAM_STATE.name)} has {state} partitions, fewer than the {raw} of "
            f"{settings.topic(GPU_SAMPLES_RAW.name)}: each raw partition checkpoints to the state partition of its "
            f"number; give the state topic at least {raw} (kafka-topics --alter --partitions {raw})"
        )
    if raw != stored:
        log.warning("%d raw GPU sample partitions and %d stored ones: samples forwarded by node key", raw, stored)
    return raw == stored


class SchedulerFeed:
    """Follows every partition of the scheduler and inventory topics into the attribution table."""

    def __init__(self, settings: Settings, processor: SampleProcessor, stop: threading.Event | None = None) -> None:
        self._processor = processor
        # job quantiles too: the KPIs' utilisation by job class, team and user (the job stage is
        # partitioned by job, the KPIs need every job)
        self._topics = {settings.topic(t.name): t for t in (SCHEDULER_EVENTS, NODE_INVENTORY, JOB_QUANTILES)}
        conf = settings.kafka.client_config()
        self._consumer = new_consumer(conf, f"{settings.kafka.topic_prefix}attribution", offset_reset="latest")
        # every partition the broker lists, not the catalog's count: topics an operator created
        # with more partitions would otherwise leave the jobs placed in the others unattributed
        listed = partition_counts(self._consumer, list(self._topics))
        partitions = {name: listed.get(name, topic.partitions) for name, topic in self._topics.items()}
        tps = []
        for name in self._topics:
            tps.extend(TopicPartition(name, p, OFFSET_BEGINNING) for p in range(partitions[name]))
        # Of the job quantiles only the latest since-start view of each running job matters, and one
        # comes every minute: start a few minutes back, not at a week of every window of every job.
        recent = int(time.time() * 1000) - JOB_QUANTILES_LOOKBACK_MS
        jq = settings.topic(JOB_QUANTILES.name)
        # a broker away (one node of a cluster killed while the worker starts) is waited for, not
        # a reason to exit: the chaos campaign had the worker exit here after 30 s of _TIMED_OUT
        found = while_broker_away(
            lambda: self._consumer.offsets_for_times([TopicPartition(jq, p, recent) for p in range(partitions[jq])], timeout=30),
            stop or threading.Event(),
            "finding the recent job quantiles",
        )
        if found is None:  # stopped while waiting: a clean exit
            raise SystemExit(0)
        tps = [tp for tp in tps if tp.topic != jq] + [
            TopicPartition(jq, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END) for tp in found
        ]
        self._consumer.assign(tps)
        self._tps = tps

    def poll(self, max_messages: int = 5000) -> list[Output]:
        out: list[Output] = []
        for msg in self._consumer.consume(num_messages=max_messages, timeout=0):
            if not msg.error():
                out.extend(self._processor.observe_scheduler(msg.value(), self._topics[msg.topic()]))
        return out

    def catch_up(self, timeout: float = 60.0) -> list[Output]:
        """Block until everything in the topics now has been read (at start, before any sample)."""
        high = {}
        for tp in self._tps:
            high[(tp.topic, tp.partition)] = watermarks(self._consumer, TopicPartition(tp.topic, tp.partition), timeout)[1]
        deadline, out = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            positions = self._consumer.position([TopicPartition(t, p) for t, p in high])
            if all(
                tp.offset >= high[(tp.topic, tp.partition)] or (tp.offset < 0 and high[(tp.topic, tp.partition)] == 0)
                for tp in positions
            ):
                return out
            for msg in self._consumer.consume(num_messages=5000, timeout=0.2):
                if not msg.error():
                    out.extend(self._processor.observe_scheduler(msg.value(), self._topics[msg.topic()]))
        log.warning("attribution table not caught up after %.0f s; continuing", timeout)
        return out


class OutputProducer:
    """The worker's outputs go through librdkafka, not Faust's Python producer.

    Faust reads and commits; what the processor emits (about one message per input message, more
    at window closes) is produced by a confluent-kafka producer: a few microseconds a message
    instead of the hundreds aiokafka's pure-Python path costs, which was most of a worker's time.
    The at-least-once promise is kept by hooking the flush Faust performs before every offset
    commit: the commit waits until every output produced so far is acknowledged. A broker away is
    weather: librdkafka retries without a deadline and the commit waits (logging while it does).
    An output the broker refuses for good (e.g. too large) becomes a dead letter, so it is neither
    retried forever nor lost without a record.
    """

    def __init__(self, settings: Settings) -> None:
        self._names = {t.name: settings.topic(t.name) for t in TOPICS}
        self._producer = new_producer(
            settings.kafka,
            extra={
                "compression.type": "zstd",
                "linger.ms": 10,
                "queue.buffering.max.messages": 1_000_000,
                "partitioner": "murmur2_random",  # as Faust and the agents: job-keyed topics stay co-partitioned
                "message.timeout.ms": 0,  # retry until delivered: the commit waits, nothing is dropped
                "on_delivery": self._on_delivery,  # every message's, dead letters' too (a refused one is only logged: see flush)
            },
        )
        self._dead = DeadLetterOut(self._producer, DEAD_LETTERS.full_name(settings.kafka.topic_prefix))
        self._refused: list[tuple[str, bytes | None, bytes | None, str]] = []
        self.refused = 0

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._refused.append((msg.topic(), msg.key(), msg.value(), str(err)))

    def send(self, outputs: list[Output]) -> None:
        for out in outputs:
            kwargs = {} if out.partition is None else {"partition": out.partition}
            produce_queued(self._producer, self._names[out.topic.name], out.value, out.key, wait_s=0.1, **kwargs)
        self._producer.poll(0)

    def flush(self, report_every_s: float = 30.0) -> None:
        """Wait until every output so far is acknowledged; refused ones become dead letters."""
        started = time.monotonic()
        while True:
            left = self._producer.flush(report_every_s)
            refused, self._refused = self._refused, []
            for topic, key, value, reason in refused:
                self.refused += 1
                if topic == self._dead.topic:
                    log.error(
                        "a dead letter was refused by the broker (%s); it is logged here instead: key=%r size=%d",
                        reason,
                        key,
                        len(value or b""),
                    )
                    continue
                log.error("output to %s refused by the broker (%s); dead-lettered", topic, reason)
                letter = DeadLetter.of(
                    ts=int(time.time() * 1000),
                    source_topic=topic,
                    source_partition=0,
                    source_offset=0,
                    stage="worker.output",
                    reason=f"refused by the broker: {reason}",
                    raw=value,
                    key=key,
                )
                self._dead.send(topic.encode(), DEAD_LETTERS.codec.encode([letter]))
            if not left and not refused:
                return
            if left:
                log.warning(
                    "%d outputs not yet acknowledged after %.0f s (broker away?); the commit waits",
                    left,
                    time.monotonic() - started,
                )

    def attach(self, app: faust.App) -> None:
        """Make Faust's pre-commit producer flush also flush (and check) our outputs."""
        producer = app.producer
        faust_flush = producer.flush

        async def flush_both() -> None:
            await faust_flush()
            await asyncio.get_running_loop().run_in_executor(None, self.flush)

        producer.flush = flush_both  # type: ignore[method-assign]  # Faust flushes through this one name


def create_app(
    settings: Settings, options: WorkerOptions, stop: threading.Event | None = None
) -> tuple[faust.App, SampleProcessor]:
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
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
        # The topics exist before the worker starts (hpcinsight topics / ensure_topics). Faust's
        # own topic creation goes to the controller it last knew and crashed the worker when that
        # node of a cluster was down (chaos finding F2); its leader topic serves on_leader timers,
        # which the worker does not use.
        topic_allow_declare=False,
        topic_disable_leader=True,
        # static membership: a restarted worker takes its partitions back at once instead of
        # waiting out the dead member's session
        consumer_group_instance_id=f"{settings.kafka.topic_prefix}worker-{options.instance}",
        broker_session_timeout=30.0,
        # A group assignment made while a restarted broker does not yet list the topics leaves them
        # out ("Ignoring missing topic") until the leader's next metadata refresh shows them and it
        # rejoins: with aiokafka's default (5 min) the worker sat idle that long (chaos campaign,
        # seed 3: assigned nothing at 05:37:08, partitions back at 05:42:08). Refreshed every
        # METADATA_MAX_AGE_MS, such an assignment mends within that (one small request each time).
        consumer_metadata_max_age_ms=METADATA_MAX_AGE_MS,
        # Faust keeps a folder per app id; under the data dir, not wherever the worker was started
        datadir=str(settings.data_dir / "faust" / f"{settings.kafka.topic_prefix}worker"),
    )
    prompt_fetches(app, round(options.fetch_wait_s * 1000))
    topics = {
        t.name: app.topic(settings.topic(t.name), key_serializer="raw", value_serializer="raw", partitions=t.partitions)
        for t in TOPICS
    }
    processor = SampleProcessor(options.processor_config(), detectors=build_detectors(settings.detectors))
    processor.samples_by_partition = samples_co_partitioned(settings)  # the state topic checked too
    # pyarrow, and the pandas its first conversion of Python values imports, loaded now (0.5 s
    # here): not in the first batch after a start or restart, where it delays every output
    GPU_SAMPLES.codec.encode([])
    feed = SchedulerFeed(settings, processor, stop)
    raw_topic, sketch_topic = settings.topic(GPU_SAMPLES_RAW.name), settings.topic(GPU_SKETCHES.name)
    owned: dict[str, set[int]] = {raw_topic: set(), sketch_topic: set()}
    guard = OffsetGuard()  # every stage's account of its offsets: see streams.offsets
    started = False
    # One worker publishes the scheduling KPIs: the one that owns the inventory's partition 0 (see
    # leads_kpis). Every worker computes them from the whole scheduler stream, so a new leader goes straight on.
    inventory_topic = settings.topic(NODE_INVENTORY.name)
    kpi = {"leader": False}

    @app.on_partitions_assigned.connect
    async def rebuild_state(sender: faust.App, assigned: set, **_: object) -> None:
        # The broker may go away during the rebuild (a restart, a node of a cluster lost): that is
        # weather, tried again with backoff, never a reason for Faust to crash the worker.
        began, attempt = time.monotonic(), 0
        while True:
            try:
                await _rebuild_state(assigned)
                break
            except Exception as err:  # noqa: BLE001 - see above; every step of the rebuild is idempotent
                delay = min(30.0, 2.0**attempt)
                attempt += 1
                log.warning("rebuilding state failed (%s: %s); trying again in %.0f s", type(err).__name__, err, delay)
                await asyncio.sleep(delay)
        processor.stats.restores += 1
        processor.stats.restore_seconds = time.monotonic() - began

    async def _rebuild_state(assigned: set) -> None:
        # Runs while the new partitions are paused: nothing is processed until state is back.
        # Blocking the loop for the replay is deliberate (seconds, far below the session timeout).
        nonlocal started
        log.info("partitions assigned: %s", sorted(assigned))
        conf = settings.kafka.client_config()
        mine = {(tp.topic, tp.partition) for tp in assigned}
        guard.rebalanced(mine, committed_offsets(conf, app.conf.id, sorted(k for k in mine if k[0] in guarded.topics)))
        kpi["leader"] = leads_kpis(assigned, inventory_topic)
        if not started:
            last = last_message(conf, settings.topic(SCHEDULING_KPIS.name), SCHEDULING_KPIS)
            processor.kpis_published_to = max((r.ts for r in last), default=0)
            await send_kpis(feed.catch_up())  # rows of intervals published before a restart are skipped
            processor.restore(open_incidents(conf, settings.topic(ANOMALIES.name)))
            started = True
        mine = {tp.partition for tp in assigned if tp.topic == raw_topic}
        processor.forget(owned[raw_topic] - mine)
        new = mine - owned[raw_topic]
        if new:
            processor.forget(new)  # a rebuild tried again starts these series afresh
            rebuild_gpu_stage(processor, conf, app.conf.id, raw_topic, settings.topic(STREAM_STATE.name), new)
        owned[raw_topic] = mine  # only once rebuilt: a failed try is tried whole again
        jobs = {tp.partition for tp in assigned if tp.topic == sketch_topic}
        if jobs != owned[sketch_topic]:
            rebuild_job_stage(processor, conf, app.conf.id, sketch_topic, jobs)
            owned[sketch_topic] = jobs

    outputs_producer = OutputProducer(settings)
    outputs_producer.attach(app)

    async def send(outputs: list[Output]) -> None:
        outputs_producer.send(outputs)

    async def send_kpis(outputs: list[Output]) -> None:
        if kpi["leader"]:  # every worker computes the KPIs; one publishes them
            await send(outputs)

    @app.agent(topics[NODE_INVENTORY.name], name="kpi-leader")
    async def hold_inventory(stream: faust.Stream) -> None:
        async for _ in stream.events():  # owning this partition is what makes a worker the KPI leader
            pass

    async def follow(msg: Any) -> bool:
        """Whether a stage handles ``msg`` now; a hole in its partition's offsets is sought back
        (streams.offsets). A message that comes again later is marked acked, so no commit counts it."""
        check: Check = guard.check(msg.topic, msg.partition, msg.offset)
        if check.later:
            msg.acked = True
        if check.seek is not None:
            log.warning(
                "%s[%d]: offset %d came after %d; seeking back to %d (the fetch skipped the messages between)",
                msg.topic,
                msg.partition,
                msg.offset,
                check.seek - 1,
                check.seek,
            )
            await seek(TP(msg.topic, msg.partition), check.seek)
        if check.gap is not None:
            log.warning(
                "%s[%d]: offsets %d-%d are not in the partition; going on from %d",
                msg.topic,
                msg.partition,
                *check.gap,
                msg.offset,
            )
            await guarded.confirm_gap(TP(msg.topic, msg.partition), *check.gap)
        return check.handle

    @app.timer(interval=1.0)
    async def seek_again() -> None:
        """A seek back whose messages have not come within a few seconds is made again; where
        retention deleted them meanwhile, the guard goes on from the partition's first offset."""
        for topic, partition, offset in guard.overdue():
            tp = TP(topic, partition)
            try:
                earliest = (await app.consumer.earliest_offsets(tp)).get(tp)
                gone = guard.gone_before(topic, partition, earliest) if earliest is not None else None
                if gone is not None:
                    log.warning("%s[%d]: offsets %d-%d were deleted before they were handled", topic, partition, *gone)
                    await guarded.confirm_gap(tp, *gone)
                    offset = gone[1] + 1
            except Exception as err:  # noqa: BLE001 - asked again on the next tick (the probe stays)
                log.warning("%s[%d]: the partition's first offset not known (%s)", topic, partition, err)
            log.warning("%s[%d]: seeking back to %d again", topic, partition, offset)
            await seek(tp, offset)

    async def seek(tp: TP, offset: int) -> None:
        try:  # on the consumer's thread, as Faust's own seeks at a rebalance (its plain seek is not)
            await app.consumer.seek_wait({tp: offset})
        except Exception as err:  # noqa: BLE001 - the probe stays: seek_again tries again (or a rebalance drops it)
            log.warning("%s[%d]: seeking to %d failed (%s)", tp.topic, tp.partition, offset, err)

    # One agent per input topic; each hands the processor raw bytes and sends what comes back. A
    # message whose handling fails in any way becomes a dead letter (processor.guarded, and per
    # message in handle_batch): no input stops an agent, and none is skipped without a record.
    #
    # The per-GPU stage takes batches: Faust's per-message cost is most of a worker's, and a batch's
    # outputs go out combined (SampleProcessor.handle_batch). take_events acks a batch's events
    # only when the loop body has returned for it (after send has queued every output), so the
    # commit, which first flushes those outputs (OutputProducer.attach), still covers only what was
    # handled. A batch can hold events fetched before a rebalance: they are left to Faust's fetch
    # from the committed offsets that follows it, as Faust's own iterator skips a message of an
    # older generation, and marked acked so that no commit counts them. What that fetch brings
    # again in a partition the worker kept is skipped by every stage, and should that fetch miss any, the
    # next message shows the hole and the stage seeks back for it (see follow).
    gpu_stage = "gpu-samples"
    gpu_first = GpuStageFirst(options.job_hold_s, options.batch_max, idle_s=2 * options.batch_wait_s)

    async def process_gpu(stream: faust.Stream) -> None:
        async for events in stream.take_events(options.batch_max, options.batch_wait_s):
            generation, batch, stale = app.consumer_generation_id, list[Message](), 0
            for event in events:
                msg = event.message
                if msg.generation_id != generation:
                    msg.acked = True  # the consumer's ack bookkeeping skips it; its copy from the new fetch is acked
                    stale += 1
                elif await follow(msg):
                    batch.append((msg.topic, msg.partition, msg.offset, event.key, event.value))
            if len(batch) < len(events):
                log.info(
                    "%d messages handled already or past a hole, %d fetched before the rebalance",
                    len(events) - len(batch) - stale,
                    stale,
                )
            with collections_paused():
                outputs = processor.handle_batch(batch, gpu_stage)
            await send(outputs)
            gpu_first.took(len(events))

    app.agent(topics[GPU_SAMPLES_RAW.name], name=gpu_stage)(process_gpu)
    stages: list[tuple[Topic, str, Handler]] = [
        (IB_SAMPLES_RAW, "ib-samples", processor.handle_ib),
        (STEP_METRICS_RAW, "step-metrics", processor.handle_steps),
        (GPU_SKETCHES, "job-stage", processor.handle_sketches),
    ]
    for source in processor.event_topics():  # e.g. XID events, scheduler events
        stages.append((source, f"events-{source.name}", functools.partial(processor.handle_events, source)))
    guarded = GuardedGaps(app.consumer, {settings.topic(t.name) for t in [GPU_SAMPLES_RAW, *(t for t, _, _ in stages)]})
    for topic, name, handle in stages:
        handle = processor.guarded(handle, name)

        async def process(stream: faust.Stream, handle: Handler = handle, yields: bool = topic is GPU_SKETCHES) -> None:
            async for event in stream.events():
                while yields and (hold := gpu_first.hold_s()):  # the job stage: the per-GPU stage's backlog first
                    await asyncio.sleep(hold)
                msg = event.message
                if await follow(msg):  # in order, once (streams.offsets)
                    await send(handle(msg.topic, msg.partition, msg.offset, event.key, event.value))

        app.agent(topics[topic.name], name=name)(process)

    @app.timer(interval=1.0)
    async def follow_scheduler() -> None:
        try:
            outputs = feed.poll()
            # a quiet scheduler still closes its intervals: event time is wall time for live sources
            outputs += processor.advance_kpis(int(time.time() * 1000) - int(processor.config.kpis.lateness_s * 1000))
        except Exception:  # a broker hiccup or a bad record: the next tick tries again
            log.exception("following the scheduler topics failed; trying again in 1 s")
            return
        await send_kpis(outputs)

    @app.timer(interval=1.0)
    async def release_job_windows() -> None:
        if gpu_first.hold_s():  # as the job stage's messages: the next tick, a second on
            return
        try:
            outputs = processor.tick_jobs()
        except Exception:  # one bad window must not stop the job stage's clock
            log.exception("releasing job windows failed; trying again in 1 s")
            return
        await send(outputs)

    @app.timer(interval=10.0)
    async def report() -> None:
        log.info("worker stats: %s", processor.stats)

    @app.timer(interval=5.0)
    async def measure_lag() -> None:
        lag.clear()
        try:
            consumer = app.consumer
            for tp in consumer.assignment():
                high, read = consumer.highwater(tp), consumer._read_offset.get(tp)
                if high is not None and read is not None:
                    lag[(tp.topic, tp.partition)] = max(0, high - (read + 1))
        except Exception as err:  # noqa: BLE001 - a metric, never a reason to stop
            log.debug("lag not measured: %s", err)

    lag: dict[tuple[str, int], int] = {}
    app.hpcinsight_lag = lag  # type: ignore[attr-defined]  # read by the CLI's metrics server
    app.hpcinsight_metrics = functools.partial(worker_metric_families, processor, outputs_producer, gpu_first)  # type: ignore[attr-defined]  # read by the CLI's metrics server
    return app, processor


def worker_metric_families(processor: SampleProcessor, outputs: OutputProducer, gpu_first: GpuStageFirst) -> Iterator[Any]:
    """The worker's series for Prometheus (served by the CLI with the lag, see hpcinsight.core.metrics)."""
    st = processor.stats
    yield metrics.labelled("hpcinsight_worker_messages", "messages handled, per stage", "stage", st.by_stage)
    yield from metrics.counters(
        [
            ("hpcinsight_worker_samples", st.samples, "GPU samples processed"),
            ("hpcinsight_worker_ib_samples", st.ib_samples, "IB samples processed"),
            ("hpcinsight_worker_windows", st.windows, "per-GPU windows closed"),
            ("hpcinsight_worker_job_windows", st.job_windows, "job windows completed"),
            ("hpcinsight_worker_anomalies", st.anomalies, "anomaly messages raised (firing and resolved)"),
            ("hpcinsight_worker_dead_letters", st.dead_letters, "messages dead-lettered"),
            (
                "hpcinsight_worker_messages_salvaged",
                st.messages_salvaged,
                "refused messages whose good records were used (the others dead-lettered)",
            ),
            ("hpcinsight_worker_failed", st.failed, "messages whose handling raised (each dead-lettered)"),
            ("hpcinsight_worker_late_samples", st.late_samples, "samples later than the lateness, dropped"),
            ("hpcinsight_worker_outputs_refused", outputs.refused, "outputs the broker refused for good (dead-lettered)"),
            ("hpcinsight_worker_state_restores", st.restores, "state rebuilds (start, rebalance)"),
        ]
    )
    yield metrics.gauge("hpcinsight_worker_state_restore_seconds", "duration of the last state rebuild", st.restore_seconds)
    yield from metrics.counters(
        [("hpcinsight_worker_job_stage_held_seconds", gpu_first.held_s, "time the job stage held off for the per-GPU stage")]
    )
    yield metrics.labelled(
        "hpcinsight_worker_open_incidents",
        "incidents firing, per detector",
        "detector",
        {kind: len(ids) for kind, ids in st.open_incidents.items()},
        gauge=True,
    )


#: Container allocations between two young-generation collections (CPython's default is 700).
#: A worker holds a large heap of long-lived objects (Faust, the state of thousands of series) and
#: allocates short-lived ones by the million, nearly all freed by reference counting. With the
#: defaults a full collection walks the whole heap every few seconds (up to 0.23 s in-process with
#: 5,120 GPUs, a stall every message behind it waits out); with this, none in 23 s of that data.
GC_YOUNG_THRESHOLD = 50_000


@contextlib.contextmanager
def collections_paused() -> Iterator[None]:
    """No garbage collection while a batch is handled: what a batch allocates lives until its
    end, so a collection inside it finds all of it alive and promotes it towards the full
    collections that walk the whole heap. After the batch it is freed and the collector finds
    little (docs/benchmarks.md: a third of the per-GPU stage's time at CPython's defaults)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def run_worker(
    settings: Settings,
    options: WorkerOptions,
    loglevel: str = "WARNING",
    on_app: Callable[[faust.App], object] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run until SIGINT/SIGTERM; Faust then commits what was processed and leaves the group.
    ``on_app`` sees the app before it starts (the CLI serves its metrics); ``stop``, set by a signal
    while the app is built, ends a wait for the broker."""
    app, _ = create_app(settings, options, stop)
    if on_app is not None:
        on_app(app)
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)
    new_worker(app, loglevel).execute_from_commandline()


def new_worker(app: faust.App, loglevel: str) -> faust.Worker:
    """Faust's worker without its terminal spinner. To spin at every log record, the spinner sets
    the root logger to DEBUG for good (its handler stays after start-up), so every library's debug
    call on the hot path built a record that no handler printed."""
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.spinner = None
    return worker
