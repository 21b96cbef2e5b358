"""The NVML collectors: every field read and converted, unsupported readings null, a failing GPU
never stopping the others, MIG instances as their own samples, processes attributed to their
container/job, and XIDs caught by a thread that never holds up a tick."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pynvml
import pytest

from hpcinsight.agents.base import Collector
from hpcinsight.agents.gpu_nvml import (
    THROTTLE_BITS,
    NvmlConfig,
    NvmlGpuCollector,
    NvmlProcessCollector,
    NvmlXidCollector,
    decode_throttle,
    mig_gpu_index,
)
from hpcinsight.schemas.catalog import GPU_PROCESSES, GPU_SAMPLES_RAW, GPU_XID
from tests.fake_nvml import GPM_H100, FakeGpu, FakeNvml, FakeProcess, h100

NOW = 1_764_000_000_000
GIB = 2**30
MIB = 2**20

TX, RX = pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX
EVERY_READING = {
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetTemperature",
    "nvmlDeviceGetClockInfo",
    "nvmlDeviceGetMaxClockInfo",
    "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetCurrentClocksThrottleReasons",
    "nvmlDeviceGetTotalEccErrors",
    "nvmlDeviceGetRetiredPagesPendingStatus",
    "nvmlDeviceGetRemappedRows",
    "nvmlDeviceGetPcieThroughput",
    "nvmlDeviceGetFieldValues",
    "nvmlGpmQueryDeviceSupport",
    "nvmlDeviceGetMigMode",
}


def round_trip(topic, records):
    """What the stream decodes from the agent's message: ranges are checked only here."""
    return topic.codec.decode(topic.codec.encode(records))


# --- GpuSample ---------------------------------------------------------------------------------
def test_reads_every_gpu_with_units_converted() -> None:
    nvml = FakeNvml([FakeGpu("GPU-a"), FakeGpu("GPU-b", util=3, power_mw=61_500)])
    with NvmlGpuCollector(NvmlConfig(node="node-7", job_id="j1"), nvml=nvml) as collector:
        assert isinstance(collector, Collector)
        a, b = collector.sample(NOW)
    assert (a.node, a.gpu_index, a.gpu_uuid, a.ts, a.job_id) == ("node-7", 0, "GPU-a", NOW, "j1")
    assert a.gpu_util == 80.0 and a.mem_total_bytes == 80 * 2**30 and a.power_w == 450.0 and a.sm_clock_mhz == 1980.0
    assert b.gpu_util == 3.0 and b.power_w == 61.5
    assert not nvml.initialised  # close() shut NVML down


