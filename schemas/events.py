"""The events of hpcinsight: each class here is the one definition of its schema.

Every event is a frozen ``msgspec.Struct``. Its annotations (see :mod:`hpcinsight.schemas.columns`)
decide the wire validation, the Arrow type and the ClickHouse column; ``__schema__`` and
``__version__`` travel in every message so a reader can refuse what it does not know.
Bump ``__version__`` when a field changes meaning or a required field is added.
"""

from __future__ import annotations

import math
import operator
import threading
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import msgspec
import msgspec.inspect

from hpcinsight.schemas.columns import (
    Amount,
    Bytes,
    Bytes64,
    Celsius,
    Column,
    Count,
    Evidence,
    Flag,
    Label,
    LabelList,
    Mhz,
    Percent,
    Readings,
    Real,
    StringMap,
    Text,
    TimestampMs,
    UInt8,
    UInt32,
    UInt64,
    Watts,
)

Severity = Annotated[Literal["info", "warning", "critical"], Column("LowCardinality(String)", "string")]
AnomalyState = Annotated[Literal["firing", "resolved"], Column("LowCardinality(String)", "string")]
SubjectType = Annotated[Literal["gpu", "node", "job", "rank", "link"], Column("LowCardinality(String)", "string")]


class Event(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Base of every event: a schema name and version, and a finite-number guarantee."""

    __schema__: ClassVar[str]
    __version__: ClassVar[int]

    def __post_init__(self) -> None:
        # JSON has no NaN, but Python producers can still build one; reject it at the
        # edge so no NaN or infinity ever reaches a quantile sketch or ClickHouse.
        if JSON_DECODING.active:  # built by msgspec's JSON decoder, which yields finite numbers only
            return
        # Fast path (this runs for every record built): the fields typed as floats picked in C,
        # and one sum; it is finite unless a value is NaN/inf (or, harmlessly, the finite values
        # overflow). The same for the values of each map of numbers (evidence, window means),
        # which JSON would write as null for a consumer to refuse. Other fields cannot hold a
        # float: the decoders check types, and mypy checks the code that builds events.
        values = msgspec.structs.astuple(self)
        checks = _CHECKS_OF.get(self.__class__)
        if checks is None:
            checks = _CHECKS_OF[self.__class__] = _checks(self.__class__)
        pick, maps = checks
        if math.isfinite(sum(filter(None, pick(values)))) and (  # None and 0.0 left out: both finite
            not maps or all(math.isfinite(sum(values[i].values())) for i in maps)
        ):
            return
        for name, value in zip(self.__struct_fields__, values):
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"field {name!r} is {value!r}; only finite numbers are accepted")
            if isinstance(value, dict):
                for key, item in value.items():
                    if isinstance(item, float) and not math.isfinite(item):
                        raise ValueError(f"field {name!r} holds {item!r} at {key!r}; only finite numbers are accepted")


class _JsonDecoding(threading.local):
    """True in a thread while it builds events whose numbers are known to be finite: msgspec's JSON
    decoder's (the JSON codec's decode), and a checked event relabelled (:func:`relabelled`).

    That decoder refuses NaN and Infinity (not JSON) and any number past a float's range
    ("Number out of range"), whatever the field's type, so every number it yields is finite:
    :meth:`Event.__post_init__` skips the check it would repeat (a quarter of a sample's decode)."""

    active = False


JSON_DECODING = _JsonDecoding()
E = TypeVar("E", bound=Event)
#: per event type, the fields that hold only strings, integers, booleans or null (see relabelled)
_LABELS_OF: dict[type, frozenset[str]] = {}


def relabelled(event: E, **labels: Any) -> E:
    """``event`` with some of its label fields (strings, integers: a job, a user, a zone) replaced.

    The event's numbers were checked when it was built and do not change, so the copy skips the
    finiteness check (half the cost of relabelling a GPU sample, which the worker does for every
    sample on a job). A field that can hold a float or a map of them is refused: that copy would
    go unchecked."""
    cls = type(event)
    names = _LABELS_OF.get(cls)
    if names is None:
        names = _LABELS_OF[cls] = _label_fields(cls)
    if not names.issuperset(labels):
        raise TypeError(f"{cls.__name__}: not label fields: {sorted(set(labels) - names)}; use msgspec.structs.replace")
    before = JSON_DECODING.active
    JSON_DECODING.active = True
    try:
        return msgspec.structs.replace(event, **labels)
    finally:
        JSON_DECODING.active = before


def _label_fields(event: type[Event]) -> frozenset[str]:
    plain = (
        msgspec.inspect.StrType,
        msgspec.inspect.IntType,
        msgspec.inspect.BoolType,
        msgspec.inspect.NoneType,
        msgspec.inspect.LiteralType,
    )

    def label(t: msgspec.inspect.Type) -> bool:
        if isinstance(t, msgspec.inspect.UnionType):
            return all(label(member) for member in t.types)
        return isinstance(t, plain)

    info = msgspec.inspect.type_info(event)
    assert isinstance(info, msgspec.inspect.StructType)
    return frozenset(f.name for f in info.fields if label(f.type))


#: per event type, what picks its float-typed fields out of its values, and where its maps of
#: numbers are (see Event.__post_init__)
_CHECKS_OF: dict[type, tuple[Callable[[tuple[Any, ...]], tuple[Any, ...]], tuple[int, ...]]] = {}


def _checks(event: type[Event]) -> tuple[Callable[[tuple[Any, ...]], tuple[Any, ...]], tuple[int, ...]]:
    def floats(t: msgspec.inspect.Type) -> bool:
        if isinstance(t, msgspec.inspect.UnionType):
            return any(floats(member) for member in t.types)
        return isinstance(t, (msgspec.inspect.FloatType, msgspec.inspect.AnyType))

    info = msgspec.inspect.type_info(event)
    assert isinstance(info, msgspec.inspect.StructType)
    at = [i for i, f in enumerate(info.fields) if floats(f.type)]
    maps = tuple(
        i for i, f in enumerate(info.fields) if isinstance(f.type, msgspec.inspect.DictType) and floats(f.type.value_type)
    )
    if len(at) > 1:
        return operator.itemgetter(*at), maps
    return ((lambda values: (values[at[0]],)) if at else (lambda values: ())), maps


class GpuSample(Event, frozen=True):
    """One GPU (or one MIG instance) at one instant, as an agent read it. Unsupported readings are null.

    A MIG instance gets a ``gpu_index`` of its own (see ``hpcinsight.agents.gpu_nvml.mig_gpu_index``):
    the tables are keyed on (node, gpu_index, ts), and sharing the board's index would merge
    the instance's row into the board's.
    """

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
    # What an operator needs beyond the basics, all null where a GPU (or MIG instance) does not
    # report it. Rates are per second; counters are cumulative since the driver loaded.
    mem_util_pct: Percent | None = None  # memory-controller busy time, not memory used
    power_limit_w: Watts | None = None  # enforced limit: a GPU at its cap is power-throttled
    mem_clock_mhz: Mhz | None = None
    sm_clock_max_mhz: Mhz | None = None
    mem_clock_max_mhz: Mhz | None = None
    throttle_reasons: UInt64 | None = None  # NVML clock-event bitmask, as reported
    throttle: LabelList = []  # the same bits decoded, e.g. ["sw_power_cap", "hw_thermal"]
    ecc_corrected_volatile: Count | None = None
    ecc_uncorrected_volatile: Count | None = None
    retired_pages_pending: Flag | None = None  # pre-Ampere; needs a reset to take effect
    remapped_rows_pending: Flag | None = None  # Ampere+; needs a reset to take effect
    remapped_rows_failure: Flag | None = None  # Ampere+; the GPU should be replaced
    pcie_tx_bytes_per_s: Real | None = None
    pcie_rx_bytes_per_s: Real | None = None
    nvlink_tx_bytes_per_s: Real | None = None  # data payload, summed over links
    nvlink_rx_bytes_per_s: Real | None = None
    nvlink_errors: Count | None = None  # CRC + replay + recovery errors, cumulative
    # GPM (Hopper+): what the SMs really did; gpu_util only says a kernel was resident.
    sm_active_pct: Percent | None = None
    sm_occupancy_pct: Percent | None = None
    tensor_active_pct: Percent | None = None
    dram_bw_util_pct: Percent | None = None
    # A MIG instance is its own sample: gpu_uuid is the MIG UUID, these name its place.
    mig_index: UInt8 | None = None
    mig_profile: Label | None = None
    parent_gpu_uuid: Label | None = None
    # Attribution, filled by the stream processor from the scheduler's placements (agents may
    # set job_id themselves, e.g. from the process cgroup); null when no job holds the GPU.
    user: Label | None = None
    team: Label | None = None
    priority: Label | None = None
    zone: Label | None = None


class GpuProcess(Event, frozen=True):
    """One process using one GPU (or MIG instance) at one tick, attributed to its container/job.

    On a shared GPU (time-slicing, MPS) ``gpu_util`` of the GPU cannot say whose work it is;
    ``sm_util_pct`` per process can. The attribution comes from the process's cgroup, so it
    needs the agent to see the host's ``/proc`` (hostPID); otherwise those fields are null.
    """

    __schema__ = "gpu_process"
    __version__ = 1

    node: Label
    gpu_index: UInt8
    gpu_uuid: Label
    ts: TimestampMs
    pid: UInt32
    process_name: Label | None = None
    used_memory_bytes: Bytes64 | None = None
    sm_util_pct: Percent | None = None
    mem_util_pct: Percent | None = None
    container_id: Label | None = None
    pod_uid: Label | None = None
    slurm_job_id: Label | None = None


class XidEvent(Event, frozen=True):
    """One XID error reported by the driver: every occurrence is a record, repeats included.

    ``ts`` is when the agent received it. ``seq`` numbers the occurrences an agent saw since it
    started; it is part of the table key, so two identical XIDs in the same millisecond stay
    two rows, while a message replayed by at-least-once delivery still collapses into one.
    """

    __schema__ = "xid_event"
    __version__ = 1

    node: Label
    gpu_index: UInt8
    gpu_uuid: Label
    ts: TimestampMs
    xid: UInt32
    seq: UInt64
    gpu_instance_id: UInt32 | None = None  # MIG GPU instance the error was confined to
    compute_instance_id: UInt32 | None = None


class GpuQuantiles(Event, frozen=True):
    """Quantiles of one GPU metric over one window [window_start, window_end).

    ``window`` is a sliding window's size (``"1m"``, ``"5m"``, ``"1h"``) or ``"since_start"``:
    everything the GPU did for its current job, from ``window_start`` (the job's first sample on
    it) to ``window_end``; that view is re-emitted periodically while the job runs.
    """

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
    user: Label | None = None
    team: Label | None = None


class JobQuantiles(Event, frozen=True):
    """Quantiles of one metric over all GPUs of a job: the merge of their sketches, not a re-scan.

    ``gpus`` is how many GPU sketches were merged; ``count`` how many samples they hold.
    """

    __schema__ = "job_quantiles"
    __version__ = 1

    job_id: Label
    metric: Label
    window: Label
    window_start: TimestampMs
    window_end: TimestampMs
    gpus: UInt32
    count: UInt64
    p25: Real
    p50: Real
    p95: Real
    mean: Real
    user: Label | None = None
    team: Label | None = None
    priority: Label | None = None


class GpuSketch(Event, frozen=True):
    """A GPU's quantile sketch of one metric over one window, on its way to the job stage.

    Internal: the per-GPU stage (partitioned by node) sends it keyed by job, so the job stage
    (partitioned by job) can merge a job's GPUs however many nodes they are spread over.
    ``sketch`` is a serialised Apache DataSketches KLL float sketch.
    """

    __schema__ = "gpu_sketch"
    __version__ = 1

    job_id: Label
    node: Label
    gpu_uuid: Label
    metric: Label
    window: Label
    window_start: TimestampMs
    window_end: TimestampMs
    count: UInt64
    sum: Real
    sketch: Bytes
    #: window means of the metrics kept without sketches (memory utilisation, PCIe and NVLink
    #: throughput, SM activity), on the utilisation sketch of the shortest window only
    means: Evidence = {}
    user: Label | None = None
    team: Label | None = None
    priority: Label | None = None


class SchedulingKpi(Event, frozen=True):
    """One scheduling KPI at one instant (or over the interval ending then), for one group.

    ``dimension`` says how the cluster was cut (``cluster``, ``gpu_model``, ``zone``, ``team``,
    ``user``, ``qos``, ``gpu_bucket``, ``job_class``, ``priority``, ``node``) and ``group`` names the slice
    (``all`` for the whole cluster). Quantile KPIs (queue wait) cover the ``interval_s`` before ``ts``
    and ``count`` says how many observations they rest on.
    """

    __schema__ = "scheduling_kpi"
    __version__ = 1

    ts: TimestampMs
    kpi: Label
    dimension: Label
    group: Label
    value: Real
    count: Count = 0
    interval_s: Real = 0.0


class StateCheckpoint(Event, frozen=True):
    """Internal: the stream processor's state of one series, so a restarted worker resumes it.

    Written to a compacted topic (the latest checkpoint of each ``series`` is all that is kept),
    in the partition of the samples it summarises. ``ts`` is the event time the state covers up
    to: samples from there on are replayed from the raw topic.
    """

    __schema__ = "state_checkpoint"
    __version__ = 1

    series: Label
    ts: TimestampMs
    data: Bytes


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


#: the most of a bad message a dead letter carries: the letter must itself fit a Kafka message (a
#: 1 MB message base64-encoded is 1.33 MB, over the producer's default limit), and what makes a
#: message bad is nearly always visible in its first kilobytes; ``raw_size`` and ``raw_sha256``
#: still identify the whole, which Kafka keeps at ``source_offset`` for its retention.
DEAD_LETTER_RAW_MAX = 64 * 1024
DEAD_LETTER_KEY_MAX = 1024
DEAD_LETTER_REASON_MAX = 4096


class DeadLetter(Event, frozen=True):
    """A message that could not be used, with the reason, so nothing is lost silently.

    ``raw`` is the message, or its first :data:`DEAD_LETTER_RAW_MAX` bytes when it is larger
    (``raw_size`` and ``raw_sha256`` are always those of the whole message). Where the worker
    used the rest of a message, ``raw`` is the records it left out, as one message of the same
    wire (``Codec.salvage``). Build one with :meth:`of`, which applies the caps.
    """

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
    raw_size: UInt64 | None = None
    raw_sha256: Label | None = None

    @classmethod
    def of(
        cls,
        *,
        ts: int,
        source_topic: str,
        source_partition: int,
        source_offset: int,
        stage: str,
        reason: str,
        raw: bytes | None,
        key: bytes | None = None,
    ) -> DeadLetter:
        """A dead letter that always encodes and fits a Kafka message, whatever it is about."""
        import hashlib

        raw = bytes(raw or b"")
        reason = reason.encode("utf-8", "replace").decode("utf-8", "replace")  # no lone surrogates
        if len(reason) > DEAD_LETTER_REASON_MAX:
            reason = reason[: DEAD_LETTER_REASON_MAX - 1] + "\u2026"
        return cls(
            ts=ts,
            source_topic=_label(source_topic),
            source_partition=max(0, source_partition),
            source_offset=max(0, source_offset),
            stage=_label(stage),
            reason=reason or "unknown",
            raw=raw[:DEAD_LETTER_RAW_MAX],
            key=None if key is None else bytes(key[:DEAD_LETTER_KEY_MAX]),
            raw_size=len(raw),
            raw_sha256=hashlib.sha256(raw).hexdigest(),
        )


def _label(text: str) -> str:
    """``text`` made a valid :data:`Label` (1 to 256 characters, valid UTF-8)."""
    text = text.encode("utf-8", "replace").decode("utf-8", "replace")[:256]
    return text or "?"


class IbSample(Event, frozen=True):
    """One InfiniBand port over one sampling interval: link state and rates from counter deltas.

    Rates are per second over ``interval_s``; error fields count the errors in the interval. A
    counter that went backwards (reset, driver reload) or wrapped yields null for that interval
    and ``counters_reset`` is set, never a negative or absurd rate.
    """

    __schema__ = "ib_sample"
    __version__ = 1

    node: Label
    device: Label
    port: UInt8
    ts: TimestampMs
    interval_s: Real | None = None
    state: Label | None = None
    phys_state: Label | None = None
    rate_gbps: Real | None = None
    xmit_bytes_per_s: Real | None = None
    rcv_bytes_per_s: Real | None = None
    xmit_packets_per_s: Real | None = None
    rcv_packets_per_s: Real | None = None
    xmit_wait_per_s: Real | None = None
    symbol_errors: Count | None = None
    link_downed: Count | None = None
    link_error_recovery: Count | None = None
    rcv_errors: Count | None = None
    rcv_remote_physical_errors: Count | None = None
    xmit_discards: Count | None = None
    local_link_integrity_errors: Count | None = None
    excessive_buffer_overrun_errors: Count | None = None
    hw_counters: Readings = {}  # rate per second of each hw_counters file, where present
    counters_reset: Flag = False
    # Attribution (see GpuSample): the job holding most of the node's GPUs at ``ts``.
    job_id: Label | None = None
    user: Label | None = None
    team: Label | None = None


SchedulerEventKind = Annotated[
    Literal["submitted", "scheduled", "started", "finished", "preempted", "deleted"],
    Column("LowCardinality(String)", "string"),
]


class SchedulerEvent(Event, frozen=True):
    """A job's life as the scheduler (Kubernetes, Slurm, or a trace) reports it."""

    __schema__ = "scheduler_event"
    __version__ = 1

    ts: TimestampMs
    source: Label
    job_id: Label
    kind: SchedulerEventKind
    user: Label | None = None
    team: Label | None = None
    priority: Label | None = None
    qos: Label | None = None
    queue: Label | None = None
    requested_gpus: Amount | None = None
    requested_cpus: Amount | None = None
    requested_memory_bytes: Bytes64 | None = None
    gpu_model: Label | None = None
    node: Label | None = None
    gpu_ids: LabelList = []
    status: Label | None = None
    name: Label | None = None


class NodeInventory(Event, frozen=True):
    """What a node has: GPUs, CPUs, memory and its placement labels."""

    __schema__ = "node_inventory"
    __version__ = 1

    ts: TimestampMs
    node: Label
    gpu_count: UInt32
    gpu_model: Label | None = None
    cpus: Amount | None = None
    memory_bytes: Bytes64 | None = None
    zone: Label | None = None
    pool: Label | None = None
    labels: StringMap = {}


class StepMetric(Event, frozen=True):
    """One training step of one rank: its duration and, optionally, where the time went."""

    __schema__ = "step_metric"
    __version__ = 1

    job_id: Label
    rank: UInt32
    world_size: UInt32
    step: Count
    ts: TimestampMs
    duration_s: Real
    node: Label | None = None
    local_rank: UInt32 | None = None
    phases: Readings = {}
    # Attribution, filled by the stream processor from the scheduler's view of the job
    user: Label | None = None
    team: Label | None = None


class AgentHealth(Event, frozen=True):
    """An agent's account of itself, every few seconds: what it took, sent, spilled and lost."""

    __schema__ = "agent_health"
    __version__ = 1

    ts: TimestampMs
    node: Label
    agent: Label
    samples_taken: Count
    messages_sent: Count
    messages_spilled: Count
    messages_dropped: Count
    spool_bytes: Count
    errors: Count
    tick_overruns: Count


class Silence(Event, frozen=True):
    """A silence of the alert router: alerts whose labels match every matcher are not notified
    between ``starts_at`` and ``ends_at``.

    Matchers are Alertmanager's strings: ``name=value``, ``name!=value``, ``name=~regex``,
    ``name!~regex`` (the regex anchored at both ends). The topic is compacted by ``id``: the latest
    record of a silence is its state, so expiring one is a new record with ``ends_at`` now.
    """

    __schema__ = "silence"
    __version__ = 1

    id: Label
    ts: TimestampMs  # when this version of the silence was written
    matchers: LabelList
    starts_at: TimestampMs
    ends_at: TimestampMs
    created_by: Label
    comment: Text = ""


class Redrive(Event, frozen=True):
    """A batch of dead letters sent back to their topics (``hpcinsight dead-letters redrive``).

    Written twice, keyed by ``batch`` on a compacted topic: ``sending`` before its messages go,
    with where each topic they go to ended then (``starts``), and ``sent`` once they are
    delivered, with where each went. A run that finds a batch still ``sending`` (its writer was
    killed) looks for its messages from ``starts`` on, by their header, and records what it
    finds as sent: no letter is sent twice, and no Kafka transaction holds readers back.
    The lists run in parallel: a letter's place in ``dead.letters``, its topic, the SHA-256 of
    its bytes (a letter of the same bytes written later came back refused again) and, when
    sent, ``<topic>:<partition>:<offset>`` of the message.
    """

    __schema__ = "redrive"
    __version__ = 1

    batch: Label
    ts: TimestampMs
    by: Label
    state: Label  # "sending" or "sent"
    letters: LabelList  # "<partition>:<offset>" in dead.letters
    topics: LabelList
    sha256: LabelList
    starts: LabelList = []  # "<topic>:<partition>:<offset>": every partition's end before the batch
    sent: LabelList = []


ALL_EVENTS: tuple[type[Event], ...] = (
    GpuSample,
    GpuQuantiles,
    Anomaly,
    DeadLetter,
    IbSample,
    SchedulerEvent,
    NodeInventory,
    StepMetric,
    AgentHealth,
    GpuProcess,
    XidEvent,
    JobQuantiles,
    GpuSketch,
    SchedulingKpi,
    StateCheckpoint,
    Silence,
    Redrive,
)
