"""A stand-in for the NVIDIA driver library, for machines without GPUs.

It exposes the functions of nvidia-ml-py (``pynvml``) that the NVML collectors call, over a
table of fake devices. Only the hardware is faked: constants, error classes and the ctypes
structures (field values, GPM requests, process-utilisation samples) are pynvml's own, so the
collectors under test read the same layouts they read from a real driver. An NVML function
that is not faked raises ``AttributeError`` rather than reaching the real library.

What a test can set per GPU: every reading (``None`` = NotSupported), ``unsupported`` names
of functions answering NotSupported, ``lost`` (every call fails with GPU_IS_LOST), ``gpm``
(None = GPM unsupported, else metric id -> value), NVML ``fields`` (NVLink counters), ``mig``
(MIG mode with these instances), ``processes``; and per library: ``now_us`` (the driver's
clock for timestamps) and :meth:`FakeNvml.inject_xid`.
"""

from __future__ import annotations

import ctypes
import queue
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml

_ALL_LINKS = 0xFFFFFFFF
_NVLINK_THROUGHPUT = {
    pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
    pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
    pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_TX,
    pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_RX,
}


def _error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)  # pynvml maps the code to its subclass, e.g. NVMLError_NotSupported


@dataclass
class FakeProcess:
    pid: int
    used_memory: int | None = 8 * 2**30  # None: NVML cannot say (usedGpuMemory None)
    name: str | None = "/usr/bin/python3"  # None: nvmlSystemGetProcessName fails
    sm_util: int | list[int] | None = None  # one sample, several, or none (NotFound)
    mem_util: int = 0
    mps: bool = False  # an MPS client: listed by nvmlDeviceGetMPSComputeRunningProcesses


@dataclass(eq=False)  # a handle: compared and hashed by identity
class FakeGpu:
    uuid: str
    util: int | None = 80
    mem_util: int = 35
    mem_used: int = 40 * 2**30
    mem_total: int = 80 * 2**30
    power_mw: int | None = 450_000
    power_limit_mw: int | None = 700_000
    temp_c: int | None = 61
    sm_mhz: int | None = 1980
    mem_mhz: int | None = 2619
    sm_max_mhz: int | None = 1980
    mem_max_mhz: int | None = 2619
    throttle: int = 0  # clock-event reason bitmask
    ecc_corrected: int | None = 3
    ecc_uncorrected: int | None = 0
    retired_pending: int | None = None  # None: NotSupported (Ampere+ remaps rows instead)
    remapped_rows: tuple[int, int, int, int] | None = (0, 0, 0, 0)  # corrected, uncorrected, pending, failure
    pcie_tx_kbps: int | None = 2_000_000
    pcie_rx_kbps: int | None = 1_000_000
    fields: dict[int, int] = field(default_factory=dict)  # NVML field id -> value (NVLink counters)
    gpm: dict[int, float] | None = None  # GPM metric id -> value; None: GPM not supported
    name: str = "NVIDIA H100 80GB HBM3"
    mig: list[FakeGpu | None] | None = None  # a list (even empty) turns MIG mode on; None = empty slot
    gpu_instance_id: int | None = None  # MIG instances only
    processes: list[FakeProcess] = field(default_factory=list)
    unsupported: set[str] = field(default_factory=set)  # NVML functions answering NotSupported
    lost: bool = False  # every call fails with GPU_IS_LOST
    handle_error: int | None = None  # nvmlDeviceGetHandleByIndex fails with this (e.g. NO_PERMISSION)
    old_driver: bool = False  # no nvmlDeviceGetCurrentClocksEventReasons (drivers before r535)
    calls: list[str] = field(default_factory=list)


@dataclass
class _GpmSlot:
    buffer: Any  # keeps the memory the handle points to alive
    device: FakeGpu | None = None
    seq: int = 0


class FakeEventSet:
    def __init__(self) -> None:
        self.events: queue.Queue[Any] = queue.Queue()
        self.registered: list[tuple[FakeGpu, int]] = []
        self.freed = False
        self.waiting = 0
        self.waits = 0
        self.freed_while_waiting = False


def _addr(pointer: Any) -> int:
    return ctypes.cast(pointer, ctypes.c_void_p).value or 0


