"""``hpcinsight replay``: recorded data from files through the real pipeline, and what it found.

Three kinds of record, each a CSV file with a header (README: Replay your own data):

* ``steps FILE``: ``job,rank,step,duration_s[,ts][,node]``, per-rank training step times, sent to
  ``step.metrics.raw`` as :class:`StepMetric` records; prints the straggler and imbalance flags, each
  with its rank (or none, for imbalance) and the steps it spans;
* ``gpu-util FILE``: ``gpu,ts,util[,job]``, GPU utilisation samples, sent to ``gpu.samples.raw`` as
  :class:`GpuSample` records; prints each GPU's (and job's) p25/p50/p95 and the under-use flags;
* ``sched PODS NODES``: the openb trace's columns, turned into scheduler events and node inventory by
  the openb adapter (:mod:`agents.scheduler.trace`); prints the scheduling KPIs.

The pipeline is the one ``hpcinsight demo`` runs (and its helpers start and drain it): a local Kafka
broker unless ``KAFKA_BOOTSTRAP`` names one, the Faust worker and the ClickHouse sink as processes.
Records are encoded with the catalog's codecs, as the agents encode theirs, and the results are
read back from ClickHouse with the query library and printed by :func:`hpcinsight.query.render`.

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
import csv
import datetime as dt
import io
import logging
import math
import re
import shutil
import statistics
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import msgspec
from rich.console import Console

from hpcinsight.config import Settings
from hpcinsight.demo import Processes, child_env, start_broker, wait_drained
from hpcinsight.topics import lag
from schemas.catalog import (
    DEAD_LETTERS,
    GPU_SAMPLES,
    GPU_SAMPLES_RAW,
    GPU_SKETCHES,
    NODE_INVENTORY,
    SCHEDULER_EVENTS,
    SCHEDULING_KPIS,
    STEP_METRICS,
    STEP_METRICS_RAW,
    TOPICS,
    Topic,
)
from schemas.events import Event, GpuSample, NodeInventory, SchedulerEvent, StepMetric

SECOND_MS = 1000
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
KPI_LATENESS_MS = 10_000  # the worker's KPI lateness (streams.kpis.KpiConfig default)
SAMPLE_LATENESS_MS = 2_000  # the worker's sample lateness (its --lateness default)
GPUS_PER_NODE = 8
MESSAGE_RECORDS = 500  # records per Kafka message (a node's GPUs over a stretch of time)
SLICE_SAMPLES = 20_000  # records sent before waiting for the worker (keeps its partitions in step)
# The sink inserts what it consumed as one block, and ClickHouse takes at most 100 daily partitions in
# a block: a replay moves on in stretches of event time well below that.
STRETCH_MS = 20 * 86_400_000
CLOCK_JOB = "hpcinsight-replay-clock"
# GPU samples: the job stage waits JOB_WAIT_S (processing time) for a job's GPUs, and forgets a job
# silent for 2 h of event time; event time runs at most EVENT_MS_PER_S per second (2 h in 8 s), and
# the worker's partitions stay within two stretches of GPU_STRETCH_MS of each other.
JOB_WAIT_S = 2.0
EVENT_MS_PER_S = 15 * 60_000
GPU_STRETCH_MS = 5 * 60_000
RAW_TTL_DAYS = 30  # gpu_samples TTL (schemas.catalog)
MAX_REPORTED = 20  # bad rows listed in full; the rest are counted
FORMATS = ("table", "csv", "json")
SECTIONS = {
    "gpu-util": ("gpus", "jobs", "flags"),
    "steps": ("flags",),
    "sched": ("allocation", "waits", "fragmentation", "low_priority", "teams", "users"),
}


class ReplayInputError(ValueError):
    """A file the replay cannot use at all (missing columns, no usable row, a bad row with --strict)."""


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


# --- reading CSV files ---------------------------------------------------------------------------
def _open(path: str) -> TextIO:
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace", newline="")
    return open(path, encoding="utf-8", errors="replace", newline="")


def read_table(path: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> tuple[list[tuple[int, dict[str, str]]], list[BadRow]]:
    """The rows of a CSV file with a header, as (line number, {column: text}) for the columns named in
    ``required`` and ``optional`` (case-insensitive; others ignored), and the rows that have the wrong
    number of fields. Blank lines are skipped. A header without a required column refuses the file."""
    rows: list[tuple[int, dict[str, str]]] = []
    bad: list[BadRow] = []
    with _open(path) as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
        except csv.Error as err:
            raise ReplayInputError(f"{path}: cannot read the header: {err}") from None
        if header is None:
            raise ReplayInputError(f"{path}: empty file; the first line must name the columns ({', '.join(required)})")
        names = [h.strip().lstrip("\ufeff").strip().lower() for h in header]
        missing = [c for c in required if c not in names]
        if missing:
            raise ReplayInputError(f"{path}: the header has no column {', '.join(missing)} "
                                   f"(it has: {', '.join(names) or 'nothing'}; needed: {', '.join(required)})")
        wanted = {c: names.index(c) for c in (*required, *optional) if c in names}
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                bad.append(BadRow(reader.line_num, f"unreadable CSV: {err}"))
                continue
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(names):
                bad.append(BadRow(reader.line_num, f"{len(row)} fields, the header names {len(names)}"))
                continue
            rows.append((reader.line_num, {c: row[i].strip() for c, i in wanted.items()}))
    return rows, bad


def _number(text: str, name: str) -> float:
    if not text:
        raise ValueError(f"no {name}")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} is {text!r}, not a finite number")
    return value


def _whole(text: str, name: str, high: int) -> int:
    if not text:
        raise ValueError(f"no {name}")
    try:
        value = int(text, 10)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not a whole number") from None
    if not 0 <= value <= high:
        raise ValueError(f"{name} {value} is outside 0..{high}")
    return value


def _label(text: str, name: str) -> str:
    if not text:
        raise ValueError(f"no {name}")
    if len(text) > 256:
        raise ValueError(f"{name} is longer than 256 characters")
    return text


def parse_time_ms(text: str) -> int:
    """Epoch seconds (below 1e11) or milliseconds, or an ISO 8601 date-time (UTC unless it says)."""
    if not text:
        raise ValueError("no ts")
    try:
        value = float(text)
    except ValueError:
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"ts {text!r} is neither epoch seconds/milliseconds nor an ISO 8601 time") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        return round(when.timestamp() * 1000)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"ts {text!r} is not a time")
    return round(value * 1000) if value < 1e11 else round(value)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(ms: float) -> str:
    s = round(ms / 1000)
    if s % 86400 == 0 and s:
        return f"{s // 86400} d"
    if s >= 86400:
        return f"{s / 86400:.1f} d"
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min" if s >= 60 else f"{s} s"


def _window_text(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


def duration_ms(text: str) -> int:
    """The worker's durations (``250ms``, ``90s``, ``5m``, ``1h``) and whole or decimal days (``7d``)."""
    from streams.app import parse_duration_ms

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*d\s*", text)
    return round(float(m.group(1)) * DAY_MS) if m else parse_duration_ms(text)


