"""The ClickHouse sink: Kafka topics into tables, in Arrow batches, exactly once.

Batches close by size or by age, whichever comes first. A batch is inserted with
``insert_arrow`` and only then are its offsets committed to Kafka. Every row carries its
Kafka partition and offset (``_partition``, ``_offset``), so when the sink restarts after a
crash between insert and commit, it asks ClickHouse for the highest offset already stored
per partition and resumes after it: the batch is neither lost nor inserted twice. Inserts
also carry a deterministic deduplication token, which covers a retried insert (and, with
``deduplicate_blocks_in_dependent_materialized_views``, the rollups fed from it).

Messages are decoded a block at a time, straight from the raw bytes to Arrow columns
(:meth:`hpcinsight.schemas.codec.Codec.decode_table`; on the topics of the Arrow wire, the sample
topics, that is reading the worker's IPC batches: :mod:`hpcinsight.schemas.arrow_wire`); every
row carries its own message's partition and offset, however many rows a message holds. A message
the codec refuses goes to the dead-letter topic with its reason; one whose other records decode
alone (a foreign producer's bad record) gives those and dead-letters the rest, as the worker does. One insert runs in the background while the sink goes on
consuming and decoding; the next flush (or a rebalance, or the stop) waits for it, and its
offsets are committed only once it has succeeded. Inserts run one at a time, in order, so the
rows stored for a partition are always a prefix of what was consumed.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pyarrow as pa
from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from hpcinsight.core.consumer import ConsumerStats, DeadLetterOut, TopicSink
from hpcinsight.core.kafka import new_consumer, new_producer, read_range
from hpcinsight.schemas.catalog import DEAD_LETTERS, GPU_SAMPLES, STORED, Topic
from hpcinsight.schemas.codec import Salvaged
from hpcinsight.schemas.derive import to_arrow
from hpcinsight.schemas.events import DeadLetter
from hpcinsight.sinks.insert_journal import NotedInsert, note, unfinished
from hpcinsight.sinks.replays import SeriesWatermarks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SinkOptions:
    batch_rows: int = 50_000
    batch_age_s: float = 1.0
    group_id: str = "clickhouse-sink"
    #: static group membership: a sink restarted with the same id takes its partitions back at
    #: once instead of waiting for the dead member's session to time out
    instance_id: str | None = "0"


@dataclass
class SinkStats(ConsumerStats):
    """The loop's counts (dead letters, commit failures, consumer restarts, pauses) and the store's."""

    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    batches: int = 0
    resumed_from_store: int = 0
    inserts_redone: int = 0  # noted inserts done again on taking partitions (see insert_journal)
    insert_retries: int = 0  # inserts tried again after ClickHouse refused or was away
    salvaged: int = 0  # messages stored but for the records dead-lettered (see decode_rows)
    #: insert durations (s): upper bounds and the count at or below each (cumulative), and their sum
    insert_buckets: dict[float, int] = field(default_factory=lambda: dict.fromkeys(INSERT_BUCKETS_S, 0))
    insert_seconds: float = 0.0
    inserts: int = 0
    #: (topic, partition) -> messages not yet consumed (librdkafka's cached high watermark - position)
    lag: dict[tuple[str, int], int] = field(default_factory=dict)

    def observe_insert(self, seconds: float) -> None:
        self.inserts += 1
        self.insert_seconds += seconds
        for bound in self.insert_buckets:
            if seconds <= bound:
                self.insert_buckets[bound] += 1


INSERT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, float("inf"))


def backoff_s(attempt: int, cap_s: float = 30.0) -> float:
    """1, 2, 4, ... seconds, at most ``cap_s``: how long to wait before trying again."""
    return float(min(cap_s, 2 ** min(attempt, 10)))


def dedup_token(topic: Topic, table: pa.Table) -> str:
    """The Kafka span of every partition ``table`` (rows with ``_partition``/``_offset``) covers."""
    spans = table.group_by("_partition").aggregate([("_offset", "min"), ("_offset", "max")])
    ranges = sorted(zip(*(spans.column(c).to_pylist() for c in ("_partition", "_offset_min", "_offset_max"))))
    return topic.name + "/" + ",".join(f"{p}:{lo}-{hi}" for p, lo, hi in ranges)


def insert_settings(topic: Topic, table: pa.Table, token: str | None = None) -> dict[str, Any]:
    """Settings of the insert of ``table`` (rows of ``topic`` with ``_partition``/``_offset``):
    a deduplication token (``token``, or :func:`dedup_token`'s), so the same rows inserted again
    (a retry, a redo after a crash) are recognised, in the table and in the views fed from it.

    Tables are partitioned by day, and ClickHouse refuses an insert touching more than 100
    partitions by default: a batch of a backfill or of a catch-up after a long outage (months of
    KPIs) would stop the sink. Such a batch is stored; ClickHouse logs it instead.

    Two settings are for speed (measured on ``gpu_samples``, bench ``sink``): the tables are
    ReplacingMergeTree, which by default collapses equal keys inside each inserted block, a sort
    and merge pass that cost ~1.3 us a row, 40% of the bare insert. Rows of one key arrive twice
    only from a replay (a restarted worker forwards again), as likely in the next block as in the
    same one, so readers already rely on merges and ``FINAL``; ``optimize_on_insert=0`` leaves it
    to them. ``parallel_view_processing`` feeds the rollup views side by side, not one by one.

    On a cluster the sink writes to Distributed tables, which by default answer once the rows are
    queued on the server that took them and send them to the shards later. The sink commits its
    offsets after the insert and resumes from what the shards hold, so it waits for the shards
    (``distributed_foreground_insert``); on one server the setting does nothing."""
    return {
        "insert_deduplication_token": token if token is not None else dedup_token(topic, table),
        "deduplicate_blocks_in_dependent_materialized_views": 1,
        "throw_on_max_partitions_per_insert_block": 0,
        "optimize_on_insert": 0,
        "parallel_view_processing": 1,
        "distributed_foreground_insert": 1,
    }


class Refused(NamedTuple):
    """A message of a block that was not stored whole: ``reason`` says why. ``left_out``: where its
    other records were stored (a message of several records from a producer that is not one of
    ours, one of them bad), the records left out, as one message of the same wire; its dead letter
    holds them instead of the whole message."""

    index: int
    reason: str
    left_out: bytes | None = None


def decode_rows(
    topic: Topic,
    raws: Sequence[bytes | None],
    partitions: Sequence[int],
    offsets: Sequence[int],
    replays: SeriesWatermarks | None = None,
) -> tuple[pa.Table, list[Refused]]:
    """A block of ``topic``'s messages as rows, each with its message's Kafka position, less what
    ``replays`` drops; and what of each message could not be decoded. A refused message's records
    that decode alone are stored (``Codec.salvage``, as the worker uses them), in message order."""
    positions = {"_partition": pa.array(partitions, pa.uint32()), "_offset": pa.array(offsets, pa.uint64())}
    decoded = topic.codec.decode_table(raws, positions)
    table, refused = decoded.table, [Refused(i, reason) for i, reason in decoded.rejected]
    salvaged = {r.index: topic.codec.salvage(raws[r.index]) for r in refused}
    if any(salvaged.values()):
        table, refused = (
            _with_salvaged(topic, raws, positions, salvaged),
            [r if (got := salvaged[r.index]) is None else Refused(r.index, got.reason, got.left_out) for r in refused],
        )
    return (table if replays is None else replays.drop_replays(table)), refused


def _with_salvaged(
    topic: Topic, raws: Sequence[bytes | None], positions: dict[str, pa.Array], salvaged: dict[int, Salvaged[Any] | None]
) -> pa.Table:
    """The block's rows with the salvaged messages' good records in their messages' places (the
    replay filter reads a GPU's rows in order). Rare: decoded again, with each row's message."""
    import pyarrow.compute as pc

    where = pa.array(range(len(raws)), pa.int64())
    parts = [topic.codec.decode_table(raws, {**positions, _AT: where}).table]
    for i, got in salvaged.items():
        if got is not None:
            n = len(got.records)
            extra = {name: pa.array([values[i].as_py()] * n, values.type) for name, values in positions.items()}
            parts.append(to_arrow(topic.event, got.records, {**extra, _AT: pa.array([i] * n, pa.int64())}).cast(parts[0].schema))
    table = pa.concat_tables(parts)
    return table.take(pc.sort_indices(table.column(_AT))).drop_columns([_AT])


#: the column that holds each row's message while salvaged rows are put in place
_AT = "__message"


class TableWriter:
    """The sink's path from raw message bytes to ClickHouse rows, without Kafka.

    :meth:`add` decodes a block of one topic's messages into Arrow and holds it; :meth:`submit`
    inserts everything held, one ``insert_arrow`` per table, in the background (or at once with
    ``background=False``), after the previous insert has finished; :meth:`wait` finishes the
    insert in flight, raising its error if it failed, and then runs its ``on_done``.
    """

    def __init__(
        self,
        client: Client,
        background: bool = True,
        rows: dict[str, int] | None = None,
        stats: SinkStats | None = None,
        topic_prefix: str = "",
    ) -> None:
        self.client = client
        self.rows: dict[str, int] = rows if rows is not None else defaultdict(int)  # rows inserted, per table
        self.stats = stats if stats is not None else SinkStats(rows=self.rows)
        self.pending_rows = 0
        #: set to stop retrying a failing insert (the process is stopping): the insert then raises
        self.give_up = threading.Event()
        #: table -> the filter of the worker's replayed rows (tables that feed rollups; see hpcinsight.sinks.replays)
        self.replay_filters: dict[str, SeriesWatermarks] = {}
        #: tables whose inserts are noted in the journal first (those feeding views; see
        #: hpcinsight.sinks.insert_journal), and the prefix of the Kafka topics they are read from
        self.noted_tables: set[str] = set()
        self.topic_prefix = topic_prefix
        self._pending: dict[str, tuple[Topic, list[pa.Table]]] = {}
        self._read: dict[str, dict[int, list[int]]] = {}  # topic -> partition -> [first, last] offset read
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sink-insert") if background else None
        self._inflight: tuple[Future[None], Callable[[], None] | None] | None = None

    def add(self, topic: Topic, raws: Sequence[bytes | None], partitions: Sequence[int], offsets: Sequence[int]) -> list[Refused]:
        """Decode and hold one block of ``topic``'s messages; returns what of each message could
        not be decoded (see :func:`decode_rows`)."""
        replays = self.replay_filters.get(topic.table.name) if topic.table is not None else None
        table, rejected = decode_rows(topic, raws, partitions, offsets, replays)
        if topic.table is not None and topic.table.name in self.noted_tables:
            read = self._read.setdefault(topic.name, {})
            for partition, offset in zip(partitions, offsets, strict=True):
                span = read.setdefault(partition, [offset, offset])
                span[0], span[1] = min(span[0], offset), max(span[1], offset)
        if table.num_rows:
            self._pending.setdefault(topic.name, (topic, []))[1].append(table)
            self.pending_rows += table.num_rows
        return rejected

    def guard_rollups(self) -> SeriesWatermarks:
        """Keep the worker's replays out of the table the rollups aggregate, and note its inserts
        so one cut short before its views is done again (replays, insert_journal)."""
        assert GPU_SAMPLES.table is not None
        replays = SeriesWatermarks(GPU_SAMPLES.table.name)
        self.replay_filters[replays.table] = replays
        self.noted_tables.add(replays.table)
        return replays

    def discard_pending(self) -> None:
        """Forget the rows held and not yet submitted (their offsets are not committed either)."""
        self._pending = {}
        self._read = {}
        self.pending_rows = 0

    def submit(self, on_done: Callable[[], None] | None = None) -> None:
        """Insert everything held, then call ``on_done`` (from :meth:`wait`, in the caller's thread)."""
        self.wait()
        batches = [(topic, pa.concat_tables(tables), self._read.get(topic.name, {})) for topic, tables in self._pending.values()]
        self._pending = {}
        self._read = {}
        self.pending_rows = 0
        if self._executor is None:
            self._insert(batches)
            if on_done is not None:
                on_done()
        else:
            self._inflight = (self._executor.submit(self._insert, batches), on_done)

    def done(self) -> bool:
        """True when an insert was in flight and has finished (:meth:`wait` returns at once)."""
        return self._inflight is not None and self._inflight[0].done()

    def busy(self) -> bool:
        """True while an insert is in flight and not finished (it may be retrying)."""
        return self._inflight is not None and not self._inflight[0].done()

    def wait(self) -> None:
        if self._inflight is None:
            return
        future, on_done = self._inflight
        self._inflight = None
        future.result()
        if on_done is not None:
            on_done()

    def close(self, retry_for_s: float = 30.0) -> None:
        """Finish the insert in flight, retrying a failing one for at most ``retry_for_s``."""
        timer = threading.Timer(retry_for_s, self.give_up.set)
        timer.daemon = True
        timer.start()
        try:
            self.wait()
        finally:
            timer.cancel()
            if self._executor is not None:
                self._executor.shutdown()

    def insert_retrying(self, name: str, table: pa.Table, settings: dict[str, Any]) -> None:
        """Insert, trying again with backoff while ClickHouse refuses (away, disk full, read-only):
        a store outage is weather. The same deduplication token goes with every try, so a try that
        did land before its answer was lost is not stored twice. Raises only once :attr:`give_up`."""
        self._retrying(
            f"insert of {table.num_rows} rows into {name}", lambda: self.client.insert_arrow(name, table, settings=settings)
        )

    def _retrying(self, what: str, call: Callable[[], Any]) -> None:
        attempt = 0
        while True:
            try:
                call()
                if attempt:
                    log.warning("%s succeeded after %d retries", what, attempt)
                return
            except Exception as err:
                if self.give_up.is_set():
                    raise
                delay = backoff_s(attempt)
                attempt += 1
                self.stats.insert_retries += 1
                first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
                log.warning("%s failed (try %d): %s; trying again in %.0f s", what, attempt, first, delay)
                if self.give_up.wait(delay):
                    raise

    def _insert(self, batches: list[tuple[Topic, pa.Table, dict[int, list[int]]]]) -> None:
        started = time.perf_counter()
        for topic, table, read in batches:
            assert topic.table is not None
            # one record batch: the decoded blocks arrive in many small chunks, and ClickHouse
            # converts each chunk on its own (measured: fewer CPU seconds, copy included)
            table = table.combine_chunks()
            settings = insert_settings(topic, table)
            if topic.table.name in self.noted_tables:
                noted = NotedInsert(
                    self.topic_prefix + topic.name,
                    settings["insert_deduplication_token"],
                    tuple((p, first, last) for p, (first, last) in sorted(read.items())),
                )
                self._retrying(f"noting an insert into {topic.table.name}", functools.partial(note, self.client, noted))
            self.insert_retrying(topic.table.name, table, settings)
            self.rows[topic.table.name] += table.num_rows
        if batches:
            self.stats.observe_insert(time.perf_counter() - started)
        if batches and os.environ.get("HPCINSIGHT_SINK_CRASH_AFTER_INSERT") == "1":
            # Fault injection for the exactly-once test: die between insert and commit.
            os.kill(os.getpid(), signal.SIGKILL)


class ClickHouseSink(TopicSink):
    """Consumes the stored topics into ClickHouse; no message and no fault of the broker or the
    store stops it (see docs/guarantees.md). It exits on a stop request or ``idle_exit_s``.

    The loop, the dead letters, the commits' failure handling and the consumer's replacement are
    :class:`~hpcinsight.core.consumer.TopicSink`'s; what is the sink's own: the group membership
    with partitions resumed from what ClickHouse holds, the block decode into Arrow, the batched
    background inserts with their offsets committed after them, and the pause while they are behind."""

    #: pause consuming while this many batches' worth of rows wait for a slow or absent store
    MAX_PENDING_BATCHES = 4
    POLL_MESSAGES = 2000

    def __init__(self, client: Client, consumer_config: dict[str, Any], topic_prefix: str, options: SinkOptions) -> None:
        super().__init__(SinkStats())
        self.stats: SinkStats
        self.client = client
        self.options = options
        self.prefix = topic_prefix
        self._topics: dict[str, Topic] = {f"{topic_prefix}{t.name}": t for t in STORED}
        self._consumer_config = consumer_config
        self.dead_letter_out = DeadLetterOut(
            new_producer(consumer_config, until_delivered=True),  # retried until delivered
            DEAD_LETTERS.full_name(topic_prefix),
        )
        self._writer = TableWriter(client, rows=self.stats.rows, stats=self.stats, topic_prefix=topic_prefix)
        self._replays = self._writer.guard_rollups()
        self._positions: dict[tuple[str, int], int] = {}
        self._batch_started: float | None = None
        self._assigned_at: float | None = None
        self._lag_at = 0.0

    def new_consumer(self) -> Consumer:
        options = self.options
        return new_consumer(
            self._consumer_config,
            f"{self.prefix}{options.group_id}",
            instance_id=f"{self.prefix}{options.group_id}-{options.instance_id}" if options.instance_id else None,
            extra={"session.timeout.ms": 15_000},
        )

    def take_partitions(self, consumer: Consumer, first: bool) -> None:
        self._assigned_at = None
        consumer.subscribe(list(self._topics), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)

    # -- partition assignment ------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Called from inside consume(): an exception here would escape the main loop, so the
        # broker's and the store's faults are retried here until they pass (or the sink stops).
        attempt = 0
        while True:
            try:
                self._writer.wait()  # what ClickHouse holds must include our own insert in flight
                committed = consumer.committed(partitions, timeout=30)
                self._finish_cut_short(committed)
                self._load_watermarks(partitions)
                for tp in committed:
                    stored = self._stored_max_offset(tp.topic, tp.partition, max(tp.offset, 0))
                    if stored is not None and stored + 1 > tp.offset:
                        log.warning(
                            "resuming %s[%d] at %d from ClickHouse (Kafka had %d)", tp.topic, tp.partition, stored + 1, tp.offset
                        )
                        tp.offset = stored + 1
                        self.stats.resumed_from_store += 1
                        # the group learns it too, even if no new message comes to carry a commit
                        self.owe({(tp.topic, tp.partition): tp.offset})
                consumer.assign(committed)
                self._assigned_at = self.idle_clock()
                self.paused = False
                return
            except Exception as err:  # noqa: BLE001 - broker or store away: weather
                if self.stop_event.is_set():
                    log.warning("stopping during an assignment that failed: %s", err)
                    return
                delay = backoff_s(attempt)
                attempt += 1
                log.warning("taking partitions failed (%s); trying again in %.0f s", err, delay)
                self.stop_event.wait(delay)

    def _finish_cut_short(self, committed: list[TopicPartition]) -> None:
        """Do again the last noted insert of each partition taken whose offsets Kafka has not
        committed: one that finished is skipped whole by its deduplication token, one cut short
        between the table and its views is completed (see hpcinsight.sinks.insert_journal)."""
        for name, topic in self._topics.items():
            if topic.table is None or topic.table.name not in self._writer.noted_tables:
                continue
            offsets = {tp.partition: tp.offset for tp in committed if tp.topic == name}
            for noted in unfinished(self.client, name, offsets):
                self._redo(topic, noted)

    def _redo(self, topic: Topic, noted: NotedInsert) -> None:
        """Read ``noted``'s messages again, keep the rows its insert kept (the replay filter from
        what was stored before them), and insert them with its token."""
        assert topic.table is not None
        reader = new_consumer(self._consumer_config, f"{self.group}-redo")  # assigned, commits nothing
        try:
            messages = read_range(
                reader,
                [TopicPartition(noted.topic, p, first) for p, first, _ in noted.spans],
                {p: last + 1 for p, _, last in noted.spans},
                timeout=60,
            )
        finally:
            reader.close()
        messages.sort(key=lambda m: (m.partition(), m.offset()))
        marks = SeriesWatermarks(topic.table.name)
        for p, first, _ in noted.spans:
            marks.load(self.client, p, before_offset=first)
        table, rejected = decode_rows(
            topic, [m.value() for m in messages], [m.partition() for m in messages], [m.offset() for m in messages], marks
        )
        for index, reason, left_out in rejected:
            self.refuse(messages[index], reason, left_out)  # the dead letters' table keeps one per message
        table = table.combine_chunks()
        if table.num_rows:
            if (read_as := dedup_token(topic, table)) != noted.token:
                log.warning("insert %s read again as %s: its views may count some rows twice", noted.token, read_as)
            self._writer.insert_retrying(topic.table.name, table, insert_settings(topic, table, noted.token))
        self.stats.inserts_redone += 1
        log.warning(
            "insert %s done again (%d messages, %d rows): it had not been committed", noted.token, len(messages), table.num_rows
        )

    def _load_watermarks(self, partitions: list[TopicPartition]) -> None:
        """The newest stored sample of every GPU read from these partitions, afresh: rows consumed
        and dropped before they were stored (a lost partition, a replaced consumer) must not count."""
        self._replays.newest.clear()
        topic = f"{self.prefix}{GPU_SAMPLES.name}"
        for p in sorted({tp.partition for tp in partitions if tp.topic == topic}):
            self._replays.load(self.client, p)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self.flush()
        except Exception as err:  # noqa: BLE001 - not stored, not committed: the next owner reads it again
            log.warning("flush on revoke failed (%s); the partitions' uncommitted messages will be read again", err)
            self._drop_pending()

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The group took the partitions away (session lost during a broker outage): nothing may be
        # committed for them; what was consumed and not stored is read again by the next owner.
        log.warning("partitions lost to the group (%d); rows not yet stored are read again", len(partitions))
        self._drop_pending()

    def _drop_pending(self) -> None:
        self._writer.discard_pending()
        self._positions = {}
        self._batch_started = None

    def _stored_max_offset(self, topic: str, partition: int, at_least: int) -> int | None:
        table = self._topics[topic].table
        assert table is not None
        result = self.client.query(
            f"SELECT max(_offset), count() FROM `{table.name}` WHERE _partition = {{p:UInt32}} AND _offset >= {{o:UInt64}}",
            parameters={"p": partition, "o": at_least},
        )
        max_offset, count = result.result_rows[0]
        return int(max_offset) if count else None

    # -- main loop -----------------------------------------------------------------------
    def run(self, stop: threading.Event, idle_exit_s: float | None = None) -> SinkStats:
        """Consume until ``stop`` is set, or with ``idle_exit_s``, until partitions are assigned
        and no message has come for that long."""
        self.run_loop(stop, idle_exit_s)
        return self.stats

    def idle(self, last_data: float, idle_exit_s: float) -> bool:
        return self._assigned_at is not None and super().idle(max(last_data, self._assigned_at), idle_exit_s)

    def tick(self) -> None:
        if self._writer.done():
            self._writer.wait()  # commit a finished insert's offsets without waiting for the next
        if self._due() and not self._writer.busy():
            self.flush(wait=False)
        # stop fetching while the store is behind (heartbeats go on), so memory stays bounded
        behind = self._writer.busy() and self._writer.pending_rows >= self.MAX_PENDING_BATCHES * self.options.batch_rows
        if behind and not self.paused:
            log.warning("ClickHouse is behind (%d rows waiting)", self._writer.pending_rows)
        self.hold(behind)
        if time.monotonic() - self._lag_at > 5:
            self._update_lag()

    def finish(self) -> None:
        self.flush()

    def release(self) -> None:
        self._writer.close()

    def on_replace(self) -> None:
        """Rows consumed and not yet stored are dropped: the new consumer reads them again from the
        committed offsets or, past those, from what ClickHouse holds, so nothing is lost or stored twice."""
        try:
            self._writer.wait()  # its commit may fail on the old consumer: the store's offsets cover it
        except Exception as err:  # noqa: BLE001 - only once give_up is set (stopping)
            log.warning("insert in flight failed while replacing the consumer: %s", err)
        self._drop_pending()

    def _update_lag(self) -> None:
        """Per assigned partition, how far behind the sink is (from librdkafka's cached watermarks:
        no request to the broker)."""
        self._lag_at = time.monotonic()
        consumer = self.consumer
        assert consumer is not None
        try:
            assigned = consumer.assignment()
            positions = {(tp.topic, tp.partition): tp.offset for tp in consumer.position(assigned)}
            lag = {}
            for tp in assigned:
                _, high = consumer.get_watermark_offsets(tp, cached=True)
                at = positions.get((tp.topic, tp.partition), -1)
                if high >= 0 and at >= 0:
                    lag[(tp.topic, tp.partition)] = max(0, high - at)
            self.stats.lag = lag
        except KafkaException as err:
            log.debug("lag not updated: %s", err)

    @property
    def group(self) -> str:
        return f"{self.prefix}{self.options.group_id}"

    def metric_families(self) -> Iterator[Any]:
        """The sink's series for Prometheus (served by the CLI with the lag in ``stats.lag``, see
        hpcinsight.core.metrics)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        st = self.stats
        rows = CounterMetricFamily("hpcinsight_sink_rows", "rows stored, per table", labels=["table"])
        for table, n in sorted(st.rows.items()):
            rows.add_metric([table], n)
        yield rows
        for name, value, doc in (
            ("hpcinsight_sink_batches", st.batches, "batches inserted"),
            ("hpcinsight_sink_dead_letters", st.dead_letters, "messages (or records of one) dead-lettered by the sink"),
            ("hpcinsight_sink_messages_salvaged", st.salvaged, "messages stored but for their bad records, dead-lettered"),
            ("hpcinsight_sink_insert_retries", st.insert_retries, "inserts tried again (ClickHouse away or refusing)"),
            ("hpcinsight_sink_commit_failures", st.commit_failures, "offset commits that failed"),
            ("hpcinsight_sink_consumer_restarts", st.consumer_restarts, "consumers replaced after a fatal error"),
            ("hpcinsight_sink_resumed_from_store", st.resumed_from_store, "partitions resumed from ClickHouse's offsets"),
            ("hpcinsight_sink_inserts_redone", st.inserts_redone, "inserts not committed, done again on taking partitions"),
            (
                "hpcinsight_sink_replays_dropped",
                self._replays.dropped,
                "GPU samples the worker forwarded again after a restart, kept out of the rollups",
            ),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily(
            "hpcinsight_sink_pending_rows", "rows decoded and waiting for an insert", value=self._writer.pending_rows
        )
        yield GaugeMetricFamily(
            "hpcinsight_sink_paused", "1 while consumption is paused for a slow store", value=int(self.paused)
        )
        buckets = [(("+Inf" if b == float("inf") else repr(b)), n) for b, n in st.insert_buckets.items()]
        yield HistogramMetricFamily(
            "hpcinsight_sink_insert_seconds",
            "time to insert one batch (all its tables)",
            buckets=buckets,
            sum_value=st.insert_seconds,
        )

    # -- decode and deliver: a block of each topic at a time, straight into Arrow ------------
    def take(self, messages: Sequence[Message]) -> None:
        by_topic: dict[str, list[Message]] = defaultdict(list)
        for msg in messages:
            if msg.topic() not in self._topics:
                continue
            self._positions[(msg.topic(), msg.partition())] = msg.offset()
            by_topic[msg.topic()].append(msg)
        for name, block in by_topic.items():
            try:
                rejected = self._writer.add(
                    self._topics[name], [m.value() for m in block], [m.partition() for m in block], [m.offset() for m in block]
                )
            except Exception:
                log.exception("decoding a block of %d %s messages failed; trying them one at a time", len(block), name)
                rejected = []
                for i, m in enumerate(block):
                    try:
                        rejected.extend(
                            r._replace(index=i)
                            for r in self._writer.add(self._topics[name], [m.value()], [m.partition()], [m.offset()])
                        )
                    except Exception as err:  # noqa: BLE001 - this one message is the culprit
                        rejected.append(Refused(i, f"undecodable: {type(err).__name__}: {err}"))
            for index, reason, left_out in rejected:
                # Upstream stages validate; this guards against a foreign producer. The bad message
                # (or its bad records) goes to the dead-letter topic and its offset still advances.
                self.stats.salvaged += left_out is not None
                self.refuse(block[index], reason, left_out)
        if by_topic and self._batch_started is None:
            self._batch_started = time.monotonic()

    def refuse(self, msg: Message, reason: str, raw: bytes | None = None) -> None:
        if msg.topic() == DEAD_LETTERS.full_name(self.prefix):
            log.error(
                "undecodable dead letter at %s[%d]@%d dropped from storage: %s",
                msg.topic(),
                msg.partition(),
                msg.offset(),
                reason,
            )
            return
        super().refuse(msg, reason, raw)

    def letter(self, msg: Message, reason: str, raw: bytes | None = None) -> bytes:
        return DEAD_LETTERS.codec.encode(
            [
                DeadLetter.of(
                    ts=int(time.time() * 1000),
                    source_topic=msg.topic(),
                    source_partition=msg.partition(),
                    source_offset=msg.offset(),
                    stage="sink",
                    reason=reason,
                    raw=msg.value() if raw is None else raw,
                    key=msg.key(),
                )
            ]
        )

    def _due(self) -> bool:
        if self._batch_started is None:
            return False
        return (
            self._writer.pending_rows >= self.options.batch_rows
            or time.monotonic() - self._batch_started >= self.options.batch_age_s
        )

    def flush(self, wait: bool = True) -> None:
        """Insert every pending batch, then commit the offsets of everything consumed.

        With ``wait=False`` the insert runs in the background and its offsets are committed once
        it has finished (by the next flush, or as soon as the main loop sees it done)."""
        if self._writer.pending_rows:
            self.stats.batches += 1
        if self._positions:
            positions, self._positions = self._positions, {}
            consumer = self.consumer
            # committed after the insert (and its dead letters) only; the rows' offsets cover a failure
            self._writer.submit(on_done=lambda: self.commit({k: o + 1 for k, o in positions.items()}, consumer))
        if wait:
            self._writer.wait()
        self._batch_started = None
