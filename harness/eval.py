"""``hpcinsight eval``: every detector scored on labelled fault scenarios, through the real pipeline.

The scenarios (:mod:`hpcinsight.harness.scenario`; the library in ``harness/scenarios``) run *together*
on one pipeline, as one cluster of many jobs: a Kafka broker (local unless ``KAFKA_BOOTSTRAP``
names one; fresh topics under an ``eval-<time>.`` prefix either way), the Faust worker with its
default windows and the configured detectors, the ClickHouse sink into a fresh embedded store
under ``--out``, and one sim agent running every scenario's collectors on one sim clock. Each
scenario names its nodes and jobs after itself, so no detector compares one scenario's GPUs with
another's. The sim clock starts in the past (a compressed run must never stamp samples ahead of
the wall clock) on a whole hour (so windows fall on the same sim seconds in every run) and runs
``--speed`` times faster than real time without ever skipping a tick (``--catch-up``: on a busy
machine the run takes longer, the data stay the same); it is held while the worker is more than
15 s of sim time behind, so the streams the worker joins (IB samples or GPU windows with steps) stay
in step as they would on a live cluster.

When the agent is done and the worker and the sink have caught up, the anomalies are read from
ClickHouse and scored against the labels (:mod:`hpcinsight.harness.scoring`); ``results.md``,
``results.csv`` (per detector, overall and per scenario), ``flags.csv`` and ``labels.csv`` (every
flag and label with its verdict) and one PNG per scenario (the faulty metric against its peers,
the fault's span, the flags) are written to ``--out``, and the per-detector table is printed.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import signal
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from hpcinsight.core.settings import Settings
from hpcinsight.harness.scenario import DETECTORS, Scenario, TraceMissing, library, load, trace_place
from hpcinsight.harness.scoring import DetectorScore, Flag, Score, score
from hpcinsight.schemas.catalog import GPU_SAMPLES_RAW, GPU_SKETCHES, GPU_XID, IB_SAMPLES_RAW, STEP_METRICS_RAW

#: how long (processing time) the job stage waits for a job's late GPUs: at 5x a partition 10 s behind
#: the others is 50 s of sim time behind, which the worker's default (10 s) would not wait for, so
#: job windows would be merged from part of a job's GPUs (a load artefact of the compressed clock)
JOB_WAIT_S = 60.0
#: the agent is paused while the worker is more than this many seconds of sim time behind it...
PAUSE_BEHIND_S = 15.0
#: ...until it is back within this
RESUME_BEHIND_S = 5.0
#: the targets of the issue: every detector precision and recall at least this...
TARGET_PR = 0.95
#: ...a median detection delay of at most this many sampling windows (after the configured warm-up, see
#: :func:`delay_allowance_s`)...
TARGET_DELAY_WINDOWS = 3.0
#: ...and at most this many incidents per true condition
TARGET_CHATTER = 1.2


def delay_allowance_s(detector: str, settings: dict[str, Any] | None = None) -> float:
    """What a detector waits for by configuration before it may judge: ``job_underused`` its warm-up and
    ``for_s`` (a job is only under-used once it has been for a while); the delay target counts after it."""
    if detector != "job_underused":
        return 0.0
    from hpcinsight.streams.detectors.job_underused import JobUnderusedConfig

    cfg = JobUnderusedConfig()
    mine = (settings or {}).get(detector, {})
    return float(mine.get("warmup_s", cfg.warmup_s)) + float(mine.get("for_s", cfg.for_s))


@dataclass(frozen=True)
class EvalOptions:
    scenarios: list[str] = field(default_factory=list)  # names or files; empty: the whole library
    out_dir: Path = Path("eval-results")
    speed: float = 5.0
    windows: str = "1m/10s,5m/1m,1h/20m"  # the worker's default
    plots: bool = True
    rescore: bool = False  # score the run stored in out_dir again (after a change of labels) without running it
    drain_timeout_s: float = 300.0
    job_wait_s: float = JOB_WAIT_S


@dataclass
class Run:
    """What one evaluation run produced: its scenarios, sim start, flags and the scores."""

    scenarios: list[Scenario]
    t0_ms: int
    window_s: float
    flags: list[Flag]
    result: Score
    wall_s: float = 0.0
    speed: float = 1.0
    detector_settings: dict[str, Any] = field(default_factory=dict)
    max_backlog_s: float = 0.0  # how far behind the agent the worker fell at most, in sim seconds
    job_wait_s: float = JOB_WAIT_S
    paused_s: float = 0.0  # how long the agent was held for the worker to catch up


def sampling_window_s(windows: str) -> float:
    """The shortest sliding window the worker emits: the detectors' sampling window, in seconds."""
    from hpcinsight.streams.app import parse_windows

    return min(w.size_ms for w in parse_windows(windows)) / 1000


