"""GPU telemetry read from the NVIDIA driver through NVML (nvidia-ml-py).

Three collectors, one per topic, because the runner sends each collector's records to that
collector's one topic:

* :class:`NvmlGpuCollector` -> ``gpu.samples.raw``: a :class:`GpuSample` per GPU, and per MIG
  instance, per tick.
* :class:`NvmlProcessCollector` -> ``gpu.processes``: a :class:`GpuProcess` per process per GPU
  per tick, attributed to its container, pod and Slurm job through its cgroup.
* :class:`NvmlXidCollector` -> ``gpu.xid``: every XID error, caught by a thread waiting on an
  NVML event set so the sampling loop never waits for one.

They share :class:`_NvmlCollector`: opening NVML, finding the GPUs and their MIG instances, and
reading each value on its own. A value a GPU does not have (``NVMLError_NotSupported``, or a
function the installed driver lacks) is null, silently; any other NVML error is null too and
logged once per GPU and reading; a GPU that is lost yields a sample with only its identity and
costs no further calls that tick. One GPU's failure never stops the others. Each collector
calls ``nvmlInit`` and ``nvmlShutdown`` itself: NVML counts initialisations, so they coexist.

Where each ``GpuSample`` field comes from (units converted to the schema's):

==========================  ===================================================================
gpu_util, mem_util_pct      nvmlDeviceGetUtilizationRates (.gpu, .memory), %
mem_used/total_bytes        nvmlDeviceGetMemoryInfo, bytes
power_w, power_limit_w      nvmlDeviceGetPowerUsage, nvmlDeviceGetEnforcedPowerLimit, mW / 1000
temperature_c               nvmlDeviceGetTemperature(NVML_TEMPERATURE_GPU)
sm/mem_clock_mhz            nvmlDeviceGetClockInfo(NVML_CLOCK_SM / NVML_CLOCK_MEM)
sm/mem_clock_max_mhz        nvmlDeviceGetMaxClockInfo, read once per rescan (static)
throttle_reasons, throttle  nvmlDeviceGetCurrentClocksEventReasons (…ThrottleReasons before r535)
ecc_*_volatile              nvmlDeviceGetTotalEccErrors(CORRECTED/UNCORRECTED, NVML_VOLATILE_ECC)
retired_pages_pending       nvmlDeviceGetRetiredPagesPendingStatus (pre-Ampere)
remapped_rows_*             nvmlDeviceGetRemappedRows -> (…, pending, failure) (Ampere+)
pcie_tx/rx_bytes_per_s      GPM PCIE_TX/RX_PER_SEC (MiB/s) where GPM works, else
                            nvmlDeviceGetPcieThroughput (KB/s x 1024; blocks ~20 ms per call)
nvlink_tx/rx_bytes_per_s    nvmlDeviceGetFieldValues NVLINK_THROUGHPUT_DATA_TX/RX, scope
                            UINT_MAX (all links): cumulative KiB, differenced between ticks
nvlink_errors               same call: CRC flit + CRC data + replay + recovery *_TOTAL counters,
                            summed; cumulative since driver load (take deltas downstream)
sm_active_pct …             GPM (Hopper+): nvmlGpmSampleGet each tick, nvmlGpmMetricsGet over
                            this tick's and the previous tick's sample: SM_UTIL, SM_OCCUPANCY,
                            ANY_TENSOR_UTIL, DRAM_BW_UTIL; null on the first tick and without GPM
==========================  ===================================================================

MIG: when a GPU is in MIG mode, the GPU's own sample carries what belongs to the board (power,
temperature, clocks, ECC, throttling, PCIe, NVLink) and each MIG instance is a sample of its
own with what an instance has (memory, utilisation where supported, GPM through
nvmlGpmMigSampleGet). Its ``gpu_uuid`` is the MIG UUID, ``parent_gpu_uuid`` the board's, and
``gpu_index`` is :func:`mig_gpu_index` so that (node, gpu_index) stays unique per node, which
the stored tables' keys rely on.
"""

from __future__ import annotations

import ctypes
import logging
import math
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from hpcinsight.agents.base import Collector
from hpcinsight.agents.cgroup import Attribution, read_attribution
from hpcinsight.agents.registry import check, collector_kind
from hpcinsight.schemas.catalog import GPU_PROCESSES, GPU_SAMPLES_RAW, GPU_XID
from hpcinsight.schemas.events import GpuProcess, GpuSample, XidEvent

log = logging.getLogger(__name__)
T = TypeVar("T")

MIB = 2**20
_UINT_MAX = 0xFFFFFFFF  # NVML: "not applicable" for ids; "all links" as a field scope

# --- MIG numbering -----------------------------------------------------------------------
MIG_GPU_INDEX_BASE = 64
MIG_SLOTS_PER_GPU = 8  # NVML allows at most 7 MIG devices per GPU


