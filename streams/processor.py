"""The stream logic, free of Faust: validate, attribute, roll quantiles, merge jobs, detect.

:class:`SampleProcessor` turns one Kafka message into the messages it causes (validated and
attributed samples, quantile windows, sketches for the job stage, job quantiles, anomalies,
state checkpoints, or one dead letter). Keeping it a plain class makes it testable without a
broker; :mod:`hpcinsight.streams.app` only moves bytes between it and Kafka.

Two stages live here, each fed by its own topic so each can be partitioned its own way:

* per GPU (``gpu.samples.raw``, partitioned by node): validation, attribution, the GPU's sliding
  windows and since-start view, GPU-level detectors;
* per job (``gpu.sketches``, partitioned by job): the merge of a job's GPU sketches into job
  quantiles, job-level detectors.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hpcinsight.schemas.catalog import (
    ANOMALIES,
    DEAD_LETTERS,
    GPU_QUANTILES,
    GPU_SAMPLES,
    GPU_SAMPLES_RAW,
    GPU_SKETCHES,
    IB_SAMPLES,
    JOB_QUANTILES,
    SCHEDULING_KPIS,
    STEP_METRICS,
    STREAM_STATE,
    TOPICS,
    Topic,
)
from hpcinsight.schemas.codec import DecodeError
from hpcinsight.schemas.events import (
    Anomaly,
    DeadLetter,
    Event,
    GpuQuantiles,
    GpuSample,
    GpuSketch,
    IbSample,
    JobQuantiles,
    NodeInventory,
    SchedulerEvent,
    SchedulingKpi,
    StateCheckpoint,
    StepMetric,
)
from hpcinsight.streams.attribution import Attribution
from hpcinsight.streams.bank import Banks
from hpcinsight.streams.detectors import Detector, StreamContext, discover
from hpcinsight.streams.jobs import JobGpuWindow, JobMerger, JobStageConfig
from hpcinsight.streams.kpis import KpiConfig, SchedulingKpis
from hpcinsight.streams.rolling import (
    SINCE_START,
    Closed,
    Finished,
    RollingConfig,
    RollingSeries,
    WindowMeans,
    checkpoints,
    close_queued,
)

log = logging.getLogger(__name__)

#: a stage's handler: (source topic, partition, offset, key, value) -> outputs, in send order
Handler = Callable[[str, int, int, "bytes | None", "bytes | None"], "list[Output]"]
#: one raw message as a stage reads it: (source topic, partition, offset, key, value)
Message = tuple[str, int, int, "bytes | None", "bytes | None"]

#: GpuSample fields whose quantiles are computed
METRICS = ("gpu_util", "power_w", "sm_clock_mhz")
#: metrics kept as window means only (for peer comparisons), and how each is read from a sample
MEAN_METRICS = ("mem_util_pct", "sm_active_pct", "pcie_bytes_per_s", "nvlink_bytes_per_s")


def mean_metric_values(s: GpuSample) -> tuple[float | None, ...]:
    pcie_tx, pcie_rx, nvlink_tx, nvlink_rx = (
        s.pcie_tx_bytes_per_s,
        s.pcie_rx_bytes_per_s,
        s.nvlink_tx_bytes_per_s,
        s.nvlink_rx_bytes_per_s,
    )
    return (
        s.mem_util_pct,
        s.sm_active_pct,
        None if pcie_tx is None and pcie_rx is None else (pcie_tx or 0.0) + (pcie_rx or 0.0),
        None if nvlink_tx is None and nvlink_rx is None else (nvlink_tx or 0.0) + (nvlink_rx or 0.0),
    )


#: a sample stamped further ahead of the worker's clock than this is clock skew, not data
MAX_FUTURE_MS = 15 * 60 * 1000


#: a restart's replay reaches back at most this far by default (ProcessorConfig.replay_reach)
DEFAULT_REPLAY_REACH_MS = 5 * 60_000


@dataclass(frozen=True)
class ProcessorConfig:
    rolling: RollingConfig = field(default_factory=RollingConfig)
    jobs: JobStageConfig = field(default_factory=JobStageConfig)
    kpis: KpiConfig = field(default_factory=KpiConfig)
    max_future_ms: int = MAX_FUTURE_MS
    #: how often (event time) each series' state is checkpointed; a restart replays at most this much
    checkpoint_every_ms: int = 60_000
    #: a restart replays from this much before the oldest checkpoint: covers the delay from sample
    #: to broker (Kafka time is when the broker got it) and clock differences between agents and broker
    replay_margin_ms: int = 30_000
    #: a restart replays at most this much before the last message handled (None: 5 minutes, or
    #: what a restart needs where that is more; see :attr:`replay_reach`)
    replay_reach_ms: int | None = None

    def __post_init__(self) -> None:
        if self.checkpoint_every_ms % self.rolling.base_ms:
            raise ValueError("the checkpoint period must be a multiple of the base pane")
        if self.replay_reach_ms is not None and self.replay_reach_ms < self.replay_needs_ms:
            raise ValueError(
                "the replay's reach must cover a checkpoint period, the lateness, two base panes and the replay margin"
            )

    @property
    def replay_needs_ms(self) -> int:
        """How far back a restart replays when every series checkpointed on time."""
        return self.checkpoint_every_ms + self.rolling.lateness_ms + 2 * self.rolling.base_ms + self.replay_margin_ms

    @property
    def replay_reach(self) -> int:
        """How far back a restart replays at most. A series whose checkpoint is older (its GPU has
        been silent since: a node down, MIG instances made anew) is taken back from it without its
        last samples before the silence; without the bound, one such series made every restart
        replay back to it, up to the raw topic's day of retention."""
        if self.replay_reach_ms is not None:
            return self.replay_reach_ms
        return max(DEFAULT_REPLAY_REACH_MS, self.replay_needs_ms)


