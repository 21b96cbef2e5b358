"""The job stage holds off while the per-GPU stage has a backlog, for a bounded time (streams.priority)."""

from __future__ import annotations

import pytest

from hpcinsight.cli import main
from hpcinsight.streams.app import WorkerOptions
from hpcinsight.streams.priority import GpuStageFirst


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy(max_wait_s: float = 2.0, idle_s: float = 0.1) -> tuple[GpuStageFirst, Clock]:
    clock = Clock()
    return GpuStageFirst(max_wait_s, 100, idle_s=idle_s, step_s=0.01, clock=clock), clock


def test_the_job_stage_goes_on_when_the_gpu_stage_has_no_backlog() -> None:
    first, _ = policy()
    assert first.hold_s() == 0  # nothing taken yet
    first.took(40)
    assert first.hold_s() == 0  # a batch short of full: the per-GPU stage had drained


def test_a_full_batch_holds_the_job_stage_a_step_at_a_time() -> None:
    first, clock = policy()
    first.took(100)
    assert first.hold_s() == pytest.approx(0.01)
    clock.now += 0.05
    first.took(100)  # the burst goes on
    assert first.hold_s() == pytest.approx(0.01)
    first.took(7)  # drained
    assert first.hold_s() == 0
    assert first.held_s == pytest.approx(0.02)


def test_the_hold_is_bounded_even_if_the_backlog_lasts() -> None:
    first, clock = policy(max_wait_s=2.0)
    first.took(100)
    assert first.hold_s() > 0
    for _ in range(30):  # a worker catching up: full batches for longer than the longest hold
        clock.now += 0.09
        first.took(100)
        clock.now += 0.01
    assert first.hold_s() == 0  # 3 s after the first hold: the job stage goes on
    clock.now += 0.05
    first.took(100)
    assert first.hold_s() == 0  # ... for the rest of this backlog
    first.took(3)
    first.took(100)  # a new backlog after the stage drained: holds again
    assert first.hold_s() > 0


def test_the_last_step_ends_at_the_longest_hold() -> None:
    first, clock = policy(max_wait_s=0.5)
    first.took(100)
    first.hold_s()
    clock.now += 0.495
    first.took(100)
    assert first.hold_s() == pytest.approx(0.005)


def test_a_gpu_stage_idle_after_a_full_batch_has_drained() -> None:
    first, clock = policy(idle_s=0.1)
    first.took(100)  # the last batch of a tick happened to be full
    clock.now += 0.2  # and nothing came after it
    assert first.hold_s() == 0
    clock.now += 0.05
    assert first.hold_s() == 0


def test_no_hold_when_turned_off() -> None:
    first, _ = policy(max_wait_s=0)
    first.took(100)
    assert first.hold_s() == 0


def test_the_worker_default_is_a_fifth_of_the_job_wait_at_most_two_seconds() -> None:
    assert WorkerOptions().job_hold_s == 2.0
    assert WorkerOptions(job_wait_s=2.0).job_hold_s == pytest.approx(0.4)
    assert WorkerOptions(gpu_first_s=0.0).job_hold_s == 0.0
    with pytest.raises(ValueError, match="--gpu-first"):
        WorkerOptions(gpu_first_s=6.0)  # more than half of the 10 s job wait


def test_a_hold_longer_than_the_job_stage_can_take_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--job-wait", "4s", "--gpu-first", "3s"]) == 2
    assert "--gpu-first" in capsys.readouterr().err