def test_every_new_field_is_read_and_converted() -> None:
    gpu = h100("GPU-h", throttle=0x4, ecc_corrected=5, ecc_uncorrected=1, remapped_rows=(2, 1, 1, 0))
    plain = FakeGpu("GPU-a100", retired_pending=1, pcie_tx_kbps=3_000_000, pcie_rx_kbps=500)  # no GPM, no NVLink
    nvml = FakeNvml([gpu, plain])
    with NvmlGpuCollector(NvmlConfig(node="n"), nvml=nvml) as collector:
        first, first_plain = collector.sample(NOW)
        nvml.now_us += 2_000_000  # two seconds later by the driver's clock
        gpu.fields[TX] += 2 * 50_000_000  # KiB: 50 GiB/s... in KiB per second x 2 s
        gpu.fields[RX] += 2 * 25_000_000
        gpu.fields[pynvml.NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL] += 10
        second, second_plain = collector.sample(NOW + 2000)

    s = second
    assert s.mem_util_pct == 35.0 and s.power_limit_w == 700.0
    assert (s.mem_clock_mhz, s.sm_clock_max_mhz, s.mem_clock_max_mhz) == (2619.0, 1980.0, 2619.0)
    assert s.throttle_reasons == 0x4 and s.throttle == ["sw_power_cap"]
    assert (s.ecc_corrected_volatile, s.ecc_uncorrected_volatile) == (5, 1)
    assert s.retired_pages_pending is None  # Ampere+: rows are remapped instead
    assert s.remapped_rows_pending is True and s.remapped_rows_failure is False
    # NVLink: cumulative KiB differenced over the driver's timestamps, x 1024
    assert s.nvlink_tx_bytes_per_s == 50_000_000 * 1024 and s.nvlink_rx_bytes_per_s == 25_000_000 * 1024
    assert first.nvlink_tx_bytes_per_s is None  # one reading is not a rate
    assert first.nvlink_errors == 1 + 2 + 3 + 4 and s.nvlink_errors == 20  # cumulative
    # GPM: over two samples one tick apart, so nothing on the first tick
    assert (s.sm_active_pct, s.sm_occupancy_pct, s.tensor_active_pct, s.dram_bw_util_pct) == (71.5, 30.25, 40.5, 55.5)
    assert first.sm_active_pct is None and first.tensor_active_pct is None
    # PCIe from GPM on the H100 (MiB/s), without the blocking nvmlDeviceGetPcieThroughput
    assert s.pcie_tx_bytes_per_s == 1500 * MIB and s.pcie_rx_bytes_per_s == 750 * MIB
    assert first.pcie_tx_bytes_per_s is None and "nvmlDeviceGetPcieThroughput" not in gpu.calls
    # ... and from nvmlDeviceGetPcieThroughput (KB/s) on the GPU without GPM
    assert first_plain.pcie_tx_bytes_per_s == 3_000_000 * 1024 and first_plain.pcie_rx_bytes_per_s == 500 * 1024
    assert second_plain.retired_pages_pending is True
    assert second_plain.sm_active_pct is None and second_plain.nvlink_tx_bytes_per_s is None
    assert second_plain.nvlink_errors is None  # no NVLink at all
    assert (s.mig_index, s.mig_profile, s.parent_gpu_uuid) == (None, None, None)
    # NVLink throughput is asked for all links at once (scope UINT_MAX)
    assert (TX, 0xFFFFFFFF) in nvml.field_requests[0] and (RX, 0xFFFFFFFF) in nvml.field_requests[0]
    for record in (first, second, first_plain, second_plain):
        assert round_trip(GPU_SAMPLES_RAW, [record]) == [record]


def test_max_clocks_are_read_once_not_every_tick() -> None:
    gpu = FakeGpu("GPU-a")
    collector = NvmlGpuCollector(NvmlConfig(node="n"), nvml=FakeNvml([gpu]))
    for k in range(5):
        collector.sample(NOW + 1000 * k)
    assert gpu.calls.count("nvmlDeviceGetMaxClockInfo") == 2  # SM and memory, once
    collector.close()


def test_unsupported_fields_are_null_not_errors(caplog: pytest.LogCaptureFixture) -> None:
    # e.g. a MIG instance reports no utilisation, some boards no power reading
    nvml = FakeNvml([FakeGpu("MIG-1", util=None, power_mw=None, sm_mhz=None)])
    (s,) = NvmlGpuCollector(NvmlConfig(node="n"), nvml=nvml).sample(NOW)
    assert s.gpu_util is None and s.power_w is None and s.sm_clock_mhz is None
    assert s.temperature_c == 61.0 and s.mem_used_bytes == 40 * 2**30


def test_each_unsupported_reading_is_null_on_its_own(caplog: pytest.LogCaptureFixture) -> None:
    bare = h100("GPU-bare", unsupported=set(EVERY_READING))
    nvml = FakeNvml([bare, h100("GPU-full")])
    with caplog.at_level(logging.WARNING), NvmlGpuCollector(NvmlConfig(node="n"), nvml=nvml) as collector:
        collector.sample(NOW)
        nvml.now_us += 1_000_000
        b, full = collector.sample(NOW + 1000)
    assert (b.gpu_index, b.gpu_uuid, b.ts) == (0, "GPU-bare", NOW + 1000)
    readings = [f for f in b.__struct_fields__ if f not in {"node", "gpu_index", "gpu_uuid", "ts", "throttle"}]
    assert {f: getattr(b, f) for f in readings if getattr(b, f) is not None} == {}
    assert b.throttle == []
    assert all(
        getattr(full, f) is not None
        for f in readings
        if f
        not in {
            "job_id",
            "retired_pages_pending",
            "mig_index",
            "mig_profile",
            "parent_gpu_uuid",
            "user",
            "team",
            "priority",
            "zone",
        }
    )  # attribution: the stream processor fills those
    assert not caplog.records  # NotSupported is not a failure worth a log line