def eval_settings(data_dir: Path, prefix: str) -> Settings:
    """The configured settings (broker, detectors) with an embedded store in ``data_dir`` and topics under ``prefix``."""
    import os

    from hpcinsight.core.settings import load

    data_dir = data_dir.resolve()
    return load(
        {
            **os.environ,
            "HPCINSIGHT_DATA_DIR": str(data_dir),
            "HPCINSIGHT_TOPIC_PREFIX": prefix,
            "CLICKHOUSE_URL": f"chdb://{data_dir / 'clickhouse'}",
        }
    )


def describe_library() -> list[str]:
    """One line per scenario of the library (``hpcinsight eval --list``): its length and cluster, jobs
    and faults, or for a recorded trace its GPUs and labels; a trace whose data is not here says so."""
    lines = []
    for name in library():
        try:
            sc = load(name)
        except TraceMissing as err:
            lines.append(f"{name:22} (its recorded data is not here: {err})")
            continue
        if not sc.simulated:
            lines.append(
                f"{name:22} {sc.duration_s:5g} s  recorded trace: {len(sc.trace.series)} GPUs, "
                f"{sum(lab.required for lab in sc.labels)} required labels from the data"
            )
            continue
        lines.append(
            f"{name:22} {sc.duration_s:5g} s  {sc.nodes:2} nodes  {len(sc.jobs)} jobs  "
            f"{'; '.join(f.describe() for f in sc.faults) or 'no fault (false-positive trap)'}"
        )
    return lines


def run_eval(options: EvalOptions) -> int:
    import sys

    console = Console(width=None if sys.stdout.isatty() else 180)  # the table, whole, also in a log
    saved: dict[str, Any] = {}
    if options.rescore:
        try:
            saved = json.loads((options.out_dir / "run.json").read_text())
        except OSError:
            raise ValueError(f"--rescore: no run in {options.out_dir} (run.json is missing)") from None
    names = options.scenarios or saved.get("scenarios") or library()
    scenarios = []
    for n in names:
        try:
            scenarios.append(load(n))
        except TraceMissing as err:
            if options.scenarios:
                raise
            console.print(f"  skipped (its recorded data is not here): {err}")
    if len({s.name for s in scenarios}) != len(scenarios):
        raise ValueError("two scenarios share a name; each runs on nodes and jobs named after it")
    if options.speed <= 0:
        raise ValueError("--speed must be positive")
    out = options.out_dir
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "data"
    window_s = sampling_window_s(options.windows)
    if options.rescore:  # score the stored run again (labels changed): no pipeline
        settings = eval_settings(data_dir, "unused.")
        run = _scored(
            scenarios,
            saved["t0_ms"],
            window_s,
            settings,
            saved["wall_s"],
            saved["speed"],
            saved["max_backlog_s"],
            saved["job_wait_s"],
            saved.get("paused_s", 0.0),
            saved.get("trace_starts", {}),
        )
    else:
        if data_dir.exists():
            shutil.rmtree(data_dir)  # a fresh store: the results are this run's alone
        settings = eval_settings(data_dir, f"eval-{int(time.time())}.")
        duration = max((s.duration_s for s in scenarios if s.simulated), default=60.0)
        started = time.monotonic()
        console.print(f"evaluating {len(scenarios)} scenario(s): {', '.join(s.name for s in scenarios)}")
        console.print(
            f"  {sum(s.nodes for s in scenarios)} nodes, {sum(s.nodes * s.gpus_per_node for s in scenarios)} GPUs, "
            f"{duration:g} s of sim time at {options.speed:g}x"
        )
        with ExitStack() as stack:
            backlog: list[float] = []
            pauses: list[float] = []
            starts: dict[str, int] = {}
            t0_ms = run_pipeline(stack, settings, scenarios, options, console, backlog, pauses, starts)
        run = _scored(
            scenarios,
            t0_ms,
            window_s,
            settings,
            time.monotonic() - started,
            options.speed,
            max(backlog, default=0.0),
            options.job_wait_s,
            sum(pauses),
            starts,
        )
        (out / "run.json").write_text(
            json.dumps(
                {
                    "t0_ms": run.t0_ms,
                    "scenarios": [s.path for s in scenarios],
                    "wall_s": run.wall_s,
                    "speed": run.speed,
                    "max_backlog_s": run.max_backlog_s,
                    "job_wait_s": run.job_wait_s,
                    "paused_s": run.paused_s,
                    "windows": options.windows,
                    "trace_starts": starts,
                },
                indent=1,
            )
        )
    write_results(run, out)
    if options.plots:
        with console.status("plotting ..."):
            plot_all(run, settings, out)
    print_table(console, run)
    console.print(
        f"wall time {run.wall_s:.0f} s; results in {out}/results.md, results.csv, flags.csv, labels.csv"
        + (", and one PNG per scenario" if options.plots else "")
    )
    return 0


def _scored(
    scenarios: list[Scenario],
    t0_ms: int,
    window_s: float,
    settings: Settings,
    wall_s: float,
    speed: float,
    max_backlog_s: float,
    job_wait_s: float,
    paused_s: float,
    starts: dict[str, int] | None = None,
) -> Run:
    flags = read_flags(settings, scenarios, t0_ms, starts)
    result = score([label for s in scenarios for label in s.labels], flags, window_s)
    return Run(
        scenarios,
        t0_ms,
        window_s,
        flags,
        result,
        wall_s,
        speed,
        {k: dict(v) for k, v in (settings.detectors or {}).items()},
        max_backlog_s,
        job_wait_s,
        paused_s,
    )


