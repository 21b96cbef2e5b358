"""Running ``hpcinsight replay``: the pipeline's processes, the records sent at the pace the worker
needs, and the results read back with the query library and printed (see the package doc)."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from hpcinsight.core.durations import describe_ms, parse_ms
from hpcinsight.core.kafka import lag, produce_queued
from hpcinsight.core.settings import Settings
from hpcinsight.harness.replay import FORMATS, SECTIONS, ReplayOptions
from hpcinsight.harness.replay.files import (
    CLOCK_JOB,
    DAY_MS,
    STRETCH_MS,
    BadRow,
    GpuReplay,
    ReplayInputError,
    SchedReplay,
    StepReplay,
    clock_event,
    iso_utc,
    keyed_messages,
    parse_time_ms,
    plan_gpu_util,
    plan_sched,
    plan_steps,
    read_gpu_util,
    read_nodes,
    read_pods,
    read_steps,
    time_slices,
)
from hpcinsight.harness.supervisor import Processes, child_env, start_broker, wait_drained
from hpcinsight.schemas.catalog import (
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
from hpcinsight.schemas.codec import DecodeError
from hpcinsight.schemas.events import Event

log = logging.getLogger(__name__)

KPI_LATENESS_MS = 10_000  # the worker's KPI lateness (hpcinsight.streams.kpis.KpiConfig default)
# GPU samples: the job stage waits JOB_WAIT_S (processing time) for a job's GPUs, and forgets a job
# silent for 2 h of event time; event time runs at most EVENT_MS_PER_S per second (2 h in 8 s), and
# the worker's partitions stay within two stretches of GPU_STRETCH_MS of each other.
JOB_WAIT_S = 2.0
EVENT_MS_PER_S = 15 * 60_000
GPU_STRETCH_MS = 5 * 60_000
MAX_REPORTED = 20  # bad rows listed in full; the rest are counted


# --- sending -------------------------------------------------------------------------------------
class Sender:
    """Produces encoded records as the agents do (idempotent, acks=all, zstd, the Java partitioner)."""

    def __init__(self, settings: Settings) -> None:
        from hpcinsight.core.kafka import new_producer

        self._prefix = settings.kafka.topic_prefix
        kafka_log = logging.getLogger("hpcinsight.harness.replay.kafka")
        if not kafka_log.isEnabledFor(logging.INFO):  # librdkafka's transient warnings (a broker starting) only with -v
            kafka_log.setLevel(logging.ERROR)
        self._producer = new_producer(
            settings.kafka, extra={"partitioner": "murmur2_random", "compression.type": "zstd", "linger.ms": 20}, logger=kafka_log
        )
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
        produce_queued(
            self._producer,
            topic.full_name(self._prefix),
            value,
            key.encode(),
            wait_s=0.1,
            on_delivery=self._on_delivery,
            **kwargs,
        )
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
        settings = start_broker(
            stack, replay_settings(settings, options, run_id), Console(stderr=True, quiet=options.fmt != "table")
        )
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
        from hpcinsight.sinks.clickhouse import connect

        client = connect(settings.clickhouse)
        try:
            _print(plan, client, options, report)
        finally:
            client.close()
    report(
        f"replayed in {time.monotonic() - started:.0f} s; store: {settings.clickhouse.display_url} "
        f"(query it: CLICKHOUSE_URL={settings.clickhouse.display_url} hpcinsight query --list)"
    )
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
        report(
            f"{path}: {len(rows)} samples of {len(g.places)} GPUs, {len(set(g.jobs.values()))} job(s), recorded "
            f"{iso_utc(g.first_ms)} .. {iso_utc(g.last_ms)} ({describe_ms(g.last_ms - g.first_ms)}), a sample every "
            f"{g.interval_ms / 1000:g} s (median)"
        )
        report(
            f"times shifted by {g.shift_ms // DAY_MS:+d} days so that the data ends within the last day "
            f"(time of day kept); windows {g.plan.windows}, since-start view every {g.plan.since_start_every_ms // 1000} s; "
            f"each GPU gets one closing sample without a reading"
        )
        ttl_days = GPU_SAMPLES.table.ttl_days if GPU_SAMPLES.table else 0
        if ttl_days and g.last_ms - g.first_ms > ttl_days * DAY_MS:
            report(
                f"note: the recording spans more than {ttl_days} days, the raw samples' default TTL: the store drops the "
                "older raw samples (quantiles and flags, computed in the stream, are kept a year)"
            )
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
            report(
                f"no ts column: each rank's steps end at the sum of its durations so far, every job starting at "
                f"{iso_utc(s.shift_ms)}, so that the last step ends now"
            )
        else:
            report(
                f"times shifted by {s.shift_ms // DAY_MS:+d} days so that the data ends within the last day (time of day kept)"
            )
        return s
    pods_path, nodes_path = options.files
    pods, people, bad_pods = read_pods(pods_path, options.limit)
    nodes, bad_nodes = read_nodes(nodes_path)
    for path, bad in ((pods_path, bad_pods), (nodes_path, bad_nodes)):
        if bad and options.strict:
            _refuse_bad(path, bad)
        report.bad_rows(path, bad)
    sc = plan_sched(
        pods,
        people,
        nodes,
        now_ms,
        interval_s=None if options.kpi_interval is None else parse_ms(options.kpi_interval, "--kpi-interval", plain="s") / 1000,
        step_s=None if options.step is None else parse_ms(options.step, "--step", plain="s") / 1000,
        start_ms=None if options.start is None else parse_time_ms(options.start),
    )
    gpus = sum(n.gpu_count for n in sc.inventory)
    report(
        f"{pods_path}: {sc.pods} pods ({len(sc.events)} scheduler events); {nodes_path}: {len(sc.inventory)} nodes, "
        f"{gpus} GPUs; placement model: {sc.placed} GPU pods placed, {sc.unplaced} found no room"
    )
    report(
        f"trace second 0 stamped {iso_utc(sc.t0_ms)} (ahead of now: the worker also closes KPI intervals by its "
        f"clock), the trace spans {describe_ms(sc.last_ms - sc.t0_ms)}; KPI interval {sc.interval_ms // 1000} s, "
        f"rows every {describe_ms(sc.step_ms)}; trace_time = time since trace second 0"
    )
    return sc


def _delete_topics(settings: Settings) -> None:
    """This run's topics, on a broker the replay did not start (its prefix is its own)."""
    from hpcinsight.core.kafka import new_admin

    try:
        admin = new_admin(settings.kafka)
        for future in admin.delete_topics(
            [t.full_name(settings.kafka.topic_prefix) for t in TOPICS], operation_timeout=30
        ).values():
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
    from hpcinsight.sinks.clickhouse import connect
    from hpcinsight.sinks.query import execute

    ends = (
        "SELECT job_id, window, max(window_end) FROM {} FINAL WHERE metric = 'gpu_util' AND job_id IS NOT NULL "
        "GROUP BY job_id, window ORDER BY job_id, window"
    )

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
        from hpcinsight.core.kafka import new_consumer

        self._consumer = new_consumer(settings.kafka, f"{settings.kafka.topic_prefix}replay-progress", offset_reset="latest")
        self._output = output.full_name(settings.kafka.topic_prefix)
        self._dead = DEAD_LETTERS.full_name(settings.kafka.topic_prefix)

    def _high(self, topic: str, partition: int) -> int:
        from confluent_kafka import TopicPartition

        from hpcinsight.core.kafka import watermarks

        # retried while a new partition's leader is still being elected
        return watermarks(self._consumer, TopicPartition(topic, partition), 10.0)[1]

    def reached(self, wanted: dict[int, int]) -> bool:
        if all(self._high(self._output, p) >= n for p, n in wanted.items()):
            return True
        if dead := self._high(self._dead, 0):
            raise RuntimeError(f"the worker refused {dead} replayed message(s): see `hpcinsight query dead_letters`")
        return False

    def close(self) -> None:
        self._consumer.close()


def _send_paced(
    stretches: list[list[Any]],
    topic: Topic,
    output: Topic,
    key: str,
    procs: Processes,
    settings: Settings,
    sender: Sender,
    deadline: float,
    event_ms_per_s: float | None = None,
) -> None:
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
                _wait("the replay's pace", lambda: time.monotonic() >= due, procs, deadline, every_s=0.05)  # noqa: B023 - waited on at once, within this iteration
            if len(marks) >= 2:
                wanted = marks[-2]
                _wait("the worker", lambda: handled.reached(wanted), procs, deadline, every_s=0.05)  # noqa: B023 - waited on at once, within this iteration
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
    _send_paced(
        time_slices(g.samples, max_span_ms=GPU_STRETCH_MS),
        GPU_SAMPLES_RAW,
        GPU_SAMPLES,
        "node",
        procs,
        settings,
        sender,
        deadline,
        event_ms_per_s=EVENT_MS_PER_S,
    )
    wait_drained(
        procs,
        settings,
        [GPU_SAMPLES_RAW, GPU_SKETCHES],
        JOB_WAIT_S,
        timeout_s=max(60.0, deadline - time.monotonic()),
        settled=_job_stage_settled(settings),
    )


def _run_steps(s: StepReplay, procs: Processes, settings: Settings, sender: Sender, deadline: float) -> None:
    _start_pipeline(procs, [])
    # in time order, as the ranks report them; a step is judged once all its ranks are in
    _send_paced(time_slices(s.metrics), STEP_METRICS_RAW, STEP_METRICS, "job_id", procs, settings, sender, deadline)
    wait_drained(procs, settings, [STEP_METRICS_RAW], 0.0, timeout_s=max(60.0, deadline - time.monotonic()))


class KpiWatch:
    """The latest KPI boundary the worker has published (read from its output topic)."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        from hpcinsight.core.kafka import new_consumer

        self._consumer = new_consumer(settings.kafka, f"{settings.kafka.topic_prefix}replay-watch", offset_reset="latest")
        self._consumer.assign(
            [
                TopicPartition(SCHEDULING_KPIS.full_name(settings.kafka.topic_prefix), p, OFFSET_BEGINNING)
                for p in range(SCHEDULING_KPIS.partitions)
            ]
        )
        self.latest = 0

    def reached(self, boundary_ms: int) -> bool:
        for msg in self._consumer.consume(num_messages=1000, timeout=0.2):
            if msg.error():
                continue
            try:
                records = SCHEDULING_KPIS.codec.decode(msg.value())
            except DecodeError as err:  # the sink, which stores this topic, dead-letters it
                log.warning("replay: skipped a KPI message at offset %d: %s", msg.offset(), err)
                continue
            self.latest = max([self.latest, *(r.ts for r in records)])
        return self.latest >= boundary_ms

    def close(self) -> None:
        self._consumer.close()


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
                _wait("the worker's KPIs", lambda: watch.reached(closes), procs, deadline, every_s=0)  # noqa: B023 - waited on at once, within this iteration
        assert i == len(sc.events)
    finally:
        watch.close()
    wait_drained(procs, settings, [SCHEDULER_EVENTS, NODE_INVENTORY], 0.0, timeout_s=max(60.0, deadline - time.monotonic()))


# --- printing ------------------------------------------------------------------------------------
def _since_s(first_ms: int) -> str:
    return str(int((time.time() * 1000 - first_ms) / 1000) + DAY_MS // 1000)


def _show(title: str, name: str, columns: list[str], rows: list[tuple[Any, ...]], options: ReplayOptions, default: str) -> None:
    from hpcinsight.sinks.query import render

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
    from hpcinsight.sinks.query import execute

    since = _since_s(g.first_ms + g.shift_ms)
    by_place = {place: gpu for gpu, place in g.places.items()}
    columns, rows = execute(client, "gpu_quantiles", {"since_s": since})
    node, gpu = columns.index("node"), columns.index("gpu")
    mine = [(by_place[(r[node], r[gpu])], *r) for r in rows if (r[node], r[gpu]) in by_place]
    _show("GPU utilisation per GPU since its job started (%), and its flags", "gpus", ["gpu_id", *columns], mine, options, "gpus")
    jobs = set(g.jobs.values())
    columns, rows = execute(client, "job_quantiles", {"since_s": since})
    _show(
        "GPU utilisation per job since it started (%), merged GPU sketches",
        "jobs",
        columns,
        [r for r in rows if r[0] in jobs],
        options,
        "gpus",
    )
    columns, rows = execute(client, "anomalies", {"since_s": since})
    kind = columns.index("kind")
    flags = [r for r in rows if r[kind] in ("gpu_underused", "job_underused")]
    if options.fmt == "table" and options.section is None:  # the GPUs' own flags are counted in the first table
        _show("Under-use flags of jobs", "flags", columns, [r for r in flags if r[kind] == "job_underused"], options, "gpus")
    else:
        _show("Under-use flags", "flags", columns, flags, options, "gpus")
    summarised = {r[0] for r in execute(client, "SELECT DISTINCT job_id FROM job_quantiles WHERE metric = 'gpu_util'", {})[1]}
    if jobs - summarised:
        report(
            f"warning: {len(jobs - summarised)} job(s) have no job quantiles (the job stage let them go): "
            f"{', '.join(sorted(jobs - summarised)[:5])}{' ...' if len(jobs - summarised) > 5 else ''}"
        )
    flagged = {r[0] for r in mine if r[-1] and "underused" in r[-1]}
    incidents = execute(
        client,
        "SELECT job_id, countIf(state = 'resolved') = 0 FROM anomalies FINAL WHERE kind = 'job_underused' GROUP BY job_id, id",
        {},
    )[1]
    flagged_jobs = {job for job, _ in incidents} & jobs
    still = {job for job, open_ in incidents if open_} & jobs
    report(
        f"GPUs with an under-use flag (gpu_underused): {len(flagged)} of {len(g.places)}; jobs flagged under-used "
        f"(job_underused): {len(flagged_jobs)} of {len(jobs)}, {len(still)} of them still at the end"
    )


def _ranks_text(ranks: list[int]) -> str:
    out: list[str] = []
    for r in sorted(ranks):
        if out and out[-1].split("-")[-1] == str(r - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{r}"
        else:
            out.append(str(r))
    return ", ".join(out)


def speed_groups(client: Any, jobs: set[str]) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The speed groups the straggler detector found, one row per split: job, slow ranks, the others, the slow
    group's factor, the steps it held (the firing window's first step to the step before the window that
    resolved it, or the job's last step while open) and what the slow ranks share (from the message)."""
    from hpcinsight.sinks.query import execute

    rows = execute(
        client,
        (
            "SELECT any(job_id), anyIf(evidence, state = 'firing'), anyIf(evidence, state = 'resolved'), countIf(state = 'resolved') > 0, "
            "anyIf(message, state = 'firing') FROM anomalies FINAL WHERE kind = 'straggler' AND endsWith(subject, '/imbalance') "
            "GROUP BY id"
        ),
        {},
    )[1]
    last = dict(execute(client, "SELECT job_id, max(step) FROM step_metrics GROUP BY job_id", {})[1])
    out = []
    for job, fired, cleared, resolved, message in rows:
        if job not in jobs or not fired.get("split"):
            continue
        slow = sorted(int(k[len("slow_rank_") :]) for k in fired if k.startswith("slow_rank_"))
        world = int(fired.get("world_size", 0))
        fast = [r for r in range(world) if r not in slow]
        first = int(fired.get("first_step", 0))
        end = int(cleared.get("first_step", first + 1)) - 1 if resolved else int(last.get(job, first))
        shared = message[message.rfind("(") + 1 : message.rfind(")")] if "(" in message and "on node" in message else ""
        out.append(
            (
                job,
                _ranks_text(slow),
                _ranks_text(fast),
                round(float(fired.get("factor", 1.0)), 2),
                first,
                end,
                "resolved" if resolved else "open",
                shared,
            )
        )
    return ["job", "slow_ranks", "other_ranks", "factor", "first_step", "last_step", "state", "slow_ranks_share"], sorted(out)


