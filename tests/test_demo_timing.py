"""The demo's idle GPU recovers early enough for its anomalies to fire and resolve before the run ends.

Run in-process through the real per-GPU chain and job stage (no broker: what is judged here is event
time only), at every phase of the run's start within a window hop, since where the recovery falls
between hop boundaries decides when the first window entirely after it closes.
"""

from __future__ import annotations

import dataclasses

import pytest

from hpcinsight.agents.sim.gpu import IdleGpu, SimConfig, SimGpuCollector
from hpcinsight.harness.demo import DemoOptions, default_idle_end_s, demo_detectors
from hpcinsight.schemas.catalog import ANOMALIES, GPU_SAMPLES_RAW, GPU_SKETCHES
from hpcinsight.streams.app import WorkerOptions, parse_windows
from hpcinsight.streams.detectors import build as build_detectors
from hpcinsight.streams.jobs import JobStageConfig
from hpcinsight.streams.processor import SampleProcessor

BASE_MS = 1_780_000_000_000  # a multiple of every hop used here


def told(options: DemoOptions, start_ms: int) -> dict[str, list[str]]:
    """Kind -> states raised over one demo run starting at ``start_ms``, as the demo's worker would."""
    worker = WorkerOptions(windows=parse_windows(options.windows), since_start_every_s=10, checkpoint_every_s=10)
    # the job stage waits on event time only (a window goes out once every GPU's sketch is in, the first
    # once a sketch 20 s newer came): the demo's processing-time wait does not pass in this fast loop
    config = dataclasses.replace(worker.processor_config(), jobs=JobStageConfig(wait_s=0.0, stale_s=3600.0))
    processor = SampleProcessor(config, detectors=build_detectors(demo_detectors()))  # as the demo's worker
    sim = SimGpuCollector(
        SimConfig(nodes=options.nodes, gpus_per_node=options.gpus, idle=tuple(IdleGpu.parse(s) for s in options.idle_specs()))
    )
    states: dict[str, list[str]] = {}
    for tick in range(int(options.duration_s / options.interval_s)):
        samples = sim.sample(start_ms + int(tick * options.interval_s * 1000))
        for n in range(options.nodes):
            batch = samples[n * options.gpus : (n + 1) * options.gpus]
            outputs = processor.handle("raw", 0, tick, batch[0].node.encode(), GPU_SAMPLES_RAW.codec.encode(batch))
            while outputs:
                out = outputs.pop(0)
                if out.topic is GPU_SKETCHES:
                    outputs += processor.handle_sketches("sketches", 0, 0, out.key, out.value)
                elif out.topic is ANOMALIES:
                    for a in ANOMALIES.codec.decode(out.value):
                        states.setdefault(a.kind, []).append(a.state)
    return states


@pytest.mark.parametrize("phase_ms", [0, 1000, 2300, 3000, 4700])
def test_the_idle_gpu_fires_and_resolves_within_the_run(phase_ms: int) -> None:
    options = DemoOptions(duration_s=60, nodes=2, gpus=4, windows="10s/5s")  # what the alert demo test runs
    assert default_idle_end_s(options)[1]
    states = told(options, BASE_MS + phase_ms)
    # the idle GPU is told by its own detector and, against its peers, by the outlier detector
    assert states.get("gpu_underused") == ["firing", "resolved"], states
    assert states.get("gpu_outlier") == ["firing", "resolved"], states


def test_a_run_too_short_is_said_so_and_may_end_with_the_outlier_still_open() -> None:
    options = DemoOptions(duration_s=40, nodes=2, gpus=4, windows="10s/5s")
    assert not default_idle_end_s(options)[1]
    runs = [told(options, BASE_MS + phase_ms) for phase_ms in range(0, 5000, 1000)]
    assert any(states.get("gpu_outlier") == ["firing"] for states in runs), runs


@pytest.mark.parametrize("phase_ms", [0, 3000, 6500])
def test_the_default_demo_is_long_enough(phase_ms: int) -> None:
    options = DemoOptions(nodes=2, gpus=4)
    assert default_idle_end_s(options)[1]
    states = told(options, BASE_MS + phase_ms)
    assert states.get("gpu_underused") == states.get("gpu_outlier") == ["firing", "resolved"], states
