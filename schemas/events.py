"""The events of hpcinsight: each class here is the one definition of its schema.

Every event is a frozen ``msgspec.Struct``. Its annotations (see :mod:`schemas.columns`)
decide the wire validation, the Arrow type and the ClickHouse column; ``__schema__`` and
``__version__`` travel in every message so a reader can refuse what it does not know.
Bump ``__version__`` when a field changes meaning or a required field is added.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

import msgspec
import pyarrow as pa

from schemas.columns import (
    Bytes,
    Bytes64,
    Celsius,
    Column,
    Evidence,
    Label,
    Mhz,
    Percent,
    Real,
    Text,
    TimestampMs,
    UInt8,
    UInt32,
    UInt64,
    Watts,
)

Severity = Annotated[Literal["info", "warning", "critical"], Column("LowCardinality(String)", pa.string())]
AnomalyState = Annotated[Literal["firing", "resolved"], Column("LowCardinality(String)", pa.string())]
SubjectType = Annotated[Literal["gpu", "node", "job", "rank", "link"], Column("LowCardinality(String)", pa.string())]


class Event(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Base of every event: a schema name and version, and a finite-number guarantee."""

    __schema__: ClassVar[str]
    __version__: ClassVar[int]

    def __post_init__(self) -> None:
        # JSON has no NaN, but Python producers can still build one; reject it at the
        # edge so no NaN or infinity ever reaches a quantile sketch or ClickHouse.
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"field {name!r} is {value!r}; only finite numbers are accepted")


class GpuSample(Event, frozen=True):
    """One GPU at one instant, as an agent read it. Unsupported readings are null."""

    __schema__ = "gpu_sample"
    __version__ = 1

    node: Label
    gpu_index: UInt8
    gpu_uuid: Label
    ts: TimestampMs
    gpu_util: Percent | None = None
    mem_used_bytes: Bytes64 | None = None
    mem_total_bytes: Bytes64 | None = None
    power_w: Watts | None = None
    temperature_c: Celsius | None = None
    sm_clock_mhz: Mhz | None = None
    job_id: Label | None = None


class GpuQuantiles(Event, frozen=True):
    """Quantiles of one GPU metric over one window [window_start, window_end)."""

    __schema__ = "gpu_quantiles"
    __version__ = 1

    node: Label
    gpu_index: UInt8
    gpu_uuid: Label
    metric: Label
    window: Label
    window_start: TimestampMs
    window_end: TimestampMs
    count: UInt32
    p25: Real
    p50: Real
    p95: Real
    mean: Real
    job_id: Label | None = None


class Anomaly(Event, frozen=True):
    """A flag raised by a detector: sent once when it fires and once when it resolves.

    ``id`` is stable over the life of one incident (same id for firing and resolved), so
    alerting and storage can deduplicate on it.
    """

    __schema__ = "anomaly"
    __version__ = 1

    id: Label
    kind: Label
    severity: Severity
    state: AnomalyState
    subject_type: SubjectType
    subject: Label
    ts: TimestampMs
    started_at: TimestampMs
    window_start: TimestampMs
    window_end: TimestampMs
    message: Text
    evidence: Evidence
    node: Label | None = None
    gpu_uuid: Label | None = None
    job_id: Label | None = None


class DeadLetter(Event, frozen=True):
    """A message that could not be used, kept whole with the reason, so nothing is lost."""

    __schema__ = "dead_letter"
    __version__ = 1

    ts: TimestampMs
    source_topic: Label
    source_partition: UInt32
    source_offset: UInt64
    stage: Label
    reason: Text
    raw: Bytes
    key: Bytes | None = None


ALL_EVENTS: tuple[type[Event], ...] = (GpuSample, GpuQuantiles, Anomaly, DeadLetter)