def test_a_lost_gpu_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    lost_gpu = FakeGpu("GPU-lost", lost=True)
    nvml = FakeNvml([FakeGpu("GPU-a"), lost_gpu, FakeGpu("GPU-c")])
    collector = NvmlGpuCollector(NvmlConfig(node="n"), nvml=nvml)
    lost_gpu.calls.clear()
    first = collector.sample(NOW)
    second = collector.sample(NOW + 1000)
    assert [s.gpu_uuid for s in first] == ["GPU-a", "GPU-lost", "GPU-c"]
    lost = first[1]
    assert lost.gpu_util is None and lost.power_w is None and lost.temperature_c is None
    assert first[2].gpu_util == 80.0 and second[2].gpu_util == 80.0
    # logged once per GPU and field, not every tick
    assert sum("GPU 1: reading utilization failed" in r.message for r in caplog.records) == 1
    # a lost GPU costs one call per tick, not one per field
    assert len(lost_gpu.calls) == 2


def test_a_gpu_that_cannot_be_opened_is_skipped_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    hidden = FakeGpu("GPU-hidden", handle_error=pynvml.NVML_ERROR_NO_PERMISSION)
    nvml = FakeNvml([FakeGpu("GPU-a"), hidden, FakeGpu("GPU-c")])
    collector = NvmlGpuCollector(NvmlConfig(node="n", rescan_s=10), nvml=nvml)
    assert [(s.gpu_index, s.gpu_uuid) for s in collector.sample(NOW)] == [(0, "GPU-a"), (2, "GPU-c")]
    assert sum("GPU 1: reading its handle failed" in r.message for r in caplog.records) == 1
    hidden.handle_error = None  # permission granted later
    assert [s.gpu_index for s in collector.sample(NOW + 10_000)] == [0, 1, 2]
    collector.close()


def test_an_unexpected_error_on_one_gpu_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    odd = FakeGpu("GPU-odd")
    nvml = FakeNvml([odd, FakeGpu("GPU-b")])
    collector = NvmlGpuCollector(NvmlConfig(node="n"), nvml=nvml)
    odd.remapped_rows = (0,)  # type: ignore[assignment]  # a reply of an unexpected shape
    a, b = collector.sample(NOW)
    assert a.gpu_uuid == "GPU-odd" and a.gpu_util is None and b.gpu_util == 80.0
    assert any("GPU 0: reading a sample failed" in r.message for r in caplog.records)


def test_other_nvml_errors_are_null_and_logged_once(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = FakeGpu("GPU-a")
    nvml = FakeNvml([gpu])

    def no_permission(h: FakeGpu) -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)

    monkeypatch.setattr(nvml, "nvmlDeviceGetEnforcedPowerLimit", no_permission, raising=False)
    collector = NvmlGpuCollector(NvmlConfig(node="n"), nvml=nvml)
    for k in range(3):
        (s,) = collector.sample(NOW + 1000 * k)
        assert s.power_limit_w is None and s.power_w == 450.0
    assert sum("reading power limit failed: Insufficient Permissions" in r.message for r in caplog.records) == 1


