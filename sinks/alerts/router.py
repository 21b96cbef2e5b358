"""The alert router process: anomalies from Kafka to receivers, each notification exactly once.

It reads three topics from offsets kept in its own state (not the consumer group's): the scheduler
events (who owns each job), the silences, and the anomalies; at start it catches up with the first
two before it reads an anomaly, so a restarted router knows every silence. Each loop applies what it
read to the :class:`~hpcinsight.sinks.alerts.engine.Engine`, lets due groups flush, and commits the changed
state, the offsets reached and the new outbox rows in one SQLite transaction; only then are the rows
handed to the senders and the offsets committed to the consumer group (for lag monitoring only).

A malformed anomaly or silence goes to ``dead.letters`` (stage ``alerts``) before its offset is
recorded, and the router goes on. A notification a receiver refuses for good is dead-lettered too.

One router per state directory (a lock file says so); run one per cluster and topic prefix.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from hpcinsight.core.consumer import DeadLetterOut, TopicSink
from hpcinsight.core.kafka import new_consumer, new_producer, watermarks
from hpcinsight.schemas.catalog import ALERT_SILENCES, ANOMALIES, DEAD_LETTERS, SCHEDULER_EVENTS
from hpcinsight.schemas.events import DeadLetter
from hpcinsight.sinks.alerts import redact
from hpcinsight.sinks.alerts.config import AlertsConfig
from hpcinsight.sinks.alerts.delivery import Dispatcher
from hpcinsight.sinks.alerts.engine import Engine
from hpcinsight.sinks.alerts.matchers import Matcher
from hpcinsight.sinks.alerts.message import Renderer
from hpcinsight.sinks.alerts.receivers.base import Integration
from hpcinsight.sinks.alerts.store import OutboxRow, StateStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouterOptions:
    state_dir: Path
    reset_state: bool = False
    group_id: str = "alert-router"
    #: on a clean stop, how long the senders may go on emptying their queues
    shutdown_grace_s: float = 10.0
    #: the configuration file, read again on SIGHUP
    config_path: Path | None = None


def build_integrations(config: AlertsConfig, renderer: Renderer) -> dict[str, list[tuple[list[Integration], Any]]]:
    """Every receiver's integrations, built: receiver name -> [(one instance per sender, rate limit)]."""
    out: dict[str, list[tuple[list[Integration], Any]]] = {}
    for rc in config.receivers.values():
        per_kind: dict[str, int] = {}
        built = []
        for ic in rc.integrations:
            index = per_kind.get(ic.kind, 0)
            per_kind[ic.kind] = index + 1
            built.append(([ic.build(rc.name, index, renderer) for _ in range(rc.max_in_flight)], rc.rate_limit))
        out[rc.name] = built
    return out


