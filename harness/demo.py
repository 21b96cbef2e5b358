"""``hpcinsight demo``: a simulated cluster through the whole real pipeline.

Starts a local Kafka broker (unless ``KAFKA_BOOTSTRAP`` is set), then the sim agent, the
Faust worker and the ClickHouse sink as separate processes, exactly as they would run on
a cluster. After ``--duration`` it waits until the worker and the sink have caught up,
stops them, and prints per-GPU quantiles and the anomalies from ClickHouse. Everything it
started is stopped on exit, Ctrl-C included. The embedded store stays for
``hpcinsight query``. The processes are run by :mod:`hpcinsight.harness.supervisor`, as for
``eval`` and ``replay``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from hpcinsight.core.kafka import message_count
from hpcinsight.core.settings import Settings
from hpcinsight.harness.supervisor import Processes, child_env, cleanup_stack, start_broker, wait_drained
from hpcinsight.schemas.catalog import ANOMALIES, DEAD_LETTERS, GPU_QUANTILES, GPU_SAMPLES_RAW, GPU_SKETCHES

JOB_WAIT_S = 2.0


@dataclass(frozen=True)
class DemoOptions:
    duration_s: float = 90.0
    nodes: int = 4
    gpus: int = 8
    idle: list[str] = field(default_factory=list)
    interval_s: float = 1.0
    speed: float = 1.0
    windows: str = "20s/10s,1m/10s"
    xid: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    ib_faults: list[str] = field(default_factory=list)
    seed: int = 0
    webhook: str | None = None  # post alerts here (the router runs beside the worker and sink)
    alerts_config: str | None = None  # or route them with this alert configuration
    ui_port: int = 0  # the unit view (hpcinsight serve) while the demo runs: this port, 0 a free one, -1 none

    def idle_specs(self) -> list[str]:
        """By default one GPU idles from the start, then recovers, so the demo shows its anomalies
        firing and then resolving (see :func:`default_idle_end_s` for when it recovers)."""
        node, gpu = min(1, self.nodes - 1), min(3, self.gpus - 1)  # GPU 3 of the second node, where there is one
        return self.idle or [f"{node}:{gpu}@0-{default_idle_end_s(self)[0]:g}"]


#: The detectors' spans for the demo's run of a minute or two. Their defaults are for production
#: windows (an idle GPU's incident resolves after three good windows and 10 min without an idle one,
#: so a diurnal dip is one incident): the demo's idle GPU would still be open when it ends. The demo
#: shows one fire and one resolution, so its worker resolves after two good windows and no quiet time
#: (unless HPCINSIGHT_CONFIG names the user's own settings).
DEMO_DETECTORS = """\
[detectors.gpu_underused]
resolve_after = 2
quiet_s = 0

[detectors.gpu_outlier]
quiet_s = 0
"""


def demo_detectors() -> dict[str, dict[str, float]]:
    """:data:`DEMO_DETECTORS` as the worker reads them."""
    import tomllib

    return tomllib.loads(DEMO_DETECTORS)["detectors"]


def worker_env(settings: Settings) -> dict[str, str]:
    """The demo's worker runs with :data:`DEMO_DETECTORS` unless the user gave a configuration file."""
    if os.environ.get("HPCINSIGHT_CONFIG"):
        return {}
    path = settings.data_dir / "demo-detectors.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DEMO_DETECTORS)
    return {"HPCINSIGHT_CONFIG": str(path)}


def default_idle_end_s(options: DemoOptions, lateness_s: float | None = None) -> tuple[float, bool]:
    """When the demo's idle GPU recovers (seconds into the run), and whether the run is long enough
    for what it raises to both fire and resolve.

    Windows close on event time: a window closes when a sample ``lateness_s`` past its end arrives, so
    the run's last windows never close. Judged on the shortest window (size S, hop H), a detector that
    wants two windows in a row out of line (gpu_outlier) fires once two windows of mostly idle samples
    have closed, about S + 2H after the start. To resolve, it wants two windows in a row entirely after
    the recovery (the window that holds the recovery does not count: it is out of line on its mean);
    the first starts up to H after it, so the second ends up to S + 2H after it and closes
    ``lateness_s`` later (the worker's default, which the demo runs with), and the run's last sample
    is one interval before its end (one more interval of slack). The recovery is placed as late as
    that allows, never before firing can happen."""
    from hpcinsight.streams.app import WorkerOptions, parse_windows

    if lateness_s is None:
        lateness_s = WorkerOptions().lateness_s

    shortest = min(parse_windows(options.windows), key=lambda w: w.size_ms)
    size_s, hop_s = shortest.size_ms / 1000, shortest.hop_ms / 1000
    fire_s = size_s + 2 * hop_s
    resolve_s = size_s + 2 * hop_s + lateness_s + 2 * options.interval_s
    return max(fire_s, options.duration_s - resolve_s), fire_s + resolve_s <= options.duration_s


def rows_flagged(columns: list[str], rows: list[tuple]) -> list[tuple]:
    """(node, gpu) of the rows of the gpu_quantiles query that carry an anomaly."""
    node, gpu, flags = columns.index("node"), columns.index("gpu"), columns.index("anomalies")
    return [(r[node], r[gpu]) for r in rows if r[flags]]


def start_ui(procs: Processes, port: int) -> str | None:
    """``hpcinsight serve`` beside the pipeline (live from the topics); its URL, or None when off."""
    if port < 0:
        return None
    if port == 0:
        from hpcinsight.deploy.local.kafka import free_ports

        port = free_ports(1)[0]
    procs.start("serve", "serve", "--host", "127.0.0.1", "--port", str(port))
    return f"http://127.0.0.1:{port}/"


