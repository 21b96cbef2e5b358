"""Run a real Apache Kafka broker (KRaft, single node) on loopback, without Docker.

Tests and local development of hpcinsight need a genuine broker: fakes drift from the
wire protocol and a Docker engine is not available on every CI runner or HPC login node.
The broker jars come from Maven Central through ``pom.xml`` next to this file, are
resolved once into a per-user cache and started as a plain ``java`` child process.

CLI::

    python -m deploy.local.kafka run     # prints KAFKA_BOOTSTRAP=127.0.0.1:<port>, Ctrl-C stops
    python -m deploy.local.kafka fetch   # resolves the jars and prints their directory

This module deliberately imports nothing from the rest of hpcinsight so that the
deployment tooling stays usable on its own.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from types import TracebackType

POM = Path(__file__).with_name("pom.xml")


def _pom_kafka_version() -> str:
    """Read ``<kafka.version>`` from the pom so the version is pinned in one place only."""
    node = ET.parse(POM).find("{http://maven.apache.org/POM/4.0.0}properties/"
                              "{http://maven.apache.org/POM/4.0.0}kafka.version")
    version = (node.text or "").strip() if node is not None else ""
    if not version:
        raise RuntimeError(f"{POM} has no <kafka.version> property")
    return version


KAFKA_VERSION = _pom_kafka_version()


class KafkaLaunchError(RuntimeError):
    """The broker could not be resolved, formatted, started or reached."""


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _java() -> str:
    """Prefer ``$JAVA_HOME/bin/java`` (what CI setup actions export), else ``java`` on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home, "bin", "java"), os.X_OK):
        return str(Path(home, "bin", "java"))
    java = shutil.which("java")
    if java is None:
        raise KafkaLaunchError("java not found (set JAVA_HOME or put a Java 11+ JRE on PATH)")
    return java


