"""``hpcinsight replay``: recorded data from files through the real pipeline, and what it found.

Three kinds of record, each a CSV file with a header (docs/evaluation.md: Replay your own data):

* ``steps FILE``: ``job,rank,step,duration_s[,ts][,node]``, per-rank training step times, sent to
  ``step.metrics.raw`` as :class:`StepMetric` records; prints the straggler and imbalance flags, each
  with its rank (or none, for imbalance) and the steps it spans, and beside them the speed groups found
  (the slow ranks, the others, the slow group's factor, the steps the split held);
* ``gpu-util FILE``: ``gpu,ts,util[,job]``, GPU utilisation samples, sent to ``gpu.samples.raw`` as
  :class:`GpuSample` records; prints each GPU's (and job's) p25/p50/p95 and the under-use flags;
* ``sched PODS NODES``: the openb trace's columns, turned into scheduler events and node inventory by
  the openb adapter (:mod:`hpcinsight.agents.scheduler.trace`); prints the scheduling KPIs.

The pipeline is the one ``hpcinsight demo`` runs (started and drained by :mod:`hpcinsight.harness.supervisor`):
a local Kafka broker unless ``KAFKA_BOOTSTRAP`` names one, the Faust worker and the ClickHouse sink as processes.
Records are encoded with the catalog's codecs, as the agents encode theirs, and the results are
read back from ClickHouse with the query library and printed by :func:`hpcinsight.sinks.query.render`.

Time. Recorded timestamps are event time, and the worker's windows are event-time windows, so a day
of records replays in as long as the pipeline takes to process it. Samples and steps are shifted by
whole days so that the newest lies within the last day (time of day kept): the worker refuses
samples stamped in the future and the store drops raw samples older than its TTL (30 days). A GPU's
windows close when a later sample of it arrives, so after its last record each GPU gets one closing
sample without a reading. Scheduler events are the exception: the worker closes KPI intervals on its
own clock too (a live scheduler can be quiet), which would close the whole past of a trace at once;
so trace second 0 is stamped at a whole step boundary at least an hour ahead, the events go to one
partition in time order (the KPIs wait only 10 s for disorder), a stretch of at most 20 days at a
time (the sink stores what it consumed as one insert, and ClickHouse takes at most 100 daily
partitions in one), each stretch ending with the end of a job that was never submitted
(:data:`CLOCK_JOB`: no KPI changes, the worker's event time moves on), the last one a lateness after
the interval of the last event, which closes it. Every shift is printed.

A malformed row (wrong number of fields, a missing or non-numeric value, NaN, a negative duration, a
duplicate) is reported with its line number and skipped, or, with ``--strict``, refused before
anything starts.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

FORMATS = ("table", "csv", "json")
SECTIONS = {
    "gpu-util": ("gpus", "jobs", "flags"),
    "steps": ("flags", "groups"),
    "sched": ("allocation", "waits", "fragmentation", "low_priority", "teams", "users"),
}


@dataclass
class ReplayOptions:
    kind: str  # steps | gpu-util | sched
    files: list[str]
    fmt: str = "table"
    section: str | None = None
    strict: bool = False
    store: str | None = None  # chdb:// dir or http(s) URL; default: a fresh store of the replay's own
    timeout_s: float = 900.0
    # gpu-util
    job: str | None = None
    job_per_gpu: bool = False
    windows: str | None = None
    # sched
    limit: int | None = None
    kpi_interval: str | None = None
    step: str | None = None
    start: str | None = None


# --- command line --------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``hpcinsight replay KIND FILE...`` and its options."""
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")

    def common(p: argparse.ArgumentParser, sections: tuple[str, ...]) -> None:
        p.add_argument(
            "--format",
            choices=FORMATS,
            default="table",
            help="table (every section), or csv / json (one section, see --section; notes go to stderr)",
        )
        p.add_argument(
            "--section", choices=sections, default=None, help=f"print only this section (csv/json default: {sections[0]})"
        )
        p.add_argument("--strict", action="store_true", help="refuse a file with any malformed row instead of skipping it")
        p.add_argument(
            "--store",
            default=None,
            metavar="DIR|URL",
            help="ClickHouse store to fill (chdb:// folder or http(s) URL); default: a fresh embedded store "
            "in $HPCINSIGHT_DATA_DIR/replay/clickhouse, emptied at each replay",
        )
        p.add_argument("--timeout", type=float, default=900.0, help="give up when the pipeline has not finished by then (s)")

    p = kinds.add_parser(
        "steps", help="per-rank step times (job,rank,step,duration_s[,ts][,node]): straggler and imbalance flags"
    )
    p.add_argument("file", help="CSV file, or - for stdin")
    common(p, SECTIONS["steps"])

    p = kinds.add_parser("gpu-util", help="GPU utilisation samples (gpu,ts,util[,job]): per-GPU p25/p50/p95 and under-use flags")
    p.add_argument("file", help="CSV file, or - for stdin")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--job", default=None, help="the job every GPU is charged to (default: the file's name); a job column wins")
    who.add_argument("--job-per-gpu", action="store_true", help="charge each GPU to a job of its own, named after the GPU")
    p.add_argument(
        "--windows",
        default=None,
        metavar="SIZE/HOP,...",
        help="sliding windows (default: from the sampling interval; the worker's 1m/10s,5m/1m,1h/20m up to 5 s)",
    )
    common(p, SECTIONS["gpu-util"])

    p = kinds.add_parser("sched", help="an openb-style trace (pods and nodes CSV): scheduling KPIs")
    p.add_argument(
        "pods",
        help="pods CSV (openb columns: name, creation_time, scheduled_time, deletion_time, num_gpu, "
        "gpu_milli, gpu_spec, qos, pod_phase, cpu_milli, memory_mib; optional user, team)",
    )
    p.add_argument("nodes", help="nodes CSV (openb columns: sn, gpu, model, cpu_milli, memory_mib)")
    p.add_argument("--limit", type=int, default=None, help="replay only the first N pods")
    p.add_argument(
        "--kpi-interval",
        default=None,
        metavar="DURATION",
        help="KPI interval (default: 1m, 5m, ... 1d, the first that cuts the trace into at most 4,000)",
    )
    p.add_argument("--step", default=None, metavar="DURATION", help="one printed row per step (default: about 24 rows)")
    p.add_argument(
        "--start",
        default=None,
        metavar="TIME",
        help="stamp trace second 0 at this time (ISO 8601 or epoch; at least 10 minutes ahead)",
    )
    common(p, SECTIONS["sched"])


def options_from(args: argparse.Namespace) -> ReplayOptions:
    if getattr(args, "limit", None) is not None and args.limit < 1:
        raise ValueError("--limit must be at least 1")
    files = [args.pods, args.nodes] if args.kind == "sched" else [args.file]
    return ReplayOptions(
        kind=args.kind,
        files=files,
        fmt=args.format,
        section=args.section,
        strict=args.strict,
        store=args.store,
        timeout_s=args.timeout,
        job=getattr(args, "job", None),
        job_per_gpu=getattr(args, "job_per_gpu", False),
        windows=getattr(args, "windows", None),
        limit=getattr(args, "limit", None),
        kpi_interval=getattr(args, "kpi_interval", None),
        step=getattr(args, "step", None),
        start=getattr(args, "start", None),
    )
