"""A stand-in for the NVIDIA driver library, for machines without GPUs.

It exposes the functions of nvidia-ml-py (``pynvml``) that the NVML collector calls, with
pynvml's own error classes and constants, over a table of fake devices. Only the hardware
is faked: the collector under test is the real one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml


@dataclass
class FakeGpu:
    uuid: str
    util: int | None = 80
    mem_used: int = 40 * 2**30
    mem_total: int = 80 * 2**30
    power_mw: int | None = 450_000
    temp_c: int = 61
    sm_mhz: int | None = 1980
    lost: bool = False  # every call fails with GPU_IS_LOST
    calls: list[str] = field(default_factory=list)


class FakeNvml:
    NVMLError = pynvml.NVMLError
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM

    def __init__(self, gpus: list[FakeGpu]) -> None:
        self.gpus = gpus
        self.initialised = False

    def nvmlInit(self) -> None:
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        return self.gpus[index]

    def nvmlDeviceGetUUID(self, h: FakeGpu) -> str:
        return h.uuid

    def _check(self, h: FakeGpu, value: Any) -> Any:
        if h.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        if value is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return value

    def nvmlDeviceGetUtilizationRates(self, h: FakeGpu) -> Any:
        return SimpleNamespace(gpu=self._check(h, h.util), memory=10)

    def nvmlDeviceGetMemoryInfo(self, h: FakeGpu) -> Any:
        return self._check(h, SimpleNamespace(used=h.mem_used, total=h.mem_total, free=h.mem_total - h.mem_used))

    def nvmlDeviceGetPowerUsage(self, h: FakeGpu) -> int:
        return self._check(h, h.power_mw)

    def nvmlDeviceGetTemperature(self, h: FakeGpu, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._check(h, h.temp_c)

    def nvmlDeviceGetClockInfo(self, h: FakeGpu, clock: int) -> int:
        assert clock == pynvml.NVML_CLOCK_SM
        return self._check(h, h.sm_mhz)
