"""The chaos harness: run the pipeline as separate processes, inject faults, check the result.

Why processes and real signals: the promises under test (docs/guarantees.md) are about
what survives a process dying anywhere, a process hanging, a broker going away and a disk that
refuses writes. Only the real CLI processes on a real broker and a real embedded store can show
that; nothing here is simulated but the GPUs and the scheduler (the machine has neither).

The campaign, with a seeded random generator (the same seed, the same faults in the same order;
the moments still depend on how fast the machine is):

- every component (agent, worker, sink, alerts, serve) and every broker gets SIGKILL (then a
  restart), SIGSTOP (then SIGCONT) and a clean restart (SIGTERM, then start); the first pass
  covers each component once and each kind at least twice, with a broker kill -9 among them;
- the embedded store's file system (a loop-mounted ext4 image made for the run; needs root,
  skipped with the reason when not) is filled with a ballast file for a while, so ClickHouse
  cannot write, then freed;
- a component that exits without being told to is a finding: its exit code and log tail are
  recorded and it is started again, so the campaign goes on.

At the end the faults stop, everything catches up, the agent is stopped cleanly (it drains its
spool) and the checks run against what the agent delivered to Kafka (the raw topic, read whole):
every (GPU, timestamp) stored once after merge, none lost, none invented; gaps in what the agent
sent only where the agent itself was down; no notification that tells nothing new (an anomaly told
twice); every component up at the end and none that died on its own.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, KafkaError, TopicPartition

from hpcinsight.core.kafka import lag, offsets_consumer, watermarks
from hpcinsight.deploy.local.kafka import LocalKafka, LocalKafkaCluster, free_ports
from hpcinsight.harness.supervisor import terminate
from hpcinsight.schemas.catalog import ANOMALIES, GPU_SAMPLES, GPU_SAMPLES_RAW, GPU_SKETCHES, STORED, Topic, ensure_topics
from tests.alerts_receiver import LocalReceiver

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ("agent", "worker", "sink", "alerts", "serve")
KINDS = ("kill", "stop", "restart")
PREFIX = "chaos."


@dataclass(frozen=True)
class Profile:
    """How long and how hard: seconds of faults, and the ranges each fault's timing is drawn from."""

    seconds: float
    brokers: int = 1
    seed: int = 0
    nodes: int = 8
    gpus: int = 8
    held_s: tuple[float, float] = (2.0, 8.0)  # how long a process stays killed/stopped, the disk full
    gap_s: tuple[float, float] = (2.0, 6.0)  # quiet time between faults
    settle_s: float = 10.0  # after the last fault, before the checks
    min_faults: int = 0  # go on past ``seconds`` until this many faults are in (a slow machine restarts slowly)
    catch_up_timeout_s: float = 300.0

    @staticmethod
    def short(brokers: int = 1, seed: int = 0, seconds: float = 60.0) -> Profile:
        """At least the first six faults of the first pass: kill -9, stop and restart of three
        components, a broker kill -9, the full disk and a broker stop."""
        return Profile(seconds, brokers, seed, held_s=(2.0, 6.0), gap_s=(1.5, 4.0), min_faults=6)

    @staticmethod
    def long(minutes: float, brokers: int = 1, seed: int = 0) -> Profile:
        return Profile(minutes * 60, brokers, seed, held_s=(2.0, 20.0), gap_s=(3.0, 20.0), settle_s=20.0)


@dataclass
class Fault:
    kind: str  # kill | stop | restart | disk
    target: str  # a component, broker-<i>, or store
    at_s: float = 0.0
    held_s: float = 0.0
    note: str = ""


@dataclass
class Finding:
    """Something the campaign caught: a component that died, a check that failed."""

    what: str
    component: str
    at_s: float
    detail: str
    last_fault: str = ""


@dataclass
class Outage:
    """When the agent was not sampling (killed, stopped, restarting): gaps there are expected."""

    start_ms: int
    end_ms: int