class FakeNvml:
    def __init__(self, gpus: list[FakeGpu], now_us: int = 1_764_000_000_000_000) -> None:
        self.gpus = gpus
        self.init_count = 0
        self.now_us = now_us
        self.event_sets: list[FakeEventSet] = []
        self.gpm_slots: dict[int, _GpmSlot] = {}
        self.gpm_allocated = 0
        self.gpm_freed = 0
        self.gpm_pairs: list[tuple[int, int]] = []  # (seq of sample1, seq of sample2) per metrics call
        self.field_requests: list[list[tuple[int, int]]] = []
        self._seq = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        # Constants, structures and error classes are pynvml's own. A *function* not faked here
        # is a test bug: it must not reach the real library.
        value = getattr(pynvml, name)
        if name.startswith("nvml") and callable(value):
            raise AttributeError(f"FakeNvml does not fake {name}")
        return value

    @property
    def initialised(self) -> bool:
        return self.init_count > 0

    # -- library -----------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.init_count += 1

    def nvmlShutdown(self) -> None:
        if self.init_count == 0:
            raise _error(pynvml.NVML_ERROR_UNINITIALIZED)
        self.init_count -= 1

    def _check(self, h: FakeGpu, value: Any, fn: str) -> Any:
        h.calls.append(fn)
        if self.init_count == 0:
            raise _error(pynvml.NVML_ERROR_UNINITIALIZED)
        if h.lost:
            raise _error(pynvml.NVML_ERROR_GPU_IS_LOST)
        if value is None or fn in h.unsupported:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return value

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        gpu = self.gpus[index]
        if gpu.handle_error is not None:  # e.g. a GPU outside this container's device cgroup
            raise _error(gpu.handle_error)
        return gpu

    def nvmlDeviceGetUUID(self, h: FakeGpu) -> str:
        return h.uuid  # known from before the GPU was lost

    def nvmlDeviceGetName(self, h: FakeGpu) -> str:
        return self._check(h, h.name, "nvmlDeviceGetName")

    # -- readings ----------------------------------------------------------------------------
    def nvmlDeviceGetUtilizationRates(self, h: FakeGpu) -> Any:
        return SimpleNamespace(gpu=self._check(h, h.util, "nvmlDeviceGetUtilizationRates"), memory=h.mem_util)

    def nvmlDeviceGetMemoryInfo(self, h: FakeGpu) -> Any:
        info = SimpleNamespace(used=h.mem_used, total=h.mem_total, free=h.mem_total - h.mem_used)
        return self._check(h, info, "nvmlDeviceGetMemoryInfo")

    def nvmlDeviceGetPowerUsage(self, h: FakeGpu) -> int:
        return self._check(h, h.power_mw, "nvmlDeviceGetPowerUsage")

    def nvmlDeviceGetEnforcedPowerLimit(self, h: FakeGpu) -> int:
        return self._check(h, h.power_limit_mw, "nvmlDeviceGetEnforcedPowerLimit")

    def nvmlDeviceGetTemperature(self, h: FakeGpu, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._check(h, h.temp_c, "nvmlDeviceGetTemperature")

    def nvmlDeviceGetClockInfo(self, h: FakeGpu, clock: int) -> int:
        value = {pynvml.NVML_CLOCK_SM: h.sm_mhz, pynvml.NVML_CLOCK_MEM: h.mem_mhz}[clock]
        return self._check(h, value, "nvmlDeviceGetClockInfo")

    def nvmlDeviceGetMaxClockInfo(self, h: FakeGpu, clock: int) -> int:
        value = {pynvml.NVML_CLOCK_SM: h.sm_max_mhz, pynvml.NVML_CLOCK_MEM: h.mem_max_mhz}[clock]
        return self._check(h, value, "nvmlDeviceGetMaxClockInfo")

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: FakeGpu) -> int:
        if h.old_driver:
            h.calls.append("nvmlDeviceGetCurrentClocksEventReasons")
            raise _error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        return self._check(h, h.throttle, "nvmlDeviceGetCurrentClocksEventReasons")

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: FakeGpu) -> int:
        return self._check(h, h.throttle, "nvmlDeviceGetCurrentClocksThrottleReasons")

    def nvmlDeviceGetTotalEccErrors(self, h: FakeGpu, error_type: int, counter_type: int) -> int:
        assert counter_type == pynvml.NVML_VOLATILE_ECC
        value = {
            pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED: h.ecc_corrected,
            pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED: h.ecc_uncorrected,
        }[error_type]
        return self._check(h, value, "nvmlDeviceGetTotalEccErrors")

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: FakeGpu) -> int:
        return self._check(h, h.retired_pending, "nvmlDeviceGetRetiredPagesPendingStatus")

    def nvmlDeviceGetRemappedRows(self, h: FakeGpu) -> tuple[int, int, int, int]:
        return self._check(h, h.remapped_rows, "nvmlDeviceGetRemappedRows")

    def nvmlDeviceGetPcieThroughput(self, h: FakeGpu, counter: int) -> int:
        value = {pynvml.NVML_PCIE_UTIL_TX_BYTES: h.pcie_tx_kbps, pynvml.NVML_PCIE_UTIL_RX_BYTES: h.pcie_rx_kbps}[counter]
        return self._check(h, value, "nvmlDeviceGetPcieThroughput")

    def nvmlDeviceGetFieldValues(self, h: FakeGpu, field_ids: list[Any]) -> Any:
        self._check(h, True, "nvmlDeviceGetFieldValues")
        requested = [f if isinstance(f, tuple) else (f, 0) for f in field_ids]
        self.field_requests.append(requested)
        values = (pynvml.c_nvmlFieldValue_t * len(requested))()
        for fv, (fid, scope) in zip(values, requested):
            fv.fieldId, fv.scopeId, fv.timestamp = fid, scope, self.now_us
            if fid in _NVLINK_THROUGHPUT and scope != _ALL_LINKS and fid in h.fields:
                fv.nvmlReturn = pynvml.NVML_ERROR_INVALID_ARGUMENT  # this fake only sums all links
            elif fid in h.fields:
                fv.nvmlReturn = pynvml.NVML_SUCCESS
                fv.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                fv.value.ullVal = h.fields[fid]
            else:
                fv.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
        return values

    # -- GPM ---------------------------------------------------------------------------------
    def nvmlGpmQueryDeviceSupport(self, h: FakeGpu) -> Any:
        self._check(h, True, "nvmlGpmQueryDeviceSupport")
        support = pynvml.c_nvmlGpmSupport_t()
        support.version = pynvml.NVML_GPM_SUPPORT_VERSION
        support.isSupportedDevice = int(h.gpm is not None)
        return support

    def nvmlGpmSampleAlloc(self) -> Any:
        buffer = (ctypes.c_char * 16)()
        sample = ctypes.cast(buffer, pynvml.c_nvmlGpmSample_t)
        with self._lock:
            self.gpm_slots[_addr(sample)] = _GpmSlot(buffer)
            self.gpm_allocated += 1
        return sample

    def nvmlGpmSampleFree(self, sample: Any) -> None:
        with self._lock:
            if self.gpm_slots.pop(_addr(sample), None) is None:
                raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            self.gpm_freed += 1

    def _slot(self, sample: Any) -> _GpmSlot:
        slot = self.gpm_slots.get(_addr(sample))
        if slot is None:  # never allocated, or used after free
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return slot

    def _take(self, device: FakeGpu, sample: Any) -> Any:
        slot = self._slot(sample)
        self._seq += 1
        slot.device, slot.seq = device, self._seq
        return sample

    def nvmlGpmSampleGet(self, h: FakeGpu, sample: Any) -> Any:
        self._check(h, True, "nvmlGpmSampleGet")
        return self._take(h, sample)

    def nvmlGpmMigSampleGet(self, h: FakeGpu, gpu_instance_id: int, sample: Any) -> Any:
        self._check(h, True, "nvmlGpmMigSampleGet")
        child = next((m for m in h.mig or () if m is not None and m.gpu_instance_id == gpu_instance_id), None)
        if child is None:
            raise _error(pynvml.NVML_ERROR_NOT_FOUND)
        return self._take(child, sample)

    def nvmlGpmMetricsGet(self, request: Any) -> Any:
        first, second = self._slot(request.sample1), self._slot(request.sample2)
        if request.version != pynvml.NVML_GPM_METRICS_GET_VERSION or first.device is None:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if first.device is not second.device or second.seq <= first.seq:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)  # two samples of one GPU, oldest first
        device = first.device
        device.calls.append("nvmlGpmMetricsGet")
        self.gpm_pairs.append((first.seq, second.seq))
        for i in range(request.numMetrics):
            metric = request.metrics[i]
            value = (device.gpm or {}).get(metric.metricId)
            if value is None:
                metric.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
            else:
                metric.nvmlReturn, metric.value = pynvml.NVML_SUCCESS, value
        return request

    # -- MIG ---------------------------------------------------------------------------------
    def nvmlDeviceGetMigMode(self, h: FakeGpu) -> list[int]:
        on = int(h.mig is not None)
        return self._check(h, [on, on], "nvmlDeviceGetMigMode")

    def nvmlDeviceGetMaxMigDeviceCount(self, h: FakeGpu) -> int:
        return self._check(h, 7 if h.mig is not None else None, "nvmlDeviceGetMaxMigDeviceCount")

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: FakeGpu, index: int) -> FakeGpu:
        self._check(h, True, "nvmlDeviceGetMigDeviceHandleByIndex")
        slots = h.mig or []
        if index >= len(slots) or slots[index] is None:
            raise _error(pynvml.NVML_ERROR_NOT_FOUND)
        return slots[index]

    def nvmlDeviceGetGpuInstanceId(self, h: FakeGpu) -> int:
        return self._check(h, h.gpu_instance_id, "nvmlDeviceGetGpuInstanceId")

    # -- processes ---------------------------------------------------------------------------
    def _process_infos(self, h: FakeGpu, mps: bool) -> list[Any]:
        return [
            SimpleNamespace(pid=p.pid, usedGpuMemory=p.used_memory, gpuInstanceId=h.gpu_instance_id or 0, computeInstanceId=0)
            for p in h.processes
            if p.mps == mps
        ]

    def nvmlDeviceGetComputeRunningProcesses(self, h: FakeGpu) -> list[Any]:
        self._check(h, True, "nvmlDeviceGetComputeRunningProcesses")
        return self._process_infos(h, mps=False)

    def nvmlDeviceGetMPSComputeRunningProcesses(self, h: FakeGpu) -> list[Any]:
        self._check(h, True, "nvmlDeviceGetMPSComputeRunningProcesses")
        return self._process_infos(h, mps=True)

    def nvmlDeviceGetProcessUtilization(self, h: FakeGpu, since_us: int) -> list[Any]:
        self._check(h, True, "nvmlDeviceGetProcessUtilization")
        out = []
        for p in h.processes:
            values = [] if p.sm_util is None else p.sm_util if isinstance(p.sm_util, list) else [p.sm_util]
            for k, sm in enumerate(values):  # samples 1/6 s apart, the last one now
                ts = self.now_us - (len(values) - 1 - k) * 166_666
                if ts > since_us:
                    out.append(pynvml.c_nvmlProcessUtilizationSample_t(p.pid, ts, sm, p.mem_util, 0, 0))
        if not out:
            raise _error(pynvml.NVML_ERROR_NOT_FOUND)
        return out

    def nvmlSystemGetProcessName(self, pid: int) -> str:
        for gpu in self.gpus:
            for dev in [gpu, *(m for m in gpu.mig or () if m is not None)]:
                for p in dev.processes:
                    if p.pid == pid and p.name is not None:
                        return p.name
        raise _error(pynvml.NVML_ERROR_NOT_FOUND)

    # -- events ------------------------------------------------------------------------------
    def nvmlEventSetCreate(self) -> FakeEventSet:
        event_set = FakeEventSet()
        self.event_sets.append(event_set)
        return event_set

    def nvmlDeviceRegisterEvents(self, h: FakeGpu, event_types: int, event_set: FakeEventSet) -> None:
        self._check(h, True, "nvmlDeviceRegisterEvents")
        event_set.registered.append((h, event_types))

    def nvmlEventSetWait_v2(self, event_set: FakeEventSet, timeout_ms: int) -> Any:
        assert not event_set.freed, "waited on a freed event set"
        with self._lock:
            event_set.waiting += 1
        try:
            return event_set.events.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            raise _error(pynvml.NVML_ERROR_TIMEOUT) from None
        finally:
            with self._lock:
                event_set.waiting -= 1
                event_set.waits += 1

    def nvmlEventSetFree(self, event_set: FakeEventSet) -> None:
        with self._lock:
            event_set.freed_while_waiting |= event_set.waiting > 0
            event_set.freed = True

    def inject_xid(self, gpu: FakeGpu, xid: int, gpu_instance_id: int = 0xFFFFFFFF) -> None:
        """The driver reports XID ``xid`` on ``gpu``: every event set listening for XIDs gets it."""
        for event_set in self.event_sets:
            for device, types in event_set.registered:
                if device is gpu and types & pynvml.nvmlEventTypeXidCriticalError:
                    event_set.events.put(
                        SimpleNamespace(
                            device=gpu,
                            eventType=pynvml.nvmlEventTypeXidCriticalError,
                            eventData=xid,
                            gpuInstanceId=gpu_instance_id,
                            computeInstanceId=0xFFFFFFFF,
                        )
                    )


# A healthy H100 board: GPM, NVLink counters and error counters all present.
GPM_H100: dict[int, float] = {
    pynvml.NVML_GPM_METRIC_SM_UTIL: 71.5,
    pynvml.NVML_GPM_METRIC_SM_OCCUPANCY: 30.25,
    pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 40.5,
    pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: 55.5,
    pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC: 1500.0,  # MiB/s
    pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC: 750.0,
}
NVLINK_ERRORS_H100: dict[int, int] = {
    pynvml.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL: 1,
    pynvml.NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL: 2,
    pynvml.NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL: 3,
    pynvml.NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL: 4,
}


def h100(uuid: str, **kw: Any) -> FakeGpu:
    """A fake H100 with every reading supported (cumulative NVLink counters in KiB)."""
    fields = {
        pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX: 1_000_000,
        pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX: 2_000_000,
        **NVLINK_ERRORS_H100,
    }
    return FakeGpu(uuid, gpm=dict(GPM_H100), fields=fields, **kw)
