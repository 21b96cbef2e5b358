"""Run a real Apache Kafka broker (KRaft, single node) on loopback, without Docker.

Tests and local development of hpcinsight need a genuine broker: fakes drift from the
wire protocol and a Docker engine is not available on every CI runner or HPC login node.
The broker jars come from Maven Central through ``pom.xml`` next to this file, are
resolved once into a per-user cache and started as a plain ``java`` child process.

CLI::

    python -m hpcinsight.deploy.local.kafka run     # prints KAFKA_BOOTSTRAP=127.0.0.1:<port>, Ctrl-C stops
    python -m hpcinsight.deploy.local.kafka run --data-dir D --port 9092   # keeps D; run again: same data
    python -m hpcinsight.deploy.local.kafka run --brokers 3                # three KRaft nodes, replication 3
    python -m hpcinsight.deploy.local.kafka fetch   # resolves the jars and prints their directory

A broker given a data directory keeps it on stop (and after kill -9) and starts again from it
on the same ports (recorded in ``ports.json`` there), so a test can stop, kill or pause a
broker and bring it back with its log: the faults the pipeline must ride out.

This module deliberately imports nothing from the rest of hpcinsight so that the
deployment tooling stays usable on its own.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import json
import os
import re
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
    node = ET.parse(POM).find("{http://maven.apache.org/POM/4.0.0}properties/{http://maven.apache.org/POM/4.0.0}kafka.version")
    version = (node.text or "").strip() if node is not None else ""
    if not version:
        raise RuntimeError(f"{POM} has no <kafka.version> property")
    return version


def _kafka_version() -> str:
    """``$KAFKA_VERSION`` (any Apache Kafka release on Maven Central, e.g. 4.1.1) or the pom's.

    The one setting that picks the broker of the tests, the demo and the benches; the pom's
    ``<kafka.version>`` stays the default."""
    version = os.environ.get("KAFKA_VERSION", "").strip()
    if not version:
        return _pom_kafka_version()
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise ValueError(f"KAFKA_VERSION must look like 3.9.1 or 4.1.1, got {version!r}")
    return version


KAFKA_VERSION = _kafka_version()


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
    root = cache_dir or Path(os.environ.get("HPCINSIGHT_CACHE_DIR") or Path.home() / ".cache" / "hpcinsight")
    lib = Path(root).expanduser() / f"kafka-{KAFKA_VERSION}" / "lib"
    if (lib / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
        return lib
    _java()  # a cache is useless without java: fail before the slow download
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaLaunchError(
            "mvn not found on PATH; install Apache Maven to fetch the "
            f"Kafka {KAFKA_VERSION} jars (needed once, then cached in {lib})"
        )
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="lib.partial-", dir=lib.parent))
    try:
        # cwd=tmp: Maven must not write anything (target/, logs) into the source tree.
        proc = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-Dstyle.color=never",
                "-f",
                str(POM),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={tmp}",
                f"-Dkafka.version={KAFKA_VERSION}",
                "-DincludeScope=runtime",
            ],
            cwd=tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if proc.returncode != 0 or not (tmp / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
            raise KafkaLaunchError(f"mvn failed to resolve Kafka {KAFKA_VERSION} (exit {proc.returncode}):\n{_tail(proc.stdout)}")
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

# Kafka 4.x logs through Log4j 2, which reads its own file (named by another property).
_LOG4J2 = """\
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
"""


class LocalKafka:
    """One KRaft Kafka node (broker+controller in one JVM) on 127.0.0.1.

    Alone it is a single-node cluster; :class:`LocalKafkaCluster` builds several that vote
    together. Use as a context manager or call :meth:`start` / :meth:`stop`. The JVM runs
    in its own session so a Ctrl-C aimed at the parent does not kill it mid-shutdown; an
    atexit hook stops it if the interpreter exits without :meth:`stop`.

    Data: without ``workdir`` a temporary directory is made and removed on :meth:`stop`
    (unless ``keep_data``); a given ``workdir`` is never removed. Ports, once chosen, are
    written to ``ports.json`` in the workdir and reused by a later start on it, so clients
    and the other voters find the node where it was. :meth:`kill`, :meth:`pause` and
    :meth:`resume` are the faults (SIGKILL, SIGSTOP, SIGCONT); :meth:`start` after a stop or
    a kill brings the node back with its log.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        port: int | None = None,
        cache_dir: Path | None = None,
        heap: str = "512m",
        *,
        keep_data: bool = False,
        node_id: int = 1,
        controller_port: int | None = None,
        voters: str | None = None,
        cluster_id: str | None = None,
        overrides: dict[str, str] | None = None,
        format_args: tuple[str, ...] = (),
    ) -> None:
        self._workdir = Path(workdir) if workdir is not None else None
        self._port = port
        self._cport = controller_port
        self._cache_dir = cache_dir
        self._heap = heap
        self._keep_data = keep_data
        self._node_id = node_id
        self._voters = voters
        self._cluster_id = cluster_id
        self._overrides = dict(overrides or {})
        self._format_args = tuple(format_args)  # e.g. --add-scram for SASL users (hpcinsight.deploy.local.security)
        self._owns_workdir = False
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap.servers``; known once a port is chosen."""
        if self._port is None:
            raise KafkaLaunchError("LocalKafka has no port yet; call start() first")
        return f"127.0.0.1:{self._port}"

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def pid(self) -> int | None:
        """PID of the broker JVM while it runs (for diagnostics and tests)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def workdir(self) -> Path | None:
        return self._workdir

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _choose_ports(self) -> None:
        """The ports of an earlier run on this workdir, else the given ones, else free ones."""
        assert self._workdir is not None
        saved = self._workdir / "ports.json"
        if saved.is_file():
            known = json.loads(saved.read_text())
            self._port = self._port or int(known["port"])
            self._cport = self._cport or int(known["controller_port"])
        if self._port is None or self._cport is None:
            free = [p for p in free_ports(3) if p not in (self._port, self._cport)]
            self._port = self._port or free.pop()
            self._cport = self._cport or free.pop()
        saved.write_text(json.dumps({"port": self._port, "controller_port": self._cport}))

    def _write_config(self) -> tuple[Path, Path]:
        assert self._workdir is not None
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self._node_id),
            "controller.quorum.voters": self._voters or f"{self._node_id}@127.0.0.1:{self._cport}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self._port},CONTROLLER://127.0.0.1:{self._cport}",
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
            **self._overrides,
        }
        server = self._workdir / "server.properties"
        server.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        log4j = self._workdir / "log4j.properties"
        log4j.write_text(_LOG4J)
        (self._workdir / "log4j2.properties").write_text(_LOG4J2)
        return server, log4j

    def launch(self, timeout: float = 90.0) -> None:
        """Write the configuration, format the log dir if new, and start the JVM (not waiting
        for it to serve: the nodes of a cluster only serve once a quorum of them runs)."""
        if self.running:
            return
        self._proc = None
        deadline = time.monotonic() + timeout
        lib = ensure_jars(self._cache_dir)
        java = _java()
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="hpcinsight-kafka-"))
            self._owns_workdir = not self._keep_data
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._choose_ports()
        server, log4j = self._write_config()
        jvm = [
            java,
            f"-Xms{self._heap}",
            f"-Xmx{self._heap}",
            "-XX:+UseSerialGC",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{log4j}",
            f"-Dlog4j2.configurationFile={log4j.with_name('log4j2.properties')}",
            "-cp",
            str(lib / "*"),
        ]
        if not (self._workdir / "data" / "meta.properties").exists():
            fmt = subprocess.run(
                [
                    *jvm,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    self._cluster_id or _cluster_id(),
                    "-c",
                    str(server),
                    *self._format_args,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=max(deadline - time.monotonic(), 1.0),
            )
            if fmt.returncode != 0:
                self.stop()  # drops the tempdir we created
                raise KafkaLaunchError(f"kafka-storage format failed:\n{_tail(fmt.stdout)}")
        with open(self._workdir / "kafka.log", "ab") as log:
            self._proc = subprocess.Popen(
                [*jvm, "kafka.Kafka", str(server)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        atexit.register(self.stop)

    def start(self, timeout: float = 90.0, brokers: int = 1) -> str:
        """Launch (formatting storage if new) and wait until it serves metadata listing
        ``brokers`` brokers.

        Returns the bootstrap address. On any failure the JVM is stopped and a
        :class:`KafkaLaunchError` carrying the tail of ``kafka.log`` is raised.
        """
        if self.running:
            return self.bootstrap
        deadline = time.monotonic() + timeout
        self.launch(timeout)
        try:
            self.wait_ready(deadline, brokers)
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

    def wait_ready(self, deadline: float, brokers: int = 1) -> None:
        """Poll until a metadata request lists ``brokers`` brokers, the JVM dies, or time runs out.

        A cheap TCP probe runs first so librdkafka does not spam connection-refused
        errors while the JVM is still booting.
        """
        from confluent_kafka import KafkaException  # only needed here; `fetch` works without
        from confluent_kafka.admin import AdminClient

        assert self._proc is not None
        admin: AdminClient | None = None
        while True:
            if self._proc.poll() is not None:
                raise KafkaLaunchError(
                    f"Kafka exited with code {self._proc.returncode} during startup; kafka.log tail:\n{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                raise KafkaLaunchError(
                    f"Kafka did not serve metadata on {self.bootstrap} in time; kafka.log tail:\n{self._log_tail()}"
                )
            try:
                if admin is None:
                    socket.create_connection(("127.0.0.1", self._port), timeout=1).close()
                    admin = AdminClient({"bootstrap.servers": self.bootstrap})
                if len(admin.list_topics(timeout=2).brokers) >= brokers:
                    return
            except (OSError, KafkaException):  # refused socket or the broker not answering: not ready yet
                pass
            time.sleep(0.2)

    def _signal(self, sig: int) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise KafkaLaunchError(f"Kafka node {self._node_id} is not running")
        os.killpg(self._proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL (a crash, no clean shutdown); the data stays for the next :meth:`start`."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the JVM holds its sockets and answers nothing, as a hung node does."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self._signal(signal.SIGCONT)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the broker, wait for its clean shutdown, SIGKILL after ``timeout``.

        Idempotent; also removes the workdir when this object created it (and was not told
        to keep its data).
        """
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGCONT)  # a paused JVM cannot act on SIGTERM
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

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class LocalKafkaCluster:
    """``size`` KRaft nodes, each broker and controller, voting together on loopback.

    The cluster users grow into, in miniature: topics are created with replication
    ``min(3, size)`` by default (``default.replication.factor``) and ``min.insync.replicas``
    one less, so an ``acks=all`` producer rides out the loss of one node. Each node is a
    :class:`LocalKafka` with its own workdir (``node-<i>``) and heap (256m by default: three
    JVMs on a small machine); :meth:`kill`, :meth:`pause`, :meth:`resume` and
    :meth:`restart` take a node's index. Data directories follow the same rule as
    :class:`LocalKafka`'s: a given ``workdir`` is kept.
    """

    def __init__(
        self,
        size: int = 3,
        workdir: Path | None = None,
        cache_dir: Path | None = None,
        heap: str = "256m",
        *,
        keep_data: bool = False,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.size = size
        self._given_workdir = workdir is not None
        self._keep_data = keep_data
        self._workdir = Path(workdir) if workdir is not None else None
        self._cache_dir, self._heap = cache_dir, heap
        self.nodes: list[LocalKafka] = []

    @property
    def workdir(self) -> Path | None:
        return self._workdir

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    def _plan(self) -> None:
        """Node ports and the cluster id, read back from an earlier run on the workdir."""
        assert self._workdir is not None
        saved = self._workdir / "cluster.json"
        if saved.is_file():
            plan = json.loads(saved.read_text())
        else:
            ports = free_ports(2 * self.size)
            plan = {
                "cluster_id": _cluster_id(),
                "size": self.size,
                "ports": ports[: self.size],
                "controller_ports": ports[self.size :],
            }
            saved.write_text(json.dumps(plan))
        if plan["size"] != self.size:
            raise KafkaLaunchError(f"{self._workdir} holds a {plan['size']}-node cluster, not {self.size}")
        voters = ",".join(f"{i + 1}@127.0.0.1:{p}" for i, p in enumerate(plan["controller_ports"]))
        replication = min(3, self.size)
        overrides = {
            "default.replication.factor": str(replication),
            "min.insync.replicas": str(max(1, replication - 1)),
            "offsets.topic.replication.factor": str(replication),
            "transaction.state.log.replication.factor": str(replication),
            "transaction.state.log.min.isr": str(max(1, replication - 1)),
            "unclean.leader.election.enable": "false",
            "num.network.threads": "1",
            "num.io.threads": "2",
            "background.threads": "2",
            "num.replica.fetchers": "1",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        }
        self.nodes = [
            LocalKafka(
                self._workdir / f"node-{i}",
                plan["ports"][i],
                self._cache_dir,
                self._heap,
                node_id=i + 1,
                controller_port=plan["controller_ports"][i],
                voters=voters,
                cluster_id=plan["cluster_id"],
                overrides=overrides,
            )
            for i in range(self.size)
        ]

    def start(self, timeout: float = 180.0) -> str:
        """Start every node and wait until each lists all of them; returns the bootstrap list."""
        deadline = time.monotonic() + timeout
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="hpcinsight-kafka-cluster-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        if not self.nodes:
            self._plan()
        try:
            for node in self.nodes:
                node.launch(timeout)
            for node in self.nodes:
                node.wait_ready(deadline, self.size)
        except BaseException:
            self.stop()
            raise
        return self.bootstrap

    def kill(self, index: int) -> None:
        self.nodes[index].kill()

    def pause(self, index: int) -> None:
        self.nodes[index].pause()

    def resume(self, index: int) -> None:
        self.nodes[index].resume()

    def restart(self, index: int, timeout: float = 120.0) -> None:
        """Start node ``index`` again (after a kill or stop) on its data; wait until it serves."""
        node = self.nodes[index]
        node.stop()
        node.start(timeout, brokers=1)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node at once (one after another, the last ones would wait out their
        controlled shutdown with no quorum left to grant it)."""
        stoppers = [threading.Thread(target=node.stop, args=(timeout,)) for node in self.nodes]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        if not self._given_workdir and not self._keep_data and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir, self.nodes = None, []

    def __enter__(self) -> LocalKafkaCluster:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def serve(
    brokers: int = 1,
    port: int | None = None,
    data_dir: Path | None = None,
    keep_data: bool = False,
    cache_dir: Path | None = None,
    heap: str | None = None,
    timeout: float = 180.0,
    stop: threading.Event | None = None,
) -> int:
    """Run a broker (or a ``brokers``-node cluster) until ``stop`` is set or SIGINT/SIGTERM.

    Prints ``KAFKA_BOOTSTRAP=...`` (and, when data is kept, ``KAFKA_DATA_DIR=...``). With
    ``data_dir`` or ``keep_data`` the log dirs outlive the run, and a run on the same
    directory starts with their data. Shared by ``hpcinsight kafka run`` and ``python -m``.
    """
    if stop is None:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    if brokers < 1:
        raise KafkaLaunchError(f"--brokers must be at least 1, got {brokers}")
    if brokers > 1 and port is not None:
        raise KafkaLaunchError("--port names one broker's port; a cluster picks its own (kept in its data dir)")
    kafka: LocalKafka | LocalKafkaCluster
    if brokers > 1:
        kafka = LocalKafkaCluster(brokers, data_dir, cache_dir, heap or "256m", keep_data=keep_data)
        kafka.start(timeout)
        nodes = kafka.nodes
    else:
        kafka = LocalKafka(data_dir, port, cache_dir, heap or "512m", keep_data=keep_data)
        kafka.start(timeout)
        nodes = [kafka]
    try:
        print(f"KAFKA_BOOTSTRAP={kafka.bootstrap}", flush=True)
        if data_dir is not None or keep_data:
            print(f"KAFKA_DATA_DIR={kafka.workdir}", flush=True)
        while not stop.wait(1.0):
            for node in nodes:
                if node._proc is not None and node._proc.poll() is not None:
                    print(f"Kafka exited unexpectedly:\n{node._log_tail()}", file=sys.stderr)
                    return 1
    finally:
        kafka.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``run``: serve a broker until SIGINT/SIGTERM; ``fetch``: only resolve the jars."""
    parser = argparse.ArgumentParser(
        prog="python -m hpcinsight.deploy.local.kafka", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["run", "fetch"])
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--data-dir", "--workdir", dest="data_dir", type=Path, default=None)
    parser.add_argument("--keep-data", action="store_true")
    parser.add_argument("--brokers", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--heap", default=None)
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(ensure_jars(args.cache_dir))
            return 0
        return serve(args.brokers, args.port, args.data_dir, args.keep_data, args.cache_dir, args.heap, args.timeout)
    except KafkaLaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C during `fetch`; the cache stays untouched
        return 130


if __name__ == "__main__":
    sys.exit(main())