def day_shift(newest_ms: int, now_ms: int) -> int:
    """Whole days that move ``newest_ms`` into the day before ``now_ms`` (time of day kept)."""
    return (now_ms - newest_ms) // DAY_MS * DAY_MS


def _parse_rows(rows: list[tuple[int, dict[str, str]]], parse: Callable[[int, dict[str, str]], Any], key: Callable[[Any], Any],
                what: Callable[[Any], str], bad: list[BadRow], limit: int | None = None) -> list[Any]:
    """Each row parsed (one that raises ``ValueError`` or ``TypeError`` is a bad row), a second row of
    the same ``key`` a bad row too (the tables keep one row per key: the stream must see the same);
    with ``limit``, only the first ``limit`` good ones."""
    out: list[Any] = []
    seen: dict[Any, int] = {}
    for line, row in rows:
        if limit is not None and len(out) >= limit:
            break
        try:
            item = parse(line, row)
        except (ValueError, TypeError) as err:
            bad.append(BadRow(line, str(err)))
            continue
        first = seen.setdefault(key(item), line)
        if first != line:
            bad.append(BadRow(line, f"{what(item)} again (line {first})"))
            continue
        out.append(item)
    bad.sort(key=lambda b: b.line)
    return out


# --- gpu-util ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GpuRow:
    line: int
    gpu: str
    ts_ms: int
    util: float
    job: str | None


def read_gpu_util(path: str) -> tuple[list[GpuRow], list[BadRow]]:
    rows, bad = read_table(path, ("gpu", "ts", "util"), ("job",))

    def parse(line: int, row: dict[str, str]) -> GpuRow:
        util = _number(row["util"], "util")
        if not 0 <= util <= 100:
            raise ValueError(f"util {row['util']} is outside 0..100 (percent)")
        job = row.get("job") or None
        return GpuRow(line, _label(row["gpu"], "gpu"), parse_time_ms(row["ts"]), util, None if job is None else _label(job, "job"))

    out = _parse_rows(rows, parse, lambda r: (r.gpu, r.ts_ms), lambda r: f"a sample of GPU {r.gpu} at {_iso(r.ts_ms)}", bad)
    return out, bad


_NODE_GPU = re.compile(r"(?P<node>[^/\s]{1,200})/gpu(?P<index>0|[1-9][0-9]{0,2})")


def place_gpus(ids: Iterable[str]) -> dict[str, tuple[str, int]]:
    """Each GPU id's (node, gpu index), deterministically. An id written ``NODE/gpuN`` (N < 256) keeps
    that place; the others, in sorted order, take the free places of nodes ``replay-000``,
    ``replay-001``, ... eight GPUs each (the 9th id in order is ``replay-001`` GPU 0)."""
    places: dict[str, tuple[str, int]] = {}
    taken: set[tuple[str, int]] = set()
    rest = []
    for gpu in sorted(set(ids)):
        m = _NODE_GPU.fullmatch(gpu)
        if m and int(m["index"]) < 256 and (m["node"], int(m["index"])) not in taken:
            places[gpu] = (m["node"], int(m["index"]))
            taken.add(places[gpu])
        else:
            rest.append(gpu)
    slot = 0
    for gpu in rest:
        while (place := (f"replay-{slot // GPUS_PER_NODE:03d}", slot % GPUS_PER_NODE)) in taken:
            slot += 1
        places[gpu] = place
        taken.add(place)
        slot += 1
    return places