def run_pipeline(
    stack: ExitStack,
    settings: Settings,
    scenarios: list[Scenario],
    options: EvalOptions,
    console: Console,
    backlog: list[float],
    pauses: list[float],
    starts: dict[str, int] | None = None,
) -> int:
    """Run the scenarios through broker, worker, sink and one sim agent; return the sim clock's start (epoch ms).
    ``backlog`` gets how far behind the agent the worker was, in seconds of sim time, every second, and
    ``pauses`` how long the agent was held each time the worker fell too far behind."""
    from hpcinsight.core.kafka import lag
    from hpcinsight.harness.supervisor import Processes, child_env, start_broker, wait_drained

    settings = start_broker(stack, settings, console)
    procs = Processes(child_env(settings), settings.data_dir / "logs")
    stack.callback(procs.stop_all)
    sims = [s for s in scenarios if s.simulated]
    duration = max((s.duration_s for s in sims), default=60.0)
    # the whole run lies in the past (the worker refuses samples stamped far ahead of its clock), and
    # starts on a whole hour, so every sliding window (hops of 10 s, 1 min, 20 min) falls on the same
    # sim seconds in every run: the same scenario gives the same windows, hence the same scores
    t0_ms = (int(time.time() * 1000) - int((duration + 120) * 1000)) // 3_600_000 * 3_600_000
    procs.start("worker", "worker", "--windows", options.windows, "--job-wait", f"{options.job_wait_s:g}s")
    procs.start("sink", "sink")
    agent_args = [
        "agent",
        "--backend",
        "sim",
        "--speed",
        f"{options.speed:g}",
        "--catch-up",
        "--start-ms",
        str(t0_ms),
        "--ticks",
        str(int(math.ceil(duration)) + 1),
        "--name",
        "eval",
    ]
    for s in sims:
        agent_args += ["--scenario", s.path]
    traces = [s for s in scenarios if not s.simulated]
    feeder = None
    starts = starts if starts is not None else {}
    if traces:  # recorded traces: replayed before the sim clock's start, paced, beside the sim
        import threading

        from hpcinsight.harness.replay.run import Sender

        sender = Sender(settings)
        stack.callback(sender.close)
        for s in traces:
            # two hours before the sim's start on a whole hour: their windows close before the sim's begin
            starts[s.name] = (t0_ms - int(s.duration_s * 1000) - 2 * 3_600_000) // 3_600_000 * 3_600_000
        feeder = threading.Thread(target=send_traces, args=(sender, traces, starts), name="traces", daemon=True)
        feeder.start()
    agent = procs.start("agent", *agent_args)
    began = time.monotonic()
    conf, prefix = settings.kafka.client_config(), settings.kafka.topic_prefix
    nodes = sum(s.nodes for s in scenarios)  # GPU and IB samples: one message per node a tick
    paused: list[float] = []  # when the agent was paused, if it is
    stack.callback(lambda: agent.poll() is None and paused and agent.send_signal(signal.SIGCONT))
    with console.status("") as status:
        while agent.poll() is None:
            procs.check()
            behind = max(lag(conf, f"{prefix}worker", [t.full_name(prefix)]) for t in (GPU_SAMPLES_RAW, IB_SAMPLES_RAW)) / nodes
            backlog.append(behind)
            # The detectors that join two streams (IB samples or GPU windows with the steps) judge one against
            # what they have seen of the other: a worker far behind reads the streams out of step, and its
            # verdicts change. Keep it close: pause the agent while the worker is behind, as a real cluster
            # never runs ahead of its own clock.
            if not paused and behind > PAUSE_BEHIND_S:
                agent.send_signal(signal.SIGSTOP)
                paused.append(time.monotonic())
            elif paused and behind < RESUME_BEHIND_S:
                agent.send_signal(signal.SIGCONT)
                pauses.append(time.monotonic() - paused.pop())
            status.update(
                f"simulating: {time.monotonic() - began:.0f} s of at least {duration / options.speed:.0f} s; the "
                f"worker is {behind:.0f} s of sim time behind{' (agent paused)' if paused else ''} (logs: {procs.log_dir})"
            )
            time.sleep(1.0)
    procs.check()
    if feeder is not None:
        with console.status("sending the rest of the recorded traces ..."):
            feeder.join()
    with console.status("waiting for the worker and the sink to catch up ..."):
        wait_drained(
            procs,
            settings,
            [GPU_SAMPLES_RAW, IB_SAMPLES_RAW, STEP_METRICS_RAW, GPU_XID, GPU_SKETCHES],
            options.job_wait_s,
            timeout_s=options.drain_timeout_s,
            settled=lambda: job_windows_settled(settings),
        )
        procs.stop("sink")
        procs.stop("worker")
    return t0_ms