def test_throttle_bitmask_decoding() -> None:
    assert decode_throttle(0) == []
    assert decode_throttle(0x4 | 0x40) == ["sw_power_cap", "hw_thermal"]
    assert decode_throttle(0x1FF) == [
        "idle",
        "applications_clocks",
        "sw_power_cap",
        "hw_slowdown",
        "sync_boost",
        "sw_thermal",
        "hw_thermal",
        "hw_power_brake",
        "display_clocks",
    ]
    assert decode_throttle(0x800 | 0x8) == ["hw_slowdown", "bit_11"]  # a newer driver's bit is named, not dropped
    # the names follow pynvml's own constants
    assert dict(THROTTLE_BITS)[pynvml.nvmlClocksEventReasonSwPowerCap] == "sw_power_cap"
    assert dict(THROTTLE_BITS)[pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown] == "hw_power_brake"
    assert dict(THROTTLE_BITS)[pynvml.nvmlClocksEventReasonSyncBoost] == "sync_boost"


def test_throttle_reasons_from_a_sample_and_from_an_old_driver() -> None:
    new, old = FakeGpu("GPU-new", throttle=0x88), FakeGpu("GPU-old", throttle=0x20, old_driver=True)
    a, b = NvmlGpuCollector(NvmlConfig(node="n"), nvml=FakeNvml([new, old])).sample(NOW)
    assert a.throttle_reasons == 0x88 and a.throttle == ["hw_slowdown", "hw_power_brake"]
    assert b.throttle_reasons == 0x20 and b.throttle == ["sw_thermal"]
    assert "nvmlDeviceGetCurrentClocksThrottleReasons" in old.calls  # fell back to the older name


def test_gpm_takes_two_samples_one_tick_apart_and_frees_them_on_close() -> None:
    nvml = FakeNvml([h100("GPU-a"), h100("GPU-b")])
    collector = NvmlGpuCollector(NvmlConfig(node="n"), nvml=nvml)
    for k in range(4):
        collector.sample(NOW + 1000 * k)
    assert nvml.gpm_allocated == 4  # two per GPU, reused every tick
    # each metrics call pairs the previous tick's sample with this tick's, per GPU
    a_pairs, b_pairs = nvml.gpm_pairs[0::2], nvml.gpm_pairs[1::2]
    for pairs in (a_pairs, b_pairs):
        assert len(pairs) == 3 and all(p2 == q1 for (_, p2), (q1, _) in zip(pairs, pairs[1:]))
    collector.close()
    assert nvml.gpm_freed == 4 and not nvml.gpm_slots


def test_gpm_unsupported_or_failing_gives_nulls() -> None:
    no_gpm = FakeGpu("GPU-a100")  # GPM query says no
    erroring = h100("GPU-err", unsupported={"nvmlGpmQueryDeviceSupport"})
    failing_sample = h100("GPU-fail", unsupported={"nvmlGpmSampleGet"})
    nvml = FakeNvml([no_gpm, erroring, failing_sample])
    collector = NvmlGpuCollector(NvmlConfig(node="n"), nvml=nvml)
    for k in range(3):
        samples = collector.sample(NOW + 1000 * k)
    assert all(s.sm_active_pct is None and s.dram_bw_util_pct is None for s in samples)
    assert nvml.gpm_allocated == 2  # only the GPU that says it has GPM
    assert "nvmlGpmQueryDeviceSupport" in no_gpm.calls and no_gpm.calls.count("nvmlGpmQueryDeviceSupport") == 1
    collector.close()
    assert nvml.gpm_freed == 2


def test_gpm_values_out_of_range_are_clamped_and_a_missing_metric_is_null() -> None:
    gpu = h100("GPU-a")
    gpu.gpm[pynvml.NVML_GPM_METRIC_SM_UTIL] = 100.000001
    del gpu.gpm[pynvml.NVML_GPM_METRIC_SM_OCCUPANCY]
    gpu.gpm[pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL] = float("nan")
    collector = NvmlGpuCollector(NvmlConfig(node="n"), nvml=FakeNvml([gpu]))
    collector.sample(NOW)
    (s,) = collector.sample(NOW + 1000)
    assert s.sm_active_pct == 100.0 and s.sm_occupancy_pct is None and s.tensor_active_pct is None
    assert round_trip(GPU_SAMPLES_RAW, [s]) == [s]


