"""Many fill runs (policies x seeds), on at most two processes, with a progress bar if asked.

Two processes because the machines this runs on are shared; each run is independent, so
results do not depend on how many run at once.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from hpcinsight.whatif.fill import DEFAULT_INFLATE, run_fill
from hpcinsight.whatif.model import Job, Node

MAX_PROCS = 2


@dataclass(frozen=True)
class FillSummary:
    policy: str
    seed: int
    curve: dict[int, float]
    pods: int
    failed: int
    failed_gpu_milli: int
    total_gpus: int
    seconds: float


def _one(args: tuple) -> FillSummary:
    import time

    jobs, nodes, policy, seed, inflate = args
    start = time.perf_counter()
    run = run_fill(jobs, nodes, policy, seed, inflate)
    return FillSummary(
        policy,
        seed,
        run.curve(),
        run.pods,
        run.failed,
        run.failed_gpu_milli,
        run.total_gpus,
        round(time.perf_counter() - start, 3),
    )


def run_many(
    jobs: Sequence[Job],
    nodes: Sequence[Node],
    policies: Sequence[str],
    seeds: Sequence[int],
    *,
    inflate: float = DEFAULT_INFLATE,
    procs: int = 1,
    done: Callable[[FillSummary], None] | None = None,
) -> list[FillSummary]:
    """Every (policy, seed) run, in that order; ``done`` is told as each finishes."""
    tasks = [(list(jobs), list(nodes), p, s, inflate) for p in policies for s in seeds]
    procs = max(1, min(procs, MAX_PROCS, len(tasks)))
    results: list[FillSummary] = []
    if procs == 1:
        for task in tasks:
            results.append(_one(task))
            if done:
                done(results[-1])
        return results
    with ProcessPoolExecutor(max_workers=procs, mp_context=mp.get_context("fork")) as pool:
        futures = [pool.submit(_one, task) for task in tasks]
        for fut in futures:
            results.append(fut.result())
            if done:
                done(results[-1])
    return results