#: event time a trace moves on per second of its replay: the job stage waits for a job's GPUs in processing
#: time and forgets a job silent for 2 h of event time; a trace's jobs report whole in each message
TRACE_EVENT_MS_PER_S = 10 * 60_000


def trace_samples(sc: Scenario, start_ms: int) -> list[Any]:
    """A trace scenario's GPU samples as recorded (one a minute per pod), from ``start_ms``, in time order,
    and one sample without a reading per GPU an hour and a half after its last, which closes its windows."""
    from hpcinsight.schemas.events import GpuSample

    out = []
    for pod, series in sc.trace.series.items():
        node, index, uuid, job = trace_place(sc, pod)
        out += [
            GpuSample(node=node, gpu_index=index, gpu_uuid=uuid, ts=start_ms + m * 60_000, gpu_util=round(v, 2), job_id=job)
            for m, v in enumerate(series)
        ]
        out.append(
            GpuSample(node=node, gpu_index=index, gpu_uuid=uuid, ts=start_ms + len(series) * 60_000 + 5_400_000, job_id=job)
        )
    return sorted(out, key=lambda s: (s.ts, s.node, s.gpu_index))


def send_traces(sender: Any, scenarios: list[Scenario], starts: dict[str, int]) -> None:
    """Send the traces' samples to the raw GPU topic, keyed by node like an agent's, ten minutes of event
    time a second."""
    from itertools import groupby

    samples = sorted((s for sc in scenarios for s in trace_samples(sc, starts[sc.name])), key=lambda s: s.ts)
    began, first = time.monotonic(), samples[0].ts if samples else 0
    for ts, at_once in groupby(samples, key=lambda s: s.ts):
        delay = began + (ts - first) / TRACE_EVENT_MS_PER_S - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        by_node: dict[str, list[Any]] = {}
        for s in at_once:
            by_node.setdefault(s.node, []).append(s)
        for node, records in by_node.items():
            sender.send(GPU_SAMPLES_RAW, node, records)
    sender.flush()


def _connect(settings: Settings) -> Any:
    from hpcinsight.sinks.clickhouse import connect

    return connect(settings.clickhouse)


def job_windows_settled(settings: Settings) -> bool:
    """Whether every job window the stored GPU windows call for is stored too (read through the sink)."""
    query = (
        "SELECT job_id, window, max(window_end) FROM {} WHERE metric = 'gpu_util' AND window != 'since_start' "
        "AND job_id IS NOT NULL GROUP BY job_id, window"
    )
    try:
        client = _connect(settings)
    except Exception:  # noqa: BLE001 - the store is not shared yet: not settled
        return False
    try:
        gpu = set(client.query(query.format("gpu_quantiles")).result_rows)
        return bool(gpu) and gpu == set(client.query(query.format("job_quantiles")).result_rows)
    finally:
        client.close()


def read_flags(settings: Settings, scenarios: list[Scenario], t0_ms: int, starts: dict[str, int] | None = None) -> list[Flag]:
    """Every incident stored in the anomalies table, as a :class:`Flag` of the scenario it is about."""
    client = _connect(settings)
    try:
        rows = client.query(
            "SELECT id, kind, subject, node, job_id, state, toUnixTimestamp64Milli(ts) AS ts FROM anomalies FINAL ORDER BY ts"
        ).result_rows
    finally:
        client.close()
    return flags_from_rows(rows, scenarios, t0_ms, starts)


def flags_from_rows(
    rows: list[tuple[Any, ...]], scenarios: list[Scenario], t0_ms: int, starts: dict[str, int] | None = None
) -> list[Flag]:
    """Incidents from anomaly rows ``(id, kind, subject, node, job_id, state, ts_ms)``: fired at their first
    firing row, resolved at their first resolved row."""
    fired: dict[str, tuple[str, str, str | None, str | None, int]] = {}
    resolved: dict[str, int] = {}
    for anomaly_id, kind, subject, node, job_id, state, ts in rows:
        if state == "firing" and (anomaly_id not in fired or ts < fired[anomaly_id][4]):
            fired[anomaly_id] = (kind, subject, node, job_id, ts)
        elif state == "resolved":
            resolved[anomaly_id] = min(ts, resolved.get(anomaly_id, ts))
    out = []
    for anomaly_id, (kind, subject, node, job_id, ts) in fired.items():
        owner = next((s.name for s in scenarios if s.owns(node, job_id)), None)
        end = resolved.get(anomaly_id)
        zero = (starts or {}).get(owner or "", t0_ms)  # a trace's own start; the sim clock's for the others
        out.append(Flag(anomaly_id, kind, subject, (ts - zero) / 1000, None if end is None else (end - zero) / 1000, owner))
    return sorted(out, key=lambda f: (f.fired_s, f.id))


