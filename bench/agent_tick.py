"""Benchmark of the per-tick cost of :class:`agents.gpu_nvml.NvmlGpuCollector` on an 8-GPU node.

There is no GPU here, so NVML is the fake of ``tests/fake_nvml.py`` (eight H100s: GPM, NVLink
and every reading supported). The figure is therefore the collector's own Python work per
tick, about 30 NVML calls and one ``GpuSample`` per GPU, plus the fake's trivial replies. A
real driver adds its own time per call; on GPUs without GPM, ``nvmlDeviceGetPcieThroughput``
also blocks ~20 ms per call, which the fake does not (see ``NvmlConfig.pcie_throughput``).

Baseline: one ``subprocess.run(["/bin/true"])`` per tick: the least an exporter that runs
``nvidia-smi --query-gpu`` every tick pays to start a process, before nvidia-smi does any
work at all (the real nvidia-smi takes tens of milliseconds more). ``ratio`` is
baseline / ours: above 1 means a tick of ours costs less than starting that process.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

from agents.gpu_nvml import NvmlConfig, NvmlGpuCollector
from tests.fake_nvml import FakeNvml, h100

GPUS = 8
TICKS = 200
BASELINE_TICKS = 50
T0 = (int(time.time()) - 3600) * 1000


def _best_s_per_tick(body: Callable[[], None], ticks: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        body()
        best = min(best, time.perf_counter() - start)
    return best / ticks


def bench_gpu_tick(repeats: int) -> dict[str, float]:
    """Milliseconds per tick of ``sample()`` for 8 fake GPUs, against one ``/bin/true`` per tick."""
    nvml = FakeNvml([h100(f"GPU-{i}") for i in range(GPUS)])
    collector = NvmlGpuCollector(NvmlConfig(node="bench"), nvml=nvml)
    clock = {"ms": T0}

    def ours() -> None:
        for _ in range(TICKS):
            nvml.now_us += 1_000_000
            clock["ms"] += 1000
            samples = collector.sample(clock["ms"])
            assert len(samples) == GPUS

    def baseline() -> None:
        for _ in range(BASELINE_TICKS):
            subprocess.run(["/bin/true"], check=True)

    try:
        collector.sample(T0)  # from the second tick on every reading exists (GPM pairs, NVLink rates)
        ms = _best_s_per_tick(ours, TICKS, repeats) * 1000
    finally:
        collector.close()
    base_ms = _best_s_per_tick(baseline, BASELINE_TICKS, repeats) * 1000
    return {"ms_per_tick": ms, "baseline_ms_per_tick": base_ms, "ratio": base_ms / ms}


if __name__ == "__main__":
    print(bench_gpu_tick(5))