@dataclass(frozen=True)
class Output:
    topic: Topic
    key: bytes
    value: bytes
    partition: int | None = None  # None: by key


@dataclass
class ProcessorStats:
    messages: int = 0
    samples: int = 0
    ib_samples: int = 0
    dead_letters: int = 0
    windows: int = 0
    job_windows: int = 0
    anomalies: int = 0
    checkpoints: int = 0
    late_samples: int = 0
    late_sketches: int = 0
    failed: int = 0  # messages whose handling raised (each dead-lettered)
    messages_salvaged: int = 0  # refused messages whose good records were used, the rest dead-lettered
    reasons: dict[str, int] = field(default_factory=dict)
    by_stage: dict[str, int] = field(default_factory=dict)  # messages handled, per stage
    open_incidents: dict[str, set[str]] = field(default_factory=dict)  # detector kind -> ids firing
    restores: int = 0  # state rebuilds (start, rebalance)
    restore_seconds: float = 0.0  # the last one's duration


#: an output over this is cut in parts: a batch combines up to hundreds of a node's
#: messages, and a broker refuses a message over 1 MB by default (librdkafka too, before sending)
MAX_OUTPUT_BYTES = 512 * 1024


def _split(
    topic: Topic, key: bytes, records: list[Any], limit: int = MAX_OUTPUT_BYTES, partition: int | None = None
) -> list[Output]:
    """``records`` as one message of ``topic``, or as several in order when one would pass ``limit``."""
    return [Output(topic, key, value, partition) for value in topic.codec.encode_parts(records, limit)]


@dataclass
class _GpuPart:
    """What one raw GPU message caused, not yet encoded: a batch combines the parts of its messages."""

    node_key: bytes
    samples: list[GpuSample]
    partition: int = 0  # of the raw topic
    quantiles: list[GpuQuantiles] = field(default_factory=list)
    #: in the order the one-by-one path raised them: each sample's own, then its windows'
    anomaly_slots: list[list[Event] | _Trigger] = field(default_factory=list)
    sketches: dict[str, list[GpuSketch]] = field(default_factory=dict)
    checkpoints: list[Output] = field(default_factory=list)

    @property
    def anomalies(self) -> list[Event]:
        return [a for slot in self.anomaly_slots for a in (slot if isinstance(slot, list) else slot.anomalies)]


@dataclass(slots=True)
class _Trigger:
    """A sample that moved one of its series on (closed panes, or began it): its windows are
    made into records once the batch's closes have run (:func:`close_queued`)."""

    checkpoints: list[Output]  # its message's (the part holds the trigger: no reference back, no cycle)
    partition: int
    sample: GpuSample
    metric: str
    key: str
    series: RollingSeries
    #: the GPU's window means as the sample left them, by the end of each shortest window it may close
    means: dict[int, dict[str, float]]
    group: int = 0  # its group in close_queued's answer for the series
    windows: list[Closed] = field(default_factory=list)
    anomalies: list[Event] = field(default_factory=list)


#: the window means of a trigger that needs none (never changed)
_NO_MEANS: dict[int, dict[str, float]] = {}


def _series_key(gpu_uuid: str, metric: str) -> str:
    return f"{gpu_uuid}|{metric}"


