"""``hpcinsight whatif``: the CLI floor of the what-if simulator (whatif/).

Parses arguments, reads the store when asked (the only part that needs ClickHouse), and hands
plain records to ``whatif``. Bad input is a :class:`hpcinsight.whatif.model.WhatifError` (a ValueError):
the CLI prints its one line and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hpcinsight.whatif.model import WhatifError

FORMATS = ("table", "csv", "json")


def parse_seeds(text: str) -> list[int]:
    """``42-51``, ``42,45`` or ``42``."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise WhatifError(f"--seeds: expected N, N-M or a comma list, got {text!r}") from None
    if not seeds:
        raise WhatifError("--seeds: give at least one seed")
    return seeds


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="whatif_mode", required=True, metavar="MODE")

    def common(q: argparse.ArgumentParser, default_policy: str) -> None:
        q.add_argument(
            "--policy",
            default=default_policy,
            help="comma list of: random, firstfit, bestfit, mostallocated, leastallocated, dotprod, "
            "gpupacking, gpuclustering, fgd (NAME+profile: hosts typed by resource profile) "
            f"(default {default_policy})",
        )
        q.add_argument("--format", choices=FORMATS, default="table")
        q.add_argument("--plots", default=None, metavar="DIR", help="also write PNG figures there")
        q.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    f = sub.add_parser(
        "fill",
        help="the FGD authors' fill experiment: shuffled, inflated arrivals, no departures",
        description="Pods arrive in a shuffled order (per seed), inflated past the cluster's GPUs, and "
        "never leave; allocation is recorded at each percent of arrived GPU demand.",
    )
    f.add_argument("pods", help="pods CSV (openb: name, cpu_milli, memory_mib, num_gpu, gpu_milli[, gpu_spec])")
    f.add_argument("nodes", help="nodes CSV (openb: sn, cpu_milli, memory_mib, gpu, model)")
    common(f, "random,dotprod,gpuclustering,gpupacking,bestfit,fgd")
    f.add_argument("--seeds", default="42", help="seeds: N, N-M or a comma list (default 42; the paper used 42-51)")
    f.add_argument("--inflate", type=float, default=1.3, help="inflate demand to this multiple of the GPUs (default 1.3)")
    f.add_argument("--procs", type=int, default=2, help="processes, at most 2 (default 2)")

    t = sub.add_parser(
        "trace",
        help="event-driven replay of a trace with submit and end times, with queueing",
        description="Jobs arrive at their creation time, run for their recorded duration, and wait in a queue when nothing fits.",
    )
    t.add_argument("pods", help="pods CSV with creation_time, scheduled_time, deletion_time (openb)")
    t.add_argument("nodes", help="nodes CSV")
    common(t, "random,mostallocated,bestfit,fgd")
    _add_event_args(t)

    s = sub.add_parser(
        "store",
        help="replay the scheduler events and node inventory stored in ClickHouse",
        description="Reads scheduler_events and node_inventory for a time range and replays them.",
    )
    s.add_argument("--since", required=True, help="start: ISO time or a duration back from now (2h, 7d)")
    s.add_argument("--until", default=None, help="end: ISO time or a duration back from now (default now)")
    s.add_argument("--source", default=None, help="only events of this source (openb, kubernetes, slurm)")
    common(s, "random,mostallocated,bestfit,fgd")
    _add_event_args(s)


def _add_event_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--queue", default="fifo", help="comma list of: fifo, random (the waiting pool), priority (default fifo)")
    q.add_argument(
        "--weights", default=None, metavar="K=V,...", help="priority weights: size, wait, urgent, qos (see docs/whatif.md)"
    )
    q.add_argument(
        "--gang",
        choices=("zone", "none"),
        default="zone",
        help="gang jobs all-or-nothing within one zone, or task by task (default zone)",
    )
    q.add_argument(
        "--reserve-gpus",
        type=int,
        default=0,
        metavar="N",
        help="hold nodes for a waiting job asking at least N GPUs (0: no reservations)",
    )
    q.add_argument("--seed", type=int, default=42)
    q.add_argument("--limit", type=int, default=None, help="replay only the first N jobs")
    q.add_argument(
        "--nodes-every",
        type=int,
        default=1,
        metavar="K",
        help="keep every K-th node only (a light trace on a smaller cluster, to see contention)",
    )
    q.add_argument("--as-recorded", action="store_true", help="also report the jobs as they actually ran (recorded start times)")


def run(args: argparse.Namespace, settings_loader: Any = None) -> int:
    mode = args.whatif_mode
    if mode == "fill":
        return _run_fill(args)
    from hpcinsight.whatif_events import run_events

    return run_events(args, settings_loader)


def _progress(total: int, enabled: bool):
    if not enabled or total <= 1:
        return None, None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        transient=True,
        console=_stderr_console(),
    )
    task = prog.add_task("whatif", total=total)
    return prog, task


def _stderr_console():
    from rich.console import Console

    return Console(file=sys.stderr)


def _run_fill(args: argparse.Namespace) -> int:
    from hpcinsight.whatif import report
    from hpcinsight.whatif.policies import parse_policies
    from hpcinsight.whatif.readers import check_fits, read_nodes, read_pods
    from hpcinsight.whatif.runs import run_many

    policies = parse_policies(args.policy)
    seeds = parse_seeds(args.seeds)
    if not (0 <= args.inflate <= 10):
        raise WhatifError("--inflate: expected a multiple between 0 and 10")
    nodes = read_nodes(args.nodes)
    jobs = read_pods(args.pods)
    if not jobs:
        raise WhatifError(f"{args.pods}: no pod rows")
    check_fits(jobs, nodes, source=str(args.pods))
    if sum(n.gpus for n in nodes) == 0:
        raise WhatifError(f"{args.nodes}: the cluster has no GPUs (fill mode measures GPU allocation)")
    prog, task = _progress(len(policies) * len(seeds), not args.no_progress and sys.stderr.isatty())
    done = None
    if prog is not None:
        prog.start()
        done = lambda r: prog.update(task, advance=1, description=f"{r.policy} seed {r.seed}")
    try:
        results = run_many(jobs, nodes, policies, seeds, inflate=args.inflate, procs=args.procs, done=done)
    finally:
        if prog is not None:
            prog.stop()
    anchor = report.is_anchor_run(args.pods, sum(n.gpus for n in nodes), args.inflate)
    out = {"json": report.fill_json, "csv": report.fill_csv, "table": report.fill_table}[args.format](results, anchor)
    sys.stdout.write(out if out.endswith("\n") else out + "\n")
    if args.plots:
        for path in report.fill_plot(results, Path(args.plots)):
            print(f"wrote {path}", file=sys.stderr)
    return 0
