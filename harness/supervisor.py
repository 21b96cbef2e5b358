"""The process supervisor: the pipeline's components as child processes, started as the operator would.

``demo``, ``eval`` and ``replay`` all run the real pipeline (a local Kafka broker unless
``KAFKA_BOOTSTRAP`` names one, then ``hpcinsight worker``, ``sink``, ``agent`` ... as processes);
this module holds what they share: starting the broker and the children with one environment,
waiting until the worker and the sink have caught up, and stopping everything on exit, SIGTERM
included. It knows nothing of what a run feeds or reads back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from rich.console import Console

from hpcinsight.core.kafka import lag
from hpcinsight.core.settings import Settings
from hpcinsight.schemas.catalog import STORED, Topic, ensure_configured_topics


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
    """Child processes of a run (``hpcinsight <command> ...``), each with its log file, stopped in reverse order."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env, self.log_dir = env, log_dir
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpcinsight.cli", *args], env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT
        )
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


def start_broker(stack: ExitStack, settings: Settings, console: Console) -> Settings:
    """``settings`` with a local Kafka broker started on ``stack`` unless ``KAFKA_BOOTSTRAP`` names one;
    the catalog's topics created."""
    if not settings.kafka.bootstrap:
        from hpcinsight.deploy.local.kafka import KAFKA_VERSION, LocalKafka

        with console.status(f"starting Apache Kafka {KAFKA_VERSION} (KRaft, loopback) ..."):
            kafka = stack.enter_context(LocalKafka())
        settings = settings.with_bootstrap(kafka.bootstrap)
        console.print(f"[green]Kafka {KAFKA_VERSION}[/] serving at {kafka.bootstrap}")
    ensure_configured_topics(settings.kafka)
    return settings


def child_env(settings: Settings) -> dict[str, str]:
    """The environment of the pipeline's processes: the same broker, prefix, data dir and store as ``settings``."""
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": settings.kafka.bootstrap or "",
        "PYTHONUNBUFFERED": "1",
        "HPCINSIGHT_DATA_DIR": str(settings.data_dir),
        "HPCINSIGHT_TOPIC_PREFIX": settings.kafka.topic_prefix,
    }
    if settings.clickhouse.embedded:
        env["CLICKHOUSE_URL"] = settings.clickhouse.url
    return env


def wait_drained(
    procs: Processes,
    settings: Settings,
    worker_inputs: list[Topic],
    job_wait_s: float,
    timeout_s: float = 120.0,
    settled: Callable[[], bool] | None = None,
) -> None:
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
def cleanup_stack() -> Iterator[ExitStack]:
    """A run's clean-up stack, which SIGTERM unwinds as Ctrl-C does.

    SIGTERM (``kill``, a service manager, ``timeout``) would otherwise end the run at once and leave
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