def test_nvlink_counter_going_backwards_gives_no_rate() -> None:
    gpu = h100("GPU-a")
    nvml = FakeNvml([gpu])
    collector = NvmlGpuCollector(NvmlConfig(node="n"), nvml=nvml)
    collector.sample(NOW)
    nvml.now_us += 1_000_000
    gpu.fields[TX] = 5  # driver reloaded: counters restarted
    (s,) = collector.sample(NOW + 1000)
    assert s.nvlink_tx_bytes_per_s is None and s.nvlink_rx_bytes_per_s == 0.0
    nvml.now_us += 1_000_000
    gpu.fields[TX] += 1000
    (s,) = collector.sample(NOW + 2000)
    assert s.nvlink_tx_bytes_per_s == 1000 * 1024


def test_pcie_throughput_can_be_switched_off_where_it_would_block() -> None:
    gpu = FakeGpu("GPU-a100")
    (s,) = NvmlGpuCollector(NvmlConfig(node="n", pcie_throughput=False), nvml=FakeNvml([gpu])).sample(NOW)
    assert s.pcie_tx_bytes_per_s is None and "nvmlDeviceGetPcieThroughput" not in gpu.calls


# --- MIG ---------------------------------------------------------------------------------------
def mig_child(uuid: str, gi: int, profile: str = "1g.10gb", **kw: object) -> FakeGpu:
    return FakeGpu(
        uuid,
        name=f"NVIDIA H100 80GB HBM3 MIG {profile}",
        gpu_instance_id=gi,
        util=None,
        mem_total=10 * GIB,
        mem_used=3 * GIB,
        gpm=dict(GPM_H100),
        **kw,
    )


def test_mig_instances_are_reported_as_their_own_samples() -> None:
    c0, c2 = mig_child("MIG-0", gi=7), mig_child("MIG-2", gi=9, profile="3g.40gb")
    board = h100("GPU-board", util=None, mig=[c0, None, c2])  # utilisation is not per board in MIG mode
    other = FakeGpu("GPU-plain")
    nvml = FakeNvml([other, board])
    with NvmlGpuCollector(NvmlConfig(node="n"), nvml=nvml) as collector:
        collector.sample(NOW)
        samples = collector.sample(NOW + 1000)
    assert [(s.gpu_uuid, s.gpu_index, s.mig_index) for s in samples] == [
        ("GPU-plain", 0, None),
        ("GPU-board", 1, None),
        ("MIG-0", 72, 0),
        ("MIG-2", 74, 2),
    ]
    assert len({(s.node, s.gpu_index) for s in samples}) == len(samples)  # the tables' key stays unique
    b, m0, m2 = samples[1:]
    assert b.power_w == 450.0 and b.temperature_c == 61.0 and b.gpu_util is None and b.parent_gpu_uuid is None
    assert (m0.parent_gpu_uuid, m0.mig_profile, m2.mig_profile) == ("GPU-board", "1g.10gb", "3g.40gb")
    assert m0.mem_total_bytes == 10 * GIB and m0.mem_used_bytes == 3 * GIB and m0.gpu_util is None
    assert m0.sm_active_pct == 71.5  # GPM per GPU instance, through nvmlGpmMigSampleGet
    assert "nvmlGpmMigSampleGet" in board.calls
    # the board's sensors stay on the board's row
    assert m0.power_w is None and m0.temperature_c is None and m0.nvlink_errors is None and m0.throttle == []
    for s in samples:
        assert round_trip(GPU_SAMPLES_RAW, [s]) == [s]


