"""The ``hpcinsight`` command: wires agents, streams and sinks to the shared configuration.

Each subcommand is one component (``agent``, ``worker``, ``sink``) or a tool over them
(``topics``, ``kafka``, ``db``, ``query``, ``demo``). Configuration comes from the
environment (see :mod:`hpcinsight.core.settings`); ``--help`` never prints a secret.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hpcinsight import __version__
from hpcinsight.core.metrics import add_arguments as add_metrics_arguments
from hpcinsight.core.settings import ConfigError, load


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


# --- topics ---------------------------------------------------------------------------
def partitions_arg(text: str) -> int:
    """``--partitions``: HPCINSIGHT_TOPIC_PARTITIONS' rule (core.settings.topic_partitions)."""
    from hpcinsight.core.settings import topic_partitions

    try:
        n = topic_partitions(text, "--partitions")
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    assert n is not None
    return n


def cmd_topics(args: argparse.Namespace) -> int:
    from hpcinsight.schemas.catalog import describe, ensure_topics, partitions_unlike

    settings = load()
    prefix = settings.kafka.topic_prefix if args.create or args.prefix is None else args.prefix
    partitions = settings.kafka.topic_partitions if args.partitions is None else args.partitions
    if args.create:
        conf = settings.kafka.client_config()
        ensure_topics(conf, settings.kafka.topic_prefix, partitions=partitions)
        for name, listed, asked in partitions_unlike(conf, settings.kafka.topic_prefix, partitions):
            print(f"hpcinsight topics: {name} exists with {listed} partitions, not {asked}: left as it is", file=sys.stderr)
    rows = describe(prefix, partitions)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    from hpcinsight.sinks.query import make_console

    table = Table(title="hpcinsight topic catalog", show_lines=False)
    for col in ("topic", "schema", "wire", "key", "partitions", "retention", "ClickHouse table", "what"):
        table.add_column(col)
    for r in rows:
        hours = r["retention_hours"]
        table.add_row(
            r["topic"],
            f"{r['schema']} v{r['version']}",
            r["wire"],
            r["key"],
            str(r["partitions"]),
            f"{hours / 24:g} d" if hours >= 24 else f"{hours:g} h",
            r["table"] or "-",
            r["doc"],
        )
    make_console().print(table)
    return 0


# --- kafka ----------------------------------------------------------------------------
def cmd_kafka(args: argparse.Namespace) -> int:
    from hpcinsight.deploy.local.kafka import ensure_jars

    if args.action == "fetch":
        print(ensure_jars())
        return 0
    from hpcinsight.deploy.local.kafka import KafkaLaunchError, serve

    stop = _stop_on_signals()
    data_dir = Path(args.data_dir) if args.data_dir else (load().data_dir / "kafka" if args.keep_data else None)
    try:
        return serve(args.brokers, args.port, data_dir, args.keep_data, stop=stop)
    except KafkaLaunchError as err:
        print(f"hpcinsight kafka: {err}", file=sys.stderr)
        return 1


# --- db -------------------------------------------------------------------------------
def cmd_db(args: argparse.Namespace) -> int:
    from hpcinsight.sinks.db import run_db

    return run_db(load(), args.action)


# --- agent ----------------------------------------------------------------------------
def cmd_agent(args: argparse.Namespace) -> int:
    from hpcinsight.agents.delivery import Delivery
    from hpcinsight.agents.registry import build as build_collectors
    from hpcinsight.agents.runner import AgentStats, Metrics, run_agent
    from hpcinsight.schemas.catalog import ensure_configured_topics

    stop = _stop_on_signals()
    settings = load()
    conf = settings.kafka.client_config()
    backend, tables = agent_collector_tables(args, settings.collectors)
    if "scenario" in tables:
        import hpcinsight.harness.scenario  # noqa: F401 - registers the "scenario" collector kind
    collectors = build_collectors(tables)
    ensure_configured_topics(settings.kafka, stop)  # a broker away is waited for (logged), not a reason to exit
    if stop.is_set():
        return 0
    name = args.name or backend
    delivery = Delivery(
        conf,
        Path(args.spool_dir) if args.spool_dir else settings.data_dir / "spool" / name,
        max_spool_bytes=int(args.spool_mb * 2**20),
    )
    stats = AgentStats()
    metrics = Metrics(args.metrics_port, stats, delivery, host=args.metrics_host) if args.metrics_port else None
    try:
        run_agent(
            collectors,
            delivery,
            settings.kafka.topic_prefix,
            interval_s=args.interval,
            ticks=args.ticks,
            speed=args.speed,
            stop=stop,
            agent_name=name,
            node=args.node,
            stats=stats,
            start_ms=args.start_ms,
            catch_up=args.catch_up,
        )
    finally:
        for collector in collectors:
            collector.close()
        drained = delivery.close(drain_timeout=args.drain_timeout)
        if metrics is not None:
            metrics.close()
    d = delivery.stats
    summary = {
        "ticks": stats.ticks,
        "skipped_ticks": stats.skipped_ticks,
        "messages": stats.messages,
        "records": stats.records,
        "delivered": d.delivered,
        "spilled": d.spilled,
        "dropped": d.dropped + delivery.spool.dropped,
        "failed": d.failed,
        "drained": drained,
        "topics": {name: {"messages": m, "records": r} for name, (m, r) in stats.by_topic.items()},
    }
    print(json.dumps(summary), flush=True)
    return 0 if drained and summary["dropped"] == 0 else 1