def run_demo(settings: Settings, options: DemoOptions) -> int:
    console = Console()
    started_wall = time.time()
    with cleanup_stack() as stack:
        settings = start_broker(stack, settings, console)
        conf = settings.kafka.client_config()
        for key, value in settings.describe().items():
            console.print(f"  {key}: {value}")

        procs = Processes(child_env(settings), settings.data_dir / "logs")
        stack.callback(procs.stop_all)

        ticks = max(1, int(options.duration_s / options.interval_s))
        procs.start(
            "worker",
            "worker",
            "--windows",
            options.windows,
            "--since-start-every",
            "10s",
            "--checkpoint-every",
            "10s",
            "--job-wait",
            f"{JOB_WAIT_S:g}s",
            env=worker_env(settings),
        )
        procs.start("sink", "sink")
        ui_url = start_ui(procs, options.ui_port)
        if ui_url:
            needs_token = os.environ.get("HPCINSIGHT_API_TOKEN") or os.environ.get("HPCINSIGHT_API_TOKEN_FILE")
            console.print(
                f"[bold]unit view, live while the demo runs: {ui_url}[/]"
                + (" (bearer token: HPCINSIGHT_API_TOKEN)" if needs_token else "")
            )
        from hpcinsight.harness.alerts_demo import DemoAlerts

        alerts = DemoAlerts.prepare(settings, options.webhook, options.alerts_config, procs.env)
        if alerts is not None:
            procs.start("alerts", *alerts.args())
        # --scheduler sim: the job, its user, team and zones, so the tables group by them
        agent_args = [
            "agent",
            "--backend",
            "sim",
            "--ib",
            "--scheduler",
            "sim",
            "--nodes",
            str(options.nodes),
            "--gpus",
            str(options.gpus),
            "--seed",
            str(options.seed),
            "--interval",
            str(options.interval_s),
            "--speed",
            str(options.speed),
            "--ticks",
            str(ticks),
            # an overrun tick is not skipped: on a loaded machine the run falls behind instead, and
            # its samples (the idle GPU's window, the faults' seconds) are those of any other run
            "--catch-up",
        ]
        for spec in options.idle_specs():
            agent_args += ["--idle", spec]
        for flag, specs in (("--xid", options.xid), ("--fault", options.faults), ("--ib-fault", options.ib_faults)):
            for spec in specs:
                agent_args += [flag, spec]
        agent = procs.start("agent", *agent_args)
        console.print(f"simulating {options.nodes} nodes x {options.gpus} GPUs, idle GPU(s): {', '.join(options.idle_specs())}")
        if not options.idle and not default_idle_end_s(options)[1]:
            console.print(
                f"[yellow]--duration {options.duration_s:g} is short for windows {options.windows}: the run may end "
                "before the idle GPU's anomalies resolve (the last windows close only on later samples)[/]"
            )

        watched = {
            label: t.full_name(settings.kafka.topic_prefix)
            for label, t in (
                ("samples", GPU_SAMPLES_RAW),
                ("quantiles", GPU_QUANTILES),
                ("anomalies", ANOMALIES),
                ("dead", DEAD_LETTERS),
            )
        }
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("sampling", total=options.duration_s / options.speed, counts="")
            while agent.poll() is None:
                procs.check()
                counts = message_count(conf, list(watched.values()))
                shown = " · ".join(f"{name} {counts[full]}" for name, full in watched.items())
                progress.update(task, completed=min(time.time() - started_wall, options.duration_s / options.speed), counts=shown)
                time.sleep(1.0)
            progress.update(task, completed=options.duration_s / options.speed)
        procs.check()

        with console.status("waiting for the worker and the sink to catch up ..."):
            wait_drained(procs, settings, [GPU_SAMPLES_RAW, GPU_SKETCHES], JOB_WAIT_S)
            procs.stop("sink")
            procs.stop("worker")
            procs.stop("serve")  # before the store is read here: nothing else may hold it then
        if alerts is not None:
            with console.status("waiting for the alert router to tell everything ..."):
                alerts.wait(settings, procs)
                procs.stop("alerts")

        from hpcinsight.sinks.clickhouse import connect
        from hpcinsight.sinks.query import execute, make_console, render

        client = connect(settings.clickhouse)
        try:
            since = str(int(time.time() - started_wall + 60 + options.duration_s))
            columns_q, rows_q = execute(client, "gpu_quantiles", {"since_s": since})
            render(columns_q, rows_q, "table", title="GPU utilisation per GPU (%), from ClickHouse")
            columns_j, rows_j = execute(client, "job_quantiles", {"since_s": since})
            render(columns_j, rows_j, "table", title="GPU utilisation per job since it started (%), merged GPU sketches")
            columns, rows = execute(client, "anomalies", {"since_s": since})
            render(columns, rows, "table", title="Anomalies")
            _, counts = execute(client, "counts", {})
        finally:
            client.close()
        console = make_console()
        flagged = sorted({f"{r[0]} GPU {r[1]}" for r in rows_flagged(columns_q, rows_q)})
        console.print("rows stored: " + ", ".join(f"{t} {n}" for t, n in counts))
        console.print(f"GPUs flagged: {', '.join(flagged) or 'none'}")
        if alerts is not None:
            alerts.report(console)
        console.print(f"logs: {procs.log_dir}")
        console.print(f"store: {settings.clickhouse.display_url}")
        console.print("query it again with: [bold]hpcinsight query gpu_quantiles[/] (or `hpcinsight query list`)")
    return 0