def test_mig_layout_is_rescanned_and_a_destroyed_instance_released() -> None:
    c0, c1 = mig_child("MIG-0", gi=1), mig_child("MIG-1", gi=2)
    board = h100("GPU-board", mig=[c0, c1])
    nvml = FakeNvml([board])
    collector = NvmlGpuCollector(NvmlConfig(node="n", rescan_s=10), nvml=nvml)
    assert [s.gpu_uuid for s in collector.sample(NOW)] == ["GPU-board", "MIG-0", "MIG-1"]
    allocated = nvml.gpm_allocated
    board.mig = [c0, None, mig_child("MIG-new", gi=3)]  # an admin destroyed MIG-1 and made another
    assert [s.gpu_uuid for s in collector.sample(NOW + 5000)] == ["GPU-board", "MIG-0", "MIG-1"]  # not yet
    assert [s.gpu_uuid for s in collector.sample(NOW + 10_000)] == ["GPU-board", "MIG-0", "MIG-new"]
    assert nvml.gpm_freed == 2 and nvml.gpm_allocated == allocated + 2  # MIG-1's pair freed, MIG-new's taken
    board.mig = None  # MIG mode off again
    assert [s.gpu_uuid for s in collector.sample(NOW + 20_000)] == ["GPU-board"]
    collector.close()
    assert nvml.gpm_freed == nvml.gpm_allocated


def test_mig_gpu_index_scheme() -> None:
    assert mig_gpu_index(0, 0) == 64 and mig_gpu_index(1, 2) == 74 and mig_gpu_index(23, 7) == 255
    assert mig_gpu_index(24, 0) is None and mig_gpu_index(0, 8) is None


# --- processes ---------------------------------------------------------------------------------
POD = "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e"
CID = "ab" * 32


def fake_proc(root: Path, pid: int, cgroup: str | None = None, comm: str | None = None) -> None:
    (root / str(pid)).mkdir(parents=True)
    if cgroup is not None:
        (root / str(pid) / "cgroup").write_text(cgroup)
    if comm is not None:
        (root / str(pid) / "comm").write_text(comm + "\n")


def test_processes_with_cgroup_attribution(tmp_path: Path) -> None:
    fake_proc(
        tmp_path,
        100,
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD.replace('-', '_')}"
        f".slice/cri-containerd-{CID}.scope\n",
    )
    fake_proc(tmp_path, 200, "0::/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0\n")
    fake_proc(tmp_path, 300, comm="mps-client")  # no cgroup file: exited/not visible
    gpu = FakeGpu(
        "GPU-shared",
        processes=[
            FakeProcess(100, used_memory=20 * GIB, sm_util=[30, 50], mem_util=10),
            FakeProcess(200, used_memory=None, name="/opt/app/bin/solver", sm_util=15),
            FakeProcess(300, name=None, mps=True),  # MPS client, name only in /proc/<pid>/comm
        ],
    )
    nvml = FakeNvml([FakeGpu("GPU-idle"), gpu])
    with NvmlProcessCollector(NvmlConfig(node="n", proc_root=tmp_path), nvml=nvml) as collector:
        assert collector.topic is GPU_PROCESSES
        procs = collector.sample(NOW)
    assert [(p.gpu_index, p.gpu_uuid, p.pid) for p in procs] == [
        (1, "GPU-shared", 100),
        (1, "GPU-shared", 200),
        (1, "GPU-shared", 300),
    ]
    k8s, slurm, mps = procs
    assert (k8s.container_id, k8s.pod_uid, k8s.slurm_job_id) == (CID, POD, None)
    assert k8s.used_memory_bytes == 20 * GIB and k8s.sm_util_pct == 40.0 and k8s.mem_util_pct == 10.0  # mean of samples
    assert k8s.process_name == "/usr/bin/python3" and k8s.ts == NOW and k8s.node == "n"
    assert (slurm.slurm_job_id, slurm.container_id, slurm.used_memory_bytes, slurm.sm_util_pct) == ("4242", None, None, 15.0)
    assert slurm.process_name == "/opt/app/bin/solver"
    assert mps.process_name == "mps-client" and mps.sm_util_pct is None
    assert (mps.container_id, mps.pod_uid, mps.slurm_job_id) == (None, None, None)
    assert round_trip(GPU_PROCESSES, procs) == procs