class SampleProcessor:
    def __init__(
        self,
        config: ProcessorConfig | None = None,
        detectors: list[Detector[Any]] | None = None,
        attribution: Attribution | None = None,
    ) -> None:
        self.config = config or ProcessorConfig()
        self.detectors = detectors if detectors is not None else [cls() for cls in discover()]
        self.attribution = attribution if attribution is not None else Attribution()
        self.jobs = JobMerger(self.config.jobs)
        self.kpis = SchedulingKpis(self.config.kpis)
        #: KPI rows up to this time were published before a restart: recomputed, not sent again
        self.kpis_published_to = 0
        self._series: dict[str, RollingSeries] = {}
        self._banks = Banks(self.config.rolling)  # the series' closed state, as arrays across series
        self._by_gpu: dict[str, list[tuple[str, str, RollingSeries]]] = {}  # the same series, by GPU (hot path)
        self._means: dict[str, WindowMeans] = {}
        rolling = self.config.rolling
        self._shortest_spec = min(rolling.windows, key=lambda w: (w.size_ms, w.hop_ms))
        self._shortest = self._shortest_spec.label
        for detector in self.detectors:
            detector.bind(StreamContext(shortest_window=self._shortest))
        self._means_keep_ms = min(w.size_ms for w in rolling.windows) + rolling.base_ms + rolling.lateness_ms
        self._detectors_of: dict[type, list[Detector[Any]]] = {}
        self._partition_of: dict[str, int] = {}
        self._checkpoint_next: dict[str, int] = {}  # series -> the closed_to at which its next checkpoint is due
        #: the raw and stored GPU sample topics have as many partitions as each other (see
        #: _gpu_outputs): the catalog's counts here, the broker's in a worker (create_app)
        self.samples_by_partition = GPU_SAMPLES.partitions == GPU_SAMPLES_RAW.partitions
        self.stats = ProcessorStats()

    # -- the one rule for every message ---------------------------------------------------------

    def guarded(self, handle: Handler, stage: str) -> Handler:
        """``handle`` that never raises: a message whose handling fails for any reason becomes one
        dead letter (stage ``stage``, the exception as reason) and the stream goes on. Outputs the
        handler produced before it failed are dropped with it; state it changed stays changed."""

        def run(source: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> list[Output]:
            self.stats.by_stage[stage] = self.stats.by_stage.get(stage, 0) + 1
            try:
                return handle(source, partition, offset, key, value)
            except Exception as err:  # noqa: BLE001 - logged and dead-lettered by _failed
                return [self._failed(stage, (source, partition, offset, key, value), err)]

        return run

    def _failed(self, stage: str, message: Message, err: Exception) -> Output:
        """The dead letter of a message whose handling raised ``err`` (see :meth:`guarded`)."""
        source, partition, offset, key, value = message
        self.stats.failed += 1
        log.exception("%s failed on %s[%d]@%d; dead-lettered", stage, source, partition, offset)
        return self.dead_letter(source, partition, offset, key, value, stage, f"{stage} failed: {type(err).__name__}: {err}")

    # -- per-GPU stage --------------------------------------------------------------------------

    def handle(self, source: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> list[Output]:
        """All outputs caused by one message of the raw GPU samples topic, in send order."""
        self.stats.messages += 1
        samples, letters = self._decode(GPU_SAMPLES, source, partition, offset, key, value)
        if letters and not samples:
            return letters
        enriched = [self.attribution.enrich_gpu(s) for s in samples]
        node_key = key if key else (enriched[0].node.encode() if enriched else b"")
        # nothing to attribute: forward the bytes, where they are on the stored topic's wire (JSON onto Arrow is not)
        unchanged = not letters and GPU_SAMPLES_RAW.wire == GPU_SAMPLES.wire and all(a is b for a, b in zip(enriched, samples))
        out = [Output(GPU_SAMPLES, node_key, value if unchanged and value else GPU_SAMPLES.codec.encode(enriched))]
        return out + self._gpu_outputs(self._gpu_parts([(node_key, enriched, partition)])) + letters

    def handle_batch(self, messages: Sequence[Message], stage: str = "gpu-samples") -> list[Output]:
        """All outputs caused by a batch of raw GPU messages: the state changes, records and
        anomalies of :meth:`handle` on each in turn, in fewer, larger messages (see :meth:`_gpu_outputs`:
        the worker pays per message sent, not per record).

        Each message is decoded, validated and processed alone, under the rule of :meth:`guarded`
        (counted under ``stage``): a bad one, or one whose processing raises, is one dead letter
        and takes none of its outputs into the batch's (one with some bad records gives the
        outputs of its good ones and a letter of the rest: :meth:`_records_of`). Validated samples
        are always encoded again, never forwarded as the bytes they came in."""
        parts: list[tuple[Message, _GpuPart]] = []
        letters: list[Output] = []
        triggers: list[_Trigger] = []
        for message in messages:
            self.stats.by_stage[stage] = self.stats.by_stage.get(stage, 0) + 1
            source, partition, offset, key, value = message
            try:
                self.stats.messages += 1
                samples, rejected = self._decode(GPU_SAMPLES, source, partition, offset, key, value)
                letters += rejected
                if rejected and not samples:
                    continue
                enriched = [self.attribution.enrich_gpu(s) for s in samples]
                node_key = key if key else (enriched[0].node.encode() if enriched else b"")
                part = _GpuPart(node_key, enriched, partition)
                self._take(part, triggers)
                parts.append((message, part))
            except Exception as err:  # noqa: BLE001 - the rule of guarded, per message: see _failed
                letters.append(self._failed(stage, message, err))
        failed: dict[int, Output] = {}  # id(part) -> the dead letter of its message
        try:
            self._close(triggers)
        except Exception as err:
            log.exception("%s: a batch's pane closes failed", stage)
            hit = {id(t.checkpoints) for t in triggers}
            failed = {id(part): self._failed(stage, message, err) for message, part in parts if id(part.checkpoints) in hit}
        for message, part in parts:  # a message whose records fail is dead-lettered alone (the rule of guarded)
            if id(part) not in failed:
                try:
                    self._records(part)
                except Exception as err:  # noqa: BLE001 - see _failed
                    failed[id(part)] = self._failed(stage, message, err)
        kept = [(message, part) for message, part in parts if id(part) not in failed]
        letters += failed.values()
        try:
            out = self._gpu_outputs([part for _, part in kept], forward=True)
        except Exception:  # some message's records do not encode: find it, message by message
            log.exception("%s: a batch's outputs failed; encoding them message by message", stage)
            out = []
            for message, part in kept:
                try:
                    out.extend(self._gpu_outputs([part], forward=True))
                except Exception as err:  # noqa: BLE001 - the rule of guarded, per message: see _failed
                    out.append(self._failed(stage, message, err))
        return out + letters

    def _gpu_parts(self, messages: list[tuple[bytes, list[GpuSample], int]]) -> list[_GpuPart]:
        """Run messages' validated, attributed samples through the windows and detectors."""
        parts = [_GpuPart(node_key, samples, partition) for node_key, samples, partition in messages]
        triggers: list[_Trigger] = []
        for part in parts:
            self._take(part, triggers)
        self._close(triggers)
        for part in parts:
            self._records(part)
        return parts

    def _take(self, part: _GpuPart, triggers: list[_Trigger]) -> None:
        """Each sample of ``part`` through the GPU detectors, its window means and its series;
        the samples that moved a series on join ``triggers`` (their closes wait for :meth:`_close`)."""
        self.stats.samples += len(part.samples)
        shortest = self._shortest_spec
        series_of = self._by_gpu
        late_before = late_after = 0
        for sample in part.samples:
            found = self._detect(sample)
            if found:
                part.anomaly_slots.append(found)
            ts, job_id = sample.ts, sample.job_id
            means = self._means_of(sample)
            for metric, key, series in series_of.get(sample.gpu_uuid) or self._series_of(sample, part.partition):
                late_before += series.late
                ends = series.queue(ts, getattr(sample, metric), job_id)
                late_after += series.late
                if ends is None:
                    continue
                trigger = _Trigger(part.checkpoints, part.partition, sample, metric, key, series, _NO_MEANS)
                trigger.group = series.tag(trigger)
                if metric == "gpu_util":  # the job stage's peer comparisons read these beside its shortest window:
                    # taken now, as later samples of the batch would change them
                    trigger.means = {end: means.mean(end - shortest.size_ms, end) for end in ends if end % shortest.hop_ms == 0}
                triggers.append(trigger)
                part.anomaly_slots.append(trigger)
        self.stats.late_samples += late_after - late_before

    def _close(self, triggers: list[_Trigger]) -> None:
        """Run the closes ``triggers`` queued, all series at once; each trigger gets the windows it
        completed, and its message's part the checkpoints they made due."""
        if not triggers:
            return

        def checkpoint(finished: list[Finished]) -> None:
            due = [
                (series, t, closed_to, first_ms)
                for series, t, closed_to, first_ms in finished
                if self._checkpoint_due(t.key, closed_to)
            ]
            for (_, t, closed_to, _), data in zip(due, checkpoints([(s, c, f) for s, _, c, f in due])):
                record = StateCheckpoint(series=t.key, ts=closed_to, data=data)
                t.checkpoints.append(Output(STREAM_STATE, t.key.encode(), STREAM_STATE.codec.encode([record]), t.partition))
                self.stats.checkpoints += 1

        closed = close_queued([t.series for t in triggers], checkpoint)
        for t in triggers:
            t.windows = closed[t.series][t.group]

    def _records(self, part: _GpuPart) -> None:
        """The quantile records, anomalies and job-stage sketches of the windows ``part``'s samples completed."""
        for slot in part.anomaly_slots:
            if isinstance(slot, list):
                continue
            sample, metric = slot.sample, slot.metric
            self.stats.windows += len(slot.windows)
            for closed in slot.windows:
                q = self._quantiles(sample, metric, closed)
                part.quantiles.append(q)
                slot.anomalies.extend(self._detect(q))
                if closed.job_id is not None:
                    extra = slot.means.get(closed.end_ms, {}) if closed.window == self._shortest else {}
                    part.sketches.setdefault(closed.job_id, []).append(self._sketch(sample, metric, closed, extra))

    def _gpu_outputs(self, parts: list[_GpuPart], forward: bool = False) -> list[Output]:
        """The messages of ``parts`` combined: the samples (when ``forward``) per partition, per node
        key the quantiles, anomalies per subject, sketches per job (each in the parts' order), and
        the checkpoints as they are (each names its partition).

        The samples of one raw partition go out as one message to the same partition of the
        stored topic (they are co-partitioned by node, so each node's rows keep their order): a
        columnar message is worth its decode only with many rows (docs/storage.md), and at 1 Hz a
        node's part of a batch is one tick of 8 GPUs. Where the two topics' partition counts
        differ, per node key as the other outputs."""
        samples: dict[tuple[bytes, int | None], list[GpuSample]] = {}
        quantiles: dict[bytes, list[GpuQuantiles]] = {}
        sketches: dict[bytes, list[GpuSketch]] = {}
        for part in parts:
            if forward and part.samples:
                where = (b"", part.partition) if self.samples_by_partition else (part.node_key, None)
                samples.setdefault(where, []).extend(part.samples)
            if part.quantiles:
                quantiles.setdefault(part.node_key, []).extend(part.quantiles)
            for job_id, records in part.sketches.items():
                sketches.setdefault(job_id.encode(), []).extend(records)
        out = [o for (key, p), records in samples.items() for o in _split(GPU_SAMPLES, key, records, partition=p)]
        out += [o for key, records in quantiles.items() for o in _split(GPU_QUANTILES, key, records)]
        merged = [o for key, records in sketches.items() for o in _split(GPU_SKETCHES, key, records)]
        out += self._anomaly_outputs([a for part in parts for a in part.anomalies])  # after the encodes: it notes open incidents
        return out + merged + [c for part in parts for c in part.checkpoints]

    def _decode(
        self, topic: Topic, source: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> tuple[list[Any], list[Output]]:
        """The usable records of a raw message, and the dead letter of the rest (see :meth:`_records_of`);
        a message with a sample stamped in the future is dead-lettered whole (its node's clock is wrong)."""
        return self._records_of(topic, source, partition, offset, key, value, whole_unless=self._skew)

    def _records_of(
        self,
        topic: Topic,
        source: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        whole_unless: Callable[[list[Any]], str | None] | None = None,
    ) -> tuple[list[Any], list[Output]]:
        """The records of a message that decode, and one dead letter with the rest and why: the
        whole message where nothing of it is usable, else the records left out (a producer's one bad
        record does not cost the others; see :meth:`hpcinsight.schemas.codec.Codec.salvage`).
        ``whole_unless``: a rule over the usable records that, where it gives a reason, refuses the
        whole message with it instead."""
        try:
            records, salvaged = topic.codec.decode_salvaging(value)
        except DecodeError as err:
            return [], [self.dead_letter(source, partition, offset, key, value, "validate", str(err))]
        why = whole_unless(records) if whole_unless is not None else None
        if why:
            return [], [self.dead_letter(source, partition, offset, key, value, "validate", why)]
        if salvaged is None:
            return records, []
        self.stats.messages_salvaged += 1
        return records, [self.dead_letter(source, partition, offset, key, salvaged.left_out, "validate", salvaged.reason)]

    def _skew(self, samples: Iterable[GpuSample | IbSample | StepMetric]) -> str | None:
        horizon = int(time.time() * 1000) + self.config.max_future_ms
        ahead = max((s.ts for s in samples), default=0)
        if ahead > horizon:
            return f"clock skew: a sample is stamped {(ahead - horizon + self.config.max_future_ms) / 1000:.0f} s in the future"
        return None

    def _means_of(self, sample: GpuSample) -> WindowMeans:
        """The GPU's window means, with ``sample`` added."""
        means = self._means.get(sample.gpu_uuid) or self._new_means(sample.gpu_uuid)
        means.add(sample.ts, mean_metric_values(sample))
        return means

    def _new_means(self, gpu_uuid: str) -> WindowMeans:
        means = self._means[gpu_uuid] = WindowMeans(MEAN_METRICS, self.config.rolling.base_ms, self._means_keep_ms)
        return means

    def _series_of(self, sample: GpuSample, partition: int) -> list[tuple[str, str, RollingSeries]]:
        """The sample's GPU's series, one a metric (made at its first sample)."""
        series_of_gpu = self._by_gpu.get(sample.gpu_uuid)
        if series_of_gpu is None:
            series_of_gpu = self._by_gpu[sample.gpu_uuid] = []
            for metric in METRICS:
                key = _series_key(sample.gpu_uuid, metric)
                series = self._series.get(key)
                if series is None:
                    series = self._series[key] = RollingSeries(self.config.rolling, self._banks)
                    self._partition_of[key] = partition
                series_of_gpu.append((metric, key, series))
        return series_of_gpu

    def _checkpoint_due(self, key: str, closed_to: int) -> bool:
        """Whether series ``key``, closed to ``closed_to``, crossed one of its checkpoint
        boundaries since its last checkpoint (a series never checkpointed: at once); if so, that
        boundary is now its last."""
        if closed_to < self._checkpoint_next.get(key, 0):
            return False
        self._checkpoint_next[key] = self._next_checkpoint(key, closed_to)
        return True

    def _next_checkpoint(self, key: str, closed_to: int) -> int:
        """The first of series ``key``'s checkpoint boundaries after the period ``closed_to`` is in.

        Each series has its own phase (a base pane multiple from a hash of its key): were every
        series' boundaries the same, every series of a worker would checkpoint at the same close,
        on top of the windows they emit there (docs/streams.md, "Restart and scale-out")."""
        every, base = self.config.checkpoint_every_ms, self.config.rolling.base_ms
        phase = zlib.crc32(key.encode()) % (every // base) * base
        return ((closed_to - phase) // every + 1) * every + phase

    @staticmethod
    def _quantiles(sample: GpuSample, metric: str, c: Closed) -> GpuQuantiles:
        same_job = c.job_id == sample.job_id
        return GpuQuantiles(
            node=sample.node,
            gpu_index=sample.gpu_index,
            gpu_uuid=sample.gpu_uuid,
            metric=metric,
            window=c.window,
            window_start=c.start_ms,
            window_end=c.end_ms,
            count=c.count,
            p25=c.p25,
            p50=c.p50,
            p95=c.p95,
            mean=c.mean,
            job_id=c.job_id,
            user=sample.user if same_job else None,
            team=sample.team if same_job else None,
        )

    @staticmethod
    def _sketch(sample: GpuSample, metric: str, c: Closed, means: dict[str, float] | None = None) -> GpuSketch:
        assert c.job_id is not None
        same_job = c.job_id == sample.job_id
        return GpuSketch(
            job_id=c.job_id,
            node=sample.node,
            gpu_uuid=sample.gpu_uuid,
            metric=metric,
            window=c.window,
            window_start=c.start_ms,
            window_end=c.end_ms,
            count=c.count,
            sum=c.total,
            sketch=c.sketch,
            means=means or {},
            user=sample.user if same_job else None,
            team=sample.team if same_job else None,
            priority=sample.priority if same_job else None,
        )

    # -- other sample topics --------------------------------------------------------------------

    def handle_ib(self, source: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> list[Output]:
        """Validate and attribute one message of raw IB samples; run the detectors that read them."""
        self.stats.messages += 1
        samples, letters = self._decode(IB_SAMPLES, source, partition, offset, key, value)
        if letters and not samples:
            return letters
        samples = [self.attribution.enrich_ib(s) for s in samples]
        self.stats.ib_samples += len(samples)
        out = [Output(IB_SAMPLES, key or (samples[0].node.encode() if samples else b""), IB_SAMPLES.codec.encode(samples))]
        for sample in samples:
            out.extend(self._anomaly_outputs(self._detect(sample)))
        return out + letters

    def handle_steps(self, source: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> list[Output]:
        """Validate and attribute one message of raw step metrics; run the detectors that read them."""
        self.stats.messages += 1
        steps, letters = self._decode(STEP_METRICS, source, partition, offset, key, value)
        if letters and not steps:
            return letters
        steps = [self.attribution.enrich_step(s) for s in steps]
        out = [Output(STEP_METRICS, key or (steps[0].job_id.encode() if steps else b""), STEP_METRICS.codec.encode(steps))]
        anomalies: list[Event] = []
        for step in steps:
            anomalies.extend(self._detect(step))
        out.extend(self._anomaly_outputs(anomalies))
        return out + letters

    # -- job stage ------------------------------------------------------------------------------

    def handle_sketches(self, source: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> list[Output]:
        """Job quantiles (and job-level anomalies) completed by one message of GPU sketches."""
        self.stats.messages += 1
        sketches, out = self._records_of(GPU_SKETCHES, source, partition, offset, key, value)
        if out and not sketches:
            return out
        late = self.jobs.late
        for sketch in sketches:
            for q in self.jobs.add(sketch):
                self.stats.job_windows += 1
                out.append(Output(JOB_QUANTILES, q.job_id.encode(), JOB_QUANTILES.codec.encode([q])))
                out.extend(self._anomaly_outputs(self._detect(q)))
        out.extend(self._anomaly_outputs(self._detect_gpu_windows()))  # once per message: see there
        self.stats.late_sketches += self.jobs.late - late
        return out

    def tick_jobs(self) -> list[Output]:
        """Job windows released by waiting (see :meth:`hpcinsight.streams.jobs.JobMerger.tick`); call it periodically."""
        out: list[Output] = []
        for q in self.jobs.tick():
            self.stats.job_windows += 1
            out.append(Output(JOB_QUANTILES, q.job_id.encode(), JOB_QUANTILES.codec.encode([q])))
            out.extend(self._anomaly_outputs(self._detect(q)))
        out.extend(self._anomaly_outputs(self._detect_gpu_windows()))
        return out

    def _detect_gpu_windows(self, replay: bool = False) -> list[Event]:
        """Run the peer-comparing detectors on the job windows the job stage just completed, in
        window order across metrics. Each (job, metric, window) series is released on its own, so a
        backlog (a job's first window waiting out ``--job-wait``, then the windows behind it) comes
        out metric by metric: gpu_util's windows 1..k, then power's 1..k. gpu_outlier keeps one
        incident per GPU across metrics in event time, and fed that order it fired 10 s earlier and
        never resolved, depending on how many windows the wait had piled up (test_two_workers)."""
        windows, self.jobs.gpu_windows = self.jobs.gpu_windows, []
        windows.sort(key=lambda w: w.window_end)  # stable: a window's metrics keep their order
        return [a for w in windows for a in self._detect(w, replay=replay)]

    # -- detector inputs and the scheduler ------------------------------------------------------

    def event_topics(self) -> list[Topic]:
        """Catalog topics, besides those with their own stage, whose events some detector reads."""
        own = {GpuSample, GpuQuantiles, IbSample, StepMetric, GpuSketch, JobQuantiles, JobGpuWindow}
        wanted = {t for d in self.detectors for t in d.inputs} - own
        return [t for t in TOPICS if t.event in wanted]

    def handle_events(
        self, topic: Topic, source: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> list[Output]:
        """Anomalies caused by one message of a detector input topic (see :meth:`event_topics`)."""
        self.stats.messages += 1
        records, letters = self._records_of(topic, source, partition, offset, key, value)
        return self._anomaly_outputs([anomaly for record in records for anomaly in self._detect(record)]) + letters

    def observe_scheduler(self, value: bytes | None, topic: Topic) -> list[Output]:
        """Feed the attribution table and the scheduling KPIs (every worker reads all of the
        scheduler topics; see :mod:`hpcinsight.streams.attribution`). Returns the KPI rows it completed.

        A message's records that do not decode are skipped here, and the others used, as the
        group member that owns its partition uses them and dead-letters the rest (see
        :meth:`handle_events`), so each is reported once."""
        try:
            records, _ = topic.codec.decode_salvaging(value)
        except DecodeError:
            return []
        try:
            return self._observe_scheduler(records)
        except Exception:
            log.exception("scheduler record not applied to the attribution table and KPIs")
            return []

    def _observe_scheduler(self, records: list[Any]) -> list[Output]:
        rows = []
        for record in records:
            if isinstance(record, (SchedulerEvent, NodeInventory)):
                self.attribution.observe(record)
                rows.extend(self.kpis.observe(record))
            elif isinstance(record, JobQuantiles) and record.window == SINCE_START and record.metric == "gpu_util":
                self.kpis.observe_usage(record.job_id, record.mean)  # utilisation by job class, team, user
        return self._kpi_outputs(rows)

    def advance_kpis(self, watermark_ms: int) -> list[Output]:
        """Close the KPI intervals before ``watermark_ms`` although no event came (a quiet scheduler)."""
        return self._kpi_outputs(self.kpis.advance(watermark_ms))

    def _kpi_outputs(self, rows: list[SchedulingKpi]) -> list[Output]:
        by_kpi: dict[str, list[SchedulingKpi]] = {}
        for row in rows:
            if row.ts > self.kpis_published_to:
                by_kpi.setdefault(row.kpi, []).append(row)
        return [Output(SCHEDULING_KPIS, kpi.encode(), SCHEDULING_KPIS.codec.encode(batch)) for kpi, batch in by_kpi.items()]

    # -- output helpers -------------------------------------------------------------------------

    def _anomaly_outputs(self, anomalies: list[Event]) -> list[Output]:
        """Anomalies batched by subject (the topic's key), in order."""
        by_subject: dict[str, list[Event]] = {}
        for anomaly in anomalies:
            assert isinstance(anomaly, Anomaly)
            by_subject.setdefault(anomaly.subject, []).append(anomaly)
            self._track_open(anomaly)
        return [Output(ANOMALIES, subject.encode(), ANOMALIES.codec.encode(batch)) for subject, batch in by_subject.items()]

    def dead_letter(
        self, source: str, partition: int, offset: int, key: bytes | None, value: bytes | None, stage: str, reason: str
    ) -> Output:
        self.stats.dead_letters += 1
        short = reason.split(":")[0]
        self.stats.reasons[short] = self.stats.reasons.get(short, 0) + 1
        log.warning("dead letter %s[%d]@%d: %s", source, partition, offset, reason)
        letter = DeadLetter.of(
            ts=int(time.time() * 1000),
            source_topic=source,
            source_partition=partition,
            source_offset=offset,
            stage=stage,
            reason=reason,
            raw=value,
            key=key,
        )
        return Output(DEAD_LETTERS, source.encode(), DEAD_LETTERS.codec.encode([letter]))

    def _detect(self, event: Event, replay: bool = False) -> list[Event]:
        out: list[Event] = []
        detectors = self._detectors_of.get(event.__class__)
        if detectors is None:
            detectors = self._detectors_of[event.__class__] = [d for d in self.detectors if isinstance(event, d.inputs)]
        for detector in detectors:
            try:
                out.extend(detector.observe(event))
            except Exception:  # one broken detector must not stop the stream
                log.exception("detector %s failed on %r", detector.kind, event)
        if not replay:
            self.stats.anomalies += len(out)
        return out

    # -- restart --------------------------------------------------------------------------------

    def forget(self, partitions: set[int]) -> None:
        """Drop the state of series read from ``partitions`` (they moved, or are being rebuilt)."""
        for key in [k for k, p in self._partition_of.items() if p in partitions]:
            self._series[key].release()
            del self._series[key], self._partition_of[key]
            self._checkpoint_next.pop(key, None)
            self._by_gpu.pop(key.rpartition("|")[0], None)
            self._means.pop(key.rpartition("|")[0], None)  # rebuilt by the replay, never counted twice

    def restore_series(self, partition: int, checkpoint: StateCheckpoint) -> None:
        """Take back one series from its latest checkpoint (replay then adds what came after)."""
        try:
            series = RollingSeries.from_checkpoint(self.config.rolling, checkpoint.data, self._banks)
        except (ValueError, TypeError) as err:  # e.g. taken with other windows: start that series over
            log.warning("checkpoint of %s not usable (%s); the series restarts", checkpoint.series, err)
            return
        replaced = self._series.get(checkpoint.series)
        if replaced is not None:
            replaced.release()
        self._series[checkpoint.series] = series
        self._partition_of[checkpoint.series] = partition
        self._by_gpu.pop(checkpoint.series.rpartition("|")[0], None)
        self._checkpoint_next[checkpoint.series] = self._next_checkpoint(checkpoint.series, checkpoint.ts)

    def replay(self, partition: int, value: bytes | None) -> None:
        """Re-handle a raw GPU message seen before a restart: same state changes, no outputs."""
        try:
            samples = GPU_SAMPLES.codec.decode(value)
        except DecodeError:
            return
        try:
            moved: list[tuple[GpuSample, str, RollingSeries, int]] = []  # what moved a series on: its group
            try:
                for sample in samples:
                    sample = self.attribution.enrich_gpu(sample)
                    self._detect(sample, replay=True)
                    self._means_of(sample)  # the window means take the sample too
                    for metric, key, series in self._series_of(sample, partition):
                        if series.queue(sample.ts, getattr(sample, metric), sample.job_id) is not None:
                            moved.append((sample, metric, series, series.tag(key)))
            finally:  # what was queued is closed, as the message's live batch closed it (close_queued)
                # a series that crossed a checkpoint boundary only notes it: that checkpoint was
                # written before the restart, or will be at the next boundary
                closed = close_queued([series for _, _, series, _ in moved], self._replayed_group)
            for sample, metric, series, group in moved:
                for window in closed[series][group]:
                    self._detect(self._quantiles(sample, metric, window), replay=True)
        except Exception:
            log.warning("replay of a message that fails again skipped", exc_info=True)

    def _replayed_group(self, finished: list[Finished]) -> None:
        for _, key, closed_to, _ in finished:
            self._checkpoint_due(key, closed_to)  # type: ignore[arg-type]  # replay's tokens are the series' keys

    def replay_sketches(self, value: bytes | None) -> None:
        try:
            sketches = GPU_SKETCHES.codec.decode(value)
        except DecodeError:
            return
        try:
            for sketch in sketches:
                for q in self.jobs.add(sketch):
                    self._detect(q, replay=True)
            self._detect_gpu_windows(replay=True)  # as handle_sketches: once per message
        except Exception:
            log.warning("replay of a sketch message that fails again skipped", exc_info=True)

    def _track_open(self, anomaly: Anomaly) -> None:
        """Keep the ids of the incidents open per detector (a metric: open incidents by kind)."""
        open_ids = self.stats.open_incidents.setdefault(anomaly.kind, set())
        if anomaly.state == "firing":
            open_ids.add(anomaly.id)
        else:
            open_ids.discard(anomaly.id)

    def restore(self, anomalies: list[Anomaly]) -> None:
        """Give each detector the incidents of its kind still open before a restart."""
        for anomaly in anomalies:
            self._track_open(anomaly)
        for detector in self.detectors:
            detector.restore([a for a in anomalies if a.kind == detector.kind and a.state == "firing"])
