"""The stream logic, free of Faust: validate samples, roll quantiles, run the detectors.

:class:`SampleProcessor` turns one raw Kafka message into the messages it causes
(validated samples, quantile windows, anomalies, or one dead letter). Keeping it a plain
class makes it testable without a broker; :mod:`streams.app` only moves bytes between it
and Kafka.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from schemas.catalog import ANOMALIES, DEAD_LETTERS, GPU_QUANTILES, GPU_SAMPLES, TOPICS, Topic
from schemas.codec import DecodeError
from schemas.events import Anomaly, DeadLetter, Event, GpuQuantiles, GpuSample
from streams.detectors import Detector, discover
from streams.windows import SlidingQuantiles, WindowSpec

log = logging.getLogger(__name__)

#: GpuSample fields whose quantiles are computed per window
METRICS = ("gpu_util", "power_w", "sm_clock_mhz")
#: a sample stamped further ahead of the worker's clock than this is clock skew, not data
MAX_FUTURE_MS = 15 * 60 * 1000


@dataclass(frozen=True)
class Output:
    topic: Topic
    key: bytes
    value: bytes


@dataclass
class ProcessorStats:
    messages: int = 0
    samples: int = 0
    dead_letters: int = 0
    windows: int = 0
    anomalies: int = 0
    late_samples: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class SampleProcessor:
    def __init__(self, window: WindowSpec, detectors: list[Detector[Any]] | None = None, max_future_ms: int = MAX_FUTURE_MS) -> None:
        self.window = window
        self.max_future_ms = max_future_ms
        self.detectors = detectors if detectors is not None else [cls() for cls in discover()]
        self._series: dict[tuple[str, str], SlidingQuantiles] = {}
        self._partition_of: dict[tuple[str, str], int] = {}
        self.stats = ProcessorStats()

    def forget(self, partitions: set[int]) -> None:
        """Drop the window state of series read from ``partitions`` (they moved, or are being rebuilt)."""
        for key in [k for k, p in self._partition_of.items() if p in partitions]:
            del self._series[key], self._partition_of[key]

    def replay(self, partition: int, value: bytes | None) -> None:
        """Rebuild state from a message handled before a restart: same logic, no outputs."""
        try:
            samples = GPU_SAMPLES.codec.decode(value)
        except DecodeError:
            return
        for sample in samples:
            for q in self._roll(sample, partition):
                self._detect(q, replay=True)

    def handle(self, source: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> list[Output]:
        """All outputs caused by one message of the raw samples topic, in send order."""
        self.stats.messages += 1
        try:
            samples = GPU_SAMPLES.codec.decode(value)
        except DecodeError as err:
            return [self.dead_letter(source, partition, offset, key, value, "validate", str(err))]
        horizon = int(time.time() * 1000) + self.max_future_ms
        ahead = max((s.ts for s in samples), default=0)
        if ahead > horizon:
            reason = f"clock skew: a sample is stamped {(ahead - horizon + self.max_future_ms) / 1000:.0f} s in the future"
            return [self.dead_letter(source, partition, offset, key, value, "validate", reason)]
        node_key = key if key else (samples[0].node.encode() if samples else b"")
        out = [Output(GPU_SAMPLES, node_key, value or b"")]
        self.stats.samples += len(samples)
        quantiles: list[GpuQuantiles] = []
        for sample in samples:
            quantiles.extend(self._roll(sample, partition))
        for q in quantiles:
            out.append(Output(GPU_QUANTILES, q.gpu_uuid.encode(), GPU_QUANTILES.codec.encode([q])))
            for anomaly in self._detect(q):
                out.append(Output(ANOMALIES, anomaly.subject.encode(), ANOMALIES.codec.encode([anomaly])))  # type: ignore[attr-defined]
        return out

    def event_topics(self) -> list[Topic]:
        """Catalog topics, besides the GPU samples, whose events some detector reads (e.g. XIDs)."""
        wanted = {t for d in self.detectors for t in d.inputs} - {GpuSample, GpuQuantiles}
        return [t for t in TOPICS if t.event in wanted]

    def handle_events(
        self, topic: Topic, source: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> list[Output]:
        """Anomalies caused by one message of a detector input topic (see :meth:`event_topics`)."""
        self.stats.messages += 1
        try:
            records = topic.codec.decode(value)
        except DecodeError as err:
            return [self.dead_letter(source, partition, offset, key, value, "validate", str(err))]
        return [
            Output(ANOMALIES, anomaly.subject.encode(), ANOMALIES.codec.encode([anomaly]))  # type: ignore[attr-defined]
            for record in records
            for anomaly in self._detect(record)
        ]

    def dead_letter(
        self, source: str, partition: int, offset: int, key: bytes | None, value: bytes | None, stage: str, reason: str
    ) -> Output:
        self.stats.dead_letters += 1
        short = reason.split(":")[0]
        self.stats.reasons[short] = self.stats.reasons.get(short, 0) + 1
        log.warning("dead letter %s[%d]@%d: %s", source, partition, offset, reason)
        letter = DeadLetter(
            ts=int(time.time() * 1000),
            source_topic=source,
            source_partition=partition,
            source_offset=offset,
            stage=stage,
            reason=reason[:4096],
            raw=value or b"",
            key=key,
        )
        return Output(DEAD_LETTERS, source.encode(), DEAD_LETTERS.codec.encode([letter]))

    def _roll(self, sample: GpuSample, partition: int) -> list[GpuQuantiles]:
        out = []
        for metric in METRICS:
            series = self._series.get((sample.gpu_uuid, metric))
            if series is None:
                series = self._series[(sample.gpu_uuid, metric)] = SlidingQuantiles(self.window)
                self._partition_of[(sample.gpu_uuid, metric)] = partition
            late_before = series.late
            for w in series.add(sample.ts, getattr(sample, metric)):
                self.stats.windows += 1
                out.append(
                    GpuQuantiles(
                        node=sample.node,
                        gpu_index=sample.gpu_index,
                        gpu_uuid=sample.gpu_uuid,
                        metric=metric,
                        window=self.window.label,
                        window_start=w.start_ms,
                        window_end=w.end_ms,
                        count=w.count,
                        p25=w.p25,
                        p50=w.p50,
                        p95=w.p95,
                        mean=w.mean,
                        job_id=sample.job_id,
                    )
                )
            self.stats.late_samples += series.late - late_before
        return out

    def _detect(self, event: Event, replay: bool = False) -> list[Event]:
        out: list[Event] = []
        for detector in self.detectors:
            if isinstance(event, detector.inputs):
                try:
                    out.extend(detector.observe(event))
                except Exception:  # one broken detector must not stop the stream
                    log.exception("detector %s failed on %r", detector.kind, event)
        if not replay:
            self.stats.anomalies += len(out)
        return out

    def restore(self, anomalies: list[Anomaly]) -> None:
        """Give each detector the incidents of its kind still open before a restart."""
        for detector in self.detectors:
            detector.restore([a for a in anomalies if a.kind == detector.kind and a.state == "firing"])