def test_process_utilisation_only_counts_samples_since_the_last_tick(tmp_path: Path) -> None:
    proc = FakeProcess(7, sm_util=[90, 90])
    gpu = FakeGpu("GPU-a", processes=[proc])
    nvml = FakeNvml([gpu])
    collector = NvmlProcessCollector(NvmlConfig(node="n", proc_root=tmp_path), nvml=nvml)
    assert collector.sample(NOW)[0].sm_util_pct == 90.0
    (again,) = collector.sample(NOW + 1000)  # the driver has nothing newer: NotFound, not an error
    assert again.sm_util_pct is None
    nvml.now_us += 1_000_000
    proc.sm_util = [10, 20, 30]
    assert collector.sample(NOW + 2000)[0].sm_util_pct == 20.0
    collector.close()


def test_processes_of_a_mig_board_are_charged_to_their_instances(tmp_path: Path) -> None:
    child = mig_child("MIG-0", gi=1, processes=[FakeProcess(55, used_memory=GIB)])
    board = FakeGpu("GPU-board", mig=[child])
    nvml = FakeNvml([board])
    (p,) = NvmlProcessCollector(NvmlConfig(node="n", proc_root=tmp_path), nvml=nvml).sample(NOW)
    assert (p.gpu_uuid, p.gpu_index, p.pid, p.used_memory_bytes) == ("MIG-0", 64, 55, GIB)
    assert "nvmlDeviceGetComputeRunningProcesses" not in board.calls


def test_a_lost_gpu_does_not_stop_the_process_list(tmp_path: Path) -> None:
    nvml = FakeNvml([FakeGpu("GPU-lost", lost=True, processes=[FakeProcess(1)]), FakeGpu("GPU-b", processes=[FakeProcess(2)])])
    procs = NvmlProcessCollector(NvmlConfig(node="n", proc_root=tmp_path), nvml=nvml).sample(NOW)
    assert [(p.gpu_uuid, p.pid) for p in procs] == [("GPU-b", 2)]


# --- XID ---------------------------------------------------------------------------------------
def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_every_xid_is_a_record_even_identical_repeats() -> None:
    a, b = FakeGpu("GPU-a"), FakeGpu("GPU-b")
    nvml = FakeNvml([a, b])
    frozen = lambda: NOW / 1000
    with NvmlXidCollector(NvmlConfig(node="n", xid_wait_ms=50), nvml=nvml, clock=frozen) as xids:
        assert xids.topic is GPU_XID and xids.listening
        assert xids.sample(NOW) == []
        nvml.inject_xid(b, 79)
        nvml.inject_xid(b, 79)
        nvml.inject_xid(a, 48, gpu_instance_id=3)
        got: list = []
        wait_for(lambda: bool(got.extend(xids.sample(NOW)) or len(got) >= 3))
        nvml.inject_xid(b, 79)
        wait_for(lambda: bool(got.extend(xids.sample(NOW + 1000)) or len(got) >= 4))
    assert [(e.gpu_index, e.gpu_uuid, e.xid, e.seq) for e in got] == [
        (1, "GPU-b", 79, 0),
        (1, "GPU-b", 79, 1),
        (0, "GPU-a", 48, 2),
        (1, "GPU-b", 79, 3),
    ]
    assert got[0].ts == got[1].ts == NOW  # same ms, still two records (seq tells them apart)
    assert got[2].gpu_instance_id == 3 and got[0].gpu_instance_id is None
    assert round_trip(GPU_XID, got) == got


def test_sampling_never_waits_for_the_xid_thread() -> None:
    nvml = FakeNvml([FakeGpu("GPU-a")])
    xids = NvmlXidCollector(NvmlConfig(node="n", xid_wait_ms=1000), nvml=nvml)
    try:
        wait_for(lambda: nvml.event_sets[0].waiting == 1)  # the thread sits in a 1 s wait
        start = time.perf_counter()
        for k in range(100):
            assert xids.sample(NOW + k) == []
        assert time.perf_counter() - start < 0.1
    finally:
        xids.close()