class Component:
    """One CLI process of the pipeline, restartable, its log appended across runs."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.args, self.env, self.log_dir = name, args, env, log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.down_on_purpose = False
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== chaos: start #{self.starts + 1} at {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            # each component in a session of its own, as a service manager runs it: in the
            # campaign's process group, the exit of any other child while this one was stopped
            # (SIGSTOP) made the kernel send the group SIGHUP (an orphaned group with a stopped
            # member), and the stopped worker died of it, a death no real deployment would see
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hpcinsight.cli", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )
        self.starts += 1
        self.down_on_purpose = False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def tail(self, chars: int = 1500) -> str:
        """What the last run said that matters: its errors and the project's own frames, then its end."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        last = text.rsplit("===== chaos: start", 1)[-1]
        keys = ("Error", "Exception", "CRITICAL", "Crashed", "Traceback", 'File "' + str(ROOT))
        errors = [line[:300] for line in last.splitlines() if any(k in line for k in keys)][:40]
        return "\n".join(errors) + "\n...\n" + last[-chars:]


class Brokers:
    """The single broker or the cluster, behind one face: node ``i`` killed, paused, restarted."""

    def __init__(self, count: int, workdir: Path) -> None:
        self.count = count
        self.single = LocalKafka(workdir / "kafka", heap="512m") if count == 1 else None
        self.cluster = LocalKafkaCluster(count, workdir / "kafka") if count > 1 else None

    def start(self) -> str:
        if self.single is not None:
            return self.single.start()
        assert self.cluster is not None
        return self.cluster.start()

    def node(self, i: int) -> LocalKafka:
        return self.single if self.single is not None else self.cluster.nodes[i]  # type: ignore[union-attr]  # one of the two is set

    def kill(self, i: int) -> None:
        self.node(i).kill()

    def pause(self, i: int) -> None:
        self.node(i).pause()

    def resume(self, i: int) -> None:
        self.node(i).resume()

    def stop_node(self, i: int) -> None:
        self.node(i).stop()

    def start_node(self, i: int) -> None:
        self.node(i).start(timeout=180, brokers=1)

    def ensure_all_up(self) -> None:
        for i in range(self.count):
            node = self.node(i)
            if node.running:
                try:
                    node.resume()
                except Exception:  # noqa: BLE001 - not paused: nothing to resume
                    pass
            else:
                self.start_node(i)

    def stop(self) -> None:
        if self.single is not None:
            self.single.stop()
        elif self.cluster is not None:
            self.cluster.stop()


class FullDisk:
    """The store's own small file system, which a ballast file fills to refuse writes.

    A loop-mounted ext4 image, as a real disk behaves (a tmpfs was tried first: ClickHouse there
    once committed a merged part of 0-byte files on ENOSPC, which plain ext4 did not reproduce);
    a tmpfs where ``mkfs.ext4`` is missing. Mounting needs root: otherwise the fault is skipped,
    with the reason in the report."""

    def __init__(self, mount_point: Path, size_mb: int = 256) -> None:
        self.mount_point, self.size_mb = mount_point, size_mb
        self.image = mount_point.with_suffix(".img")
        self.mounted = False
        self.kind = ""
        self.skip_reason: str | None = None
        self.ballast = mount_point / "ballast"

    def mount(self) -> None:
        self.mount_point.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            self.skip_reason = "not root: cannot mount a small file system for the store (disk-full fault skipped)"
            return
        if shutil.which("mkfs.ext4"):
            with open(self.image, "wb") as f:
                f.truncate(self.size_mb << 20)
            steps = [["mkfs.ext4", "-q", "-F", str(self.image)], ["mount", "-o", "loop", str(self.image), str(self.mount_point)]]
            self.kind = f"loop-mounted ext4, {self.size_mb} MiB"
        else:
            steps = [["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m", "tmpfs", str(self.mount_point)]]
            self.kind = f"tmpfs, {self.size_mb} MiB (no mkfs.ext4)"
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                self.skip_reason = f"{' '.join(step[:2])} failed: {done.stderr.strip()} (disk-full fault skipped)"
                return
        self.mounted = True

    def fill(self) -> int:
        """Write the ballast until the file system says ENOSPC; returns the bytes written."""
        written = 0
        chunk = b"\0" * (1 << 20)
        with open(self.ballast, "wb", buffering=0) as f:
            try:
                while True:
                    written += f.write(chunk)
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
        return written

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def unmount(self, keep: bool = False) -> None:
        """Unmount the store's file system; its image is deleted unless ``keep`` (a failed run keeps
        it, so the parts ClickHouse left can be examined: ``mount -o loop <image> <dir>``)."""
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.mount_point)], capture_output=True)
            self.mounted = False
        if not keep:
            self.image.unlink(missing_ok=True)


