"""The job stage merges GPU sketches into job quantiles: equal to one sketch over all the values."""

from __future__ import annotations

import msgspec
import numpy as np

from hpcinsight.schemas.events import GpuSketch
from hpcinsight.streams.jobs import JobMerger, JobStageConfig
from hpcinsight.streams.sketches import QuantileSketch

T0 = 1_750_000_000_000


def gpu_sketch(gpu: str, end: int, values: np.ndarray, job: str = "j1", window: str = "1m") -> GpuSketch:
    s = QuantileSketch()
    s.update(values)
    return GpuSketch(
        job,
        "n0",
        gpu,
        "gpu_util",
        window,
        T0 + end - 60_000,
        T0 + end,
        int(values.size),
        float(values.astype(np.float64).sum()),
        s.to_bytes(),
        user="alice",
        team="nlp",
    )


def test_job_quantiles_are_the_merge_of_all_gpus() -> None:
    rng = np.random.default_rng(0)
    merger = JobMerger()
    values = {f"GPU-{i}": rng.uniform(0, 100, 60).astype(np.float32) for i in range(8)}
    values["GPU-7"][:] = 0.0  # one idle GPU pulls the job's p25 down
    out = []
    for gpu, v in values.items():
        out += merger.add(gpu_sketch(gpu, 60_000, v))
    assert out == []  # the first window's GPU set is unknown: it waits for the grace period
    for gpu, v in values.items():
        out += merger.add(gpu_sketch(gpu, 80_000, v), now=1e9)  # the first window has waited long enough
    # 60 s is released by sketches 20 s newer; then the job's GPU set is known and 80 s is complete
    assert [q.window_end - T0 for q in out] == [60_000, 80_000]
    for gpu, v in list(values.items())[:-1]:
        out += merger.add(gpu_sketch(gpu, 90_000, v))
    assert len(out) == 2  # waiting for GPU-7
    out += merger.add(gpu_sketch("GPU-7", 90_000, values["GPU-7"]))  # the last expected GPU: emitted at once
    assert [q.window_end - T0 for q in out] == [60_000, 80_000, 90_000]
    everything = np.concatenate(list(values.values()))
    q = out[0]
    assert (q.gpus, q.count, q.user, q.team) == (8, everything.size, "alice", "nlp")
    assert abs(q.mean - float(everything.astype(np.float64).mean())) < 1e-9
    for rank, v in ((0.25, q.p25), (0.5, q.p50), (0.95, q.p95)):
        lo, hi = np.mean(everything < v), np.mean(everything <= v)
        assert lo - 0.01 <= rank <= hi + 0.01


def test_late_and_replayed_sketches() -> None:
    merger = JobMerger(JobStageConfig(grace_ms=10_000, wait_s=0.0))
    v = np.full(10, 50.0, dtype=np.float32)
    assert merger.add(gpu_sketch("A", 10_000, v)) == []
    assert merger.add(gpu_sketch("A", 10_000, v)) == []  # a replayed duplicate replaces, never adds
    assert merger.add(gpu_sketch("A", 15_000, v)) == []  # 10 s is not overdue yet
    out = merger.add(gpu_sketch("A", 20_000, v))
    assert [(q.window_end - T0, q.count) for q in out] == [(10_000, 10), (15_000, 10), (20_000, 10)]
    assert merger.add(gpu_sketch("B", 10_000, v)) == [] and merger.late == 1


def test_a_new_window_kind_knows_the_jobs_gpus_from_the_others() -> None:
    merger = JobMerger(JobStageConfig(wait_s=0.0))
    v = np.full(10, 50.0, dtype=np.float32)
    out = []
    for end in (10_000, 20_000, 30_000):
        for gpu in ("A", "B"):
            out += merger.add(gpu_sketch(gpu, end, v))
    assert [q.window_end - T0 for q in out] == [10_000, 20_000, 30_000]
    since = merger.add(gpu_sketch("A", 30_000, v, window="since_start"))
    since += merger.add(gpu_sketch("B", 30_000, v, window="since_start"))
    assert [(q.window, q.gpus) for q in since] == [("since_start", 2)]  # no grace period to wait out


def test_a_window_waits_for_a_worker_that_is_behind_but_not_for_a_gpu_gone() -> None:
    merger = JobMerger(JobStageConfig(grace_ms=20_000, wait_s=10.0, stale_s=30.0))
    v = np.full(10, 50.0, dtype=np.float32)
    for gpu in ("A", "B"):
        assert merger.add(gpu_sketch(gpu, 10_000, v), now=0.0) == []
    assert merger.tick(now=29.0) == []
    assert [q.gpus for q in merger.tick(now=31.0)] == [2]  # the first window: nobody newer came, it went stale
    # B's worker is behind: A runs 40 s of event time ahead within 2 s of processing time
    out = []
    for i, end in enumerate(range(20_000, 70_000, 10_000)):
        out += merger.add(gpu_sketch("A", end, v), now=32.0 + i * 0.4)
    assert out == []  # incomplete and not waited for long enough: held
    out = merger.add(gpu_sketch("B", 20_000, v), now=33.0)
    assert [(q.window_end - T0, q.gpus) for q in out] == [(20_000, 2)]
    # B is gone for good: after the wait, what is 20 s older than A's newest goes out without it,
    # and from then on the job is A alone
    assert merger.tick(now=42.0) == []
    assert [(q.window_end - T0, q.gpus) for q in merger.tick(now=45.0)] == [(e, 1) for e in range(30_000, 70_000, 10_000)]
    assert merger.tick(now=100.0) == []


def test_window_means_become_per_metric_job_windows_for_peer_detectors() -> None:
    merger = JobMerger(JobStageConfig(wait_s=0.0))
    v = np.full(10, 50.0, dtype=np.float32)
    for gpu, pcie in (("A", 5e9), ("B", 4e9)):
        s = gpu_sketch(gpu, 10_000, v)
        merger.add(GpuSketch(**{**{f: getattr(s, f) for f in s.__struct_fields__}, "means": {"pcie_bytes_per_s": pcie}}))
    merger.tick(now=1e9)
    by_metric = {w.metric: w for w in merger.gpu_windows}
    assert set(by_metric) == {"gpu_util", "pcie_bytes_per_s"}
    assert by_metric["gpu_util"].statistic == "p50" and by_metric["gpu_util"].value == {"A": 50.0, "B": 50.0}
    assert by_metric["pcie_bytes_per_s"].statistic == "mean" and by_metric["pcie_bytes_per_s"].value == {"A": 5e9, "B": 4e9}


def test_a_job_forgotten_for_silence_first_emits_the_windows_it_had_pending() -> None:
    # a fast catch-up: job j2's input runs hours of event time ahead while j1's last window still
    # waits for a GPU that is late; forgetting j1 (bounded memory) must not drop that window
    merger = JobMerger(JobStageConfig(wait_s=1e9, stale_s=1e9, idle_forget_ms=3_600_000))
    v = np.full(10, 40.0, dtype=np.float32)
    out = [q for gpu in ("A", "B") for q in merger.add(gpu_sketch(gpu, 60_000, v), now=0.0)]
    out += merger.add(gpu_sketch("A", 120_000, v), now=0.0)
    assert out == []  # the first window's GPU set is not known yet, and no wait has run out
    out = merger.add(gpu_sketch("X", 3 * 3_600_000, v, job="j2"), now=0.0)  # j2, three hours of event time later
    assert [(q.job_id, q.window_end - T0, q.gpus) for q in out] == [("j1", 60_000, 2), ("j1", 120_000, 1)]


def test_peer_detectors_see_a_released_backlog_in_window_order_across_metrics() -> None:
    """A job's first window waits (no GPU set known yet); when it goes, the windows behind it go too.
    Each metric's series is released on its own, by its own sketch of the message; the detectors
    must still get window 1 of every metric before window 2 of any (gpu_outlier keeps one incident
    per GPU across metrics in event time: fed metric by metric, two workers and one disagreed)."""
    import time

    import msgspec

    from hpcinsight.schemas.catalog import GPU_SKETCHES
    from hpcinsight.streams.jobs import JobGpuWindow
    from hpcinsight.streams.processor import ProcessorConfig, SampleProcessor

    class Seen:  # notes what the processor hands a peer detector (not a Detector subclass: discover() would find it)
        kind, inputs = "seen", (JobGpuWindow,)

        def __init__(self) -> None:
            self.order: list[tuple[int, str]] = []

        def bind(self, context: object) -> None:
            pass

        def observe(self, event: JobGpuWindow) -> list[object]:
            self.order.append((event.window_end - T0, event.metric))
            return []

    seen = Seen()
    processor = SampleProcessor(ProcessorConfig(jobs=JobStageConfig(grace_ms=10**9, wait_s=0.3, stale_s=0.3)), detectors=[seen])
    v = np.full(10, 50.0, dtype=np.float32)

    def message(gpu: str, end: int) -> bytes:  # as the worker writes them: the GPU's metrics in turn
        s = gpu_sketch(gpu, end, v)
        return GPU_SKETCHES.codec.encode([msgspec.structs.replace(s, metric=m) for m in ("gpu_util", "power_w")])

    for gpu in ("A", "B"):
        for end in (60_000, 65_000, 70_000):
            processor.handle_sketches("sketches", 0, 0, b"j1", message(gpu, end))
    assert seen.order == []  # the first window waits: no GPU set known yet
    time.sleep(0.4)
    processor.handle_sketches("sketches", 0, 0, b"j1", message("A", 75_000))  # window 1 is overdue: 1-3 go out
    assert seen.order == [(e, m) for e in (60_000, 65_000, 70_000) for m in ("gpu_util", "power_w")]


def test_a_large_jobs_exact_windows_give_each_gpus_median_and_the_exact_merge() -> None:
    """From ROWS_FROM_GPUS GPUs a window's histograms are merged as one array: each GPU's median
    (the outlier detector's input) and the job's quantiles are those of one histogram at a time."""
    from hpcinsight.streams.jobs import ROWS_FROM_GPUS
    from hpcinsight.streams.sketches import IntHistogram

    rng = np.random.default_rng(4)
    for gpus in (ROWS_FROM_GPUS - 1, ROWS_FROM_GPUS, 40):
        merger = JobMerger()
        hists = {f"GPU-{i:02d}": IntHistogram(np.bincount(rng.integers(0, 101, 12), minlength=101)) for i in range(gpus)}
        for gpu, h in reversed(hists.items()):  # arrival order is not the GPUs' order
            base = gpu_sketch(gpu, 60_000, np.array([0.0]))
            merger.add(msgspec.structs.replace(base, count=h.count, sum=float(h.values().sum()), sketch=h.to_bytes()))
        (q,) = merger.tick(now=1e9)
        merged = IntHistogram(np.sum([h.counts for h in hists.values()], axis=0))
        assert [q.p25, q.p50, q.p95] == merged.quantiles() and q.gpus == gpus
        (medians,) = [w for w in merger.gpu_windows if w.statistic == "p50"]
        assert medians.value == {gpu: h.quantiles([0.5])[0] for gpu, h in hists.items()}  # type: ignore[index]


def _raw(values: np.ndarray) -> bytes:
    from hpcinsight.streams.sketches import RawValues

    return RawValues([values.astype(np.float32)]).to_bytes()


def test_a_window_of_raw_values_merges_as_one_array_with_the_answers_of_one_sketch_a_gpu() -> None:
    from hpcinsight.streams.jobs import ROWS_FROM_GPUS, _merge
    from hpcinsight.streams.sketches import RawValues, load_sketch, merge_sketches, raw_value_rows

    rng = np.random.default_rng(3)
    for gpus, per_gpu in ((ROWS_FROM_GPUS, 10), (30, 10), (64, 10), (ROWS_FROM_GPUS, 7)):
        values = [np.round(rng.uniform(50, 700, per_gpu), 1) for _ in range(gpus)]
        data = [_raw(v) for v in values]
        assert raw_value_rows(data) is not None  # the array path, not one sketch a GPU
        merged, medians = _merge(data, medians=True)
        sketches = [load_sketch(d) for d in data]
        assert medians == [s.quantiles([0.5])[0] for s in sketches]  # type: ignore[index]  # not empty
        everything = np.concatenate(values).astype(np.float32)
        assert merged.count == everything.size
        if everything.size <= RawValues.LIMIT:  # exact: the same values, the same bytes as the merge a GPU at a time
            assert merged.to_bytes() == merge_sketches(sketches).to_bytes()
        else:  # KLL of every value, within its rank error
            for rank, v in zip((0.25, 0.5, 0.95), merged.quantiles([0.25, 0.5, 0.95]) or []):
                lo, hi = np.mean(everything < v), np.mean(everything <= v)
                assert lo - 0.01 <= rank <= hi + 0.01


def test_raw_values_of_unequal_counts_or_another_kind_are_merged_one_sketch_a_gpu() -> None:
    from hpcinsight.streams.jobs import ROWS_FROM_GPUS, _merge
    from hpcinsight.streams.sketches import load_sketch, merge_sketches, raw_value_rows

    rng = np.random.default_rng(4)
    values = [rng.uniform(50, 700, 10 if i else 9) for i in range(ROWS_FROM_GPUS)]  # one GPU missed a sample
    data = [_raw(v) for v in values]
    assert raw_value_rows(data) is None
    merged, medians = _merge(data, medians=True)
    sketches = [load_sketch(d) for d in data]
    assert merged.to_bytes() == merge_sketches(sketches).to_bytes()
    assert medians == [s.quantiles([0.5])[0] for s in sketches]  # type: ignore[index]  # not empty
    kll = QuantileSketch()
    kll.update(values[0])
    assert raw_value_rows([*data[1:], kll.to_bytes()]) is None and raw_value_rows([]) is None
    assert raw_value_rows([_raw(np.zeros(0))] * ROWS_FROM_GPUS) is None  # empty ones: nothing to gain