#: the agent's flags that set collector settings: flag (its dest) -> the (kind, setting) pairs it sets on the kinds in use
AGENT_FLAG_SETTINGS: dict[str, tuple[tuple[str, str], ...]] = {
    "nodes": (("gpu_sim", "nodes"), ("ib_sim", "nodes"), ("scheduler_sim", "nodes")),
    "gpus": (("gpu_sim", "gpus"), ("scheduler_sim", "gpus")),
    "seed": (("gpu_sim", "seed"), ("ib_sim", "seed"), ("scheduler_sim", "seed")),
    "idle": (("gpu_sim", "idle"),),
    "fault": (("gpu_sim", "faults"),),
    "xid": (("gpu_sim", "xids"),),
    "ib_fault": (("ib_sim", "faults"),),
    "node": (("gpu_nvml", "node"), ("ib_sysfs", "node")),
    "ib_root": (("ib_sysfs", "root"),),
    "trace_dir": (("scheduler_trace", "data_dir"),),
    "trace_speedup": (("scheduler_trace", "speedup"),),
    "trace_limit": (("scheduler_trace", "limit"),),
    "k8s_namespace": (("scheduler_kubernetes", "namespace"),),
}
#: what --backend and --scheduler choose (none: no such collector)
AGENT_BACKENDS = {"sim": "gpu_sim", "nvml": "gpu_nvml", "none": None}
AGENT_SCHEDULERS = {
    "trace": "scheduler_trace",
    "kubernetes": "scheduler_kubernetes",
    "slurm": "scheduler_slurm",
    "sim": "scheduler_sim",
    "none": None,
}


def agent_collector_tables(
    args: argparse.Namespace, file_tables: Mapping[str, Mapping[str, Any]]
) -> tuple[str, dict[str, dict[str, Any]]]:
    """The agent's backend name and its ``{kind: settings}``: the config file's ``[agent.collectors]``
    tables with the flags given on the command line over them (the agent's parser leaves a flag that
    was not given at None). ``--backend`` and ``--scheduler`` choose the GPU and scheduler kinds,
    replacing the file's; ``--ib`` adds the IB kind (simulated beside sim GPUs, else sysfs); the other
    flags set their settings on the kinds in use. Without a file, ``--backend`` is sim, as ever."""
    tables = {kind: dict(table) for kind, table in file_tables.items()}
    file_gpu = next((b for b, kind in AGENT_BACKENDS.items() if kind and kind in tables), "none" if tables else "sim")
    backend = args.backend or file_gpu
    if args.scenario:
        if (
            args.backend not in (None, "sim")
            or args.ib
            or args.scheduler not in (None, "none")
            or args.fault
            or args.ib_fault
            or args.xid
            or args.idle
        ):
            raise ValueError(
                "--scenario brings its own sim GPUs, IB ports, scheduler, steps and faults: "
                "give it without --backend other than sim, --ib, --scheduler, --fault, --ib-fault, --xid, --idle"
            )
        tables["scenario"] = {"names": list(args.scenario)}
        return args.backend or "sim", tables
    if args.backend is not None:
        for kind in AGENT_BACKENDS.values():
            tables.pop(kind or "", None)
    if args.scheduler is not None:
        for kind in AGENT_SCHEDULERS.values():
            tables.pop(kind or "", None)
    if (gpu_kind := AGENT_BACKENDS[backend]) is not None:
        tables.setdefault(gpu_kind, {})
    if args.ib:
        tables.setdefault("ib_sim" if backend == "sim" else "ib_sysfs", {})
    if args.scheduler is not None and (scheduler_kind := AGENT_SCHEDULERS[args.scheduler]) is not None:
        tables.setdefault(scheduler_kind, {})
    if (args.fault and "gpu_sim" not in tables) or (args.ib_fault and "ib_sim" not in tables):
        raise ValueError("--fault needs --backend sim, and --ib-fault --backend sim --ib")  # not silently ignored
    for flag, settings in AGENT_FLAG_SETTINGS.items():
        value = getattr(args, flag)
        if value is not None:
            for kind, setting in settings:
                if kind in tables:
                    tables[kind][setting] = value
    if not tables:
        raise ValueError("nothing to sample: choose --backend sim|nvml, --ib and/or --scheduler")
    return backend, tables