def mig_gpu_index(parent_index: int, mig_index: int) -> int | None:
    """``gpu_index`` of MIG device ``mig_index`` of GPU ``parent_index``: 64 + 8 x parent + mig.

    A MIG instance cannot share its parent's ``gpu_index``: the sample tables are keyed (and
    deduplicated) on (node, gpu_index, ts), so the instance's row and the board's row would
    collapse into one. Full GPUs keep their NVML index (0..63); MIG devices get 64..255, which
    fits GPUs 0..23 of a node. ``mig_index`` and ``parent_gpu_uuid`` say the same thing
    plainly; ``mig_index`` is NVML's MIG device index, stable while the MIG layout is unchanged
    (the MIG UUID is the stable identity). ``None`` when it does not fit a UInt8.
    """
    if not 0 <= mig_index < MIG_SLOTS_PER_GPU or parent_index < 0:
        return None
    value = MIG_GPU_INDEX_BASE + MIG_SLOTS_PER_GPU * parent_index + mig_index
    return value if value <= 255 else None


_MIG_NAME = re.compile(r"\bMIG\s+(\S+)\s*$")


def _mig_profile(device_name: str | None) -> str | None:
    """``1g.10gb`` from a MIG device's name such as ``NVIDIA H100 80GB HBM3 MIG 1g.10gb``."""
    m = _MIG_NAME.search(device_name or "")
    return m.group(1) if m else None


# --- throttle reasons --------------------------------------------------------------------
# nvmlClocksEventReason* bits of nvml.h (the ABI; fixed).
THROTTLE_BITS: tuple[tuple[int, str], ...] = (
    (0x001, "idle"),
    (0x002, "applications_clocks"),
    (0x004, "sw_power_cap"),
    (0x008, "hw_slowdown"),
    (0x010, "sync_boost"),
    (0x020, "sw_thermal"),
    (0x040, "hw_thermal"),
    (0x080, "hw_power_brake"),
    (0x100, "display_clocks"),
    (0x200, "board_limit"),
    (0x400, "reliability"),
)
_KNOWN_THROTTLE = sum(bit for bit, _ in THROTTLE_BITS)


def decode_throttle(mask: int) -> list[str]:
    """Names of the bits set in an NVML clock-event-reason mask; an unknown bit N is ``bit_N``.

    Unknown bits are named rather than dropped: a newer driver's reason should show up, not
    vanish, and ``throttle_reasons`` keeps the raw mask anyway.
    """
    names = [name for bit, name in THROTTLE_BITS if mask & bit]
    unknown = mask & ~_KNOWN_THROTTLE
    if unknown:
        names.extend(f"bit_{n}" for n in range(64) if unknown >> n & 1)
    return names


