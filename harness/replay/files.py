"""Reading and checking the files of ``hpcinsight replay``, and what they become: the records to
send, shifted in time, with the places of the GPUs and the worker's windows (see the package doc)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TextIO

import msgspec

from hpcinsight.schemas.events import GpuSample, NodeInventory, SchedulerEvent, StepMetric

SECOND_MS = 1000
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
SAMPLE_LATENESS_MS = 2_000  # the worker's sample lateness (its --lateness default)
GPUS_PER_NODE = 8
MESSAGE_RECORDS = 500  # records per Kafka message (a node's GPUs over a stretch of time)
SLICE_SAMPLES = 20_000  # records sent before waiting for the worker (keeps its partitions in step)
# The sink inserts what it consumed as one block, and ClickHouse takes at most 100 daily partitions in
# a block: a replay moves on in stretches of event time well below that.
STRETCH_MS = 20 * DAY_MS
CLOCK_JOB = "hpcinsight-replay-clock"


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


def read_table(
    path: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> tuple[list[tuple[int, dict[str, str]]], list[BadRow]]:
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
            raise ReplayInputError(
                f"{path}: the header has no column {', '.join(missing)} "
                f"(it has: {', '.join(names) or 'nothing'}; needed: {', '.join(required)})"
            )
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
            when = when.replace(tzinfo=dt.UTC)
        return round(when.timestamp() * 1000)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"ts {text!r} is not a time")
    return round(value * 1000) if value < 1e11 else round(value)


def iso_utc(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _window_text(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


def day_shift(newest_ms: int, now_ms: int) -> int:
    """Whole days that move ``newest_ms`` into the day before ``now_ms`` (time of day kept)."""
    return (now_ms - newest_ms) // DAY_MS * DAY_MS


def _parse_rows(
    rows: list[tuple[int, dict[str, str]]],
    parse: Callable[[int, dict[str, str]], Any],
    key: Callable[[Any], Any],
    what: Callable[[Any], str],
    bad: list[BadRow],
    limit: int | None = None,
) -> list[Any]:
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
        return GpuRow(
            line, _label(row["gpu"], "gpu"), parse_time_ms(row["ts"]), util, None if job is None else _label(job, "job")
        )

    out = _parse_rows(rows, parse, lambda r: (r.gpu, r.ts_ms), lambda r: f"a sample of GPU {r.gpu} at {iso_utc(r.ts_ms)}", bad)
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
        from hpcinsight.streams.app import parse_windows

        specs = parse_windows(windows)
        since = min(w.hop_ms for w in specs)  # the since-start view as often as the shortest hop
        checkpoint = max(60_000, 12 * since)
        base = math.gcd(since, checkpoint, *(w.hop_ms for w in specs))
        return cls(windows, since, checkpoint, base, max(w.size_ms for w in specs))

    def worker_args(self) -> list[str]:
        return [
            "--windows",
            self.windows,
            "--since-start-every",
            f"{self.since_start_every_ms}ms",
            "--checkpoint-every",
            f"{self.checkpoint_every_ms}ms",
        ]

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
        samples.append(
            GpuSample(
                node=node,
                gpu_index=index,
                gpu_uuid=r.gpu,
                ts=r.ts_ms + shift,
                gpu_util=r.util,
                job_id=r.job or (r.gpu if job_per_gpu else job),
            )
        )
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
    return [(k, group[i : i + size]) for k, group in sorted(by_key.items()) for i in range(0, len(group), size)]


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
        return StepRow(
            line,
            _label(row["job"], "job"),
            _whole(row["rank"], "rank", 2**32 - 2),
            _whole(row["step"], "step", 2**63 - 1),
            duration,
            ts,
            None if node is None else _label(node, "node"),
        )

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
        StepMetric(
            job_id=r.job,
            rank=r.rank,
            world_size=world[r.job],
            step=r.step,
            ts=ends[(r.job, r.rank, r.step)] + shift,
            duration_s=r.duration_s,
            node=r.node,
        )
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
    from hpcinsight.agents.scheduler.trace import parse_pod

    rows, bad = read_table(path, POD_COLUMNS, POD_OPTIONAL)
    parsed = _parse_rows(
        rows,
        lambda _line, row: (parse_pod(row), row.get("user") or None, row.get("team") or None),
        lambda p: p[0].name,
        lambda p: f"pod {p[0].name}",
        bad,
        limit,
    )
    people = {pod.name: (user and user[:256], team and team[:256]) for pod, user, team in parsed if user or team}
    return [pod for pod, _, _ in parsed], people, bad


def read_nodes(path: str) -> tuple[list[NodeInventory], list[BadRow]]:
    from hpcinsight.agents.scheduler.trace import parse_node

    rows, bad = read_table(path, NODE_COLUMNS, NODE_OPTIONAL)
    return _parse_rows(rows, lambda _line, row: parse_node(row, 0), lambda n: n.node, lambda n: f"node {n.node}", bad), bad


KPI_INTERVALS_S = (60, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
STEPS_S = (3600, 7200, 10800, 21600, 43200, 86400, 2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400)


def plan_sched(
    pods: list[Any],
    people: dict[str, tuple[str | None, str | None]],
    nodes: list[NodeInventory],
    now_ms: int,
    interval_s: float | None = None,
    step_s: float | None = None,
    start_ms: int | None = None,
) -> SchedReplay:
    """Scheduler events and inventory from the openb adapter (its lifecycle mapping and placement
    model), trace second ``t`` stamped ``t0 + t``. The KPI interval (default: the shortest of a few
    round lengths that cuts the trace into at most 4,000) and the step of the printed time series
    (about 24 rows) are chosen from the span; ``t0`` is the first multiple of the step at least an
    hour ahead (see the module doc), unless given."""
    from hpcinsight.agents.scheduler.trace import place_pods, pod_steps, to_event, wall_ms

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
        step_s = next(
            (s for s in STEPS_S if s >= span_s / 24 and s * 1000 % interval_ms == 0),
            max(interval_s, math.ceil(span_s / 24 / interval_s) * interval_s),
        )
    step_ms = max(interval_ms, round(step_s * 1000) // interval_ms * interval_ms)
    if start_ms is None:
        start_ms = -(-(now_ms + HOUR_MS) // step_ms) * step_ms
    elif start_ms < now_ms + 10 * 60_000:
        raise ReplayInputError(
            f"--start {iso_utc(start_ms)} is not ahead of now: the worker closes KPI intervals "
            "by its clock too, so a trace must be stamped at least 10 minutes ahead"
        )
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


def clock_event(ts: int) -> SchedulerEvent:
    """The end of a job that was never submitted: the KPIs change nothing for it (an end for a job
    never seen is only remembered), but it moves the worker's event time on to ``ts``."""
    return SchedulerEvent(ts=ts, source="replay", job_id=CLOCK_JOB, kind="deleted", name=CLOCK_JOB)