def test_close_stops_the_thread_then_frees_the_event_set() -> None:
    nvml = FakeNvml([FakeGpu("GPU-a")])
    xids = NvmlXidCollector(NvmlConfig(node="n", xid_wait_ms=100), nvml=nvml)
    thread = xids._thread
    assert thread is not None and thread.is_alive()
    wait_for(lambda: nvml.event_sets[0].waits >= 1)
    xids.close()
    event_set = nvml.event_sets[0]
    assert not thread.is_alive() and not xids.listening
    assert event_set.freed and not event_set.freed_while_waiting
    assert not nvml.initialised
    xids.close()  # twice is harmless


def test_xids_from_the_gpus_that_can_register_when_one_cannot(caplog: pytest.LogCaptureFixture) -> None:
    bad, good = FakeGpu("GPU-bad", lost=True), FakeGpu("GPU-good")
    nvml = FakeNvml([bad, good])
    with NvmlXidCollector(NvmlConfig(node="n", xid_wait_ms=50), nvml=nvml) as xids:
        assert xids.listening
        nvml.inject_xid(good, 31)
        got: list = []
        wait_for(lambda: bool(got.extend(xids.sample(NOW))) or len(got) >= 1)
    assert [(e.gpu_uuid, e.xid) for e in got] == [("GPU-good", 31)]
    assert any("GPU 0: cannot listen for XID events" in r.message for r in caplog.records)


def test_without_xid_support_the_collector_is_quiet_and_empty() -> None:
    nvml = FakeNvml([FakeGpu("GPU-a", unsupported={"nvmlDeviceRegisterEvents"})])
    with NvmlXidCollector(NvmlConfig(node="n"), nvml=nvml) as xids:
        assert not xids.listening and xids.sample(NOW) == []
    assert nvml.event_sets[0].freed and not nvml.initialised


def test_a_full_xid_queue_drops_the_oldest_and_counts_it() -> None:
    gpu = FakeGpu("GPU-a")
    nvml = FakeNvml([gpu])
    with NvmlXidCollector(NvmlConfig(node="n", xid_wait_ms=50, xid_queue_max=2), nvml=nvml) as xids:
        for xid in (13, 31, 43):
            nvml.inject_xid(gpu, xid)
        wait_for(lambda: nvml.event_sets[0].events.empty() and xids.dropped == 1)
        assert [e.xid for e in xids.sample(NOW)] == [31, 43]


# --- all together ------------------------------------------------------------------------------
def test_the_three_collectors_share_one_library(tmp_path: Path) -> None:
    nvml = FakeNvml([h100("GPU-a", processes=[FakeProcess(9)])])
    collectors = [
        NvmlGpuCollector(NvmlConfig(node="n"), nvml=nvml),
        NvmlProcessCollector(NvmlConfig(node="n", proc_root=tmp_path), nvml=nvml),
        NvmlXidCollector(NvmlConfig(node="n", xid_wait_ms=50), nvml=nvml),
    ]
    assert nvml.init_count == 3
    for c in collectors:
        c.sample(NOW)
    for c in collectors[::-1]:
        assert nvml.initialised
        c.close()
    assert nvml.init_count == 0


def test_without_a_driver_the_real_library_gives_a_clear_error() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:  # pragma: no cover - only on GPU machines
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    for cls in (NvmlGpuCollector, NvmlProcessCollector, NvmlXidCollector):
        with pytest.raises(RuntimeError, match="NVML is not available on this node .* use --backend sim"):
            cls(NvmlConfig(node="n"))


def test_a_mig_board_lost_during_a_rescan_keeps_its_instances() -> None:
    board = h100("GPU-board", mig=[mig_child("MIG-0", gi=1)])
    nvml = FakeNvml([board])
    collector = NvmlGpuCollector(NvmlConfig(node="n", rescan_s=10), nvml=nvml)
    collector.sample(NOW)
    board.lost = True
    assert [(s.gpu_uuid, s.gpu_util) for s in collector.sample(NOW + 10_000)] == [("GPU-board", None), ("MIG-0", None)]
    board.lost = False
    assert [s.gpu_uuid for s in collector.sample(NOW + 11_000)] == ["GPU-board", "MIG-0"]
    collector.close()
    assert nvml.gpm_freed == nvml.gpm_allocated
