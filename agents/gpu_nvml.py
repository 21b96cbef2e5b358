"""GPU samples read from the NVIDIA driver through NVML (nvidia-ml-py).

One handle per GPU is opened at start. Each reading is taken separately, so a field a GPU
does not support (``NVMLError_NotSupported``, e.g. utilisation on a MIG instance) is null
instead of an error, and an NVML failure on one GPU does not stop the others.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from agents.base import Collector
from schemas.catalog import GPU_SAMPLES_RAW
from schemas.events import GpuSample

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class NvmlConfig:
    node: str = socket.gethostname()
    job_id: str | None = None


class NvmlGpuCollector(Collector[NvmlConfig]):
    """Samples every GPU of this node."""

    topic = GPU_SAMPLES_RAW

    def __init__(self, config: NvmlConfig, nvml: Any = None) -> None:
        super().__init__(config)
        if nvml is None:
            import pynvml as nvml  # nvidia-ml-py
        self._nvml = nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as err:
            raise RuntimeError(f"NVML is not available on this node ({err}); use --backend sim to simulate GPUs") from None
        self._handles = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            self._handles.append((index, uuid.decode() if isinstance(uuid, bytes) else uuid, handle))
        self._failures: dict[tuple[int, str], str] = {}

    def _read(self, index: int, what: str, fn: Callable[[], T]) -> T | None:
        try:
            return fn()
        except self._nvml.NVMLError_NotSupported:
            return None
        except self._nvml.NVMLError as err:
            # Log a failing reading once per GPU and field, not every tick.
            if self._failures.get((index, what)) != str(err):
                self._failures[(index, what)] = str(err)
                log.warning("GPU %d: reading %s failed: %s", index, what, err)
            return None

    def sample(self, now_ms: int) -> list[GpuSample]:
        nv = self._nvml
        out = []
        for index, uuid, h in self._handles:
            util = self._read(index, "utilization", lambda: nv.nvmlDeviceGetUtilizationRates(h))
            mem = self._read(index, "memory", lambda: nv.nvmlDeviceGetMemoryInfo(h))
            power_mw = self._read(index, "power", lambda: nv.nvmlDeviceGetPowerUsage(h))
            temp = self._read(index, "temperature", lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
            sm = self._read(index, "sm clock", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))
            out.append(
                GpuSample(
                    node=self.config.node,
                    gpu_index=index,
                    gpu_uuid=uuid,
                    ts=now_ms,
                    gpu_util=float(util.gpu) if util is not None else None,
                    mem_used_bytes=int(mem.used) if mem is not None else None,
                    mem_total_bytes=int(mem.total) if mem is not None else None,
                    power_w=power_mw / 1000.0 if power_mw is not None else None,
                    temperature_c=float(temp) if temp is not None else None,
                    sm_clock_mhz=float(sm) if sm is not None else None,
                    job_id=self.config.job_id,
                )
            )
        return out

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass
