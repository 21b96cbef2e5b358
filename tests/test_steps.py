"""The step recorder: identity from torchrun/Slurm, timing, phases, and never hurting training."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from hpcinsight.agents.steps import StepRecorder, from_env
from hpcinsight.schemas.catalog import STEP_METRICS_RAW
from hpcinsight.schemas.events import StepMetric

IDENTITY = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "HPCINSIGHT_JOB_ID",
    "SLURM_JOB_ID",
    "TORCHELASTIC_RUN_ID",
    "JOB_ID",
)


class Collect:
    """A sink that keeps every batch it is given."""

    def __init__(self) -> None:
        self.batches: list[list[StepMetric]] = []

    def __call__(self, batch: list[StepMetric]) -> None:
        self.batches.append(batch)

    @property
    def records(self) -> list[StepMetric]:
        return [r for b in self.batches for r in b]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in IDENTITY:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sink() -> Collect:
    return Collect()


@pytest.fixture
def rec(sink: Collect) -> Iterator[StepRecorder]:
    recorder = StepRecorder(job_id="job-1", rank=0, world_size=1, sink=sink)
    yield recorder
    recorder.close()


def one_step(rec: StepRecorder, sink: Collect) -> StepMetric:
    rec.close()
    [record] = sink.records
    return record


def test_torchrun_identity(monkeypatch: pytest.MonkeyPatch, sink: Collect) -> None:
    for name, value in {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "TORCHELASTIC_RUN_ID": "run-7"}.items():
        monkeypatch.setenv(name, value)
    rec = StepRecorder(sink=sink)
    with rec.step():
        pass
    r = one_step(rec, sink)
    assert (r.job_id, r.rank, r.world_size, r.local_rank, r.node) == ("run-7", 5, 8, 1, socket.gethostname())


def test_slurm_identity(monkeypatch: pytest.MonkeyPatch, sink: Collect) -> None:
    for name, value in {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "3", "SLURM_JOB_ID": "9001"}.items():
        monkeypatch.setenv(name, value)
    rec = StepRecorder(sink=sink)
    rec.record(0, 0.5)
    r = one_step(rec, sink)
    assert (r.job_id, r.rank, r.world_size, r.local_rank) == ("9001", 3, 4, 3)


def test_torchrun_under_srun_uses_torchrun_ranks_and_explicit_job_id_wins() -> None:
    env = {
        "SLURM_PROCID": "1",
        "SLURM_NTASKS": "2",
        "SLURM_LOCALID": "0",
        "SLURM_JOB_ID": "9001",
        "RANK": "12",
        "WORLD_SIZE": "16",
        "LOCAL_RANK": "4",
        "HPCINSIGHT_JOB_ID": "llm-pretrain",
    }
    ident = from_env(env)
    assert (ident["job_id"], ident["rank"], ident["world_size"], ident["local_rank"]) == ("llm-pretrain", 12, 16, 4)


def test_defaults_without_a_launcher() -> None:
    ident = from_env({"RANK": "oops", "TORCHELASTIC_RUN_ID": "none"})
    assert (ident["rank"], ident["world_size"], ident["local_rank"]) == (0, 1, None)
    assert ident["job_id"].startswith("local-") and ident["node"] == socket.gethostname()


def test_explicit_arguments_win(monkeypatch: pytest.MonkeyPatch, sink: Collect) -> None:
    for name, value in {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "SLURM_JOB_ID": "9001"}.items():
        monkeypatch.setenv(name, value)
    rec = StepRecorder(job_id="mine", rank=2, world_size=4, local_rank=0, node="gpu-n17", sink=sink)
    rec.record(0, 0.1)
    r = one_step(rec, sink)
    assert (r.job_id, r.rank, r.world_size, r.local_rank, r.node) == ("mine", 2, 4, 0, "gpu-n17")


def test_step_duration_is_measured(rec: StepRecorder, sink: Collect) -> None:
    with rec.step():
        time.sleep(0.02)
    before_ms = time.time_ns() // 1_000_000
    r = one_step(rec, sink)
    assert r.duration_s >= 0.02
    assert before_ms - 60_000 <= r.ts <= before_ms


def test_phases_accumulate_within_a_step_and_reset_between_steps(rec: StepRecorder, sink: Collect) -> None:
    with rec.step():
        with rec.phase("forward"):
            time.sleep(0.005)
        with rec.phase("backward"):
            time.sleep(0.01)
        with rec.phase("forward"):
            time.sleep(0.005)
    with rec.phase("outside"):  # between steps: belongs to no step
        time.sleep(0.001)
    with rec.step():
        with rec.phase("forward"):
            time.sleep(0.002)
    with rec.step():
        pass
    rec.close()
    first, second, third = sink.records
    assert set(first.phases) == {"forward", "backward"}
    assert first.phases["forward"] >= 0.01 and first.phases["backward"] >= 0.01
    assert first.duration_s >= sum(first.phases.values())
    assert set(second.phases) == {"forward"} and second.phases["forward"] >= 0.002
    assert third.phases == {}


def test_record_takes_explicit_phases_or_those_timed_since_the_last_step(rec: StepRecorder, sink: Collect) -> None:
    rec.record(0, 1.5, {"data": 0.5, "compute": 1.0})
    with rec.phase("compute"):
        time.sleep(0.002)
    rec.record(1, 0.01)
    rec.record(2, 0.01)
    rec.close()
    a, b, c = sink.records
    assert (a.duration_s, a.phases) == (1.5, {"data": 0.5, "compute": 1.0})
    assert list(b.phases) == ["compute"] and b.phases["compute"] >= 0.002
    assert c.phases == {}


def test_steps_are_numbered_automatically(rec: StepRecorder, sink: Collect) -> None:
    for _ in range(3):
        with rec.step():
            pass
    with rec.step(10):
        pass
    with rec.step():
        pass
    rec.record(20, 0.1)
    with rec.step():
        pass
    rec.close()
    assert [r.step for r in sink.records] == [0, 1, 2, 10, 11, 20, 21]


def test_an_exception_in_the_step_reaches_the_caller_and_the_step_is_kept(rec: StepRecorder, sink: Collect) -> None:
    with pytest.raises(KeyError), rec.step():
        raise KeyError("boom")
    assert one_step(rec, sink).step == 0


def test_close_flushes_everything_in_batches(sink: Collect) -> None:
    rec = StepRecorder(job_id="j", rank=0, world_size=1, sink=sink, flush_interval_s=60)
    for _ in range(2500):
        with rec.step():
            pass
    rec.close()
    rec.close()  # twice is harmless
    assert [r.step for r in sink.records] == list(range(2500))
    assert max(len(b) for b in sink.batches) <= 1000
    assert rec.dropped == 0


def test_flushes_on_its_own_every_interval(sink: Collect) -> None:
    rec = StepRecorder(job_id="j", rank=0, world_size=1, sink=sink, flush_interval_s=0.05)
    try:
        rec.record(0, 0.1)
        deadline = time.monotonic() + 10
        while not sink.batches and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [r.step for r in sink.records] == [0]
    finally:
        rec.close()


def test_a_failing_sink_never_raises_and_counts_drops() -> None:
    calls = []

    def broken(batch: list[StepMetric]) -> None:
        calls.append(len(batch))
        raise ConnectionError("broker gone")

    rec = StepRecorder(job_id="j", rank=0, world_size=1, sink=broken, flush_interval_s=0.01)
    for _ in range(30):
        with rec.step():
            time.sleep(0.001)
    rec.close()
    assert rec.dropped == 30
    # every record was offered to the sink, and none more than twice (one retry is held at a time)
    assert 30 <= sum(calls) <= 60


def test_a_sink_that_recovers_loses_nothing(sink: Collect) -> None:
    failures = [ConnectionError("blip")]

    def flaky(batch: list[StepMetric]) -> None:
        if failures:
            raise failures.pop()
        sink(batch)

    rec = StepRecorder(job_id="j", rank=0, world_size=1, sink=flaky, flush_interval_s=60)
    for step in range(5):
        rec.record(step, 0.1)
    rec.close()
    assert sorted(r.step for r in sink.records) == list(range(5)) and rec.dropped == 0


def test_a_full_queue_drops_the_oldest_and_counts_them(sink: Collect) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(batch: list[StepMetric]) -> None:
        entered.set()
        assert release.wait(30)
        sink(batch)

    rec = StepRecorder(job_id="j", rank=0, world_size=1, sink=slow, flush_interval_s=0.01, max_queue=10)
    rec.record(0, 0.1)
    assert entered.wait(10)  # the thread now holds step 0 inside the sink
    start = time.perf_counter()
    for step in range(1, 26):
        rec.record(step, 0.1)
    assert time.perf_counter() - start < 5  # never blocked by the stuck sink
    release.set()
    rec.close()
    assert [r.step for r in sink.records] == [0, *range(16, 26)]
    assert rec.dropped == 15


def test_invalid_values_are_dropped_not_sent(rec: StepRecorder, sink: Collect) -> None:
    rec.record(0, float("nan"))
    rec.record(1, 0.1, {"forward": float("inf")})
    rec.record(-1, 0.1)
    rec.record(1.5, 0.1)
    rec.record(2, "slow")
    rec.record(3, 1, {"io": 2})  # ints are fine: stored as floats
    rec.close()
    assert [(r.step, r.duration_s, r.phases) for r in sink.records] == [(3, 1.0, {"io": 2.0})] and rec.dropped == 5
    assert STEP_METRICS_RAW.codec.decode(STEP_METRICS_RAW.codec.encode(sink.records)) == sink.records


def test_record_copies_the_callers_phases(rec: StepRecorder, sink: Collect) -> None:
    phases = {"forward": 0.1}
    rec.record(0, 0.2, phases)
    phases["forward"] = 99.0
    assert one_step(rec, sink).phases == {"forward": 0.1}


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"job_id": ""}, "job_id"),
        ({"rank": 4, "world_size": 4}, "outside a world of 4"),
        ({"rank": -1}, "rank"),
        ({"node": "n" * 300}, "node"),
    ],
)
def test_an_identity_the_pipeline_would_refuse_fails_at_start(kwargs: dict, reason: str, sink: Collect) -> None:
    with pytest.raises(ValueError, match=reason):
        StepRecorder(**{"job_id": "j", "rank": 0, "world_size": 1, "sink": sink, **kwargs})


def test_without_a_broker_training_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("HPCINSIGHT_CONFIG", raising=False)
    rec = StepRecorder(job_id="j", flush_interval_s=0.01)
    with rec.step():
        pass
    rec.close()
    assert rec.dropped == 1


def test_records_round_trip_through_the_codec(rec: StepRecorder, sink: Collect) -> None:
    for _ in range(3):
        with rec.step(), rec.phase("forward"):
            pass
    rec.record(3, 0.25, {"data": 0.05})
    rec.close()
    assert STEP_METRICS_RAW.codec.decode(STEP_METRICS_RAW.codec.encode(sink.records)) == sink.records


def test_importing_does_not_need_torch() -> None:
    code = "import sys, hpcinsight.agents.steps; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