NICE_S = (60, 120, 300, 600, 900, 1200, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def sampling_interval_ms(rows: list[GpuRow]) -> int:
    """The median time between a GPU's consecutive samples (1 s when no GPU has two)."""
    by_gpu: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        by_gpu[r.gpu].append(r.ts_ms)
    gaps = [b - a for ts in by_gpu.values() for a, b in zip(sorted(ts), sorted(ts)[1:]) if b > a]
    return int(statistics.median(gaps)) if gaps else SECOND_MS


def auto_windows(interval_ms: int) -> str:
    """Sliding windows for samples ``interval_ms`` apart: the worker's defaults up to 5 s; beyond, a
    short window of at least 10 samples sliding by half of it, and one of at least an hour (and six
    short windows) sliding by a third."""
    if interval_ms <= 5 * SECOND_MS:
        return "1m/10s,5m/1m,1h/20m"
    first = next((s for s in NICE_S if s * SECOND_MS >= 10 * interval_ms), NICE_S[-1])
    second = next((s for s in NICE_S if s >= max(6 * first, 3600)), 6 * first)
    return f"{_window_text(first)}/{_window_text(first // 2)},{_window_text(second)}/{_window_text(second // 3)}"


@dataclass(frozen=True)
class WindowPlan:
    windows: str
    since_start_every_ms: int
    checkpoint_every_ms: int
    base_ms: int
    max_size_ms: int

    @classmethod
    def of(cls, windows: str) -> WindowPlan:
        from streams.app import parse_windows

        specs = parse_windows(windows)
        since = min(w.hop_ms for w in specs)  # the since-start view as often as the shortest hop
        checkpoint = max(60_000, 12 * since)
        base = math.gcd(since, checkpoint, *(w.hop_ms for w in specs))
        return cls(windows, since, checkpoint, base, max(w.size_ms for w in specs))

    def worker_args(self) -> list[str]:
        return ["--windows", self.windows, "--since-start-every", f"{self.since_start_every_ms}ms",
                "--checkpoint-every", f"{self.checkpoint_every_ms}ms"]

    def closing_ms(self, last_ms: int) -> int:
        """When a GPU whose last sample is at ``last_ms`` gets its closing sample: a lateness past the
        first since-start instant at or after the end of the last sample's base pane, so every pane and
        a since-start view of everything close; never so late that the series would start over."""
        pane_end = last_ms - last_ms % self.base_ms + self.base_ms
        every = self.since_start_every_ms
        end = -(-pane_end // every) * every
        return min(end + SAMPLE_LATENESS_MS, last_ms + self.max_size_ms)


@dataclass
class GpuReplay:
    """What a gpu-util file becomes: samples to send (shifted), the places and jobs of its GPUs."""

    samples: list[GpuSample]
    places: dict[str, tuple[str, int]]
    jobs: dict[str, str]  # gpu id -> the job it is charged to (its last row's)
    plan: WindowPlan
    interval_ms: int
    shift_ms: int
    first_ms: int
    last_ms: int


def plan_gpu_util(rows: list[GpuRow], job: str, job_per_gpu: bool, windows: str | None, now_ms: int) -> GpuReplay:
    if not rows:
        raise ReplayInputError("no usable row")
    interval = sampling_interval_ms(rows)
    plan = WindowPlan.of(windows or auto_windows(interval))
    places = place_gpus(r.gpu for r in rows)
    rows = sorted(rows, key=lambda r: (r.ts_ms, r.gpu))
    last_of: dict[str, int] = {}
    jobs: dict[str, str] = {}
    for r in rows:
        last_of[r.gpu] = r.ts_ms
        jobs[r.gpu] = r.job or (r.gpu if job_per_gpu else job)
    newest = max(plan.closing_ms(t) for t in last_of.values())
    shift = day_shift(newest, now_ms)
    samples = []
    for r in rows:
        node, index = places[r.gpu]
        samples.append(GpuSample(node=node, gpu_index=index, gpu_uuid=r.gpu, ts=r.ts_ms + shift, gpu_util=r.util,
                                 job_id=r.job or (r.gpu if job_per_gpu else job)))
    for gpu, last in sorted(last_of.items()):  # one sample without a reading closes the GPU's windows
        node, index = places[gpu]
        samples.append(GpuSample(node=node, gpu_index=index, gpu_uuid=gpu, ts=plan.closing_ms(last) + shift, job_id=jobs[gpu]))
    return GpuReplay(samples, places, jobs, plan, interval, shift, rows[0].ts_ms, rows[-1].ts_ms)


def time_slices(records: list[Any], per_slice: int = SLICE_SAMPLES, max_span_ms: int = STRETCH_MS) -> list[list[Any]]:
    """``records`` (anything with ``ts``) in time order (ties in the order given), cut into consecutive
    stretches of about ``per_slice`` records and at most ``max_span_ms``, never inside one instant."""
    slices: list[list[Any]] = [[]]
    for r in sorted(records, key=lambda r: r.ts):
        last = slices[-1]
        if last and r.ts != last[-1].ts and (len(last) >= per_slice or r.ts - last[0].ts >= max_span_ms):
            slices.append([])
        slices[-1].append(r)
    return [s for s in slices if s]


def keyed_messages(records: list[Any], key: str, size: int = MESSAGE_RECORDS) -> list[tuple[str, list[Any]]]:
    """Records as messages keyed by their ``key`` field (node for samples, job for steps: as agents and
    the step recorder send them), in the order given, at most ``size`` records each."""
    by_key: dict[str, list[Any]] = defaultdict(list)
    for r in records:
        by_key[getattr(r, key)].append(r)
    return [(k, group[i:i + size]) for k, group in sorted(by_key.items()) for i in range(0, len(group), size)]


# --- steps ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepRow:
    line: int
    job: str
    rank: int
    step: int
    duration_s: float
    ts_ms: int | None
    node: str | None


def read_steps(path: str) -> tuple[list[StepRow], list[BadRow], bool]:
    """The rows, the bad rows, and whether the file has a ``ts`` column."""
    rows, bad = read_table(path, ("job", "rank", "step", "duration_s"), ("ts", "node"))
    has_ts = bool(rows) and "ts" in rows[0][1]

    def parse(line: int, row: dict[str, str]) -> StepRow:
        duration = _number(row["duration_s"], "duration_s")
        if duration < 0:
            raise ValueError(f"duration_s {row['duration_s']} is negative")
        ts = parse_time_ms(row["ts"]) if has_ts else None
        node = row.get("node") or None
        return StepRow(line, _label(row["job"], "job"), _whole(row["rank"], "rank", 2**32 - 2),
                       _whole(row["step"], "step", 2**63 - 1), duration, ts, None if node is None else _label(node, "node"))

    out = _parse_rows(rows, parse, lambda r: (r.job, r.rank, r.step), lambda r: f"job {r.job} rank {r.rank} step {r.step}", bad)
    return out, bad, has_ts


@dataclass
class StepReplay:
    metrics: list[StepMetric]
    world: dict[str, int]
    shift_ms: int  # added to the file's times (without a ts column: to times counted from 0)
    generated_ts: bool
    first_ms: int
    last_ms: int


def plan_steps(rows: list[StepRow], has_ts: bool, now_ms: int) -> StepReplay:
    """Step metrics: world size = the job's highest rank + 1; without a ``ts`` column a rank's step
    ends at the sum of its durations so far, every job starting at the same instant, placed so that
    the last step ends now; with one, times are shifted by whole days (see :func:`day_shift`)."""
    if not rows:
        raise ReplayInputError("no usable row")
    world: dict[str, int] = {}
    for r in rows:
        world[r.job] = max(world.get(r.job, 0), r.rank + 1)
    ends: dict[tuple[str, int, int], int] = {}
    if has_ts:
        for r in rows:
            assert r.ts_ms is not None
            ends[(r.job, r.rank, r.step)] = r.ts_ms
    else:
        elapsed: dict[tuple[str, int], float] = defaultdict(float)
        for r in sorted(rows, key=lambda r: (r.job, r.rank, r.step)):
            elapsed[(r.job, r.rank)] += r.duration_s
            ends[(r.job, r.rank, r.step)] = round(elapsed[(r.job, r.rank)] * 1000)
    newest = max(ends.values())
    shift = day_shift(newest, now_ms) if has_ts else now_ms - newest
    metrics = [
        StepMetric(job_id=r.job, rank=r.rank, world_size=world[r.job], step=r.step, ts=ends[(r.job, r.rank, r.step)] + shift,
                   duration_s=r.duration_s, node=r.node)
        for r in sorted(rows, key=lambda r: (r.job, r.step, r.rank))  # a step is judged once its ranks are in
    ]
    return StepReplay(metrics, world, shift, not has_ts, min(m.ts for m in metrics), max(m.ts for m in metrics))


# --- sched ---------------------------------------------------------------------------------------
POD_COLUMNS = ("name", "creation_time", "scheduled_time", "deletion_time", "num_gpu")
POD_OPTIONAL = ("cpu_milli", "memory_mib", "gpu_milli", "gpu_spec", "qos", "pod_phase", "user", "team")
NODE_COLUMNS = ("sn", "gpu")
NODE_OPTIONAL = ("cpu_milli", "memory_mib", "model")


@dataclass
class SchedReplay:
    inventory: list[NodeInventory]
    events: list[SchedulerEvent]
    pods: int
    placed: int
    unplaced: int
    people: bool  # whether any pod names a user or a team
    t0_ms: int
    interval_ms: int
    step_ms: int

    @property
    def last_ms(self) -> int:
        return max([self.t0_ms, *(e.ts for e in self.events)])


def read_pods(path: str, limit: int | None = None) -> tuple[list[Any], dict[str, tuple[str | None, str | None]], list[BadRow]]:
    """The pods (``TracePod``, the openb adapter's own parser) in file order, their user and team
    (optional columns), and the bad rows. With ``limit``, only the first ``limit`` good pods."""
    from agents.scheduler.trace import parse_pod

    rows, bad = read_table(path, POD_COLUMNS, POD_OPTIONAL)
    parsed = _parse_rows(rows, lambda _line, row: (parse_pod(row), row.get("user") or None, row.get("team") or None),
                         lambda p: p[0].name, lambda p: f"pod {p[0].name}", bad, limit)
    people = {pod.name: (user and user[:256], team and team[:256]) for pod, user, team in parsed if user or team}
    return [pod for pod, _, _ in parsed], people, bad


def read_nodes(path: str) -> tuple[list[NodeInventory], list[BadRow]]:
    from agents.scheduler.trace import parse_node

    rows, bad = read_table(path, NODE_COLUMNS, NODE_OPTIONAL)
    return _parse_rows(rows, lambda _line, row: parse_node(row, 0), lambda n: n.node, lambda n: f"node {n.node}", bad), bad


KPI_INTERVALS_S = (60, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
STEPS_S = (3600, 7200, 10800, 21600, 43200, 86400, 2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400)


def plan_sched(pods: list[Any], people: dict[str, tuple[str | None, str | None]], nodes: list[NodeInventory], now_ms: int,
               interval_s: float | None = None, step_s: float | None = None, start_ms: int | None = None) -> SchedReplay:
    """Scheduler events and inventory from the openb adapter (its lifecycle mapping and placement
    model), trace second ``t`` stamped ``t0 + t``. The KPI interval (default: the shortest of a few
    round lengths that cuts the trace into at most 4,000) and the step of the printed time series
    (about 24 rows) are chosen from the span; ``t0`` is the first multiple of the step at least an
    hour ahead (see the module doc), unless given."""
    from agents.scheduler.trace import pod_steps, place_pods, to_event, wall_ms

    if not pods:
        raise ReplayInputError("no usable pod")
    if not nodes:
        raise ReplayInputError("no usable node")
    steps = pod_steps(pods)
    span_s = max(s.t_s for s in steps) - min(0.0, min(s.t_s for s in steps))
    if interval_s is None:
        interval_s = next((i for i in KPI_INTERVALS_S if i >= span_s / 4000), KPI_INTERVALS_S[-1])
    interval_ms = round(interval_s * 1000)
    if step_s is None:
        step_s = next((s for s in STEPS_S if s >= span_s / 24 and s * 1000 % interval_ms == 0),
                      max(interval_s, math.ceil(span_s / 24 / interval_s) * interval_s))
    step_ms = max(interval_ms, round(step_s * 1000) // interval_ms * interval_ms)
    if start_ms is None:
        start_ms = -(-(now_ms + HOUR_MS) // step_ms) * step_ms
    elif start_ms < now_ms + 10 * 60_000:
        raise ReplayInputError(f"--start {_iso(start_ms)} is not ahead of now: the worker closes KPI intervals "
                               "by its clock too, so a trace must be stamped at least 10 minutes ahead")
    placements, unplaced = place_pods(steps, nodes)
    events = []
    for step in steps:
        event = to_event(step, wall_ms(step.t_s, start_ms, 1.0), placements.get(step.seq))
        user, team = people.get(step.pod.name, (None, None))
        if user or team:
            event = replace_event(event, user=user, team=team)
        events.append(event)
    inventory = [replace_event(n, ts=start_ms) for n in nodes]
    return SchedReplay(inventory, events, len(pods), len(placements), len(unplaced), bool(people), start_ms, interval_ms, step_ms)


def replace_event(event: Any, **changes: Any) -> Any:
    return msgspec.structs.replace(event, **changes)


# --- sending -------------------------------------------------------------------------------------
class Sender:
    """Produces encoded records as the agents do (idempotent, acks=all, zstd, the Java partitioner)."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Producer

        self._prefix = settings.kafka.topic_prefix
        kafka_log = logging.getLogger("hpcinsight.replay.kafka")
        if not kafka_log.isEnabledFor(logging.INFO):  # librdkafka's transient warnings (a broker starting) only with -v
            kafka_log.setLevel(logging.ERROR)
        self._producer = Producer({**settings.kafka.client_config(), "enable.idempotence": True, "acks": "all",
                                   "partitioner": "murmur2_random", "compression.type": "zstd", "linger.ms": 20},
                                  logger=kafka_log)
        self.failed: list[str] = []
        self.sent: dict[str, int] = defaultdict(int)  # messages per topic
        self.delivered: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))  # per topic, per partition

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failed.append(f"{msg.topic()}: {err}")
        else:
            self.delivered[msg.topic()][msg.partition()] += 1

    def send(self, topic: Topic, key: str, records: list[Event], partition: int | None = None) -> None:
        value = topic.codec.encode(records)
        kwargs = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(topic.full_name(self._prefix), value, key.encode(), on_delivery=self._on_delivery, **kwargs)
                break
            except BufferError:
                self._producer.poll(0.1)
        self.sent[topic.name] += 1
        self._producer.poll(0)

    def delivered_to(self, topic: Topic) -> dict[int, int]:
        """Messages acknowledged so far in each partition of ``topic``."""
        return dict(self.delivered[topic.full_name(self._prefix)])

    def flush(self, timeout: float = 120.0) -> None:
        left = self._producer.flush(timeout)
        if left or self.failed:
            raise RuntimeError(f"Kafka did not take {left} messages; failures: {self.failed[:5]}")

    def close(self) -> None:
        """Let go of the broker before it stops (a producer left alive keeps reconnecting)."""
        self._producer.flush(10)
        del self._producer


# --- the run -------------------------------------------------------------------------------------
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


@dataclass
class Report:
    """What the replay says besides the tables: on stdout for a table, on stderr for csv and json."""

    fmt: str
    lines: list[str] = field(default_factory=list)

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if self.fmt == "table":
            print(line, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def bad_rows(self, path: str, bad: list[BadRow]) -> None:
        if not bad:
            return
        self(f"{path}: skipped {len(bad)} malformed row{'s' if len(bad) > 1 else ''}:")
        for b in bad[:MAX_REPORTED]:
            self(f"  {b}")
        if len(bad) > MAX_REPORTED:
            self(f"  ... and {len(bad) - MAX_REPORTED} more")


def _refuse_bad(path: str, bad: list[BadRow]) -> None:
    shown = "\n".join(f"  {b}" for b in bad[:MAX_REPORTED])
    more = f"\n  ... and {len(bad) - MAX_REPORTED} more" if len(bad) > MAX_REPORTED else ""
    raise ReplayInputError(f"{path}: {len(bad)} malformed row{'s' if len(bad) > 1 else ''} (--strict):\n{shown}{more}")


def replay_settings(settings: Settings, options: ReplayOptions, run_id: str) -> Settings:
    """The replay's own topic prefix (one per run: no earlier state, offsets or KPI rows are taken
    for this run's), data folder (emptied) and, unless ``--store`` names one, embedded store."""
    data_dir = settings.data_dir / "replay"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    store = options.store
    if store is None:
        url = f"chdb://{data_dir / 'clickhouse'}"
    elif "://" in store:
        url = store
    else:
        url = f"chdb://{Path(store).resolve()}"
    clickhouse = replace(settings.clickhouse, url=url)
    clickhouse.validate()
    kafka = replace(settings.kafka, topic_prefix=f"{settings.kafka.topic_prefix}replay-{run_id}.")
    return replace(settings, kafka=kafka, clickhouse=clickhouse, data_dir=data_dir)


def run_replay(settings: Settings, options: ReplayOptions) -> int:
    if options.fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}")
    sections = SECTIONS[options.kind]
    if options.section is not None and options.section not in sections:
        raise ValueError(f"replay {options.kind}: --section is one of {', '.join(sections)}")
    report = Report(options.fmt)
    now_ms = int(time.time() * 1000)
    plan = _plan(options, report, now_ms)
    run_id = uuid.uuid4().hex[:8]
    started = time.monotonic()
    console = Console(stderr=True)
    with ExitStack() as stack:
        own_broker = not settings.kafka.bootstrap
        settings = start_broker(stack, replay_settings(settings, options, run_id), Console(stderr=True, quiet=options.fmt != "table"))
        if not own_broker:
            stack.callback(_delete_topics, settings)
        env = {**child_env(settings), "CLICKHOUSE_URL": settings.clickhouse.url}
        procs = Processes(env, settings.data_dir / "logs")
        stack.callback(procs.stop_all)
        sender = Sender(settings)
        stack.callback(sender.close)
        deadline = time.monotonic() + options.timeout_s
        with console.status("replaying ...") if options.fmt == "table" else ExitStack():
            if isinstance(plan, GpuReplay):
                _run_gpu_util(plan, procs, settings, sender, deadline)
            elif isinstance(plan, StepReplay):
                _run_steps(plan, procs, settings, sender, deadline)
            else:
                _run_sched(plan, procs, settings, sender, deadline)
            procs.stop("sink")
            procs.stop("worker")
        from sinks.clickhouse import connect

        client = connect(settings.clickhouse)
        try:
            _print(plan, client, options, report)
        finally:
            client.close()
    report(f"replayed in {time.monotonic() - started:.0f} s; store: {settings.clickhouse.display_url} "
           f"(query it: CLICKHOUSE_URL={settings.clickhouse.display_url} hpcinsight query --list)")
    return 0


def _plan(options: ReplayOptions, report: Report, now_ms: int) -> GpuReplay | StepReplay | SchedReplay:
    """Read and check the files (nothing is started yet), and say what will be replayed."""
    if options.kind == "gpu-util":
        path = options.files[0]
        rows, bad = read_gpu_util(path)
        if bad and options.strict:
            _refuse_bad(path, bad)
        report.bad_rows(path, bad)
        job = options.job or ("stdin" if path == "-" else Path(path).stem)
        g = plan_gpu_util(rows, job, options.job_per_gpu, options.windows, now_ms)
        report(f"{path}: {len(rows)} samples of {len(g.places)} GPUs, {len(set(g.jobs.values()))} job(s), recorded "
               f"{_iso(g.first_ms)} .. {_iso(g.last_ms)} ({_duration(g.last_ms - g.first_ms)}), a sample every "
               f"{g.interval_ms / 1000:g} s (median)")
        report(f"times shifted by {g.shift_ms // DAY_MS:+d} days so that the data ends within the last day "
               f"(time of day kept); windows {g.plan.windows}, since-start view every {g.plan.since_start_every_ms // 1000} s; "
               f"each GPU gets one closing sample without a reading")
        if g.last_ms - g.first_ms > RAW_TTL_DAYS * DAY_MS:
            report(f"note: the recording spans more than {RAW_TTL_DAYS} days, the raw samples' TTL: the store drops the "
                   "older raw samples (quantiles and flags, computed in the stream, are kept a year)")
        return g
    if options.kind == "steps":
        path = options.files[0]
        rows, bad, has_ts = read_steps(path)
        if bad and options.strict:
            _refuse_bad(path, bad)
        report.bad_rows(path, bad)
        s = plan_steps(rows, has_ts, now_ms)
        jobs = ", ".join(f"{job} ({n} ranks)" for job, n in sorted(s.world.items()))
        report(f"{path}: {len(rows)} steps of {len(s.world)} job(s): {jobs}")
        if s.generated_ts:
            report(f"no ts column: each rank's steps end at the sum of its durations so far, every job starting at "
                   f"{_iso(s.shift_ms)}, so that the last step ends now")
        else:
            report(f"times shifted by {s.shift_ms // DAY_MS:+d} days so that the data ends within the last day (time of day kept)")
        return s
    pods_path, nodes_path = options.files
    pods, people, bad_pods = read_pods(pods_path, options.limit)
    nodes, bad_nodes = read_nodes(nodes_path)
    for path, bad in ((pods_path, bad_pods), (nodes_path, bad_nodes)):
        if bad and options.strict:
            _refuse_bad(path, bad)
        report.bad_rows(path, bad)
    sc = plan_sched(
        pods, people, nodes, now_ms,
        interval_s=None if options.kpi_interval is None else duration_ms(options.kpi_interval) / 1000,
        step_s=None if options.step is None else duration_ms(options.step) / 1000,
        start_ms=None if options.start is None else parse_time_ms(options.start),
    )
    gpus = sum(n.gpu_count for n in sc.inventory)
    report(f"{pods_path}: {sc.pods} pods ({len(sc.events)} scheduler events); {nodes_path}: {len(sc.inventory)} nodes, "
           f"{gpus} GPUs; placement model: {sc.placed} GPU pods placed, {sc.unplaced} found no room")
    report(f"trace second 0 stamped {_iso(sc.t0_ms)} (ahead of now: the worker also closes KPI intervals by its "
           f"clock), the trace spans {_duration(sc.last_ms - sc.t0_ms)}; KPI interval {sc.interval_ms // 1000} s, "
           f"rows every {_duration(sc.step_ms)}; trace_time = time since trace second 0")
    return sc


def _delete_topics(settings: Settings) -> None:
    """This run's topics, on a broker the replay did not start (its prefix is its own)."""
    from confluent_kafka.admin import AdminClient

    try:
        admin = AdminClient(settings.kafka.client_config())
        for future in admin.delete_topics([t.full_name(settings.kafka.topic_prefix) for t in TOPICS], operation_timeout=30).values():
            try:
                future.result()
            except Exception:  # noqa: BLE001 - a topic already gone is fine
                pass
    except Exception as err:  # noqa: BLE001 - cleaning up must not hide the result
        print(f"hpcinsight replay: could not delete the run's topics ({err})", file=sys.stderr)


def _wait(what: str, condition: Callable[[], bool], procs: Processes, deadline: float, every_s: float = 0.5) -> None:
    while not condition():
        procs.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not done before the timeout; see the logs in {procs.log_dir}")
        time.sleep(every_s)


def _worker_lag(settings: Settings, topics: list[Topic]) -> int:
    prefix = settings.kafka.topic_prefix
    return lag(settings.kafka.client_config(), f"{prefix}worker", [t.full_name(prefix) for t in topics])


def _start_pipeline(procs: Processes, worker_args: list[str]) -> None:
    procs.start("worker", "worker", *worker_args)
    procs.start("sink", "sink", "--batch-age", "0.5")


def _job_stage_settled(settings: Settings) -> Callable[[], bool]:
    """Whether, for every job, every job window its GPUs' stored windows call for is stored too (read
    through the sink, which owns the store)."""
    from hpcinsight.query import execute
    from sinks.clickhouse import connect

    ends = ("SELECT job_id, window, max(window_end) FROM {} FINAL WHERE metric = 'gpu_util' AND job_id IS NOT NULL "
            "GROUP BY job_id, window ORDER BY job_id, window")

    def settled() -> bool:
        client = connect(settings.clickhouse)
        try:
            gpu = execute(client, ends.format("gpu_quantiles"), {})[1]
            return bool(gpu) and gpu == execute(client, ends.format("job_quantiles"), {})[1]
        finally:
            client.close()

    return settled


class Handled:
    """How many messages of each partition of a raw topic the worker has handled: it answers each with
    one message, in the same partition (same key, same partitioner), on the topic it validates into;
    a refused one goes to the dead letters instead, which a replay never expects."""

    def __init__(self, settings: Settings, output: Topic) -> None:
        from confluent_kafka import Consumer

        self._consumer = Consumer({**settings.kafka.client_config(), "group.id": f"{settings.kafka.topic_prefix}replay-progress"})
        self._output = output.full_name(settings.kafka.topic_prefix)
        self._dead = DEAD_LETTERS.full_name(settings.kafka.topic_prefix)

    def _high(self, topic: str, partition: int) -> int:
        from confluent_kafka import TopicPartition

        from hpcinsight.topics import _watermarks  # retries while a new partition's leader is still being elected

        return _watermarks(self._consumer, TopicPartition(topic, partition), 10.0)[1]

    def reached(self, wanted: dict[int, int]) -> bool:
        if all(self._high(self._output, p) >= n for p, n in wanted.items()):
            return True
        if dead := self._high(self._dead, 0):
            raise RuntimeError(f"the worker refused {dead} replayed message(s): see `hpcinsight query dead_letters`")
        return False

    def close(self) -> None:
        self._consumer.close()


def _send_paced(stretches: list[list[Any]], topic: Topic, output: Topic, key: str, procs: Processes, settings: Settings,
                sender: Sender, deadline: float, event_ms_per_s: float | None = None) -> None:
    """Stretch by stretch, at most two in the worker's hands: its partitions stay within two stretches
    of each other, and what the sink gets at once spans a few at most. With ``event_ms_per_s``, event
    time moves on no faster than that per second."""
    handled = Handled(settings, output)
    marks: list[dict[int, int]] = []
    started, first_ts = time.monotonic(), stretches[0][0].ts if stretches else 0
    try:
        for stretch in stretches:
            if event_ms_per_s:
                due = started + (stretch[0].ts - first_ts) / event_ms_per_s
                _wait("the replay's pace", lambda: time.monotonic() >= due, procs, deadline, every_s=0.05)
            if len(marks) >= 2:
                wanted = marks[-2]
                _wait("the worker", lambda: handled.reached(wanted), procs, deadline, every_s=0.05)
            for k, records in keyed_messages(stretch, key):
                sender.send(topic, k, records)
            sender.flush()
            marks.append(sender.delivered_to(topic))
    finally:
        handled.close()


def _run_gpu_util(g: GpuReplay, procs: Processes, settings: Settings, sender: Sender, deadline: float) -> None:
    # The job stage waits for a job's GPUs in processing time (--job-wait; 3x that for a job whose GPUs
    # all stopped) and forgets a job silent for 2 h of event time: event time must not run 2 h in that
    # long, or a job's first windows (and a short job's only ones) are forgotten before they go out.
    _start_pipeline(procs, [*g.plan.worker_args(), "--job-wait", f"{JOB_WAIT_S:g}s"])
    _send_paced(time_slices(g.samples, max_span_ms=GPU_STRETCH_MS), GPU_SAMPLES_RAW, GPU_SAMPLES, "node", procs, settings,
                sender, deadline, event_ms_per_s=EVENT_MS_PER_S)
    wait_drained(procs, settings, [GPU_SAMPLES_RAW, GPU_SKETCHES], JOB_WAIT_S, timeout_s=max(60.0, deadline - time.monotonic()),
                 settled=_job_stage_settled(settings))


def _run_steps(s: StepReplay, procs: Processes, settings: Settings, sender: Sender, deadline: float) -> None:
    _start_pipeline(procs, [])
    # in time order, as the ranks report them; a step is judged once all its ranks are in
    _send_paced(time_slices(s.metrics), STEP_METRICS_RAW, STEP_METRICS, "job_id", procs, settings, sender, deadline)
    wait_drained(procs, settings, [STEP_METRICS_RAW], 0.0, timeout_s=max(60.0, deadline - time.monotonic()))


class KpiWatch:
    """The latest KPI boundary the worker has published (read from its output topic)."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self._consumer = Consumer({**settings.kafka.client_config(), "group.id": f"{settings.kafka.topic_prefix}replay-watch",
                                   "enable.auto.commit": False})
        self._consumer.assign([TopicPartition(SCHEDULING_KPIS.full_name(settings.kafka.topic_prefix), p, OFFSET_BEGINNING)
                               for p in range(SCHEDULING_KPIS.partitions)])
        self.latest = 0

    def reached(self, boundary_ms: int) -> bool:
        for msg in self._consumer.consume(num_messages=1000, timeout=0.2):
            if not msg.error():
                self.latest = max([self.latest, *(r.ts for r in SCHEDULING_KPIS.codec.decode(msg.value()))])
        return self.latest >= boundary_ms

    def close(self) -> None:
        self._consumer.close()


def clock_event(ts: int) -> SchedulerEvent:
    """The end of a job that was never submitted: the KPIs change nothing for it (an end for a job
    never seen is only remembered), but it moves the worker's event time on to ``ts``."""
    return SchedulerEvent(ts=ts, source="replay", job_id=CLOCK_JOB, kind="deleted", name=CLOCK_JOB)


def _run_sched(sc: SchedReplay, procs: Processes, settings: Settings, sender: Sender, deadline: float) -> None:
    interval = sc.interval_ms
    # 1. the inventory before the worker starts: it reads the scheduler topics whole at start-up
    for n in sc.inventory:
        sender.send(NODE_INVENTORY, n.node, [n])
    sender.flush()
    _start_pipeline(procs, ["--kpi-interval", f"{interval}ms"])
    _wait("the worker's start", lambda: _worker_lag(settings, [NODE_INVENTORY]) == 0, procs, deadline)
    # 2. the events in time order on one partition (the KPIs wait 10 s for disorder), a stretch at a
    # time: each ends with a clock event at a KPI boundary, and the next goes once the worker has
    # closed the intervals before it; the last clock event closes the interval of the last event.
    first_boundary = (sc.t0_ms // interval + 1) * interval
    end = (sc.last_ms // interval + 1) * interval
    stretch = max(interval, STRETCH_MS // interval * interval)
    cuts = [*range(sc.t0_ms - sc.t0_ms % interval + stretch, end, stretch), end + KPI_LATENESS_MS]
    watch = KpiWatch(settings)
    try:
        i = 0
        for cut in cuts:
            while i < len(sc.events) and sc.events[i].ts < cut:
                sender.send(SCHEDULER_EVENTS, sc.events[i].job_id, [sc.events[i]], partition=0)
                i += 1
            sender.send(SCHEDULER_EVENTS, CLOCK_JOB, [clock_event(cut)], partition=0)
            sender.flush()
            closes = (cut - KPI_LATENESS_MS) // interval * interval
            if closes >= first_boundary:
                _wait("the worker's KPIs", lambda: watch.reached(closes), procs, deadline, every_s=0)
        assert i == len(sc.events)
    finally:
        watch.close()
    wait_drained(procs, settings, [SCHEDULER_EVENTS, NODE_INVENTORY], 0.0, timeout_s=max(60.0, deadline - time.monotonic()))


# --- printing ------------------------------------------------------------------------------------
def _since_s(first_ms: int) -> str:
    return str(int((time.time() * 1000 - first_ms) / 1000) + DAY_MS // 1000)


def _show(title: str, name: str, columns: list[str], rows: list[tuple[Any, ...]], options: ReplayOptions, default: str) -> None:
    from hpcinsight.query import render

    if options.fmt == "table":
        if options.section in (None, name):
            render(columns, rows, "table", title=title)
    elif (options.section or default) == name:
        render(columns, rows, options.fmt)


def _print(plan: GpuReplay | StepReplay | SchedReplay, client: Any, options: ReplayOptions, report: Report) -> None:
    if isinstance(plan, GpuReplay):
        _print_gpu_util(plan, client, options, report)
    elif isinstance(plan, StepReplay):
        _print_steps(plan, client, options, report)
    else:
        _print_sched(plan, client, options, report)


def _print_gpu_util(g: GpuReplay, client: Any, options: ReplayOptions, report: Report) -> None:
    from hpcinsight.query import execute

    since = _since_s(g.first_ms + g.shift_ms)
    by_place = {place: gpu for gpu, place in g.places.items()}
    columns, rows = execute(client, "gpu_quantiles", {"since_s": since})
    node, gpu = columns.index("node"), columns.index("gpu")
    mine = [(by_place[(r[node], r[gpu])], *r) for r in rows if (r[node], r[gpu]) in by_place]
    _show("GPU utilisation per GPU since its job started (%), and its flags", "gpus", ["gpu_id", *columns], mine, options, "gpus")
    jobs = set(g.jobs.values())
    columns, rows = execute(client, "job_quantiles", {"since_s": since})
    _show("GPU utilisation per job since it started (%), merged GPU sketches", "jobs", columns,
          [r for r in rows if r[0] in jobs], options, "gpus")
    columns, rows = execute(client, "anomalies", {"since_s": since})
    kind = columns.index("kind")
    flags = [r for r in rows if r[kind] in ("gpu_underused", "job_underused")]
    if options.fmt == "table" and options.section is None:  # the GPUs' own flags are counted in the first table
        _show("Under-use flags of jobs", "flags", columns, [r for r in flags if r[kind] == "job_underused"], options, "gpus")
    else:
        _show("Under-use flags", "flags", columns, flags, options, "gpus")
    summarised = {r[0] for r in execute(client, "SELECT DISTINCT job_id FROM job_quantiles WHERE metric = 'gpu_util'", {})[1]}
    if jobs - summarised:
        report(f"warning: {len(jobs - summarised)} job(s) have no job quantiles (the job stage let them go): "
               f"{', '.join(sorted(jobs - summarised)[:5])}{' ...' if len(jobs - summarised) > 5 else ''}")
    flagged = {r[0] for r in mine if r[-1] and "underused" in r[-1]}
    incidents = execute(client, "SELECT job_id, countIf(state = 'resolved') = 0 FROM anomalies FINAL "
                                "WHERE kind = 'job_underused' GROUP BY job_id, id", {})[1]
    flagged_jobs = {job for job, _ in incidents} & jobs
    still = {job for job, open_ in incidents if open_} & jobs
    report(f"GPUs with an under-use flag (gpu_underused): {len(flagged)} of {len(g.places)}; jobs flagged under-used "
           f"(job_underused): {len(flagged_jobs)} of {len(jobs)}, {len(still)} of them still at the end")


def _print_steps(s: StepReplay, client: Any, options: ReplayOptions, report: Report) -> None:
    from hpcinsight.query import execute

    columns, rows = execute(client, "step_flags", {"since_s": _since_s(s.first_ms)})
    rows = [r for r in rows if r[0] in s.world]
    _show("Straggler and imbalance flags (steps: the windows in which each held)", "flags", columns, rows, options, "flags")
    stored = execute(client, "SELECT count() FROM step_metrics", {})[1][0][0]
    report(f"stored {stored} step rows; flags: {len(rows)} ({sum(1 for r in rows if r[1] == 'straggler')} straggler, "
           f"{sum(1 for r in rows if r[1] == 'imbalance')} imbalance)")


def _trace_time(columns: list[str], rows: list[tuple[Any, ...]], t0_ms: int) -> tuple[list[str], list[tuple[Any, ...]]]:
    """A ``trace_time`` column (``12d 06:00``, time since trace second 0) after the ``t`` column."""
    if "t" not in columns:
        return columns, rows
    i = columns.index("t")
    out = []
    for r in rows:
        t = r[i] if r[i].tzinfo else r[i].replace(tzinfo=dt.timezone.utc)
        off = round(t.timestamp() - t0_ms / 1000)
        out.append((*r[:i + 1], f"{off // 86400}d {off % 86400 // 3600:02d}:{off % 3600 // 60:02d}", *r[i + 1:]))
    return [*columns[:i + 1], "trace_time", *columns[i + 1:]], out


def _print_sched(sc: SchedReplay, client: Any, options: ReplayOptions, report: Report) -> None:
    from hpcinsight.query import execute

    step = {"step_s": str(sc.step_ms // 1000)}
    for title, name, query, params in (
        ("Allocation rate of the cluster (allocated / total GPUs, mean of the KPI snapshots per row)", "allocation",
         "allocation_rate", step),
        ("Queue wait by resource type (s)", "waits", "wait_time_by_resource_type", {}),
        ("Fragmentation (free GPUs stranded on partly used nodes)", "fragmentation", "fragmentation", step),
        ("Low-priority (best-effort) share of the allocated GPUs", "low_priority", "low_priority_usage", step),
    ):
        columns, rows = _trace_time(*execute(client, query, params), sc.t0_ms)
        _show(title, name, columns, rows, options, "allocation")
    if sc.people:
        for title, name, query in (("GPU-hours by team", "teams", "team_usage"), ("GPU-hours by user", "users", "user_gpu_hours")):
            columns, rows = execute(client, query, {})
            _show(title, name, columns, rows, options, "allocation")
    else:
        report("no user or team column in the pods file: GPU-hours by team and user are not shown")
    stored = execute(client, "SELECT count() FROM scheduling_kpis", {})[1][0][0]
    report(f"stored {stored} KPI rows over {(sc.last_ms - sc.t0_ms) // sc.interval_ms + 1} intervals")


# --- command line --------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``hpcinsight replay KIND FILE...`` and its options."""
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")

    def common(p: argparse.ArgumentParser, sections: tuple[str, ...]) -> None:
        p.add_argument("--format", choices=FORMATS, default="table",
                       help="table (every section), or csv / json (one section, see --section; notes go to stderr)")
        p.add_argument("--section", choices=sections, default=None,
                       help=f"print only this section (csv/json default: {sections[0]})")
        p.add_argument("--strict", action="store_true", help="refuse a file with any malformed row instead of skipping it")
        p.add_argument("--store", default=None, metavar="DIR|URL",
                       help="ClickHouse store to fill (chdb:// folder or http(s) URL); default: a fresh embedded store "
                            "in $HPCINSIGHT_DATA_DIR/replay/clickhouse, emptied at each replay")
        p.add_argument("--timeout", type=float, default=900.0, help="give up when the pipeline has not finished by then (s)")

    p = kinds.add_parser("steps", help="per-rank step times (job,rank,step,duration_s[,ts][,node]): straggler and imbalance flags")
    p.add_argument("file", help="CSV file, or - for stdin")
    common(p, SECTIONS["steps"])

    p = kinds.add_parser("gpu-util", help="GPU utilisation samples (gpu,ts,util[,job]): per-GPU p25/p50/p95 and under-use flags")
    p.add_argument("file", help="CSV file, or - for stdin")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--job", default=None, help="the job every GPU is charged to (default: the file's name); a job column wins")
    who.add_argument("--job-per-gpu", action="store_true", help="charge each GPU to a job of its own, named after the GPU")
    p.add_argument("--windows", default=None, metavar="SIZE/HOP,...",
                   help="sliding windows (default: from the sampling interval; the worker's 1m/10s,5m/1m,1h/20m up to 5 s)")
    common(p, SECTIONS["gpu-util"])

    p = kinds.add_parser("sched", help="an openb-style trace (pods and nodes CSV): scheduling KPIs")
    p.add_argument("pods", help="pods CSV (openb columns: name, creation_time, scheduled_time, deletion_time, num_gpu, "
                                "gpu_milli, gpu_spec, qos, pod_phase, cpu_milli, memory_mib; optional user, team)")
    p.add_argument("nodes", help="nodes CSV (openb columns: sn, gpu, model, cpu_milli, memory_mib)")
    p.add_argument("--limit", type=int, default=None, help="replay only the first N pods")
    p.add_argument("--kpi-interval", default=None, metavar="DURATION",
                   help="KPI interval (default: 1m, 5m, ... 1d, the first that cuts the trace into at most 4,000)")
    p.add_argument("--step", default=None, metavar="DURATION", help="one printed row per step (default: about 24 rows)")
    p.add_argument("--start", default=None, metavar="TIME",
                   help="stamp trace second 0 at this time (ISO 8601 or epoch; at least 10 minutes ahead)")
    common(p, SECTIONS["sched"])


def options_from(args: argparse.Namespace) -> ReplayOptions:
    if getattr(args, "limit", None) is not None and args.limit < 1:
        raise ValueError("--limit must be at least 1")
    files = [args.pods, args.nodes] if args.kind == "sched" else [args.file]
    return ReplayOptions(
        kind=args.kind, files=files, fmt=args.format, section=args.section, strict=args.strict, store=args.store,
        timeout_s=args.timeout, job=getattr(args, "job", None), job_per_gpu=getattr(args, "job_per_gpu", False),
        windows=getattr(args, "windows", None), limit=getattr(args, "limit", None),
        kpi_interval=getattr(args, "kpi_interval", None), step=getattr(args, "step", None), start=getattr(args, "start", None),
    )