# --- reporting --------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def meets_target(s: DetectorScore, window_s: float, settings: dict[str, Any] | None = None) -> bool | None:
    """Whether a detector meets every target; None where the scenarios gave it nothing to be judged on."""
    if not s.labels and not s.true_flags + s.false_flags:
        return None
    delay = s.median_delay_s
    chatter = s.chatter
    return (
        s.precision is not None
        and s.precision >= TARGET_PR
        and s.recall is not None
        and s.recall >= TARGET_PR
        and delay is not None
        and delay - delay_allowance_s(s.detector, settings) <= TARGET_DELAY_WINDOWS * window_s
        and chatter is not None
        and chatter <= TARGET_CHATTER
    )


def detector_rows(
    result: Score, window_s: float, scenario: str | None = None, settings: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """One row per detector (of every label and flag, or of one scenario's)."""
    if scenario is None:
        sub = result
    else:
        sub = Score(
            [f for f in result.flags if f.flag.scenario == scenario],
            [r for r in result.labels if r.label.scenario == scenario],
            window_s,
        )
    rows = []
    for d, s in sub.by_detector(DETECTORS if scenario is None else ()).items():
        delay = s.median_delay_s
        beyond = None if delay is None else max(0.0, delay - delay_allowance_s(d, settings))
        rows.append(
            {
                "scenario": scenario or "ALL",
                "detector": d,
                "labels": s.labels,
                "detected": s.detected,
                "flags": s.true_flags + s.false_flags,
                "true_flags": s.true_flags,
                "false_flags": s.false_flags,
                "refires": s.refires,
                "allowed_flags": s.allowed_flags,
                "precision": s.precision,
                "recall": s.recall,
                "f1": s.f1,
                "median_delay_s": delay,
                "median_delay_windows": None if beyond is None else beyond / window_s,
                "max_delay_s": max(s.delays_s) if s.delays_s else None,
                "chatter": s.chatter,
                "median_resolve_s": s.median_resolve_s,
                "unresolved": s.unresolved,
                "meets_target": meets_target(s, window_s, settings) if scenario is None else None,
            }
        )
    return rows


COLUMNS = (
    "detector",
    "labels",
    "detected",
    "flags",
    "false_flags",
    "refires",
    "precision",
    "recall",
    "f1",
    "chatter",
    "median_delay_s",
    "median_delay_windows",
    "median_resolve_s",
    "meets_target",
)


def markdown_table(rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> str:
    heads = {
        "false_flags": "false flags",
        "median_delay_s": "median delay (s)",
        "median_delay_windows": "(windows)",
        "median_resolve_s": "resolved after end (s)",
        "meets_target": "target met",
        "f1": "F1",
    }

    def cell(row: dict[str, Any], col: str) -> str:
        v = row[col]
        if col == "meets_target":
            return "-" if v is None else "yes" if v else "**no**"
        if col in ("precision", "recall", "f1", "chatter"):
            return _fmt(v)
        if col == "median_resolve_s":
            return _fmt(v, 0) + (f" ({row['unresolved']} open)" if row.get("unresolved") else "")
        if col == "median_delay_s":
            return _fmt(v, 0)
        if col == "median_delay_windows":
            return _fmt(v, 1)
        return str(v)

    lines = ["| " + " | ".join(heads.get(c, c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def shortfalls(run: Run) -> list[str]:
    """One line per detector that misses a target, and per missed label and false flag."""
    out = []
    for row in detector_rows(run.result, run.window_s, settings=run.detector_settings):
        if row["meets_target"] is not False:
            continue
        why = []
        if row["precision"] is None:
            why.append("no flag to score")
        elif row["precision"] < TARGET_PR:
            why.append(f"precision {row['precision']:.2f}")
        if row["recall"] is None:
            why.append("no label in these scenarios")
        elif row["recall"] < TARGET_PR:
            why.append(f"recall {row['recall']:.2f}")
        if row["median_delay_windows"] is not None and row["median_delay_windows"] > TARGET_DELAY_WINDOWS:
            why.append(f"median delay {row['median_delay_windows']:.1f} windows")
        if row["chatter"] is not None and row["chatter"] > TARGET_CHATTER:
            why.append(f"chatter {row['chatter']:.2f}")
        out.append(f"`{row['detector']}`: " + ", ".join(why))
    return out


def write_results(run: Run, out: Path) -> None:
    rows = detector_rows(run.result, run.window_s, settings=run.detector_settings)
    per_scenario = [r for s in run.scenarios for r in detector_rows(run.result, run.window_s, s.name)]
    fields = [
        "scenario",
        "detector",
        "labels",
        "detected",
        "flags",
        "true_flags",
        "false_flags",
        "refires",
        "allowed_flags",
        "precision",
        "recall",
        "f1",
        "median_delay_s",
        "median_delay_windows",
        "max_delay_s",
        "chatter",
        "median_resolve_s",
        "unresolved",
        "meets_target",
    ]
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows + per_scenario:
            w.writerow({k: ("" if v is None else round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    with open(out / "flags.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["scenario", "detector", "subject", "fired_s", "resolved_s", "verdict", "refire", "matches", "id"])
        for f in run.result.flags:
            w.writerow(
                [
                    f.flag.scenario or "",
                    f.flag.detector,
                    f.flag.subject,
                    f"{f.flag.fired_s:g}",
                    "" if f.flag.resolved_s is None else f"{f.flag.resolved_s:g}",
                    f.verdict,
                    int(f.refire),
                    "; ".join(label.fault for label in f.labels),
                    f.flag.id,
                ]
            )
    with open(out / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "scenario",
                "detector",
                "subject",
                "fault",
                "onset_s",
                "end_s",
                "grace_s",
                "detected",
                "delay_s",
                "delay_windows",
                "covered",
            ]
        )
        for r in run.result.labels:
            lab = r.label
            w.writerow(
                [
                    lab.scenario,
                    lab.detector,
                    lab.subject,
                    lab.fault,
                    f"{lab.onset_s:g}",
                    f"{lab.end_s:g}",
                    f"{lab.grace_s:g}",
                    int(r.detected),
                    "" if r.delay_s is None else f"{r.delay_s:g}",
                    "" if r.delay_s is None else f"{r.delay_s / run.window_s:.2f}",
                    int(r.covered),
                ]
            )
    lines = [
        "# hpcinsight eval",
        "",
        f"{len(run.scenarios)} scenarios, {sum(s.nodes * s.gpus_per_node for s in run.scenarios)} GPUs, run together "
        f"through Kafka, the Faust worker and the ClickHouse sink at {run.speed:g}x; sampling window "
        f"{run.window_s:g} s; wall time {run.wall_s:.0f} s, of which the agent was held {run.paused_s:.0f} s for the worker "
        f"to catch up (it fell at most {run.max_backlog_s:.0f} s of sim time behind); the job stage waited {run.job_wait_s:g} s "
        "of processing time for late GPUs.",
        "Detector settings: " + (", ".join(f"{k} {v}" for k, v in run.detector_settings.items()) or "the defaults") + ".",
        "",
        "## Per detector",
        "",
        markdown_table(rows),
        "",
        f"Targets: precision and recall >= {TARGET_PR}, chatter (true incidents per detected condition) <= {TARGET_CHATTER:g}, "
        f"median detection delay <= {TARGET_DELAY_WINDOWS:g} sampling windows (`job_underused`: after its configured "
        f'warm-up and `for_s`, {delay_allowance_s("job_underused", run.detector_settings):g} s). "resolved after end": '
        "median time from a fault's end to its incident's resolution (quiet times included).",
    ]
    short = shortfalls(run)
    if short:
        lines += ["", "Short of a target:", ""] + [f"- {s}" for s in short]
    missed = [r for r in run.result.labels if not r.detected]
    false = [f for f in run.result.flags if f.verdict == "false"]
    if missed:
        lines += ["", "## Missed labels", "", "| scenario | detector | subject | fault |", "|---|---|---|---|"]
        lines += [f"| {r.label.scenario} | {r.label.detector} | `{r.label.subject}` | {r.label.fault} |" for r in missed]
    if false:
        lines += [
            "",
            "## False flags",
            "",
            "| scenario | detector | subject | fired (s) | resolved (s) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {f.flag.scenario or '-'} | {f.flag.detector} | `{f.flag.subject}` | {f.flag.fired_s:g} | "
            f"{'-' if f.flag.resolved_s is None else f'{f.flag.resolved_s:g}'} |"
            for f in false
        ]
    lines += ["", "## Per scenario", ""]
    for s in run.scenarios:
        lines += [f"### {s.name}", "", s.description, "", "Faults: " + ("; ".join(f.describe() for f in s.faults) or "none"), ""]
        rows_s = detector_rows(run.result, run.window_s, s.name)
        lines += [markdown_table(rows_s, COLUMNS[:-1]) if rows_s else "No label, no flag.", "", f"![{s.name}]({s.name}.png)", ""]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def print_table(console: Console, run: Run) -> None:
    table = Table(title=f"Detectors on {len(run.scenarios)} labelled scenarios (sampling window {run.window_s:g} s)")
    heads = (
        "detector",
        "labels",
        "detected",
        "flags",
        "false",
        "refires",
        "precision",
        "recall",
        "F1",
        "chatter",
        "median delay s",
        "windows",
        "resolve s",
        "target",
    )
    for h in heads:
        table.add_column(h, justify="left" if h == "detector" else "right")
    for r in detector_rows(run.result, run.window_s, settings=run.detector_settings):
        table.add_row(
            r["detector"],
            str(r["labels"]),
            str(r["detected"]),
            str(r["flags"]),
            str(r["false_flags"]),
            str(r["refires"]),
            _fmt(r["precision"]),
            _fmt(r["recall"]),
            _fmt(r["f1"]),
            _fmt(r["chatter"]),
            _fmt(r["median_delay_s"], 0),
            _fmt(r["median_delay_windows"], 1),
            _fmt(r["median_resolve_s"], 0),
            "-" if r["meets_target"] is None else "[green]met[/]" if r["meets_target"] else "[red]no[/]",
        )
    console.print(table)
    for line in shortfalls(run):
        console.print(f"  short: {line.replace('`', '')}")


# --- plots --------------------------------------------------------------------------------------
_GPU_METRIC = {
    "thermal": "temperature_c",
    "power": "power_w",
    "clock": "sm_clock_mhz",
    "ecc": "ecc_uncorrected_volatile",
    "remap": "toUInt8(remapped_rows_pending)",
    "slow": "gpu_util",
    "idle": "gpu_util",
    "xid": "gpu_util",
}
_BUCKET_MS = 5000


def _median_step_series(client: Any, job: str, t0: int) -> tuple[list[float], list[float]]:
    """The job's median step time, step by step (what a slow rank is compared with)."""
    return _series(
        client,
        "SELECT max(toUnixTimestamp64Milli(ts)) AS t, median(duration_s) FROM step_metrics FINAL "
        "WHERE job_id = {j:String} GROUP BY step ORDER BY t",
        {"j": job},
        t0,
    )


def _series(client: Any, sql: str, params: dict[str, Any], t0_ms: int) -> tuple[list[float], list[float]]:
    rows = client.query(sql, parameters=params).result_rows
    return [(r[0] - t0_ms) / 1000 for r in rows], [float(r[1]) if r[1] is not None else math.nan for r in rows]


def _fault_series(client: Any, sc: Scenario, fault: Any, t0: int) -> tuple[str, list[tuple[str, list[float], list[float]]]]:
    """(y label, [(legend, x, y), ...]) of what shows a fault: the faulty thing against its peers."""
    bucket = f"intDiv(toUnixTimestamp64Milli(ts), {_BUCKET_MS}) * {_BUCKET_MS}"
    if fault.kind in _GPU_METRIC:
        metric = _GPU_METRIC[fault.kind]
        uuid = sc.gpu_uuid(fault.node, fault.gpu)
        own = _series(
            client,
            f"SELECT {bucket} AS t, avg({metric}) FROM gpu_samples WHERE gpu_uuid = {{u:String}} GROUP BY t ORDER BY t",
            {"u": uuid},
            t0,
        )
        peers = _series(
            client,
            f"SELECT {bucket} AS t, median({metric}) FROM gpu_samples WHERE startsWith(node, {{p:String}}) "
            "AND gpu_uuid != {u:String} AND job_id = (SELECT any(job_id) FROM gpu_samples WHERE gpu_uuid = {u:String} "
            "AND job_id IS NOT NULL) GROUP BY t ORDER BY t",
            {"u": uuid, "p": sc.node_prefix},
            t0,
        )
        return metric.replace("toUInt8(", "").rstrip(")"), [
            (f"node {fault.node} GPU {fault.gpu}", *own),
            ("job's other GPUs (median)", *peers),
        ]
    if fault.kind in ("ib_degrade", "ib_slow", "ib_flap"):
        node = sc.node_name(fault.node)
        job = next((j for j in sc.jobs if fault.node in j.nodes and j.runs(fault.onset_s)), None)
        peers_of = [sc.node_name(n) for n in (job.nodes if job else range(sc.nodes)) if n != fault.node]
        per_node = (
            f"SELECT t, n, sum(b) AS v FROM (SELECT {bucket} AS t, node AS n, avg(xmit_bytes_per_s + rcv_bytes_per_s) AS b "
            "FROM ib_samples WHERE startsWith(node, {p:String}) GROUP BY t, n, device, port) GROUP BY t, n"
        )
        own = _series(
            client, f"SELECT t, v / 1e9 FROM ({per_node}) WHERE n = {{n:String}} ORDER BY t", {"n": node, "p": sc.node_prefix}, t0
        )
        peers = _series(
            client,
            f"SELECT t, median(v) / 1e9 FROM ({per_node}) WHERE has({{peers:Array(String)}}, n) GROUP BY t ORDER BY t",
            {"peers": peers_of, "p": sc.node_prefix},
            t0,
        )
        return "IB GB/s (node)", [(node, *own), ("the job's other nodes (median)", *peers)]
    job = fault.job
    if fault.kind in ("straggler", "slow_node") and fault.rank is None:  # a slow node: its ranks' median against the job's
        nodes = [sc.node_name(fault.node)] if fault.node is not None else []
        own = _series(
            client,
            "SELECT max(toUnixTimestamp64Milli(ts)) AS t, median(duration_s) FROM step_metrics FINAL "
            "WHERE job_id = {j:String} AND has({n:Array(String)}, node) GROUP BY step ORDER BY t",
            {"j": job, "n": nodes},
            t0,
        )
        med = _median_step_series(client, job, t0)
        return "step time (s)", [(f"ranks on {', '.join(nodes)}", *own), ("median rank", *med)]
    if fault.kind == "straggler":
        own = _series(
            client,
            "SELECT toUnixTimestamp64Milli(ts), duration_s FROM step_metrics FINAL WHERE job_id = {j:String} "
            "AND rank = {r:UInt32} ORDER BY ts",
            {"j": job, "r": fault.rank},
            t0,
        )
        med = _median_step_series(client, job, t0)
        return "step time (s)", [(f"rank {fault.rank}", *own), ("median rank", *med)]
    if fault.kind == "imbalance":
        cov = _series(
            client,
            "SELECT max(toUnixTimestamp64Milli(ts)) AS t, stddevPop(duration_s) / avg(duration_s) FROM "
            "step_metrics FINAL WHERE job_id = {j:String} GROUP BY step ORDER BY t",
            {"j": job},
            t0,
        )
        return "step-time CoV across ranks", [(job, *cov)]
    util = _series(
        client,
        f"SELECT {bucket} AS t, avg(gpu_util) FROM gpu_samples WHERE job_id = {{j:String}} GROUP BY t ORDER BY t",
        {"j": job},
        t0,
    )
    return "GPU utilisation % (job mean)", [(job, *util)]


def plot_all(run: Run, settings: Settings, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    client = _connect(settings)
    try:
        for sc in run.scenarios:
            if not sc.simulated:
                continue  # a day of real data: its flags are in flags.csv
            panels: list[tuple[str, Any, list[tuple[str, list[float], list[float]]]]] = []
            for fault in sc.faults:
                ylabel, series = _fault_series(client, sc, fault, run.t0_ms)
                panels.append((fault.describe(), fault, [(ylabel, *s) for s in series]))
            if not sc.faults:  # a trap: every job's utilisation
                bucket = f"intDiv(toUnixTimestamp64Milli(ts), {_BUCKET_MS}) * {_BUCKET_MS}"
                series = []
                for job in sc.jobs:
                    x, y = _series(
                        client,
                        f"SELECT {bucket} AS t, avg(gpu_util) FROM gpu_samples WHERE job_id = {{j:String}} GROUP BY t ORDER BY t",
                        {"j": job.job_id},
                        run.t0_ms,
                    )
                    series.append(("GPU utilisation % (job mean)", job.job_id, x, y))
                x, y = _series(
                    client,
                    f"SELECT {bucket} AS t, avg(gpu_util) FROM gpu_samples WHERE startsWith(node, {{p:String}}) "
                    "AND job_id IS NULL GROUP BY t ORDER BY t",
                    {"p": sc.node_prefix},
                    run.t0_ms,
                )
                if x:
                    series.append(("GPU utilisation % (job mean)", "GPUs no job holds", x, y))
                panels.append(("jobs (no fault: every flag is false)", None, series))
            _plot_scenario(plt, run, sc, panels, out / f"{sc.name}.png")
    finally:
        client.close()


def _plot_scenario(plt: Any, run: Run, sc: Scenario, panels: list[tuple[str, Any, list[Any]]], path: Path) -> None:
    flags = [f for f in run.result.flags if f.flag.scenario == sc.name]
    fig, axes = plt.subplots(len(panels) + 1, 1, figsize=(11, 2.3 * (len(panels) + 1)), sharex=True, squeeze=False)
    colours = {"true": "tab:green", "false": "tab:red", "allowed": "tab:gray"}
    for ax, (title, fault, series) in zip(axes[:, 0], panels):
        for ylabel, legend, x, y in series:
            ax.plot(x, y, lw=1, label=legend)
            ax.set_ylabel(ylabel, fontsize=8)
        if fault is not None:
            ax.axvspan(fault.onset_s, max(fault.end_s, fault.onset_s + 2), color="tab:orange", alpha=0.2, label="fault")
            mine = [f for f in flags if any(label.fault == fault.describe() for label in f.labels)]
            for f in mine:
                ax.axvline(f.flag.fired_s, color=colours[f.verdict], ls="--", lw=1)
                ax.annotate(
                    f.flag.detector,
                    (f.flag.fired_s, 1),
                    xycoords=("data", "axes fraction"),
                    fontsize=7,
                    rotation=90,
                    va="top",
                    ha="right",
                    color=colours[f.verdict],
                )
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
    ax = axes[-1, 0]
    rows = sorted({f.flag.detector for f in flags} | {label.detector for label in sc.labels if label.required})
    for i, det in enumerate(rows):
        for label in sc.labels:
            if label.detector == det and label.required:
                ax.plot([label.onset_s, label.end_s + label.grace_s], [i, i], color="tab:orange", alpha=0.35, lw=6)
        same: dict[tuple[float, str], int] = {}
        for f in flags:
            if f.flag.detector == det:
                same[(f.flag.fired_s, f.verdict)] = same.get((f.flag.fired_s, f.verdict), 0) + 1
        for (fired, verdict), n in same.items():
            ax.plot([fired], [i], marker="v" if verdict == "true" else "x", color=colours[verdict], ms=7)
            if n > 1:  # several subjects at once (e.g. every GPU of a node)
                ax.annotate(f"x{n}", (fired, i), textcoords="offset points", xytext=(4, 4), fontsize=7, color=colours[verdict])
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_ylim(-0.7, max(len(rows) - 0.3, 0.7))
    ax.set_title("flags (green: true, red: false, grey: allowed) over labelled spans + grace (orange)", fontsize=9)
    ax.set_xlabel("seconds since the scenario started")
    ax.set_xlim(0, sc.duration_s)
    fig.suptitle(f"{sc.name}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