def idle_specs(profile: Profile) -> list[str]:
    """GPUs that idle for 30 s (seconds since the agent's start), one every 2 minutes of the run and
    each on another GPU, so anomalies fire and resolve all along (a restarted agent starts over)."""
    specs: list[str] = []
    for k, start in enumerate(range(5, int(profile.seconds) + 60, 120)):
        specs += ["--idle", f"{(1 + k) % profile.nodes}:{(3 + k) % profile.gpus}@{start}-{start + 30}"]
    return specs


def alerts_config(path: Path, url: str) -> Path:
    """Every alert its own group (``['...']``), told fast, never repeated within the run."""
    doc = {
        "global": {"retry": {"initial_backoff": "200ms", "max_backoff": "2s"}},
        "route": {"receiver": "hook", "group_by": ["..."], "group_wait": "2s", "group_interval": "2s", "repeat_interval": "24h"},
        "receivers": [{"name": "hook", "webhook_configs": [{"url": url}]}],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


@dataclass
class Result:
    profile: Profile
    started: str = ""
    wall_s: float = 0.0
    faults: list[Fault] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    run_dir: str = ""

    @property
    def passed(self) -> bool:
        return all(ok for ok, _ in self.checks.values())

    def fault_table(self) -> dict[tuple[str, str], int]:
        return dict(Counter((f.target, f.kind) for f in self.faults))


class Campaign:
    """One run: start everything, inject faults until the profile's time is up, catch up, check."""

    def __init__(self, profile: Profile, run_dir: Path) -> None:
        self.profile = profile
        self.run_dir = run_dir
        self.rng = random.Random(profile.seed)
        self.result = Result(profile, run_dir=str(run_dir))
        self.components: dict[str, Component] = {}
        self.outages: list[Outage] = []
        self._lock = threading.Lock()
        self.behind_at_end: list[str] = []  # groups that did not catch up, where they stopped
        self._watching = threading.Event()
        self._t0 = time.monotonic()
        self._last_fault = ""
        self.brokers = Brokers(profile.brokers, run_dir)
        self.disk = FullDisk(run_dir / "storefs")
        self.receiver: LocalReceiver | None = None
        self.serve_port = 0
        self.env: dict[str, str] = {}

    # --- bookkeeping ---------------------------------------------------------------------
    def now_s(self) -> float:
        return round(time.monotonic() - self._t0, 1)

    def log(self, text: str) -> None:
        print(f"[chaos {self.now_s():7.1f}s] {text}", flush=True)

    def finding(self, what: str, component: str, detail: str) -> None:
        f = Finding(what, component, self.now_s(), detail, self._last_fault)
        self.result.findings.append(f)
        self.log(f"FINDING: {component}: {what}")
        path = os.environ.get("CHAOS_FINDINGS")
        if path:  # appended as found, so a campaign cut short still leaves them
            with open(path, "a") as out:
                out.write(
                    f"\n### {what} ({component}, at {f.at_s} s, {self.profile.brokers} broker(s), seed "
                    f"{self.profile.seed})\n\nlast fault: {f.last_fault or '-'}; run dir {self.run_dir}\n\n"
                    f"```\n{detail[-3000:]}\n```\n"
                )

    # --- set-up --------------------------------------------------------------------------
    def start(self) -> None:
        self.result.started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        load = os.getloadavg()
        self.result.notes.append(
            f"load average at the start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min) on {os.cpu_count()} cores"
        )
        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.disk.mount()
        if self.disk.mounted:
            self.result.notes.append(f"the store on {self.disk.kind}")
        if self.disk.skip_reason:
            self.result.notes.append(self.disk.skip_reason)
            self.log(self.disk.skip_reason)
        store = (self.disk.mount_point if self.disk.mounted else self.run_dir) / "clickhouse"
        self.log(f"starting {self.profile.brokers} broker(s)")
        bootstrap = self.brokers.start()
        ensure_topics({"bootstrap.servers": bootstrap}, PREFIX)
        self.receiver = LocalReceiver()
        config = alerts_config(self.run_dir / "alerts.yaml", self.receiver.url())
        self.serve_port = free_ports(1)[0]
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP": bootstrap,
            "HPCINSIGHT_TOPIC_PREFIX": PREFIX,
            "HPCINSIGHT_DATA_DIR": str(self.run_dir / "data"),
            "CLICKHOUSE_URL": f"chdb://{store}",
            "PYTHONUNBUFFERED": "1",
        }
        p = self.profile
        args = {
            # the sink first: it creates the store's tables, which serve reads
            "sink": ["sink", "--batch-age", "0.5"],
            "worker": [
                "worker",
                "--windows",
                "20s/10s,1m/10s",
                "--checkpoint-every",
                "10s",
                "--replay-margin",
                "5s",
                "--job-wait",
                "3s",
                "--since-start-every",
                "20s",
                # Faust's and the worker's own account of rebalances, seeks and restores: a loss
                # found by a campaign is told apart by them (at WARNING, CI at d3ba182 could not)
                "--loglevel",
                "INFO",
            ],
            "alerts": ["-v", "alerts", "--config", str(config)],
            "serve": ["serve", "--port", str(self.serve_port)],
            "agent": [
                "agent",
                "--backend",
                "sim",
                "--scheduler",
                "sim",
                "--nodes",
                str(p.nodes),
                "--gpus",
                str(p.gpus),
                "--seed",
                str(p.seed),
                *idle_specs(p),
                "--metrics-port",
                "0",
                "--drain-timeout",
                "240",
            ],
        }
        for name, a in args.items():
            self.components[name] = Component(name, a, self.env, logs)
            self.components[name].start()
            if name == "sink":
                time.sleep(3.0)  # let it create the tables before the readers come
        self._watching.set()
        threading.Thread(target=self._watch, daemon=True, name="chaos-watch").start()

    def _watch(self) -> None:
        """A component that exits without being told to is a finding; start it again."""
        while self._watching.is_set():
            with self._lock:
                for c in self.components.values():
                    if c.proc is not None and not c.down_on_purpose and c.proc.poll() is not None:
                        rc = c.proc.returncode
                        self.finding(f"{c.name} exited on its own (exit {rc})", c.name, c.tail())
                        if c.name == "agent":
                            now = int(time.time() * 1000)
                            self.outages.append(Outage(now - 5000, now + 1000))
                        c.start()
            time.sleep(0.5)

    # --- faults --------------------------------------------------------------------------
    def targets(self) -> list[str]:
        return [*COMPONENTS, *(f"broker-{i}" for i in range(self.profile.brokers))]

    def first_pass(self) -> list[Fault]:
        """Each component once, kinds in turn (each at least twice), a broker kill -9, the disk and
        a broker stop; the first six hold every kind."""
        comps = list(COMPONENTS)
        self.rng.shuffle(comps)
        offset = self.rng.randrange(len(KINDS))
        deck = [Fault(KINDS[(i + offset) % len(KINDS)], c) for i, c in enumerate(comps)]
        brokers = self.profile.brokers
        # early in the deck, so that a short run has them too
        deck.insert(1, Fault("kill", f"broker-{self.rng.randrange(brokers)}"))
        deck.insert(3, Fault("disk", "store"))
        deck.insert(5, Fault("stop", f"broker-{self.rng.randrange(brokers)}"))
        return deck

    def full_pass(self) -> list[Fault]:
        deck = [Fault(k, t) for t in self.targets() for k in KINDS] + [Fault("disk", "store")]
        self.rng.shuffle(deck)
        return deck

    def inject(self, fault: Fault) -> None:
        fault.at_s = self.now_s()
        fault.held_s = round(self.rng.uniform(*self.profile.held_s), 1)
        self._last_fault = f"{fault.kind} {fault.target} at {fault.at_s} s for {fault.held_s} s"
        self.log(self._last_fault)
        start_ms = int(time.time() * 1000)
        if fault.target == "store":
            if not self.disk.mounted:
                fault.note = "skipped: " + (self.disk.skip_reason or "no small file system")
                self.result.faults.append(fault)
                return
            fault.note = f"ballast {self.disk.fill() >> 20} MiB"
            time.sleep(fault.held_s)
            self.disk.free()
        elif fault.target.startswith("broker-"):
            i = int(fault.target.split("-")[1])
            if fault.kind == "kill":
                self.brokers.kill(i)
                time.sleep(fault.held_s)
                self.brokers.start_node(i)
            elif fault.kind == "stop":
                self.brokers.pause(i)
                time.sleep(fault.held_s)
                self.brokers.resume(i)
            else:
                self.brokers.stop_node(i)
                self.brokers.start_node(i)
        else:
            c = self.components[fault.target]
            if fault.kind == "stop":
                c.signal(signal.SIGSTOP)
                time.sleep(fault.held_s)
                c.signal(signal.SIGCONT)
            else:
                with self._lock:
                    c.down_on_purpose = True
                if fault.kind == "kill":
                    c.signal(signal.SIGKILL)
                    if c.proc is not None:
                        c.proc.wait()
                    time.sleep(fault.held_s)
                else:
                    assert c.proc is not None
                    began = time.monotonic()
                    rc = terminate(c.proc, 60)
                    fault.note = f"clean stop in {time.monotonic() - began:.1f} s, exit {rc}"
                    if rc not in (0, -signal.SIGTERM):
                        self.finding(f"{c.name} did not stop cleanly on SIGTERM (exit {rc})", c.name, c.tail())
                with self._lock:
                    c.start()
            if fault.target == "agent":
                self.outages.append(Outage(start_ms, int(time.time() * 1000)))
        self.result.faults.append(fault)

    def run_faults(self) -> None:
        end = time.monotonic() + self.profile.seconds
        deck = self.first_pass()

        def more() -> bool:
            return time.monotonic() < end or len(self.result.faults) < self.profile.min_faults

        while more():
            time.sleep(self.rng.uniform(*self.profile.gap_s))
            if not more():
                break
            if not deck:
                deck = self.full_pass()
            fault = deck.pop(0)
            try:
                self.inject(fault)
            except Exception as err:  # noqa: BLE001 - e.g. a broker that does not come back: say so, go on
                self.finding(f"injecting {fault.kind} {fault.target} failed: {type(err).__name__}", fault.target, str(err))
                if fault.target.startswith("broker-"):
                    self.brokers.ensure_all_up()
        self._last_fault = "(faults over)"

    # --- the end ---------------------------------------------------------------------------
    def _lag(self, group: str, topics: list[str]) -> int:
        return lag({"bootstrap.servers": self.env["KAFKA_BOOTSTRAP"]}, f"{PREFIX}{group}", [PREFIX + t for t in topics])

    def behind(self, group: str, topics: list[str]) -> str:
        """Which partitions ``group`` has not committed to their end: 'topic[p] committed/end', for a
        failed catch-up to name the group and where it stopped (the component's log says why)."""
        conf = {"bootstrap.servers": self.env["KAFKA_BOOTSTRAP"]}
        with offsets_consumer(conf, f"{PREFIX}{group}") as consumer:
            metadata = consumer.list_topics(timeout=10)
            names = [PREFIX + t for t in topics]
            partitions = [TopicPartition(t, p) for t in names for p in metadata.topics[t].partitions]
            out = []
            for tp in consumer.committed(partitions, timeout=10):
                low, high = watermarks(consumer, tp, 10)
                if (tp.offset if tp.offset >= 0 else low) < high:  # as core.kafka.lag counts it
                    out.append(f"{tp.topic.removeprefix(PREFIX)}[{tp.partition}] {tp.offset}/{high}")
            return ", ".join(out) or "none"

    def wait_lag(self, group: str, topics: list[str], what: str, deadline: float) -> bool:
        while True:
            try:
                if self._lag(group, topics) == 0:
                    return True
            except Exception as err:  # noqa: BLE001 - a broker still electing: ask again
                self.log(f"lag of {what}: {err}")
            if time.monotonic() > deadline:
                try:
                    where = self.behind(group, topics)
                except Exception as err:  # noqa: BLE001 - the report, not the verdict
                    where = f"not read ({err})"
                self.behind_at_end.append(f"{what} ({PREFIX}{group}): {where}")
                self.log(f"{what} did not catch up: committed/end {where}")
                return False
            time.sleep(1.0)

    def finish(self) -> None:
        """Stop the faults, let everything catch up, stop the agent cleanly, read back, check."""
        checks, figures = self.result.checks, self.result.figures
        self.disk.free()
        self.brokers.ensure_all_up()
        for c in self.components.values():
            c.signal(signal.SIGCONT)
        self.log(f"faults over; settling {self.profile.settle_s:g} s")
        time.sleep(self.profile.settle_s)

        down = [c.name for c in self.components.values() if not c.alive()]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.serve_port}/healthz", timeout=10) as r:
                serve_ok = r.status == 200
        except OSError as err:
            serve_ok = False
            self.finding("serve does not answer /healthz at the end", "serve", str(err))
        checks["every component up at the end"] = (
            not down and serve_ok,
            f"down: {', '.join(down) or 'none'}; serve /healthz {'200' if serve_ok else 'failed'}",
        )

        with self._lock:
            agent = self.components["agent"]
            agent.down_on_purpose = True
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGTERM)
        try:
            rc = agent.proc.wait(300)
        except subprocess.TimeoutExpired:
            agent.proc.kill()
            rc = agent.proc.wait()
        summary = _last_json(agent.log_path)
        figures["agent last run"] = summary
        checks["agent drained its spool at the end"] = (
            rc == 0 and bool(summary) and summary.get("drained") is True,
            f"exit {rc}, summary {summary}",
        )

        deadline = time.monotonic() + self.profile.catch_up_timeout_s
        caught = self.wait_lag("worker", [GPU_SAMPLES_RAW.name, GPU_SKETCHES.name], "worker", deadline)
        time.sleep(5.0)  # the job stage's last windows (--job-wait 3s)
        caught = self.wait_lag("clickhouse-sink", [t.name for t in STORED], "sink", deadline) and caught
        caught = self.wait_lag("alert-router", [ANOMALIES.name], "router", deadline) and caught
        checks["everything caught up after the faults"] = (
            caught,
            f"within {self.profile.catch_up_timeout_s:g} s" + ("" if caught else "; behind: " + "; ".join(self.behind_at_end)),
        )
        time.sleep(8.0)  # group_wait + group_interval: the router tells what it read last

        self._watching.clear()
        for name in ("serve", "alerts", "worker", "sink"):
            c = self.components[name]
            c.down_on_purpose = True
            if c.proc is not None:
                rc = terminate(c.proc, 60)
                if rc not in (0, -signal.SIGTERM):
                    self.finding(f"{name} did not stop cleanly at the end (exit {rc})", name, c.tail())

        sent, nodes = read_raw(self.env["KAFKA_BOOTSTRAP"], PREFIX + GPU_SAMPLES_RAW.name)
        out, _ = read_raw(self.env["KAFKA_BOOTSTRAP"], PREFIX + GPU_SAMPLES.name, GPU_SAMPLES)
        self.result.figures["worker's validated samples (gpu.samples), with replays"] = sum(out.values())
        self.result.figures["worker's replayed samples (gpu.samples records beyond one per sample)"] = sum(out.values()) - len(
            out
        )
        for name, check in (
            ("agent gaps", lambda: self.check_agent_gaps(sent, nodes)),
            ("store", lambda: self.check_store(sent)),
            ("notifications", self.check_notifications),
        ):
            try:
                check()
            except Exception as err:  # noqa: BLE001 - a check that cannot run fails, saying why
                self.result.checks[f"{name}: checks could run"] = (False, f"{type(err).__name__}: {str(err)[:300]}")
                self.finding(f"the {name} checks failed to run", name, repr(err))
        died = [f for f in self.result.findings if "exited on its own" in f.what]
        checks["no component died on its own"] = (not died, "; ".join(f"{f.component} at {f.at_s} s" for f in died) or "none")

    def check_agent_gaps(self, sent: dict[tuple[str, int], int], nodes: dict[str, str]) -> None:
        """Gaps of 3 s or more in a node's samples must fall where the agent was down."""
        by_node: dict[str, list[int]] = {}
        for uuid, ts in sent:
            by_node.setdefault(nodes[uuid], []).append(ts)
        unexplained = []
        for node, stamps in by_node.items():
            stamps = sorted(set(stamps))
            for a, b in zip(stamps, stamps[1:]):
                if b - a >= 3000 and not any(o.start_ms - 3000 <= a <= o.end_ms for o in self.outages):
                    unexplained.append(f"{node}: {a} -> {b} ({(b - a) / 1000:.1f} s)")
        self.result.figures["agent outages"] = len(self.outages)
        self.result.checks["agent: no gap in what it sent outside its own outages"] = (
            not unexplained,
            f"{len(unexplained)} unexplained gaps" + (f": {unexplained[:5]}" if unexplained else ""),
        )

    def check_store(self, sent: dict[tuple[str, int], int]) -> None:
        from hpcinsight.core.settings import load
        from hpcinsight.sinks.clickhouse import connect

        checks, figures = self.result.checks, self.result.figures
        client = connect(load(self.env).clickhouse, writer=True)
        try:

            def rows(sql: str) -> list[tuple]:
                return list(client.query(sql).result_rows)

            stored = {(u, int(t)) for u, t in rows("SELECT gpu_uuid, toUnixTimestamp64Milli(ts) FROM gpu_samples FINAL")}
            n_raw, n_final, n_distinct = rows(
                "SELECT (SELECT count() FROM gpu_samples), (SELECT count() FROM gpu_samples FINAL), "
                "(SELECT uniqExact(gpu_uuid, ts) FROM gpu_samples)"
            )[0]
            client.command("OPTIMIZE TABLE gpu_samples FINAL")
            n_merged = rows("SELECT count() FROM gpu_samples")[0][0]
            expected = set(sent)
            lost, extra = expected - stored, stored - expected
            figures.update(
                {
                    "samples the agent delivered (distinct GPU, ts)": len(expected),
                    "raw messages' records, with resends": sum(sent.values()),
                    "gpu_samples rows before merge": n_raw,
                    "gpu_samples rows FINAL": n_final,
                    "gpu_samples rows after OPTIMIZE FINAL": n_merged,
                    "distinct (gpu, ts) stored": n_distinct,
                }
            )
            checks["nothing lost: every sample the agent delivered is stored"] = (
                not lost,
                f"{len(lost)} missing" + (f", e.g. {sorted(lost)[:3]}" if lost else ""),
            )
            checks["nothing invented: no stored sample the agent did not send"] = (not extra, f"{len(extra)} extra")
            checks["nothing stored twice after merge"] = (
                n_final == n_distinct == n_merged,
                f"FINAL {n_final}, uniqExact {n_distinct}, after OPTIMIZE {n_merged}",
            )
            attributed = rows("SELECT countIf(job_id != '') / count() FROM gpu_samples FINAL")[0][0]
            figures["share of samples attributed to a job"] = round(float(attributed or 0), 3)
            figures["anomalies stored (distinct ids)"] = rows("SELECT uniqExact(id) FROM anomalies")[0][0]
            n_anom, n_anom_distinct = rows(
                "SELECT (SELECT count() FROM anomalies FINAL), (SELECT uniqExact(id, state) FROM anomalies)"
            )[0]
            checks["anomalies stored once each after merge"] = (
                n_anom == n_anom_distinct,
                f"FINAL {n_anom}, distinct {n_anom_distinct}",
            )
            figures["dead letters stored"] = rows("SELECT count() FROM dead_letters")[0][0]
            figures["dead letters by stage"] = dict(rows("SELECT stage, count() FROM dead_letters GROUP BY stage"))
            rollup = rows("SELECT sum(samples) FROM gpu_rollup_1m")[0][0]
            checks["the 1-minute rollup counts each sample once"] = (
                rollup == len(expected),
                f"sum(samples) {rollup}, samples {len(expected)}",
            )
            figures["gpu_quantiles windows FINAL"] = rows("SELECT count() FROM gpu_quantiles FINAL")[0][0]
        finally:
            client.close()

    def check_notifications(self) -> None:
        """Each notification (by its idempotency key) must tell something not told before."""
        assert self.receiver is not None
        told: set[tuple[str, str]] = set()
        seen_keys: set[str] = set()
        copies = retold = 0
        bad = []
        for r in sorted(self.receiver.received, key=lambda r: r.at):
            key = r.headers.get("Idempotency-Key") or (r.body or {}).get("notificationId", "")
            if key in seen_keys:
                copies += 1  # the documented window: a resend with the same key
                continue
            seen_keys.add(key)
            alerts = {(a["fingerprint"], a["status"]) for a in r.body.get("alerts", [])}
            if alerts and alerts <= told:
                retold += 1
                bad.append(sorted(alerts))
            told |= alerts
        figures = self.result.figures
        figures["notifications received (distinct)"] = len(seen_keys)
        figures["resent copies with the same key"] = copies
        figures["alerts told firing"] = sum(1 for _, s in told if s == "firing")
        figures["alerts told resolved"] = sum(1 for _, s in told if s == "resolved")
        self.result.checks["no anomaly told twice"] = (
            retold == 0,
            f"{retold} notifications told nothing new" + (f": {bad[:3]}" if bad else ""),
        )

    def close(self) -> None:
        self._watching.clear()
        for c in self.components.values():
            if c.alive():
                c.down_on_purpose = True
                c.signal(signal.SIGCONT)
                assert c.proc is not None
                terminate(c.proc, 30)
        try:
            self.brokers.stop()
        finally:
            if self.receiver is not None:
                self.receiver.stop()
            self.disk.unmount(keep=any(not ok for ok, _ in self.result.checks.values()))