def _print_steps(s: StepReplay, client: Any, options: ReplayOptions, report: Report) -> None:
    from hpcinsight.sinks.query import execute

    columns, rows = execute(client, "step_flags", {"since_s": _since_s(s.first_ms)})
    rows = [r for r in rows if r[0] in s.world]
    _show("Straggler and imbalance flags (steps: the windows in which each held)", "flags", columns, rows, options, "flags")
    group_columns, group_rows = speed_groups(client, set(s.world))
    _show(
        "Speed groups (the imbalance incidents that found a split: the slow group, its factor, the steps it held)",
        "groups",
        group_columns,
        group_rows,
        options,
        "flags",
    )
    stored = execute(client, "SELECT count() FROM step_metrics", {})[1][0][0]
    report(
        f"stored {stored} step rows; flags: {len(rows)} ({sum(1 for r in rows if r[1] == 'straggler')} straggler, "
        f"{sum(1 for r in rows if r[1] == 'imbalance')} imbalance)"
    )


def _trace_time(columns: list[str], rows: list[tuple[Any, ...]], t0_ms: int) -> tuple[list[str], list[tuple[Any, ...]]]:
    """A ``trace_time`` column (``12d 06:00``, time since trace second 0) after the ``t`` column."""
    if "t" not in columns:
        return columns, rows
    i = columns.index("t")
    out = []
    for r in rows:
        t = r[i] if r[i].tzinfo else r[i].replace(tzinfo=dt.UTC)
        off = round(t.timestamp() - t0_ms / 1000)
        out.append((*r[: i + 1], f"{off // 86400}d {off % 86400 // 3600:02d}:{off % 3600 // 60:02d}", *r[i + 1 :]))
    return [*columns[: i + 1], "trace_time", *columns[i + 1 :]], out


