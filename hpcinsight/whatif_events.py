"""``hpcinsight whatif trace|store``: event-driven replays, from a trace file or from the store.

The store is read through :mod:`hpcinsight.sinks.scheduler_history` (the CLI floor may reach the
sinks, the what-if room may not); the simulator gets plain records. Each (policy, queue) pair is
one run; a rich progress bar follows long runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hpcinsight.whatif.model import WhatifError


def _instant(text: str, now: float, setting: str) -> float:
    """``2h`` (before now; a bare number is seconds) or an ISO time."""
    from hpcinsight.core.durations import parse_seconds

    if not text:
        return now
    try:
        return now - round(parse_seconds(text, setting, plain="s"))
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise WhatifError(f"expected an ISO time or a duration (2h, 7d), got {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def read_store(settings: Any, since: str, until: str | None, source: str | None) -> tuple[list, list]:
    """The jobs and nodes of the stored scheduler history between ``since`` and ``until`` (now)."""
    from hpcinsight.sinks.clickhouse import connect
    from hpcinsight.sinks.scheduler_history import read_scheduler_history
    from hpcinsight.whatif.store import jobs_from_events, nodes_from_inventory

    now = time.time()
    lo, hi = _instant(since, now, "--since"), _instant(until, now, "--until") if until else now
    if hi <= lo:
        raise WhatifError("--until is not after --since")
    client = connect(settings.clickhouse, writer=False)
    try:
        events, inv = read_scheduler_history(client, int(lo * 1000), int(hi * 1000), source)
    finally:
        client.close()
    if not events:
        raise WhatifError("the store has no scheduler events in that range")
    nodes = nodes_from_inventory(inv)
    return jobs_from_events(events, max(n.gpus for n in nodes)), nodes


def run_events(args: argparse.Namespace, settings_loader: Any) -> int:
    from hpcinsight.whatif import queueing, report
    from hpcinsight.whatif.events import EventConfig, EventSim
    from hpcinsight.whatif.policies import parse_policies
    from hpcinsight.whatif.readers import check_fits, read_nodes, read_pods

    policies = parse_policies(args.policy)
    queues = queueing.parse_queues(args.queue)
    weights = queueing.parse_weights(args.weights)
    if args.reserve_gpus < 0:
        raise WhatifError("--reserve-gpus must be 0 (off) or a number of GPUs")
    if args.whatif_mode == "trace":
        nodes = read_nodes(args.nodes)
        jobs = read_pods(args.pods, times=True)
        check_fits(jobs, nodes, source=str(args.pods))
    else:
        jobs, nodes = read_store(settings_loader(), args.since, args.until, args.source)
    if args.limit is not None:
        jobs = jobs[: max(args.limit, 0)]
    if args.nodes_every and args.nodes_every > 1:
        nodes = nodes[:: args.nodes_every]
    if not jobs:
        raise WhatifError("no jobs to replay")
    runs = [(p, q) for p in policies for q in queues]
    show = not args.no_progress and sys.stderr.isatty()
    reports, series = [], []
    progress = None
    if show:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True, console=Console(file=sys.stderr)
        )
        progress.start()
    try:
        for p, q in runs:
            task = progress.add_task(f"{p}/{q}", total=1.0) if progress else None
            tick = (lambda frac, task=task: progress.update(task, completed=frac)) if progress else None
            sim = EventSim(
                nodes,
                jobs,
                EventConfig(policy=p, queue=q, weights=weights, gang=args.gang, reserve_gpus=args.reserve_gpus, seed=args.seed),
            )
            reports.append(sim.run(tick))
            series.append(sim.series)
            if progress:
                progress.update(task, completed=1.0)
        if args.as_recorded:
            from hpcinsight.whatif.recorded import as_recorded

            rec, rec_series = as_recorded(nodes, jobs)
            reports.append(rec)
            series.append(rec_series)
    finally:
        if progress:
            progress.stop()
    out = {"json": report.event_json, "csv": report.event_csv, "table": report.event_table}[args.format](reports)
    sys.stdout.write(out if out.endswith("\n") else out + "\n")
    if args.plots:
        for path in report.event_plots(reports, series, Path(args.plots)):
            print(f"wrote {path}", file=sys.stderr)
    return 0