# --- worker ---------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> int:
    from hpcinsight.core.durations import parse_ms
    from hpcinsight.schemas.catalog import ensure_configured_topics
    from hpcinsight.streams.app import WorkerOptions, parse_windows, run_worker
    from hpcinsight.streams.detectors import build as build_detectors

    def seconds(flag: str) -> float:  # a bare number is seconds, as it always was for these flags
        return parse_ms(getattr(args, flag.lstrip("-").replace("-", "_")), flag, plain="s") / 1000

    settings = load()
    try:  # options first: a typo is said at once, not after the broker answered
        options = WorkerOptions(
            windows=parse_windows(args.windows, "--windows"),
            lateness_s=seconds("--lateness"),
            since_start_every_s=seconds("--since-start-every"),
            checkpoint_every_s=seconds("--checkpoint-every"),
            replay_margin_s=seconds("--replay-margin"),
            replay_reach_s=None if args.replay_reach is None else seconds("--replay-reach"),
            kpi_interval_s=seconds("--kpi-interval"),
            kpi_lateness_s=seconds("--kpi-lateness"),
            job_wait_s=seconds("--job-wait"),
            instance=args.instance,
            batch_max=args.batch_max,
            batch_wait_s=parse_ms(args.batch_wait, "--batch-wait") / 1000,
            fetch_wait_s=parse_ms(args.fetch_wait, "--fetch-wait") / 1000,
            gpu_first_s=None if args.gpu_first is None else parse_ms(args.gpu_first, "--gpu-first") / 1000,
        )
        options.processor_config()
        build_detectors(settings.detectors)
    except ValueError as err:
        print(f"hpcinsight worker: {err}", file=sys.stderr)
        return 2
    stop = _stop_on_signals()  # while the broker is awaited (Faust installs its own handlers when it starts)
    ensure_configured_topics(settings.kafka, stop)
    if stop.is_set():
        return 0

    def serve_metrics(app: Any) -> None:
        from hpcinsight.core import metrics

        metrics.serve(
            args, app.hpcinsight_metrics, metrics.lag_source(f"{settings.kafka.topic_prefix}worker", lambda: app.hpcinsight_lag)
        )

    run_worker(settings, options, loglevel=args.loglevel, on_app=serve_metrics, stop=stop)
    return 0


# --- sink -----------------------------------------------------------------------------
def cmd_sink(args: argparse.Namespace) -> int:
    from hpcinsight.schemas.catalog import ensure_configured_topics
    from hpcinsight.sinks.clickhouse import connect, ensure_tables, share_if_embedded, while_store_refuses
    from hpcinsight.sinks.clickhouse_sink import ClickHouseSink, SinkOptions

    stop = _stop_on_signals()  # first: a stop during start-up is still a clean stop
    settings = load()
    conf = settings.kafka.client_config()
    ensure_configured_topics(settings.kafka, stop)
    client = connect(settings.clickhouse, writer=True)
    while_store_refuses(lambda: ensure_tables(client, settings.clickhouse), stop)
    share = while_store_refuses(lambda: share_if_embedded(client, settings.clickhouse), stop)  # readers go through us
    options = SinkOptions(batch_rows=args.batch_rows, batch_age_s=args.batch_age, instance_id=args.instance or None)
    sink = ClickHouseSink(client, conf, settings.kafka.topic_prefix, options)
    from hpcinsight.core import metrics

    server = metrics.serve(args, sink.metric_families, metrics.lag_source(sink.group, lambda: sink.stats.lag))
    try:
        stats = sink.run(stop, idle_exit_s=args.idle_exit)
    finally:
        if share is not None:
            share.stop()
        if server is not None:
            server.close()
    client.close()
    print(
        json.dumps(
            {
                "rows": dict(stats.rows),
                "batches": stats.batches,
                "dead_letters": stats.dead_letters,
                "resumed_from_store": stats.resumed_from_store,
                "inserts_redone": stats.inserts_redone,
            }
        ),
        flush=True,
    )
    return 0


# --- alerts ---------------------------------------------------------------------------
def cmd_alerts(args: argparse.Namespace) -> int:
    from hpcinsight.schemas.catalog import ensure_configured_topics
    from hpcinsight.sinks.alerts import config as alerts_config
    from hpcinsight.sinks.alerts.router import AlertRouter, RouterOptions
    from hpcinsight.sinks.alerts.store import default_state_dir

    stop = _stop_on_signals()
    config = alerts_config.load(args.config)
    if args.check:
        print(config.describe())
        return 0
    settings = load()
    conf = settings.kafka.client_config()
    ensure_configured_topics(settings.kafka, stop)
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir(settings.data_dir)
    router = AlertRouter(
        config,
        conf,
        settings.kafka.topic_prefix,
        RouterOptions(state_dir, reset_state=args.reset_state, config_path=Path(args.config)),
    )
    signal.signal(signal.SIGHUP, lambda *_: router.request_reload())  # read the file again; a bad one is refused
    from hpcinsight.core import metrics

    server = metrics.serve(args, router.metric_families)
    try:
        stats = router.run(stop, idle_exit_s=args.idle_exit)
    finally:
        if server is not None:
            server.close()
    print(json.dumps(stats), flush=True)
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from hpcinsight.schemas.catalog import ensure_configured_topics
    from hpcinsight.sinks.redrive_cli import run_cli

    settings = load()
    ensure_configured_topics(settings.kafka)
    return run_cli(args, settings.kafka.client_config(), settings.kafka.topic_prefix)


def cmd_silence(args: argparse.Namespace) -> int:
    from hpcinsight.schemas.catalog import ensure_configured_topics
    from hpcinsight.sinks.alerts.silence_cli import run_cli

    settings = load()
    ensure_configured_topics(settings.kafka)
    return run_cli(args, settings.kafka.client_config(), settings.kafka.topic_prefix)


# --- query ----------------------------------------------------------------------------
def cmd_query(args: argparse.Namespace) -> int:
    from hpcinsight.sinks.query import run_query

    return run_query(load(), args.query, args.param, args.format, list_all=args.list)


# --- diagnose -------------------------------------------------------------------------
def cmd_diagnose(args: argparse.Namespace) -> int:
    from hpcinsight.sinks.diagnose import run_diagnose

    return run_diagnose(load(), args.job, args.since, args.plots, args.format)


# --- replay ---------------------------------------------------------------------------
def cmd_replay(args: argparse.Namespace) -> int:
    from hpcinsight.harness.replay import options_from
    from hpcinsight.harness.replay.run import run_replay

    return run_replay(load(), options_from(args))


# --- whatif ---------------------------------------------------------------------------
def cmd_whatif(args: argparse.Namespace) -> int:
    from hpcinsight.whatif_cli import run

    return run(args, load)


# --- serve ----------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from hpcinsight.core import metrics
    from hpcinsight.web.serve import feed_metric_families, run_serve

    def serve_metrics(app: Any, feed: Any) -> None:
        metrics.serve(args, app.state.traffic.metric_families, feed_metric_families(feed))

    return run_serve(load(), args.host, args.port, args.frame_interval, store=not args.no_store, on_app=serve_metrics)


# --- demo -----------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from hpcinsight.harness.demo import DemoOptions, run_demo

    return run_demo(
        load(),
        DemoOptions(
            duration_s=args.duration,
            nodes=args.nodes,
            gpus=args.gpus,
            idle=args.idle,
            interval_s=args.interval,
            speed=args.speed,
            windows=args.windows,
            seed=args.seed,
            xid=args.xid,
            faults=args.fault,
            ib_faults=args.ib_fault,
            webhook=args.webhook,
            alerts_config=args.alerts_config,
        ),
    )


# --- eval -----------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from hpcinsight.harness.eval import EvalOptions, describe_library, run_eval

    if args.list:
        for line in describe_library():
            print(line)
        return 0

    return run_eval(
        EvalOptions(
            scenarios=args.scenario,
            out_dir=Path(args.out),
            speed=args.speed,
            plots=not args.no_plots,
            job_wait_s=args.job_wait,
            rescore=args.rescore,
        )
    )


def _add_sim_args(p: argparse.ArgumentParser, idle_default: list[str]) -> None:
    p.add_argument("--nodes", type=int, default=4, help="simulated nodes (default 4)")
    p.add_argument("--gpus", type=int, default=8, help="GPUs per simulated node (default 8)")
    p.add_argument("--seed", type=int, default=0, help="simulation seed")
    p.add_argument(
        "--idle",
        action="append",
        default=idle_default,
        metavar="NODE:GPU[@START-END]",
        help="make a GPU idle (seconds since start), e.g. 1:3@0-40; repeatable",
    )
    p.add_argument(
        "--xid",
        action="append",
        default=[],
        metavar="NODE:GPU@SECONDS:XID[xN]",
        help="inject an XID error into the simulated cluster, e.g. 0:5@30:79; repeatable",
    )
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND:NODE:GPU[@START[-END]]",
        help="inject a GPU fault (thermal, power, ecc, remap, clock, slow), e.g. thermal:0:3@30-90 or ecc:1:0@45; repeatable",
    )
    p.add_argument(
        "--ib-fault",
        action="append",
        default=[],
        metavar="degrade:NODE@START-END|flap:NODE:PORT@SECONDS",
        help="inject an InfiniBand fault (with --ib), e.g. degrade:2@60-120 or flap:1:3@45; repeatable",
    )
    p.add_argument("--interval", type=float, default=1.0, help="sampling interval in seconds (default 1)")
    p.add_argument("--speed", type=float, default=1.0, help="run the sample clock this many times faster than real time")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpcinsight",
        description="Telemetry for GPU clusters: agents -> Kafka -> Faust -> ClickHouse. "
        "Configured by environment variables (KAFKA_BOOTSTRAP, CLICKHOUSE_URL, ...; see docs/configuration.md).",
    )
    parser.add_argument("--version", action="version", version=f"hpcinsight {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(fn=fn)
        return p

    p = add("demo", cmd_demo, "run a simulated cluster through the whole pipeline and print what it found")
    p.add_argument("--duration", type=float, default=90.0, help="seconds of sampling (default 90)")
    _add_sim_args(p, idle_default=[])
    p.add_argument("--windows", default="20s/10s,1m/10s", help="sliding quantile windows as SIZE/HOP (default 20s/10s,1m/10s)")
    p.add_argument(
        "--webhook",
        default=None,
        metavar="URL",
        help="also run the alert router and post the alerts here (Slack, Discord, Teams Workflows, "
        "or any URL: Alertmanager-format JSON)",
    )
    p.add_argument("--alerts-config", default=None, metavar="FILE", help="also run the alert router with this configuration")

    p = add("eval", cmd_eval, "score every detector on the labelled fault scenarios, through the real pipeline")
    p.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="NAME|FILE",
        help="a scenario of the library or a YAML file (default: the whole library); repeatable",
    )
    p.add_argument("--out", default="eval-results", help="folder for results.md, results.csv, plots and the store")
    p.add_argument("--speed", type=float, default=5.0, help="sim seconds per wall second (default 5)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG per scenario")
    p.add_argument(
        "--job-wait",
        type=float,
        default=60.0,
        help="seconds the job stage waits for a job's late GPUs (default 60: at 5x on a busy machine partitions "
        "fall tens of seconds of sim time apart)",
    )
    p.add_argument(
        "--rescore",
        action="store_true",
        help="score the run stored in --out again (after editing labels) instead of running the pipeline",
    )
    p.add_argument("--list", action="store_true", help="list the library's scenarios and exit")

    p = add("topics", cmd_topics, "print the topic catalog (topics, schemas, keys, partitions, retention, tables)")
    p.add_argument("--create", action="store_true", help="create missing topics on the configured broker")
    p.add_argument(
        "--partitions",
        type=partitions_arg,
        default=None,
        help="partitions of the keyed topics (those the catalog gives more than one; default HPCINSIGHT_TOPIC_PARTITIONS, "
        "else the catalog's 6): as many workers and sinks as this can share the work. Choose it before the first start: "
        "existing topics are left as they are",
    )
    p.add_argument("--prefix", default=None, help="topic prefix to show (default: HPCINSIGHT_TOPIC_PREFIX)")
    p.add_argument("--format", choices=("table", "json"), default="table")

    p = add("agent", cmd_agent, "sample GPUs and send one message per node per tick to Kafka")
    p.add_argument(
        "--backend",
        choices=("sim", "nvml", "none"),
        default="sim",
        help="GPUs: sim (simulated cluster), nvml (this node's GPUs) or none",
    )
    p.add_argument("--ib", action="store_true", help="also sample InfiniBand ports: from sysfs, or simulated with --backend sim")
    p.add_argument("--ib-root", default="/sys/class/infiniband", help="sysfs root of the InfiniBand devices")
    p.add_argument(
        "--scheduler",
        choices=("none", "trace", "kubernetes", "slurm", "sim"),
        default="none",
        help="also report job events: replay the openb trace, watch Kubernetes pods, poll Slurm, "
        "or the sim cluster's nodes and job",
    )
    p.add_argument("--trace-dir", default="../shared/data/alibaba-openb-2023", help="openb trace folder (--scheduler trace)")
    p.add_argument("--trace-speedup", type=float, default=60.0, help="trace seconds per wall second (--scheduler trace)")
    p.add_argument("--trace-limit", type=int, default=None, help="replay only the first N pods (--scheduler trace)")
    p.add_argument("--k8s-namespace", default=None, help="watch one namespace (--scheduler kubernetes; default all)")
    p.add_argument("--node", default=None, help="node name for --backend nvml (default: hostname)")
    p.add_argument("--ticks", type=int, default=None, help="stop after this many ticks (default: run until stopped)")
    p.add_argument("--name", default=None, help="agent name (health events, spool folder); default: the backend")
    p.add_argument("--spool-dir", default=None, help="on-disk queue (default: $HPCINSIGHT_DATA_DIR/spool/NAME)")
    p.add_argument("--spool-mb", type=float, default=1024, help="bound of the on-disk queue in MiB; oldest dropped beyond it")
    p.add_argument("--drain-timeout", type=float, default=300, help="on exit, wait this long for Kafka to take the backlog")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics on this port (0: off)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address of /metrics (default 127.0.0.1; 0.0.0.0 in a pod)")
    p.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="NAME|FILE",
        help="simulate a scenario (a YAML file, or a name from the library: see `hpcinsight eval --list`): "
        "its cluster, jobs, IB ports, scheduler events, training steps and faults; repeatable",
    )
    p.add_argument(
        "--start-ms",
        type=int,
        default=None,
        help="stamp the first tick with this epoch-ms time and advance the sim clock from it",
    )
    p.add_argument(
        "--catch-up",
        action="store_true",
        help="never skip a tick that overran (fall behind real time instead): the same samples on any machine",
    )
    _add_sim_args(p, idle_default=[])
    # A collector flag left out stays None, so the config file's [agent.collectors] settings show through
    # (agent_collector_tables); the defaults the help states are the collector configs' own.
    p.set_defaults(
        backend=None,
        scheduler=None,
        ib_root=None,
        trace_dir=None,
        trace_speedup=None,
        nodes=None,
        gpus=None,
        seed=None,
        idle=None,
        xid=None,
        fault=None,
        ib_fault=None,
    )

    p = add("worker", cmd_worker, "run the Faust stream worker (validation, quantiles, detectors)")
    p.add_argument(
        "--windows",
        default="1m/10s,5m/1m,1h/20m",
        help="sliding quantile windows as SIZE/HOP, comma-separated (default 1m/10s,5m/1m,1h/20m)",
    )
    p.add_argument("--since-start-every", default="60s", help="emit the since-job-start quantiles this often (default 60s)")
    p.add_argument("--lateness", default="2s", help="use samples up to this late, count and drop later ones (default 2s)")
    p.add_argument(
        "--checkpoint-every",
        default="60s",
        help="checkpoint each series' sketches this often; a restart replays about this much (default 60s)",
    )
    p.add_argument(
        "--job-wait",
        default="10s",
        help="a job window missing some GPUs' sketches waits this long (processing time) for them (default 10s)",
    )
    p.add_argument("--kpi-interval", default="60s", help="scheduling KPIs per interval of this length (default 60s)")
    p.add_argument(
        "--kpi-lateness",
        default="10s",
        help="a KPI interval waits this long after its end for late scheduler events, then closes; "
        "later ones count in the next interval (default 10s; raise it for a scheduler that reports late)",
    )
    p.add_argument(
        "--replay-margin",
        default="30s",
        help="on restart, replay this much before the oldest checkpoint (agent-to-broker delay, clock skew)",
    )
    p.add_argument(
        "--replay-reach",
        default=None,
        help="on restart, replay at most this much before the last message handled: a GPU silent for longer "
        "is taken back from its checkpoint without its last samples before the silence "
        "(default 5m, or what a restart needs where --checkpoint-every and the margins make that more)",
    )
    p.add_argument(
        "--batch-max",
        type=int,
        default=100,
        help="the per-GPU stage handles up to this many raw messages at a time (default 100)",
    )
    p.add_argument(
        "--batch-wait",
        default="50ms",
        help="... or those that came within this long, whichever is first: the most a batch adds to latency (default 50ms)",
    )
    p.add_argument(
        "--fetch-wait",
        default="50ms",
        help="the longest the broker may hold a fetch of the worker's consumer before answering empty "
        "(default 50ms; Faust's own 1.5s left partitions unasked for while data waited)",
    )
    p.add_argument(
        "--gpu-first",
        default=None,
        help="while the per-GPU stage has raw messages waiting, the job stage holds off this long at most "
        "(default: a fifth of --job-wait, at most 2s; 0: never), so a job window's merge does not delay anomalies",
    )
    p.add_argument("--loglevel", default="WARNING")
    p.add_argument("--instance", default="0", help="static group member id; give each worker of a group its own")
    add_metrics_arguments(p, "worker")

    p = add("sink", cmd_sink, "store the topics in ClickHouse (exactly once)")
    p.add_argument("--batch-rows", type=int, default=50_000, help="insert when this many rows are pending")
    p.add_argument("--batch-age", type=float, default=1.0, help="insert when the oldest pending row is this old (s)")
    p.add_argument(
        "--idle-exit",
        type=float,
        default=None,
        help="exit after this many seconds without data (a pause for a slow store is not idle)",
    )
    p.add_argument("--instance", default="0", help="static group member id; give each sink of a group its own ('' for dynamic)")
    add_metrics_arguments(p, "sink")

    p = add("alerts", cmd_alerts, "route anomalies to chat and webhooks: grouping, dedup, silences, inhibition, retries")
    p.add_argument("--config", required=True, metavar="FILE", help="alert routing YAML (docs/alerts.md); validated at start")
    p.add_argument("--check", action="store_true", help="validate the configuration, print the routing and exit")
    p.add_argument("--state-dir", default=None, help="router state (default: $HPCINSIGHT_DATA_DIR/alerts)")
    p.add_argument("--reset-state", action="store_true", help="forget the state (what was sent, open groups) and start over")
    p.add_argument(
        "--idle-exit", type=float, default=None, help="exit after this many seconds without data and with nothing left to send"
    )
    add_metrics_arguments(p, "alert router")

    p = add("silence", cmd_silence, "add, list or expire silences of the alert router (through Kafka)")
    from hpcinsight.sinks.alerts.silence_cli import add_cli_arguments

    add_cli_arguments(p)

    p = add("dead-letters", cmd_dead_letters, "list the dead letters, or send them back to their topics once fixed")
    from hpcinsight.sinks.redrive_cli import add_cli_arguments as add_dead_letter_arguments

    add_dead_letter_arguments(p)

    p = add("query", cmd_query, "run a query of the library (sinks/queries/*.sql) or SQL against ClickHouse, read-only")
    p.add_argument("query", nargs="?", help="a library query (see --list) or a SQL SELECT")
    p.add_argument("--list", action="store_true", help="describe the library's queries and their parameters")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="K=V",
        help="query parameter, checked against the query's header and bound server-side; repeatable",
    )
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")

    p = add(
        "diagnose",
        cmd_diagnose,
        "why is a job slow or stuck: suspects with evidence and next steps, correlated "
        "metrics, timeline (from the query library)",
    )
    p.add_argument("job", help="the job id")
    p.add_argument(
        "--since",
        default=None,
        metavar="DURATION",
        help="only the job's last DURATION (90s, 15m, 2h, 1d); default: since it started",
    )
    p.add_argument(
        "--plots",
        default=None,
        metavar="DIR",
        help="also write PNG figures there: per-GPU utilisation, step time per rank, IB throughput per node",
    )
    p.add_argument("--format", choices=("text", "json"), default="text")

    p = add(
        "replay",
        cmd_replay,
        "feed recorded data (step times, GPU utilisation, a scheduler trace) from CSV files "
        "through the real pipeline and print what it found",
    )
    from hpcinsight.harness.replay import add_arguments as add_replay_arguments

    add_replay_arguments(p)

    p = add(
        "whatif",
        cmd_whatif,
        "what a placement or queueing policy would have given on the cluster's jobs: "
        "replay a trace (fill, or with times) or the stored scheduler events under several policies",
    )
    from hpcinsight.whatif_cli import add_arguments as add_whatif_arguments

    add_whatif_arguments(p)

    p = add(
        "serve",
        cmd_serve,
        "the Insight API (REST + OpenAPI), live Server-Sent Events per view, and the unit view "
        "page, fed from the topics; read-only (HPCINSIGHT_API_TOKEN: bearer token)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    p.add_argument("--frame-interval", type=float, default=1.0, help="seconds between live updates of a view (default 1)")
    p.add_argument("--no-store", action="store_true", help="serve the live state only (no query library, no job history)")
    add_metrics_arguments(p, "service")

    p = add("db", cmd_db, "ClickHouse schema: migrate to this build's version (idempotent), or show its status")
    p.add_argument("action", choices=("migrate", "status", "init"), help="migrate (init is the same), or status")

    p = add("kafka", cmd_kafka, "run a local Kafka broker, or a KRaft cluster of several, from Maven Central jars")
    p.add_argument("action", choices=("run", "fetch"), help="run: start and wait for Ctrl-C; fetch: download the jars only")
    p.add_argument(
        "--port", type=int, default=None, help="the broker's port (default: a free one, or the one its data dir last used)"
    )
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="log dirs here, kept on stop; a later run on DIR starts with its data (default: a temporary dir, deleted)",
    )
    p.add_argument(
        "--keep-data", action="store_true", help="keep the data on stop (without --data-dir: in $HPCINSIGHT_DATA_DIR/kafka)"
    )
    p.add_argument(
        "--brokers",
        type=int,
        default=1,
        help="KRaft nodes (broker+controller each); 3: replication 3, min.insync.replicas 2 (default 1)",
    )
    return parser


# The extras (pyproject.toml) a command needs beyond the base install, which has the agent and the
# step client only; and the extra that brings each optional module, for a command whose options
# need one more (diagnose --plots). A command started without them says so in one line.
_COMMAND_EXTRAS: dict[str, tuple[str, ...]] = {
    "worker": ("pipeline",),
    "sink": ("store",),
    "db": ("store",),
    "query": ("store",),
    "diagnose": ("store",),
    "topics": ("store",),
    "serve": ("web",),
    "alerts": ("alerts",),
    "demo": ("all",),
    "eval": ("all",),
    "replay": ("all",),
    "whatif": ("all",),
}
_MODULE_EXTRA = {
    "faust": "pipeline",
    "mode": "pipeline",
    "aiokafka": "pipeline",
    "datasketches": "pipeline",
    "numpy": "pipeline",
    "clickhouse_connect": "store",
    "chdb": "store",
    "pyarrow": "store",
    "rich": "store",
    "fastapi": "web",
    "uvicorn": "web",
    "fastapi_offline": "web",
    "apprise": "alerts",
    "requests": "alerts",
    "matplotlib": "plots",
    "kubernetes": "k8s",
}


def missing_extra(command: str, err: ModuleNotFoundError) -> str | None:
    """The line that tells which extra to install, when ``err`` is a third-party module that an
    extra brings; None for anything else (a missing module of the project itself is a bug)."""
    module = (err.name or "").split(".")[0]
    extras = list(_COMMAND_EXTRAS.get(command, ()))
    if module in _MODULE_EXTRA and _MODULE_EXTRA[module] not in extras and "all" not in extras:
        extras.append(_MODULE_EXTRA[module])
    if not module or module == "hpcinsight" or not extras:
        return None
    names = " and ".join(f"'{e}'" for e in extras)
    return (
        f"hpcinsight {command} needs the {names} extra{'s' if len(extras) > 1 else ''} "
        f"(no module named {module!r} here): pip install 'hpcinsight[{','.join(extras)}]'"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.fn(args)
    except ConfigError as err:
        print(f"hpcinsight: configuration error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # bad arguments or parameters, said in words
        print(f"hpcinsight: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:  # a command run where its extra is not installed
        if (line := missing_extra(args.command, err)) is None:
            raise
        print(line, file=sys.stderr)
        return 2
    except Exception as err:
        from confluent_kafka import KafkaException

        refused: tuple[type[BaseException], ...] = ()
        said: tuple[type[BaseException], ...] = (KafkaException, ConnectionError)
        try:  # the store's errors, where its extra is installed (a base install has no store)
            from clickhouse_connect.driver.exceptions import ClickHouseError

            from hpcinsight.sinks.clickhouse import StoreBusyError
            from hpcinsight.sinks.migrations import SchemaDriftError

            refused, said = (ClickHouseError,), (*said, StoreBusyError, SchemaDriftError)
        except ModuleNotFoundError:
            pass
        try:  # the alert router's, likewise
            from hpcinsight.sinks.alerts.store import StateError

            said = (*said, StateError)
        except ModuleNotFoundError:
            pass
        if isinstance(err, refused):
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            print(f"hpcinsight: ClickHouse refused: {first}", file=sys.stderr)
            return 1
        if isinstance(err, said):
            print(f"hpcinsight: {err}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
