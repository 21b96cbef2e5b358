"""Benchmark of the training-loop cost of :class:`hpcinsight.agents.steps.StepRecorder`.

What a training step pays for telemetry is ``with rec.step():`` around it; the baseline is the
cheapest possible context manager (``contextlib.nullcontext``) in the same loop, measured in
the same run, so the ratio says how much the recorder adds to the bare ``with`` statement.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from hpcinsight.agents.steps import StepRecorder
from hpcinsight.schemas.events import StepMetric

STEPS = 100_000


def _noop(batch: list[StepMetric]) -> None:
    """A sink that does nothing, so only the recorder's own cost is measured."""


def _best_us_per_step(body: Callable[[], None], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        body()
        best = min(best, time.perf_counter() - start)
    return best / STEPS * 1e6


def bench_steps(repeats: int) -> dict[str, float]:
    """Per-step cost of ``with rec.step():`` against an empty ``with nullcontext():``, in µs.

    The recorder's thread runs meanwhile, so its share of the GIL (building the records) is
    counted too, as a training loop would feel it.
    """
    rec = StepRecorder(job_id="bench", rank=0, world_size=1, sink=_noop, max_queue=2 * STEPS)

    def ours() -> None:
        step = rec.step
        for _ in range(STEPS):
            with step():
                pass

    def baseline() -> None:
        null = contextlib.nullcontext
        for _ in range(STEPS):
            with null():
                pass

    try:
        us = _best_us_per_step(ours, repeats)
        base = _best_us_per_step(baseline, repeats)
    finally:
        rec.close()
    return {"us_per_step": us, "baseline_us_per_step": base, "ratio": base / us}


if __name__ == "__main__":
    print(bench_steps(5))