# --- value conversion: nothing out of range or non-finite may reach a record -------------
# (The wire decoder rejects a whole node's message for one bad value, so clamp here.)
def _pct(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return min(100.0, max(0.0, value)) if math.isfinite(value) else None


def _float(value: float | None, scale: float = 1.0) -> float | None:
    if value is None:
        return None
    value = float(value) * scale
    return value if math.isfinite(value) and value >= 0 else None


def _count(value: int | None) -> int | None:
    return int(value) if value is not None and 0 <= value <= 2**63 - 1 else None


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _label(value: str | bytes | None) -> str | None:
    """A string fit for a ``Label`` (1..256 characters), keeping the end of a long path."""
    if value is None:
        return None
    text = _text(value).strip()
    return text[-256:] if text else None


# nvmlValueType_t -> member of the nvmlValue_t union (nvml.h ABI)
_VALUE_MEMBER = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


def _field_value(success: int, fv: Any) -> float | None:
    """The number in one ``nvmlFieldValue_t``, or ``None`` if NVML did not fill it."""
    if fv.nvmlReturn != success:
        return None
    member = _VALUE_MEMBER.get(fv.valueType)
    if member is None:
        return None
    value = getattr(fv.value, member)
    return value if math.isfinite(value) else None


def _handle_key(handle: Any) -> Any:
    """A hashable identity of a device handle: the C pointer's address (ctypes pointers
    compare by Python identity, and the handle in an event is a new Python object)."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value
    except (ctypes.ArgumentError, TypeError):
        return id(handle)


class _Constants:
    """The NVML constants a tick uses, read from the library once."""

    def __init__(self, nv: Any) -> None:
        self.success = nv.NVML_SUCCESS
        self.temperature_gpu = nv.NVML_TEMPERATURE_GPU
        self.clock_sm, self.clock_mem = nv.NVML_CLOCK_SM, nv.NVML_CLOCK_MEM
        self.ecc_corrected = nv.NVML_MEMORY_ERROR_TYPE_CORRECTED
        self.ecc_uncorrected = nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
        self.ecc_volatile = nv.NVML_VOLATILE_ECC
        self.pcie_tx, self.pcie_rx = nv.NVML_PCIE_UTIL_TX_BYTES, nv.NVML_PCIE_UTIL_RX_BYTES


@dataclass(frozen=True)
class NvmlConfig:
    node: str = socket.gethostname()
    job_id: str | None = None
    #: re-read the MIG layout (and retry GPUs that could not be opened) this often
    rescan_s: float = 60.0
    #: read PCIe throughput on GPUs without GPM; nvmlDeviceGetPcieThroughput measures over
    #: 20 ms, so it costs ~40 ms per GPU per tick in the sampling thread
    pcie_throughput: bool = True
    #: where the host's processes are visible (the agent needs hostPID for attribution)
    proc_root: Path = Path("/proc")
    #: how long the XID thread waits in NVML before checking whether it should stop
    xid_wait_ms: int = 500
    #: XIDs held between ticks at most; beyond that the oldest are dropped (and counted)
    xid_queue_max: int = 10_000

    def __post_init__(self) -> None:
        check(bool(self.node), "node", "must be a node name")
        check(math.isfinite(self.rescan_s) and self.rescan_s > 0, "rescan_s", "must be a positive number of seconds")
        check(self.xid_wait_ms >= 1, "xid_wait_ms", "must be >= 1")
        check(self.xid_queue_max >= 1, "xid_queue_max", "must be >= 1")


@dataclass(eq=False)
class _Device:
    """A GPU or a MIG instance: what identifies it in records, and its NVML handle."""

    index: int  # gpu_index in records
    uuid: str
    handle: Any
    parent: _Device | None = None  # the board, for a MIG instance
    mig_index: int | None = None
    mig_profile: str | None = None
    gpu_instance_id: int | None = None
    mig_enabled: bool = False  # a board in MIG mode

    @property
    def label(self) -> str:
        if self.parent is None:
            return f"GPU {self.index}"
        return f"GPU {self.parent.index} MIG {self.mig_index}"


class _Lost(Exception):
    """The GPU is lost: stop reading it for this tick."""


class _NvmlCollector(Collector[NvmlConfig]):
    """What the NVML collectors share: the session, the device list, one-at-a-time reads."""

    #: whether this collector looks for MIG instances (the XID listener does not need them)
    _wants_mig = True

    def __init__(self, config: NvmlConfig, nvml: Any = None) -> None:
        super().__init__(config)
        if nvml is None:
            import pynvml as nvml  # nvidia-ml-py
        self._nvml = nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as err:
            raise RuntimeError(f"NVML is not available on this node ({err}); use --backend sim to simulate GPUs") from None
        self._closed = False
        self._quiet: tuple[type[BaseException], ...] = (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound)
        self._failures: dict[tuple[str, str], str] = {}
        self._gpus: list[_Device] = []
        self._migs: dict[str, list[_Device]] = {}
        self._next_scan_ms: int | None = None
        try:
            self._unopened = list(range(nvml.nvmlDeviceGetCount()))
        except nvml.NVMLError as err:
            self.close()
            raise RuntimeError(f"NVML cannot count the GPUs of this node ({err})") from None
        self._scan()

    # -- reading ---------------------------------------------------------------------------
    def _read(self, dev: _Device, what: str, fn: Callable[[], T], quiet: tuple[type[BaseException], ...] = ()) -> T | None:
        """``fn()``, or ``None`` if NVML cannot give it; raises :class:`_Lost` for a lost GPU."""
        nv = self._nvml
        try:
            return fn()
        except self._quiet + quiet:
            return None
        except nv.NVMLError_GpuIsLost as err:
            self._failed(dev, what, err)
            raise _Lost from None
        except nv.NVMLError as err:
            self._failed(dev, what, err)
            return None

    def _failed(self, dev: _Device, what: str, err: BaseException, exc_info: bool = False) -> None:
        # Log a failing reading once per device and reading (again only if the error changes).
        key = (dev.uuid, what)
        if self._failures.get(key) != str(err):
            self._failures[key] = str(err)
            log.warning("%s: reading %s failed: %s", dev.label, what, err, exc_info=exc_info)

    # -- devices ---------------------------------------------------------------------------
    def _scan(self) -> None:
        """Open GPUs not yet opened and refresh MIG instances; keeps the state of known ones."""
        nv = self._nvml
        for index in list(self._unopened):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(nv.nvmlDeviceGetUUID(handle))
            except nv.NVMLError as err:
                self._failed(_Device(index, f"index-{index}", None), "its handle", err)
                continue
            self._unopened.remove(index)
            self._gpus.append(_Device(index, uuid, handle))
        self._gpus.sort(key=lambda d: d.index)
        if self._wants_mig:
            for gpu in self._gpus:
                try:
                    self._scan_mig(gpu)
                except _Lost:
                    pass  # keep what was known; it is retried at the next scan

    def _scan_mig(self, gpu: _Device) -> None:
        # Nothing is changed until the new layout is complete: a GPU lost half-way through
        # (``_Lost``) keeps the instances it had.
        nv = self._nvml
        mode = self._read(gpu, "MIG mode", lambda: nv.nvmlDeviceGetMigMode(gpu.handle))
        enabled = mode is not None and mode[0] == nv.NVML_DEVICE_MIG_ENABLE
        known = {d.uuid: d for d in self._migs.get(gpu.uuid, [])}
        children: list[_Device] = []
        if enabled:
            count = self._read(gpu, "MIG device count", lambda: nv.nvmlDeviceGetMaxMigDeviceCount(gpu.handle)) or 0
            for i in range(count):
                child = self._open_mig(gpu, i, known)
                if child is not None:
                    children.append(child)
        gpu.mig_enabled = enabled
        if enabled:
            self._migs[gpu.uuid] = children
        else:
            self._migs.pop(gpu.uuid, None)
        self._forget(known.values())  # what is left of it was destroyed

    def _open_mig(self, gpu: _Device, i: int, known: dict[str, _Device]) -> _Device | None:
        nv = self._nvml
        try:
            handle = nv.nvmlDeviceGetMigDeviceHandleByIndex(gpu.handle, i)
            uuid = _text(nv.nvmlDeviceGetUUID(handle))
        except (nv.NVMLError_NotFound, nv.NVMLError_InvalidArgument):
            return None  # no MIG device in this slot
        except nv.NVMLError as err:
            self._failed(gpu, f"MIG device {i}", err)
            return None
        index = mig_gpu_index(gpu.index, i)
        if index is None:
            self._failed(gpu, f"MIG device {i}", ValueError("no gpu_index fits it (GPU index above 23?)"))
            return None
        child = known.get(uuid)
        if child is None:
            child = _Device(index, uuid, handle, parent=gpu, mig_index=i)
            name = self._read(child, "name", lambda: nv.nvmlDeviceGetName(handle))
            child.mig_profile = _label(_mig_profile(_text(name)) if name is not None else None)
            child.gpu_instance_id = self._read(child, "GPU instance id", lambda: nv.nvmlDeviceGetGpuInstanceId(handle))
        else:
            del known[uuid]
        child.index, child.handle, child.mig_index = index, handle, i
        return child

    def _forget(self, devices: Iterable[_Device]) -> None:
        """Release per-device state of devices that are gone (MIG instances destroyed)."""

    def _devices(self, now_ms: int) -> list[_Device]:
        """Boards and their MIG instances, in order; rescanned every ``rescan_s``."""
        period_ms = int(self.config.rescan_s * 1000)
        if self._next_scan_ms is None:
            self._next_scan_ms = now_ms + period_ms
        elif now_ms >= self._next_scan_ms:
            self._scan()
            self._next_scan_ms = now_ms + period_ms
        out: list[_Device] = []
        for gpu in self._gpus:
            out.append(gpu)
            out.extend(self._migs.get(gpu.uuid, ()))
        return out

    def _guarded(self, dev: _Device, read: Callable[[], T], fallback: Callable[[], T]) -> T:
        """``read()``; for a lost GPU or an unexpected failure, ``fallback()`` instead."""
        try:
            return read()
        except _Lost:
            return fallback()
        except Exception as err:  # noqa: BLE001 - a surprise from one GPU must not cost the others their sample
            self._failed(dev, "a sample", err, exc_info=True)
            return fallback()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass


# --- GPU samples -------------------------------------------------------------------------
@dataclass(eq=False)
class _Gpm:
    """Two GPM samples used in turn (previous tick, this tick) and the reusable request."""

    previous: Any
    current: Any
    request: Any
    ready: bool = False  # ``previous`` holds a sample taken at the previous tick


@dataclass
class _Counter:
    value: float | None
    ts_us: int  # NVML's timestamp of the reading (0 if none)
    mono: float  # our clock, for when NVML gives no timestamp


@dataclass
class _LinkState:
    counters: dict[str, _Counter] = field(default_factory=dict)


class NvmlGpuCollector(_NvmlCollector):
    """Samples every GPU, and every MIG instance, of this node."""

    topic = GPU_SAMPLES_RAW

    def __init__(self, config: NvmlConfig, nvml: Any = None) -> None:
        self._gpm: dict[str, _Gpm | None] = {}
        self._links: dict[str, _LinkState] = {}
        self._max_clocks: dict[str, tuple[float | None, float | None]] = {}
        super().__init__(config, nvml)
        nv = self._nvml
        # NVML constants looked up once: a tick reads them ~30 times per GPU.
        self._k = _Constants(nv)
        self._gpm_ids = (
            nv.NVML_GPM_METRIC_SM_UTIL,
            nv.NVML_GPM_METRIC_SM_OCCUPANCY,
            nv.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
            nv.NVML_GPM_METRIC_DRAM_BW_UTIL,
            nv.NVML_GPM_METRIC_PCIE_TX_PER_SEC,
            nv.NVML_GPM_METRIC_PCIE_RX_PER_SEC,
        )
        self._link_fields = (
            (nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, _UINT_MAX),
            (nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, _UINT_MAX),
            (nv.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL, 0),
            (nv.NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL, 0),
            (nv.NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL, 0),
            (nv.NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL, 0),
        )

    def sample(self, now_ms: int) -> list[GpuSample]:
        out = []
        for dev in self._devices(now_ms):
            read = self._sample_mig if dev.parent is not None else self._sample_gpu
            out.append(self._guarded(dev, lambda: read(dev, now_ms), lambda: self._identity(dev, now_ms)))  # noqa: B023 - called at once, within this iteration
        return out

    def _identity(self, dev: _Device, now_ms: int, **values: Any) -> GpuSample:
        return GpuSample(
            node=self.config.node,
            gpu_index=dev.index,
            gpu_uuid=dev.uuid,
            ts=now_ms,
            job_id=self.config.job_id,
            mig_index=dev.mig_index,
            mig_profile=dev.mig_profile,
            parent_gpu_uuid=dev.parent.uuid if dev.parent is not None else None,
            **values,
        )

    def _sample_gpu(self, d: _Device, now_ms: int) -> GpuSample:
        nv, k, h, r = self._nvml, self._k, d.handle, self._read
        util = r(d, "utilization", lambda: nv.nvmlDeviceGetUtilizationRates(h))
        mem = r(d, "memory", lambda: nv.nvmlDeviceGetMemoryInfo(h))
        power_mw = r(d, "power", lambda: nv.nvmlDeviceGetPowerUsage(h))
        limit_mw = r(d, "power limit", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h))
        temp = r(d, "temperature", lambda: nv.nvmlDeviceGetTemperature(h, k.temperature_gpu))
        sm = r(d, "sm clock", lambda: nv.nvmlDeviceGetClockInfo(h, k.clock_sm))
        mem_clock = r(d, "memory clock", lambda: nv.nvmlDeviceGetClockInfo(h, k.clock_mem))
        sm_max, mem_max = self._static_clocks(d)
        reasons = r(d, "clock event reasons", lambda: self._clock_reasons(h))
        ecc_c = r(d, "corrected ECC errors", lambda: nv.nvmlDeviceGetTotalEccErrors(h, k.ecc_corrected, k.ecc_volatile))
        ecc_u = r(d, "uncorrected ECC errors", lambda: nv.nvmlDeviceGetTotalEccErrors(h, k.ecc_uncorrected, k.ecc_volatile))
        retired = r(d, "retired pages", lambda: nv.nvmlDeviceGetRetiredPagesPendingStatus(h))
        remap = r(d, "remapped rows", lambda: nv.nvmlDeviceGetRemappedRows(h))
        gpm = self._gpm_metrics(d)
        pcie_tx, pcie_rx = self._pcie(d, gpm)
        link_tx, link_rx, link_errors = self._nvlink(d)
        return self._identity(
            d,
            now_ms,
            gpu_util=_pct(util.gpu) if util is not None else None,
            mem_used_bytes=_count(mem.used) if mem is not None else None,
            mem_total_bytes=_count(mem.total) if mem is not None else None,
            power_w=_float(power_mw, 1e-3),
            temperature_c=float(temp) if temp is not None else None,
            sm_clock_mhz=_float(sm),
            mem_util_pct=_pct(util.memory) if util is not None else None,
            power_limit_w=_float(limit_mw, 1e-3),
            mem_clock_mhz=_float(mem_clock),
            sm_clock_max_mhz=sm_max,
            mem_clock_max_mhz=mem_max,
            throttle_reasons=_count(reasons),
            throttle=decode_throttle(reasons) if reasons is not None else [],
            ecc_corrected_volatile=_count(ecc_c),
            ecc_uncorrected_volatile=_count(ecc_u),
            retired_pages_pending=bool(retired) if retired is not None else None,
            remapped_rows_pending=bool(remap[2]) if remap is not None else None,
            remapped_rows_failure=bool(remap[3]) if remap is not None else None,
            pcie_tx_bytes_per_s=pcie_tx,
            pcie_rx_bytes_per_s=pcie_rx,
            nvlink_tx_bytes_per_s=link_tx,
            nvlink_rx_bytes_per_s=link_rx,
            nvlink_errors=link_errors,
            **self._gpm_fields(gpm),
        )

    def _sample_mig(self, d: _Device, now_ms: int) -> GpuSample:
        # A MIG instance has its own memory and SMs; the board's sensors stay on the board's row.
        nv, h, r = self._nvml, d.handle, self._read
        util = r(d, "utilization", lambda: nv.nvmlDeviceGetUtilizationRates(h))
        mem = r(d, "memory", lambda: nv.nvmlDeviceGetMemoryInfo(h))
        gpm = self._gpm_metrics(d)
        return self._identity(
            d,
            now_ms,
            gpu_util=_pct(util.gpu) if util is not None else None,
            mem_used_bytes=_count(mem.used) if mem is not None else None,
            mem_total_bytes=_count(mem.total) if mem is not None else None,
            mem_util_pct=_pct(util.memory) if util is not None else None,
            **self._gpm_fields(gpm),
        )

    def _static_clocks(self, d: _Device) -> tuple[float | None, float | None]:
        cached = self._max_clocks.get(d.uuid)
        if cached is None:
            nv, h = self._nvml, d.handle
            sm = self._read(d, "max sm clock", lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM))
            mem = self._read(d, "max memory clock", lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_MEM))
            cached = self._max_clocks[d.uuid] = (_float(sm), _float(mem))
        return cached

    def _clock_reasons(self, handle: Any) -> int:
        nv = self._nvml
        current = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
        if current is not None:
            try:
                return current(handle)
            except nv.NVMLError_FunctionNotFound:
                pass  # a driver before r535: same bits under the older name
        return nv.nvmlDeviceGetCurrentClocksThrottleReasons(handle)

    # -- GPM -------------------------------------------------------------------------------
    def _gpm_open(self, d: _Device) -> _Gpm | None:
        nv = self._nvml
        board = d.parent if d.parent is not None else d
        if d.parent is not None and d.gpu_instance_id is None:
            return None
        support = self._read(d, "GPM support", lambda: nv.nvmlGpmQueryDeviceSupport(board.handle))
        if support is None or not support.isSupportedDevice:
            return None
        first = self._read(d, "a GPM sample buffer", nv.nvmlGpmSampleAlloc)
        second = self._read(d, "a GPM sample buffer", nv.nvmlGpmSampleAlloc) if first is not None else None
        if second is None:
            self._free_samples(first)
            return None
        request = nv.c_nvmlGpmMetricsGet_t()
        request.version = nv.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(self._gpm_ids)
        for i, metric in enumerate(self._gpm_ids):
            request.metrics[i].metricId = metric
        return _Gpm(first, second, request)

    def _gpm_metrics(self, d: _Device) -> dict[int, float] | None:
        """GPM metrics over the last tick, by metric id; ``None`` without GPM or on the first tick."""
        if d.uuid not in self._gpm:
            self._gpm[d.uuid] = self._gpm_open(d)
        state = self._gpm[d.uuid]
        if state is None:
            return None
        nv = self._nvml
        try:
            if d.parent is None:
                taken = self._read(d, "a GPM sample", lambda: nv.nvmlGpmSampleGet(d.handle, state.current))
            else:
                taken = self._read(
                    d, "a GPM sample", lambda: nv.nvmlGpmMigSampleGet(d.parent.handle, d.gpu_instance_id, state.current)
                )
            if taken is None:
                state.ready = False
                return None
            values = None
            if state.ready:
                request = state.request
                request.sample1, request.sample2 = state.previous, state.current
                if self._read(d, "GPM metrics", lambda: nv.nvmlGpmMetricsGet(request)) is not None:
                    # (each field access of a pynvml structure runs Python code: read few)
                    values = {}
                    metrics, success = request.metrics, self._k.success
                    for i, metric_id in enumerate(self._gpm_ids):
                        metric = metrics[i]
                        if metric.nvmlReturn == success:
                            value = metric.value
                            if math.isfinite(value):
                                values[metric_id] = value
        except _Lost:
            state.ready = False
            raise
        state.previous, state.current = state.current, state.previous
        state.ready = True
        return values

    def _gpm_fields(self, gpm: dict[int, float] | None) -> dict[str, float | None]:
        if gpm is None:
            return {}
        sm, occupancy, tensor, dram = self._gpm_ids[:4]
        return {
            "sm_active_pct": _pct(gpm.get(sm)),
            "sm_occupancy_pct": _pct(gpm.get(occupancy)),
            "tensor_active_pct": _pct(gpm.get(tensor)),
            "dram_bw_util_pct": _pct(gpm.get(dram)),
        }

    def _free_samples(self, *samples: Any) -> None:
        for sample in samples:
            if sample is None:
                continue
            try:
                self._nvml.nvmlGpmSampleFree(sample)
            except self._nvml.NVMLError:
                pass

    # -- PCIe and NVLink -------------------------------------------------------------------
    def _pcie(self, d: _Device, gpm: dict[int, float] | None) -> tuple[float | None, float | None]:
        nv, k, h = self._nvml, self._k, d.handle
        if self._gpm.get(d.uuid) is not None:
            # GPM has PCIe counters at no cost; the first tick, before a pair of samples, has none
            if gpm is None:
                return None, None
            tx_id, rx_id = self._gpm_ids[4:6]
            return _float(gpm.get(tx_id), MIB), _float(gpm.get(rx_id), MIB)
        if not self.config.pcie_throughput:
            return None, None
        tx = self._read(d, "PCIe TX throughput", lambda: nv.nvmlDeviceGetPcieThroughput(h, k.pcie_tx))
        rx = self._read(d, "PCIe RX throughput", lambda: nv.nvmlDeviceGetPcieThroughput(h, k.pcie_rx))
        return _float(tx, 1024.0), _float(rx, 1024.0)

    def _nvlink(self, d: _Device) -> tuple[float | None, float | None, int | None]:
        nv = self._nvml
        values = self._read(d, "NVLink counters", lambda: nv.nvmlDeviceGetFieldValues(d.handle, self._link_fields))
        if values is None:
            return None, None, None
        mono = time.monotonic()
        success = self._k.success
        got = [_field_value(success, fv) for fv in values]
        errors = [v for v in got[2:] if v is not None]
        state = self._links.setdefault(d.uuid, _LinkState())
        rates = []
        for name, fv, value in (("tx", values[0], got[0]), ("rx", values[1], got[1])):
            now = _Counter(value, int(fv.timestamp), mono)
            rates.append(_rate_kib(state.counters.get(name), now))
            state.counters[name] = now
        return rates[0], rates[1], _count(int(sum(errors))) if errors else None

    def _forget(self, devices: Iterable[_Device]) -> None:
        for d in devices:
            state = self._gpm.pop(d.uuid, None)
            if state is not None:
                self._free_samples(state.previous, state.current)
            self._links.pop(d.uuid, None)
            self._max_clocks.pop(d.uuid, None)

    def _scan(self) -> None:
        self._max_clocks.clear()  # re-read with the layout: cheap, and heals a failed first read
        super()._scan()

    def close(self) -> None:
        if not self._closed:
            for state in self._gpm.values():
                if state is not None:
                    self._free_samples(state.previous, state.current)
            self._gpm.clear()
        super().close()


def _rate_kib(before: _Counter | None, now: _Counter) -> float | None:
    """Bytes per second between two readings of a cumulative KiB counter; ``None`` if unknown
    or if the counter went backwards (driver reload, reset)."""
    if before is None or before.value is None or now.value is None or now.value < before.value:
        return None
    if before.ts_us > 0 and now.ts_us > 0:
        seconds = (now.ts_us - before.ts_us) / 1e6
    else:
        seconds = now.mono - before.mono
    if seconds <= 0:
        return None
    return _float((now.value - before.value) * 1024.0 / seconds)


# --- processes ---------------------------------------------------------------------------
class NvmlProcessCollector(_NvmlCollector):
    """Every process on every GPU (or MIG instance) of this node, with its container/job.

    Processes of a board in MIG mode are read from its MIG instances, so each is charged to
    the instance it runs on. ``sm_util_pct`` is the mean of NVML's per-process samples since
    the previous tick (nvmlDeviceGetProcessUtilization), null where NVML keeps none (MIG).
    """

    topic = GPU_PROCESSES

    def __init__(self, config: NvmlConfig, nvml: Any = None) -> None:
        self._util_seen: dict[str, int] = {}
        self._names: dict[int, str | None] = {}
        self._owners: dict[int, Attribution] = {}
        super().__init__(config, nvml)

    def sample(self, now_ms: int) -> list[GpuProcess]:
        out: list[GpuProcess] = []
        alive: set[int] = set()
        for dev in self._devices(now_ms):
            if dev.mig_enabled:
                continue
            out.extend(self._guarded(dev, lambda: self._processes(dev, now_ms, alive), list))  # noqa: B023 - called at once, within this iteration
        for cache in (self._names, self._owners):  # a PID may be reused by another program later
            for pid in cache.keys() - alive:
                del cache[pid]
        return out

    def _processes(self, d: _Device, now_ms: int, alive: set[int]) -> list[GpuProcess]:
        nv, h = self._nvml, d.handle
        found: dict[int, Any] = {}
        for what, fn in (
            ("compute processes", nv.nvmlDeviceGetComputeRunningProcesses),
            ("MPS client processes", nv.nvmlDeviceGetMPSComputeRunningProcesses),
        ):
            for p in self._read(d, what, lambda: fn(h)) or ():  # noqa: B023 - called at once, within this iteration
                seen = found.get(p.pid)
                if seen is None or (seen.usedGpuMemory is None and p.usedGpuMemory is not None):
                    found[p.pid] = p
        if not found:
            return []
        util = self._utilisation(d)
        out = []
        for pid in sorted(found):
            alive.add(pid)
            owner = self._owners.get(pid)
            if owner is None:
                owner = self._owners[pid] = read_attribution(pid, self.config.proc_root)
            sm, mem = util.get(pid, (None, None))
            out.append(
                GpuProcess(
                    node=self.config.node,
                    gpu_index=d.index,
                    gpu_uuid=d.uuid,
                    ts=now_ms,
                    pid=pid,
                    process_name=self._name(pid),
                    used_memory_bytes=_count(found[pid].usedGpuMemory),
                    sm_util_pct=sm,
                    mem_util_pct=mem,
                    container_id=_label(owner["container_id"]),
                    pod_uid=_label(owner["pod_uid"]),
                    slurm_job_id=_label(owner["slurm_job_id"]),
                )
            )
        return out

    def _utilisation(self, d: _Device) -> dict[int, tuple[float | None, float | None]]:
        nv = self._nvml
        since = self._util_seen.get(d.uuid, 0)
        samples = self._read(
            d, "process utilization", lambda: nv.nvmlDeviceGetProcessUtilization(d.handle, since), quiet=(nv.NVMLError_NotFound,)
        )  # NotFound: no sample since `since`
        if not samples:
            return {}
        sums: dict[int, list[float]] = {}
        latest = since
        for s in samples:
            latest = max(latest, int(s.timeStamp))
            acc = sums.setdefault(int(s.pid), [0.0, 0.0, 0])
            acc[0] += s.smUtil
            acc[1] += s.memUtil
            acc[2] += 1
        self._util_seen[d.uuid] = latest
        return {pid: (_pct(sm / n), _pct(mem / n)) for pid, (sm, mem, n) in sums.items()}

    def _name(self, pid: int) -> str | None:
        if pid in self._names:
            return self._names[pid]
        nv = self._nvml
        try:
            name: str | bytes | None = nv.nvmlSystemGetProcessName(pid)
        except nv.NVMLError:
            name = None
        if not name:
            try:
                name = (self.config.proc_root / str(pid) / "comm").read_text()
            except OSError:
                name = None
        self._names[pid] = _label(name)
        return self._names[pid]


# --- XID errors --------------------------------------------------------------------------
class _Xid(NamedTuple):
    ts_ms: int
    gpu: _Device
    xid: int
    gpu_instance_id: int | None
    compute_instance_id: int | None


class NvmlXidCollector(_NvmlCollector):
    """Every XID error of this node's GPUs, one record per occurrence.

    A daemon thread blocks in ``nvmlEventSetWait_v2`` (``xid_wait_ms`` at a time, so it can
    notice :meth:`close`) and queues what arrives; :meth:`sample` only drains the queue, so a
    tick never waits for an event. The event's time is when the thread received it (NVML's
    event carries none). XIDs on a MIG board arrive on the board with the GPU instance id.
    GPUs are registered once, at start: one that could not be opened then is not listened to.
    """

    topic = GPU_XID
    _wants_mig = False  # XIDs arrive on the board's handle, with the GPU instance id inside

    def __init__(self, config: NvmlConfig, nvml: Any = None, clock: Callable[[], float] = time.time) -> None:
        super().__init__(config, nvml)
        self._clock = clock
        self._queue: deque[_Xid] = deque()
        self._lock = threading.Lock()
        self._seq = 0
        self.dropped = 0
        self._stop = threading.Event()
        self._event_set: Any = None
        self._thread: threading.Thread | None = None
        self._by_handle: dict[Any, _Device] = {}
        self._start()

    @property
    def listening(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _start(self) -> None:
        nv = self._nvml
        try:
            event_set = nv.nvmlEventSetCreate()
        except nv.NVMLError as err:
            log.warning("XID events are not available: %s", err)
            return
        for gpu in self._gpus:
            try:
                nv.nvmlDeviceRegisterEvents(gpu.handle, nv.nvmlEventTypeXidCriticalError, event_set)
            except nv.NVMLError as err:
                log.warning("%s: cannot listen for XID events: %s", gpu.label, err)
                continue
            self._by_handle[_handle_key(gpu.handle)] = gpu
        if not self._by_handle:
            self._free_set(event_set)
            return
        self._event_set = event_set
        self._thread = threading.Thread(target=self._listen, name="nvml-xid", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        nv = self._nvml
        xid_type = nv.nvmlEventTypeXidCriticalError
        last_error = ""
        while not self._stop.is_set():
            try:
                data = nv.nvmlEventSetWait_v2(self._event_set, self.config.xid_wait_ms)
            except nv.NVMLError_Timeout:
                continue
            except Exception as err:  # noqa: BLE001 - keep listening, but never spin on a persistent error
                if str(err) != last_error:
                    last_error = str(err)
                    log.warning("waiting for XID events failed: %s", err)
                self._stop.wait(1.0)
                continue
            if not data.eventType & xid_type:
                continue
            gpu = self._by_handle.get(_handle_key(data.device))
            if gpu is None:
                gpu = self._by_uuid(data.device)
            if gpu is None:
                log.warning("XID %d on a GPU this agent does not know; dropped", data.eventData)
                continue
            gi, ci = int(data.gpuInstanceId), int(data.computeInstanceId)
            item = _Xid(
                int(self._clock() * 1000),
                gpu,
                int(data.eventData),
                None if gi == _UINT_MAX else gi,
                None if ci == _UINT_MAX else ci,
            )
            with self._lock:
                if len(self._queue) >= self.config.xid_queue_max:
                    self._queue.popleft()
                    self.dropped += 1
                self._queue.append(item)

    def _by_uuid(self, handle: Any) -> _Device | None:
        try:
            uuid = _text(self._nvml.nvmlDeviceGetUUID(handle))
        except Exception:  # noqa: BLE001 - a GPU without a readable UUID is skipped, whatever NVML raised
            return None
        return next((g for g in self._gpus if g.uuid == uuid), None)

    def sample(self, now_ms: int) -> list[XidEvent]:
        with self._lock:
            items = list(self._queue)
            self._queue.clear()
        out = []
        for x in items:
            out.append(
                XidEvent(
                    node=self.config.node,
                    gpu_index=x.gpu.index,
                    gpu_uuid=x.gpu.uuid,
                    ts=x.ts_ms,
                    xid=x.xid,
                    seq=self._seq,
                    gpu_instance_id=x.gpu_instance_id,
                    compute_instance_id=x.compute_instance_id,
                )
            )
            self._seq += 1
        return out

    def _free_set(self, event_set: Any) -> None:
        try:
            self._nvml.nvmlEventSetFree(event_set)
        except self._nvml.NVMLError:
            pass

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=2 * self.config.xid_wait_ms / 1000 + 2.0)
            if self._thread.is_alive():
                # Freeing the set (or shutting NVML down) under a thread still inside the wait
                # would be a use-after-free in the driver library: leak it instead.
                log.error("the XID thread did not stop; leaving its NVML event set open")
                return
            self._thread = None
        if self._event_set is not None:
            self._free_set(self._event_set)
            self._event_set = None
        super().close()


@collector_kind("gpu_nvml", NvmlConfig)
def gpu_nvml(config: NvmlConfig) -> list[Collector[Any]]:
    """This node's GPUs through NVML: samples, processes, XID events (``[agent.collectors.gpu_nvml]``)."""
    gpus = NvmlGpuCollector(config)
    try:
        return [gpus, NvmlProcessCollector(config), NvmlXidCollector(config)]
    except BaseException:
        gpus.close()
        raise