class AlertRouter(TopicSink):
    """The loop, its dead letters and the consumer's replacement are
    :class:`~hpcinsight.core.consumer.TopicSink`'s; the router's own: partitions assigned from the
    offsets in its state (job owners and silences caught up first, a new router's history), the
    engine that decides, and its commit: state, offsets and outbox in one SQLite transaction."""

    #: the broker away: wait this long before asking again (its offsets come from our state)
    WEATHER_WAIT_S = 1.0

    def __init__(
        self, config: AlertsConfig, client_config: dict[str, Any], prefix: str, options: RouterOptions, clock: Any = time.time
    ) -> None:
        super().__init__()
        self.config = config
        self.client_config = client_config
        self.prefix = prefix
        self.options = options
        self.clock = clock
        self.renderer = Renderer(config.dashboard_url)
        self.topics = {t.full_name(prefix): t for t in (SCHEDULER_EVENTS, ALERT_SILENCES, ANOMALIES)}
        self.anomalies_topic = ANOMALIES.full_name(prefix)
        self.dead_letters = 0
        self.malformed = 0
        self._offsets: dict[tuple[str, int], int] = {}
        #: a new router's history: where each anomalies partition ended at start, and the last
        #: message of each incident read below that (see Engine.observe_history)
        self._history_end: dict[tuple[str, int], int] = {}
        self._history: dict[str, Any] = {}
        self._reload = threading.Event()
        self._dispatcher: Dispatcher | None = None
        self._store: StateStore | None = None
        #: silences and job owners read before any anomaly: partition -> the end to reach
        self._catch_up: dict[tuple[str, int], int] = {}
        self._catch_up_since = 0.0
        self._held_anomalies: list[TopicPartition] = []
        self._last_prune = 0.0
        self.reloads = 0
        self.reload_failures = 0

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- main loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event, idle_exit_s: float | None = None) -> dict[str, Any]:
        redact.install()
        self._store = StateStore(self.options.state_dir)
        self.dead_letter_out = DeadLetterOut(
            new_producer(self.client_config, until_delivered=True),  # retried until delivered
            DEAD_LETTERS.full_name(self.prefix),
        )
        self._dispatcher = None
        try:
            self.run_loop(stop, idle_exit_s)
        finally:
            self._store.close()
        dispatcher = self._dispatcher
        stats = dict(vars(self.engine.stats)) if hasattr(self, "engine") else {}
        stats.update(dispatcher.stats() if dispatcher else {})
        stats.update(dead_letters=self.dead_letters, malformed=self.malformed)
        return stats

    def new_consumer(self) -> Consumer:
        return new_consumer(self.client_config, f"{self.prefix}{self.options.group_id}")

    def take_partitions(self, consumer: Consumer, first: bool) -> None:
        """Every partition from the offset in the state. The first time, the state is bound to
        this cluster and the engine started; a new router reads the anomalies up to their end at
        start as history. Job owners and silences are caught up before any anomaly is read."""
        store = self._store
        assert store is not None
        metadata = consumer.list_topics(timeout=30)
        if first:
            store.bind(metadata.cluster_id or "unknown", self.prefix, self.options.reset_state)
            self._start_engine(store)
        stored = store.offsets()
        fresh = first and not any(t == self.anomalies_topic for t, _ in stored)  # no state: a new router
        assignment, catch_up = [], {}
        for name in self.topics:
            for p in metadata.topics[name].partitions:
                tp = TopicPartition(name, p, stored.get((name, p), OFFSET_BEGINNING))
                assignment.append(tp)
                if name != self.anomalies_topic:
                    high = watermarks(consumer, TopicPartition(name, p), 30.0)[1]
                    if stored.get((name, p), 0) < high:
                        catch_up[(name, p)] = high
                elif fresh:
                    high = watermarks(consumer, TopicPartition(name, p), 30.0)[1]
                    if high > 0:
                        self._history_end[(name, p)] = high
        consumer.assign(assignment)
        # the state may be ahead of the group (a kill -9 between the state's commit and the group's):
        # the group learns it even if no new message comes to carry a commit
        self.owe({key: offset for key, offset in stored.items() if offset >= 0})
        self._held_anomalies = [tp for tp in assignment if tp.topic == self.anomalies_topic]
        if catch_up:
            consumer.pause(self._held_anomalies)  # silences and job owners first
        self._catch_up, self._catch_up_since = catch_up, time.monotonic()

    def poll_timeout(self) -> float:
        due = self.engine.next_due_ms()
        return 0.2 if due is None else min(0.2, max(0.0, (due - self._now_ms()) / 1000))

    def tick(self) -> None:
        consumer, store = self.consumer, self._store
        assert consumer is not None and store is not None and self._dispatcher is not None
        catch_up = self._catch_up
        if self._history_end and not catch_up:
            self._history_reached(consumer)
        if catch_up:
            positions = consumer.position([TopicPartition(t, p) for t, p in catch_up])
            for tp in positions:
                if tp.offset >= catch_up[(tp.topic, tp.partition)]:
                    del catch_up[(tp.topic, tp.partition)]
            if catch_up and time.monotonic() - self._catch_up_since > 60:
                log.warning("still behind on %s after 60 s; reading anomalies anyway", sorted(catch_up))
                catch_up.clear()
            if not catch_up:
                consumer.resume(self._held_anomalies)
        self._commit(store, consumer, self._dispatcher, self.engine)
        if time.monotonic() - self._last_prune > 3600:
            store.prune_outbox(self._now_ms())
            self._last_prune = time.monotonic()
        if self._reload.is_set():
            self._reload.clear()
            self._reload_config(store)

    def idle(self, last_data: float, idle_exit_s: float) -> bool:
        return super().idle(last_data, idle_exit_s) and self._dispatcher is not None and self._dispatcher.backlog() == 0

    def finish(self) -> None:
        assert self.consumer is not None and self._store is not None and self._dispatcher is not None
        self._commit(self._store, self.consumer, self._dispatcher, self.engine)

    def release(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.close(self.options.shutdown_grace_s)

    def on_replace(self) -> None:
        """What was read is applied: record it, so the new consumer starts from the state's offsets."""
        if self._store is not None and self.consumer is not None and self._dispatcher is not None:
            self._commit(self._store, self.consumer, self._dispatcher, self.engine)

    # -- configuration ---------------------------------------------------------------------
    def _start_engine(self, store: StateStore) -> None:
        """Engine, integrations and senders for ``self.config``, from the state in ``store``."""
        self.engine = Engine(self.config)
        self.engine.load(**store.load(), now_ms=self._now_ms())
        integrations = build_integrations(self.config, self.renderer)
        self._by_receiver = {name: [i[0].id for i, _ in items] for name, items in integrations.items()}
        self._dispatcher = Dispatcher(
            {i[0].id: (i, limit) for items in integrations.values() for i, limit in items},
            store.path,
            self.config.retry,
            self._dead_letter_notification,
        )
        self._fail_unknown(store, self._dispatcher.submit(store.pending()))

    def request_reload(self) -> None:
        """Read the configuration file again at the next loop (SIGHUP)."""
        self._reload.set()

    def _reload_config(self, store: StateStore) -> None:
        """Swap in the configuration file as it is now, or keep the one in force if it is bad. The
        state on disk is current (each loop commits it), so this is a restart without the exit:
        senders finish what they hold, and what they did not is still in the outbox."""
        from hpcinsight.sinks.alerts import config as alerts_config

        path = self.options.config_path
        if path is None:
            log.warning("SIGHUP: no configuration file to read again")
            return
        try:
            config = alerts_config.load(path)
        except Exception as err:  # noqa: BLE001 - a bad file is said, never applied
            self.reload_failures += 1
            log.error("configuration %s refused on reload, keeping the one in force: %s", path, err)
            return
        if self._dispatcher is not None:
            self._dispatcher.close(self.options.shutdown_grace_s)
        self.config, self.renderer = config, Renderer(config.dashboard_url)
        self._start_engine(store)
        self.reloads += 1
        log.warning("configuration reloaded from %s (%d receivers)", path, len(config.receivers))

    def metric_families(self) -> Iterator[Any]:
        """The router's series for Prometheus (served by the CLI, see hpcinsight.core.metrics)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        dispatcher = self._dispatcher
        per = {
            k: CounterMetricFamily(f"hpcinsight_alerts_notifications_{k}", doc, labels=["receiver", "integration"])
            for k, doc in (
                ("sent", "notifications a receiver took"),
                ("failed", "notifications given up (dead-lettered)"),
                ("retried", "tries again after a failure"),
                ("skipped", "resolved notifications not sent"),
            )
        }
        if dispatcher is not None:
            for ident, senders in sorted(dispatcher.senders.items()):
                receiver = ident.split("/", 1)[0]
                totals = {k: sum(getattr(s.stats, "retries" if k == "retried" else k) for s in senders) for k in per}
                for k, family in per.items():
                    family.add_metric([receiver, ident], totals[k])
        yield from per.values()
        yield GaugeMetricFamily(
            "hpcinsight_alerts_outbox_depth",
            "notifications decided and not yet sent",
            value=dispatcher.backlog() if dispatcher is not None else 0,
        )
        engine = getattr(self, "engine", None)
        for name, value, doc in (
            ("hpcinsight_alerts_anomalies", engine.stats.anomalies if engine else 0, "anomaly messages read"),
            ("hpcinsight_alerts_dead_letters", self.dead_letters, "messages and notifications dead-lettered"),
            ("hpcinsight_alerts_config_reloads", self.reloads, "configurations reloaded (SIGHUP)"),
            ("hpcinsight_alerts_config_reload_failures", self.reload_failures, "reloads refused (bad file; old one kept)"),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily(
            "hpcinsight_alerts_firing", "alerts firing", value=sum(a.firing for a in engine.alerts.values()) if engine else 0
        )

    def decode(self, msg: Message) -> list[Any]:
        """The message's records; of a refused one, those that decode alone (a scheduler adapter's
        one bad event must not cost its others' owners), the rest dead-lettered as the worker does."""
        return self.decode_salvaging(msg, self.topics[msg.topic()].codec)

    def refuse(self, msg: Message, reason: str, raw: bytes | None = None) -> None:
        self._malformed(msg, reason, raw=raw)

    def deliver(self, batch: Sequence[tuple[Message, list[Any]]]) -> None:
        engine, now = self.engine, self._now_ms()
        anomalies: list[tuple[Message, Any]] = []
        for msg, records in batch:
            key = (msg.topic(), msg.partition())
            history = key in self._history_end and msg.offset() < self._history_end[key]
            if not history:
                self._offsets[key] = msg.offset() + 1
            self._apply_one(msg, records, history, anomalies)
            if history and msg.offset() + 1 >= self._history_end[key]:
                del self._history_end[key]
                self._offsets[key] = msg.offset() + 1
                if not any(t == self.anomalies_topic for t, _ in self._history_end):
                    self._end_history(now)
        for msg, a in anomalies:  # after the batch's job owners and silences
            try:
                engine.observe_anomaly(a, now)
            except Exception as err:
                log.exception("routing anomaly %s failed", a.id)
                self._malformed(msg, f"router failed on anomaly {a.id}: {type(err).__name__}: {err}")

    def _apply_one(self, msg: Message, records: list[Any], history: bool, anomalies: list[tuple[Message, Any]]) -> None:
        """Apply one message's records (anomalies are collected, to go after the batch's owners and silences)."""
        engine = self.engine
        topic = self.topics[msg.topic()]
        try:
            if history:
                for a in records:
                    self._history[a.id] = a  # in offset order: the incident's last word wins
            elif topic is ANOMALIES:
                anomalies.extend((msg, a) for a in records)
            elif topic is SCHEDULER_EVENTS:
                for e in records:
                    engine.observe_scheduler(e)
            else:
                for silence in records:
                    try:
                        for m in silence.matchers:
                            Matcher.parse(m)
                    except ValueError as err:
                        self._malformed(msg, f"silence {silence.id}: {err}")
                        continue
                    engine.observe_silence(silence)
        except Exception as err:
            log.exception("applying %s[%d]@%d failed", msg.topic(), msg.partition(), msg.offset())
            self._malformed(msg, f"router failed on it: {type(err).__name__}: {err}")

    def _history_reached(self, consumer: Consumer) -> None:
        """End the history where the position passed its end with no message there to say so
        (e.g. the last offsets were a transaction's markers)."""
        try:
            positions = consumer.position([TopicPartition(t, p) for t, p in self._history_end])
        except KafkaException:
            return
        for tp in positions:
            end = self._history_end.get((tp.topic, tp.partition))
            if end is not None and tp.offset >= end:
                del self._history_end[(tp.topic, tp.partition)]
                self._offsets[(tp.topic, tp.partition)] = end
                if not self._history_end:
                    self._end_history(self._now_ms())

    def _end_history(self, now_ms: int) -> None:
        """A new router has read the anomalies topic up to where it ended at start: incidents
        still firing are taken (and told), those already over are not (see docs/alerts.md)."""
        history, self._history = list(self._history.values()), {}
        firing = sum(a.state == "firing" for a in history)
        log.info(
            "history read: %d incidents, %d still firing (told), %d over before this router started (not told)",
            len(history),
            firing,
            len(history) - firing,
        )
        self.engine.observe_history(history, now_ms)

    def _commit(self, store: StateStore, consumer: Consumer, dispatcher: Dispatcher, engine: Engine) -> None:
        notifications = engine.tick(self._now_ms())
        changes = engine.take_changes()
        if not changes and not self._offsets:
            return
        outbox = [(n, ident, self.renderer.title(n)) for n in notifications for ident in self._by_receiver[n.receiver]]
        if self.dead_letters and self.dead_letter_out is not None and not self.dead_letter_out.flush():
            return  # stopping with dead letters not in Kafka: their offsets stay unrecorded, read again
        offsets, self._offsets = self._offsets, {}
        rows = store.commit(changes, offsets, outbox)
        if os.environ.get("HPCINSIGHT_ALERTS_CRASH") == "after_commit" and rows:
            os.kill(os.getpid(), signal.SIGKILL)  # fault injection: decided and recorded, not yet sent
        self._fail_unknown(store, dispatcher.submit(rows))
        if offsets:
            # the group's offsets are for monitoring only, but a lag that never clears is a false alarm:
            # committed synchronously, so a failure is seen and owed (tried again until one lands)
            self.commit(offsets, consumer)

    # -- dead letters ----------------------------------------------------------------------
    def _malformed(self, msg: Message, reason: str, raw: bytes | None = None) -> None:
        """Dead-letter ``msg`` (or ``raw``: the part of it left out) with ``reason``."""
        self.malformed += 1
        log.warning("malformed message at %s[%d]@%d dead-lettered: %s", msg.topic(), msg.partition(), msg.offset(), reason)
        self._produce_dead_letter(
            DeadLetter.of(
                ts=self._now_ms(),
                source_topic=msg.topic(),
                source_partition=msg.partition(),
                source_offset=msg.offset(),
                stage="alerts",
                reason=reason,
                raw=msg.value() if raw is None else raw,
                key=msg.key(),
            )
        )

    def _dead_letter_notification(self, row: OutboxRow, reason: str) -> None:
        """A notification no retry will deliver: kept in dead.letters with its body."""
        self._produce_dead_letter(
            DeadLetter.of(
                ts=self._now_ms(),
                source_topic=f"{self.prefix}alerts.outbox",
                source_partition=0,
                source_offset=row.seq,
                stage=f"alerts.send:{row.integration}",
                reason=redact.redact(reason),
                raw=row.body,
                key=row.nid.encode(),
            )
        )
        if self.dead_letter_out is not None:
            self.dead_letter_out.producer.flush(30)

    def _produce_dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters += 1
        assert self.dead_letter_out is not None
        self.dead_letter_out.send(letter.source_topic.encode(), DEAD_LETTERS.codec.encode([letter]))

    def _fail_unknown(self, store: StateStore, rows: list[OutboxRow]) -> None:
        for row in rows:
            reason = f"integration {row.integration} is no longer configured"
            self._dead_letter_notification(row, reason)
            store.db.execute(
                "UPDATE outbox SET state = 'failed', error = ?, done_at = ? WHERE seq = ?", (reason, self._now_ms(), row.seq)
            )