def ensure_jars(cache_dir: Path | None = None) -> Path:
    """Return a directory holding every jar the broker needs, resolving them once.

    ``cache_dir`` is the cache root (default ``$HPCINSIGHT_CACHE_DIR`` or
    ``~/.cache/hpcinsight``); the jars live in ``<root>/kafka-<version>/lib``. Maven
    copies into a temporary sibling that is renamed into place only after it succeeded,
    so an interrupted or failed resolve never leaves a half-filled cache behind, and two
    concurrent resolves simply let the first rename win.
    """
    root = cache_dir or Path(os.environ.get("HPCINSIGHT_CACHE_DIR")
                             or Path.home() / ".cache" / "hpcinsight")
    lib = Path(root).expanduser() / f"kafka-{KAFKA_VERSION}" / "lib"
    if (lib / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
        return lib
    _java()  # a cache is useless without java: fail before the slow download
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaLaunchError("mvn not found on PATH; install Apache Maven to fetch the "
                               f"Kafka {KAFKA_VERSION} jars (needed once, then cached in {lib})")
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="lib.partial-", dir=lib.parent))
    try:
        # cwd=tmp: Maven must not write anything (target/, logs) into the source tree.
        proc = subprocess.run(
            [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(POM),
             "dependency:copy-dependencies", f"-DoutputDirectory={tmp}",
             "-DincludeScope=runtime"],
            cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0 or not (tmp / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
            raise KafkaLaunchError(f"mvn failed to resolve Kafka {KAFKA_VERSION} "
                                   f"(exit {proc.returncode}):\n{_tail(proc.stdout)}")
        try:
            tmp.rename(lib)
        except OSError:
            if not lib.is_dir():  # not "someone else won the race": a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return lib


def free_ports(n: int) -> list[int]:
    """Let the kernel pick ``n`` distinct free loopback ports (held open together)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _cluster_id() -> str:
    """A random 22-char base64url UUID, the form ``kafka-storage random-uuid`` prints.

    Kafka's own generator rejects ids starting with ``-`` because the CLI would parse
    them as an option; do the same.
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


_LOG4J = """\
# WARN keeps kafka.log small; the broker is chatty at INFO.
log4j.rootLogger=WARN, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
"""


class LocalKafka:
    """A single-node KRaft Kafka broker (broker+controller in one JVM) on 127.0.0.1.

    Use as a context manager or call :meth:`start` / :meth:`stop`. The JVM runs in its
    own session so a Ctrl-C aimed at the parent does not kill it mid-shutdown; an atexit
    hook stops it if the interpreter exits without :meth:`stop`.
    """

    def __init__(self, workdir: Path | None = None, port: int | None = None,
                 cache_dir: Path | None = None, heap: str = "512m") -> None:
        self._workdir = Path(workdir) if workdir is not None else None
        self._port = port
        self._cache_dir = cache_dir
        self._heap = heap
        self._owns_workdir = False
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap.servers``; known once a port is chosen."""
        if self._port is None:
            raise KafkaLaunchError("LocalKafka has no port yet; call start() first")
        return f"127.0.0.1:{self._port}"

    @property
    def pid(self) -> int | None:
        """PID of the broker JVM while it runs (for diagnostics and tests)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def workdir(self) -> Path | None:
        return self._workdir

    def _write_config(self, cport: int) -> tuple[Path, Path]:
        assert self._workdir is not None
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{cport}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self._port},CONTROLLER://127.0.0.1:{cport}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self._port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self._workdir / "data"),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Small-machine sizing (2-core CI): fewer threads, and a 32 MiB instead of a
            # 128 MiB log-cleaner buffer so a 512m heap has room to spare.
            "num.network.threads": "2",
            "num.io.threads": "2",
            "log.cleaner.dedupe.buffer.size": str(32 * 1024 * 1024),
        }
        server = self._workdir / "server.properties"
        server.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        log4j = self._workdir / "log4j.properties"
        log4j.write_text(_LOG4J)
        return server, log4j

    def start(self, timeout: float = 90.0) -> str:
        """Format storage, launch the JVM and wait until it serves metadata.

        Returns the bootstrap address. On any failure the JVM is stopped and a
        :class:`KafkaLaunchError` carrying the tail of ``kafka.log`` is raised.
        """
        if self._proc is not None:
            return self.bootstrap
        deadline = time.monotonic() + timeout
        lib = ensure_jars(self._cache_dir)
        java = _java()
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="hpcinsight-kafka-"))
            self._owns_workdir = True
        self._workdir.mkdir(parents=True, exist_ok=True)
        if self._port is None:
            self._port, cport = free_ports(2)
        else:
            cport = next(p for p in free_ports(2) if p != self._port)
        server, log4j = self._write_config(cport)
        jvm = [java, f"-Xms{self._heap}", f"-Xmx{self._heap}", "-XX:+UseSerialGC",
               "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
               f"-Dlog4j.configuration=file:{log4j}", "-cp", str(lib / "*")]
        if not (self._workdir / "data" / "meta.properties").exists():
            fmt = subprocess.run(
                [*jvm, "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(server)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                timeout=max(deadline - time.monotonic(), 1.0))
            if fmt.returncode != 0:
                self.stop()  # drops the tempdir we created
                raise KafkaLaunchError(f"kafka-storage format failed:\n{_tail(fmt.stdout)}")
        with open(self._workdir / "kafka.log", "ab") as log:
            self._proc = subprocess.Popen(
                [*jvm, "kafka.Kafka", str(server)], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        atexit.register(self.stop)
        try:
            self._wait_ready(deadline)
        except BaseException:
            self.stop()  # also on KeyboardInterrupt: never leak a half-started JVM
            raise
        return self.bootstrap

    def _log_tail(self) -> str:
        assert self._workdir is not None
        try:
            return _tail((self._workdir / "kafka.log").read_text(errors="replace"))
        except OSError:
            return "(no kafka.log)"

    def _wait_ready(self, deadline: float) -> None:
        """Poll until a metadata request lists the broker, the JVM dies, or time runs out.

        A cheap TCP probe runs first so librdkafka does not spam connection-refused
        errors while the JVM is still booting.
        """
        from confluent_kafka.admin import AdminClient  # only needed here; `fetch` works without

        assert self._proc is not None
        admin: AdminClient | None = None
        while True:
            if self._proc.poll() is not None:
                raise KafkaLaunchError(f"Kafka exited with code {self._proc.returncode} "
                                       f"during startup; kafka.log tail:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                raise KafkaLaunchError(f"Kafka did not serve metadata on {self.bootstrap} in "
                                       f"time; kafka.log tail:\n{self._log_tail()}")
            try:
                if admin is None:
                    socket.create_connection(("127.0.0.1", self._port), timeout=1).close()
                    admin = AdminClient({"bootstrap.servers": self.bootstrap})
                if admin.list_topics(timeout=2).brokers:
                    return
            except Exception:  # refused socket or KafkaException: not ready yet
                pass
            time.sleep(0.2)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the broker, wait for its clean shutdown, SIGKILL after ``timeout``.

        Idempotent; also removes the workdir when this object created it.
        """
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # the group: also any JVM helper children
                proc.wait(timeout)
            except ProcessLookupError:  # already gone: just reap it
                proc.wait()
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._owns_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir, self._owns_workdir = None, False

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``run``: serve a broker until SIGINT/SIGTERM; ``fetch``: only resolve the jars."""
    parser = argparse.ArgumentParser(prog="python -m deploy.local.kafka", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "fetch"])
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--heap", default="512m")
    parser.add_argument("--timeout", type=float, default=90.0)
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(ensure_jars(args.cache_dir))
            return 0
        stop_requested = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop_requested.set())
        kafka = LocalKafka(args.workdir, args.port, args.cache_dir, args.heap)
        print(f"KAFKA_BOOTSTRAP={kafka.start(args.timeout)}", flush=True)
        try:
            while not stop_requested.wait(1.0):
                if kafka._proc is not None and kafka._proc.poll() is not None:
                    print(f"Kafka exited unexpectedly:\n{kafka._log_tail()}", file=sys.stderr)
                    return 1
        finally:
            kafka.stop()
        return 0
    except KafkaLaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C during `fetch`; the cache stays untouched
        return 130


if __name__ == "__main__":
    sys.exit(main())