def _last_json(path: Path) -> dict[str, Any]:
    for line in reversed(path.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return {}


def read_raw(bootstrap: str, topic: str, catalog: Topic = GPU_SAMPLES_RAW) -> tuple[dict[tuple[str, int], int], dict[str, str]]:
    """Every (GPU uuid, ts) in the raw topic, with how often it was sent (resends count), and
    each GPU's node."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "chaos-check",
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        out: Counter[tuple[str, int]] = Counter()
        nodes: dict[str, str] = {}
        eof: set[int] = set()
        deadline = time.monotonic() + 120
        while len(eof) < len(partitions) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=1.0):
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        eof.add(msg.partition())
                    continue
                for rec in catalog.codec.decode(msg.value()):
                    out[(rec.gpu_uuid, rec.ts)] += 1
                    nodes[rec.gpu_uuid] = rec.node
        return dict(out), nodes
    finally:
        consumer.close()


def run(profile: Profile, run_dir: Path) -> Result:
    """The whole campaign; always stops what it started."""
    run_dir.mkdir(parents=True, exist_ok=True)
    campaign = Campaign(profile, run_dir)
    began = time.monotonic()
    try:
        campaign.start()
        campaign.run_faults()
        campaign.finish()
    finally:
        campaign.close()
        campaign.result.wall_s = round(time.monotonic() - began, 1)
    return campaign.result


def markdown(results: list[Result], machine: str = "") -> str:
    """The result table: faults by kind and target, checks, figures, findings."""
    out = []
    for res in results:
        p = res.profile
        out.append(f"### {p.brokers} broker{'s' if p.brokers > 1 else ''}, seed {p.seed}, {p.seconds / 60:g} min of faults\n")
        out.append(
            f"Started {res.started}; wall time {res.wall_s:g} s{'; ' + machine if machine else ''}. "
            f"Pipeline: sim agent {p.nodes} nodes x {p.gpus} GPUs ({p.nodes * p.gpus} GPUs, 1 Hz, sim scheduler), "
            "worker, sink (embedded store), alert router (webhook), serve. Verdict: "
            f"**{'PASS' if res.passed else 'FAIL'}**.\n"
        )
        table = res.fault_table()
        targets = sorted({t for t, _ in table}, key=lambda t: (t.startswith("broker"), t == "store", t))
        kinds = [k for k in (*KINDS, "disk") if any(k == kk for _, kk in table)]
        out.append("| faults injected | " + " | ".join(kinds) + " |")
        out.append("|---|" + "---|" * len(kinds))
        for t in targets:
            out.append(f"| {t} | " + " | ".join(str(table.get((t, k), "")) for k in kinds) + " |")
        out.append("| **total** | " + " | ".join(str(sum(v for (_, kk), v in table.items() if kk == k)) for k in kinds) + " |\n")
        out.append("| check | result | detail |\n|---|---|---|")
        for name, (ok, detail) in res.checks.items():
            out.append(f"| {name} | {'pass' if ok else '**FAIL**'} | {detail.replace('|', '/')} |")
        out.append("\n| figure | value |\n|---|---|")
        for name, value in res.figures.items():
            out.append(f"| {name} | {json.dumps(value) if isinstance(value, (dict, list)) else value} |")
        if res.notes:
            out.append("\nNotes: " + "; ".join(res.notes))
        if res.findings:
            out.append("\nFindings:\n")
            for f in res.findings:
                out.append(f"- at {f.at_s} s, {f.component}: {f.what} (last fault: {f.last_fault or '-'})")
        out.append("")
    return "\n".join(out)
