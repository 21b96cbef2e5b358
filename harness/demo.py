"""``hpcinsight demo``: a simulated cluster through the whole real pipeline.

Starts a local Kafka broker (unless ``KAFKA_BOOTSTRAP`` is set), then the sim agent, the
Faust worker and the ClickHouse sink as separate processes, exactly as they would run on
a cluster. After ``--duration`` it waits until the worker and the sink have caught up,
stops them, and prints per-GPU quantiles and the anomalies from ClickHouse. Everything it
started is stopped on exit, Ctrl-C included. The embedded store stays for
``hpcinsight query``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from hpcinsight.core.settings import Settings
from hpcinsight.schemas.catalog import ensure_topics
from hpcinsight.core.kafka import lag, message_count
from hpcinsight.schemas.catalog import ANOMALIES, DEAD_LETTERS, GPU_QUANTILES, GPU_SAMPLES_RAW, GPU_SKETCHES, STORED, Topic

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


def terminate(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM (a clean stop: flush, commit), then SIGKILL if it does not end in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class Processes:
    """Child processes of the demo, each with its log file, stopped in reverse order."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env, self.log_dir = env, log_dir
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "hpcinsight.cli", *args], env={**self.env, **(env or {})}, stdout=log,
                                stderr=subprocess.STDOUT)
        self.children[name] = proc
        return proc

    def stop(self, name: str, timeout: float = 30.0) -> int | None:
        proc = self.children.pop(name, None)
        return None if proc is None else terminate(proc, timeout)

    def stop_all(self) -> None:
        for name in reversed(list(self.children)):
            self.stop(name)

    def check(self) -> None:
        for name, proc in self.children.items():
            if proc.poll() not in (None, 0):
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}; its log ends:\n{tail}")


def start_ui(procs: Processes, port: int) -> str | None:
    """``hpcinsight serve`` beside the pipeline (live from the topics); its URL, or None when off."""
    if port < 0:
        return None
    if port == 0:
        from hpcinsight.deploy.local.kafka import free_ports

        port = free_ports(1)[0]
    procs.start("serve", "serve", "--host", "127.0.0.1", "--port", str(port))
    return f"http://127.0.0.1:{port}/"


def start_broker(stack: ExitStack, settings: Settings, console: Console) -> Settings:
    """``settings`` with a local Kafka broker started on ``stack`` unless ``KAFKA_BOOTSTRAP`` names one;
    the catalog's topics created."""
    if not settings.kafka.bootstrap:
        from hpcinsight.deploy.local.kafka import KAFKA_VERSION, LocalKafka

        with console.status(f"starting Apache Kafka {KAFKA_VERSION} (KRaft, loopback) ..."):
            kafka = stack.enter_context(LocalKafka())
        settings = settings.with_bootstrap(kafka.bootstrap)
        console.print(f"[green]Kafka {KAFKA_VERSION}[/] serving at {kafka.bootstrap}")
    ensure_topics(settings.kafka.client_config(), settings.kafka.topic_prefix)
    return settings


def child_env(settings: Settings) -> dict[str, str]:
    """The environment of the pipeline's processes: the same broker, prefix, data dir and store as ``settings``."""
    env = {**os.environ, "KAFKA_BOOTSTRAP": settings.kafka.bootstrap or "", "PYTHONUNBUFFERED": "1",
           "HPCINSIGHT_DATA_DIR": str(settings.data_dir), "HPCINSIGHT_TOPIC_PREFIX": settings.kafka.topic_prefix}
    if settings.clickhouse.embedded:
        env["CLICKHOUSE_URL"] = settings.clickhouse.url
    return env


def wait_drained(procs: Processes, settings: Settings, worker_inputs: list[Topic], job_wait_s: float,
                 timeout_s: float = 120.0, settled: Callable[[], bool] | None = None) -> None:
    """Wait until the worker has read ``worker_inputs``, its job stage has let its last windows go and
    the sink has stored every stored topic; a child that dies meanwhile raises with its log. The job
    stage's last windows wait ``job_wait_s`` for GPUs that stopped, unless ``settled()`` (asked while
    the sink keeps storing) says earlier that they are all out."""
    conf, prefix = settings.kafka.client_config(), settings.kafka.topic_prefix
    deadline = time.monotonic() + timeout_s

    def drain(group: str, topics: list[Topic], what: str) -> None:
        names = [t.full_name(prefix) for t in topics]
        while lag(conf, f"{prefix}{group}", names) > 0:
            procs.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not catch up within {timeout_s:g} s; see its log in {procs.log_dir}")
            time.sleep(0.5)

    drain("worker", worker_inputs, "the Faust worker")
    job_stage_done = time.monotonic() + job_wait_s + 1.5
    while time.monotonic() < job_stage_done:
        if settled is not None:
            drain("clickhouse-sink", STORED, "the sink")
            if settled():
                break
        time.sleep(1.0)
    drain("clickhouse-sink", STORED, "the sink")