def _print_sched(sc: SchedReplay, client: Any, options: ReplayOptions, report: Report) -> None:
    from hpcinsight.sinks.query import execute

    step = {"step_s": str(sc.step_ms // 1000)}
    for title, name, query, params in (
        (
            "Allocation rate of the cluster (allocated / total GPUs, mean of the KPI snapshots per row)",
            "allocation",
            "allocation_rate",
            step,
        ),
        ("Queue wait by resource type (s)", "waits", "wait_time_by_resource_type", {}),
        ("Fragmentation (free GPUs stranded on partly used nodes)", "fragmentation", "fragmentation", step),
        ("Low-priority (best-effort) share of the allocated GPUs", "low_priority", "low_priority_usage", step),
    ):
        columns, rows = _trace_time(*execute(client, query, params), sc.t0_ms)
        _show(title, name, columns, rows, options, "allocation")
    if sc.people:
        for title, name, query in (
            ("GPU-hours by team", "teams", "team_usage"),
            ("GPU-hours by user", "users", "user_gpu_hours"),
        ):
            columns, rows = execute(client, query, {})
            _show(title, name, columns, rows, options, "allocation")
    else:
        report("no user or team column in the pods file: GPU-hours by team and user are not shown")
    stored = execute(client, "SELECT count() FROM scheduling_kpis", {})[1][0][0]
    report(f"stored {stored} KPI rows over {(sc.last_ms - sc.t0_ms) // sc.interval_ms + 1} intervals")