@contextmanager
def _cleanup_stack() -> Iterator[ExitStack]:
    """The demo's clean-up stack, which SIGTERM unwinds as Ctrl-C does.

    SIGTERM (``kill``, a service manager, ``timeout``) would otherwise end the demo at once and leave
    its children and the broker it started running, holding the store's lock and the broker's port.
    Once the unwinding has begun (for that or any other reason) SIGTERM is ignored until it ends,
    so none can cut the clean-up short."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        with ExitStack() as stack:
            yield stack
        return

    def leave(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        with ExitStack() as stack:
            try:
                yield stack
            finally:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(settings: Settings, options: DemoOptions) -> int:
    console = Console()
    started_wall = time.time()
    with _cleanup_stack() as stack:
        settings = start_broker(stack, settings, console)
        conf = settings.kafka.client_config()
        for key, value in settings.describe().items():
            console.print(f"  {key}: {value}")

        procs = Processes(child_env(settings), settings.data_dir / "logs")
        stack.callback(procs.stop_all)

        ticks = max(1, int(options.duration_s / options.interval_s))
        procs.start("worker", "worker", "--windows", options.windows, "--since-start-every", "10s", "--checkpoint-every", "10s",
                    "--job-wait", f"{JOB_WAIT_S:g}s", env=worker_env(settings))
        procs.start("sink", "sink")
        ui_url = start_ui(procs, options.ui_port)
        if ui_url:
            needs_token = os.environ.get("HPCINSIGHT_API_TOKEN") or os.environ.get("HPCINSIGHT_API_TOKEN_FILE")
            console.print(f"[bold]unit view, live while the demo runs: {ui_url}[/]"
                          + (" (bearer token: HPCINSIGHT_API_TOKEN)" if needs_token else ""))
        from hpcinsight.harness.alerts_demo import DemoAlerts

        alerts = DemoAlerts.prepare(settings, options.webhook, options.alerts_config, procs.env)
        if alerts is not None:
            procs.start("alerts", *alerts.args())
        # --scheduler sim: the job, its user, team and zones, so the tables group by them
        agent_args = ["agent", "--backend", "sim", "--ib", "--scheduler", "sim", "--nodes", str(options.nodes),
                      "--gpus", str(options.gpus), "--seed", str(options.seed), "--interval", str(options.interval_s),
                      "--speed", str(options.speed), "--ticks", str(ticks)]
        for spec in options.idle_specs():
            agent_args += ["--idle", spec]
        for flag, specs in (("--xid", options.xid), ("--fault", options.faults), ("--ib-fault", options.ib_faults)):
            for spec in specs:
                agent_args += [flag, spec]
        agent = procs.start("agent", *agent_args)
        console.print(f"simulating {options.nodes} nodes x {options.gpus} GPUs, idle GPU(s): {', '.join(options.idle_specs())}")
        if not options.idle and not default_idle_end_s(options)[1]:
            console.print(f"[yellow]--duration {options.duration_s:g} is short for windows {options.windows}: the run may end "
                          "before the idle GPU's anomalies resolve (the last windows close only on later samples)[/]")

        watched = {
            label: t.full_name(settings.kafka.topic_prefix)
            for label, t in (("samples", GPU_SAMPLES_RAW), ("quantiles", GPU_QUANTILES), ("anomalies", ANOMALIES), ("dead", DEAD_LETTERS))
        }
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[counts]}"),
                      TimeRemainingColumn(), console=console) as progress:
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
                alerts.wait(settings, procs.check)
                procs.stop("alerts")

        from hpcinsight.sinks.query import execute, make_console, render
        from hpcinsight.sinks.clickhouse import connect

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
