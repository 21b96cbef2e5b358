"""Slurm jobs (``squeue --json``, ``sacct --json``) and nodes as scheduler events and inventory.

Slurm's JSON changed shape between releases: 23.02 and older print times, counts and the
priority as plain integers and ``job_state`` as a string, while 23.11+ (data_parser v0.0.40+)
wrap numbers as ``{"set": true, "infinite": false, "number": N}`` and ``job_state`` is a list
of a base state and flags. ``sacct`` names fields differently (``user``, ``state.current``,
``time.start``, ``tres.requested``). Every field is read through one normaliser, so a job
looks the same whatever printed it.

Like the Kubernetes translator, the parsers see states and derive transitions, remembering
per job id (in a ``state`` dict kept by the caller) what was already emitted: ``PENDING`` ->
``submitted``; ``RUNNING`` -> ``scheduled`` and ``started`` (``scheduled`` only while the nodes
still boot, flag ``CONFIGURING``); ``PREEMPTED`` -> ``preempted``; a ``CANCELLED`` job that
never got nodes -> ``deleted``; other end states -> ``finished`` with the state as status. A
job requeued (its ``restart_cnt`` grew) gets ``preempted`` (status ``REQUEUED``) if its run had
not ended, and may then be scheduled, started and end again.
A pending job's ``start_time`` is only Slurm's estimate and is never used. ``team`` is the
account, ``queue`` the partition, ``node`` the job's host list as Slurm prints it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgspec

from hpcinsight.agents.base import Collector
from hpcinsight.agents.registry import check, collector_kind
from hpcinsight.schemas.catalog import NODE_INVENTORY, SCHEDULER_EVENTS, Topic
from hpcinsight.schemas.events import Event, NodeInventory, SchedulerEvent

log = logging.getLogger(__name__)

SOURCE = "slurm"
MIB = 2**20
TERMINAL = frozenset({"finished", "preempted", "deleted"})
_BASE = (
    "PENDING",
    "RUNNING",
    "SUSPENDED",
    "COMPLETED",
    "CANCELLED",
    "FAILED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "OUT_OF_MEMORY",
)
_MEM_UNIT = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2, "P": 1024**3}  # Slurm memory is in MiB
_GRES = re.compile(r"gpu(?::([^:(,]+))?:(\d+)")


@dataclass
class JobSeen:
    """What the parsers remember of one job: kinds emitted in its current run, its restarts, when last seen."""

    kinds: set[str] = field(default_factory=set)
    restarts: int = 0
    seen_ms: int = 0


def number(value: Any) -> float | None:
    """A plain number, or Slurm's ``{"set", "infinite", "number"}``; None when unset or infinite."""
    if isinstance(value, dict):
        if not value.get("set", True) or value.get("infinite"):
            return None
        value = value.get("number")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _epoch_ms(value: Any) -> int | None:
    s = number(value)
    return int(s * 1000) if s is not None and s > 946_684_800 else None  # 0 means "not yet"


def _label(value: Any) -> str | None:
    return str(value)[:256] if value not in (None, "", "None assigned", "(null)") else None


def _state(job: dict[str, Any]) -> tuple[str, set[str]]:
    raw = job.get("job_state", (job.get("state") or {}).get("current"))
    words = [str(w).split()[0] for w in (raw if isinstance(raw, list) else [raw]) if w]
    return next((w for w in words if w in _BASE), "UNKNOWN"), set(words)


def _tres(job: dict[str, Any]) -> dict[str, float]:
    """Requested TRES as ``{"cpu": 96, "mem": MiB, "gres/gpu": 8, "gres/gpu:h100": 8}``."""
    listed = (job.get("tres") or {}).get("requested") if isinstance(job.get("tres"), dict) else None
    if listed:
        return {
            f"{t['type']}/{t['name']}" if t.get("name") else str(t.get("type")): float(t.get("count") or 0)
            for t in listed
            if isinstance(t, dict)
        }
    out: dict[str, float] = {}
    for part in str(job.get("tres_req_str") or "").split(","):
        key, _, value = part.partition("=")
        if m := re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTP]?)", value.strip()):
            out[key.strip()] = float(m.group(1)) * (_MEM_UNIT.get(m.group(2) or "M", 1) if key.strip() == "mem" else 1)
    return out


def _gpus(job: dict[str, Any], tres: dict[str, float]) -> tuple[float | None, str | None]:
    typed = sorted(k.split(":", 1)[1] for k in tres if k.startswith("gres/gpu:"))
    model = "|".join(typed) or None
    if "gres/gpu" in tres:
        return tres["gres/gpu"], model
    per_node = _GRES.search(str(job.get("tres_per_node") or ""))  # e.g. "gres/gpu:h100:8"
    if per_node:
        nodes = number(job.get("node_count")) or 1
        return int(per_node.group(2)) * nodes, model or per_node.group(1)
    return (0.0 if tres else None), model


def _fields(job: dict[str, Any]) -> dict[str, Any]:
    tres = _tres(job)
    gpus, model = _gpus(job, tres)
    cpus = tres.get("cpu", number(job.get("cpus")))
    memory = tres.get("mem")
    priority = number(job.get("priority"))
    return {
        "source": SOURCE,
        "job_id": str(job["job_id"]),
        "name": _label(job.get("name")),
        "user": _label(job.get("user_name") or job.get("user")),
        "team": _label(job.get("account")),
        "priority": None if priority is None else str(int(priority)),
        "qos": _label(job.get("qos")),
        "queue": _label(job.get("partition")),
        "requested_gpus": gpus,
        "requested_cpus": cpus,
        "requested_memory_bytes": None if memory is None else int(memory * MIB),
        "gpu_model": model,
    }


def _times(job: dict[str, Any]) -> tuple[int | None, int | None, int | None]:
    t = job.get("time") if isinstance(job.get("time"), dict) else {}
    return (
        _epoch_ms(job.get("submit_time", t.get("submission"))),
        _epoch_ms(job.get("start_time", t.get("start"))),
        _epoch_ms(job.get("end_time", t.get("end"))),
    )


def job_to_events(job: dict[str, Any], state: dict[str, JobSeen], now_ms: int) -> list[SchedulerEvent]:
    """The transitions of one job record (from squeue or sacct) not yet in ``state``."""
    if not isinstance(job, dict) or job.get("job_id") in (None, "", 0):
        return []
    base, flags = _state(job)
    submit, start, end = _times(job)
    nodes = _label(job.get("nodes"))
    seen = state.setdefault(str(job["job_id"]), JobSeen())
    seen.seen_ms = now_ms
    ran = base not in ("PENDING", "UNKNOWN") and nodes is not None and start is not None
    fields, out = _fields(job), []

    def emit(kind: str, ts: int | None, **extra: Any) -> None:
        if kind in seen.kinds or (kind in TERMINAL and seen.kinds & TERMINAL):
            return
        seen.kinds.add(kind)
        out.append(SchedulerEvent(ts=ts or now_ms, kind=kind, **fields, **extra))

    restarts = int(number(job.get("restart_cnt")) or 0)
    if restarts < seen.restarts:  # an older record (slurmdbd lags the controller): nothing new in it
        return []
    if restarts > seen.restarts:  # requeued (preemption, node failure, scontrol requeue): a new run
        if seen.kinds - {"submitted"}:
            emit("preempted", None, status="REQUEUED")
        seen.kinds, seen.restarts = {"submitted"} & seen.kinds, restarts
    emit("submitted", submit)
    if ran:
        emit("scheduled", start, node=nodes)
        if "CONFIGURING" not in flags:
            emit("started", start, node=nodes)
    if base == "PREEMPTED":
        emit("preempted", end, node=nodes, status=base)
    elif base == "CANCELLED" and not ran:
        emit("deleted", end, status=base)
    elif base not in ("PENDING", "RUNNING", "SUSPENDED", "UNKNOWN"):
        emit("finished", end, node=nodes, status=base)
    return out


def squeue_to_events(doc: dict[str, Any], state: dict[str, JobSeen], now_ms: int | None = None) -> list[SchedulerEvent]:
    """Transitions shown by one ``squeue --json`` document; ``now_ms`` stamps those without a time."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    out: list[SchedulerEvent] = []
    for job in (doc or {}).get("jobs") or []:
        try:
            out.extend(job_to_events(job, state, now))
        except (KeyError, TypeError, ValueError) as err:  # one odd record must not hide the others
            log.warning("skipped Slurm job record %r: %s", job.get("job_id") if isinstance(job, dict) else job, err)
    return out


sacct_to_events = squeue_to_events  # the same normaliser reads both; sacct's ``steps`` are ignored


def node_inventory(n: dict[str, Any], now_ms: int) -> NodeInventory:
    """One node of ``scontrol show nodes --json`` (or ``sinfo --json``): GPUs from ``gres``, pool = first partition."""
    gres = [_GRES.match(g.strip()) for g in re.split(r",(?![^(]*\))", str(n.get("gres") or ""))]
    gpus = [m for m in gres if m]
    memory, parts, features = number(n.get("real_memory")), n.get("partitions") or [], n.get("features") or []
    parts, features = [str(p) for p in _listed(parts)], [str(f) for f in _listed(features)]
    name = _label(n.get("name") or n.get("hostname"))
    if name is None:
        raise ValueError("a node without a name")
    return NodeInventory(
        ts=now_ms,
        node=name,
        gpu_count=sum(int(m.group(2)) for m in gpus),
        gpu_model="|".join(sorted({m.group(1) for m in gpus if m.group(1)})) or None,
        cpus=number(n.get("cpus")),
        memory_bytes=None if memory is None else int(memory * MIB),
        pool=_label(parts[0] if parts else None),
        labels={"partitions": ",".join(parts), "features": ",".join(features)},
    )


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else str(value).split(",")


def nodes_to_inventory(doc: dict[str, Any], now_ms: int) -> list[NodeInventory]:
    """Every readable node of a ``scontrol show nodes --json`` document; an unreadable one is logged and skipped."""
    out = []
    for n in (doc or {}).get("nodes") or []:
        try:
            out.append(node_inventory(n, now_ms))
        except (AttributeError, TypeError, ValueError) as err:
            log.warning("skipped Slurm node record: %s", err)
    return out


@dataclass(frozen=True)
class SlurmConfig:
    poll_s: float = 30.0  # how often to ask Slurm; sample() calls in between return nothing
    use_sacct: bool = True  # also ask the accounting database, for jobs that ended between polls
    lookback_s: float = 3600.0  # how far back the first sacct query reaches
    inventory_poll_s: float = 600.0
    timeout_s: float = 60.0
    retention_s: float = 86_400.0  # forget a job this long after squeue or sacct last listed it
    squeue: str = "squeue"
    sacct: str = "sacct"
    scontrol: str = "scontrol"

    def __post_init__(self) -> None:
        for name in ("poll_s", "lookback_s", "inventory_poll_s", "timeout_s", "retention_s"):
            value = getattr(self, name)
            check(math.isfinite(value) and value > 0, name, "must be a positive number of seconds")


class SlurmCollector(Collector[SlurmConfig]):
    """Polls squeue (and sacct, scontrol) and returns the job transitions and node changes since the last poll."""

    topic = SCHEDULER_EVENTS
    #: NodeInventory records in :meth:`sample` belong on this topic, not on :attr:`topic`
    extra_topics: ClassVar[tuple[Topic, ...]] = (NODE_INVENTORY,)

    def __init__(self, config: SlurmConfig) -> None:
        super().__init__(config)
        for cmd in (config.squeue, config.scontrol, *([config.sacct] if config.use_sacct else [])):
            if shutil.which(cmd) is None:
                raise FileNotFoundError(f"{cmd!r} is not on PATH: run the Slurm collector on a host with Slurm's client commands")
        self.state: dict[str, JobSeen] = {}
        self.errors = 0
        self._nodes: dict[str, NodeInventory] = {}
        self._last_poll: int | None = None
        self._last_inventory: int | None = None

    def _json(self, *cmd: str) -> dict[str, Any] | None:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=self.config.timeout_s, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[:500]}")
            doc = json.loads(done.stdout)
            return doc if isinstance(doc, dict) else None
        except (OSError, subprocess.TimeoutExpired, RuntimeError, ValueError) as err:
            self.errors += 1
            log.warning("%s failed: %s", " ".join(cmd[:2]), err)
            return None

    def sample(self, now_ms: int) -> list[Event]:
        cfg, out = self.config, list[Event]()
        if self._last_inventory is None or now_ms - self._last_inventory >= cfg.inventory_poll_s * 1000:
            self._last_inventory = now_ms
            for inv in nodes_to_inventory(self._json(cfg.scontrol, "show", "nodes", "--json") or {}, now_ms):
                if (old := self._nodes.get(inv.node)) is None or msgspec.structs.replace(old, ts=now_ms) != inv:
                    self._nodes[inv.node] = inv
                    out.append(inv)
        if self._last_poll is not None and now_ms - self._last_poll < cfg.poll_s * 1000:
            return out
        since_s = (now_ms / 1000 - cfg.lookback_s) if self._last_poll is None else (self._last_poll / 1000 - cfg.poll_s)
        self._last_poll = now_ms
        if cfg.use_sacct:
            since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since_s))  # sacct reads local time
            out.extend(
                sacct_to_events(self._json(cfg.sacct, "--json", "-X", "-a", "-S", since, "-E", "now") or {}, self.state, now_ms)
            )
        out.extend(squeue_to_events(self._json(cfg.squeue, "--json") or {}, self.state, now_ms))
        horizon = now_ms - cfg.retention_s * 1000
        for job_id in [j for j, s in self.state.items() if s.seen_ms < horizon]:  # neither queued nor recently ended
            del self.state[job_id]
        return out


@collector_kind("scheduler_slurm", SlurmConfig)
def scheduler_slurm(config: SlurmConfig) -> list[Collector[Any]]:
    """Jobs and nodes polled from squeue, sacct and scontrol (``[agent.collectors.scheduler_slurm]``)."""
    return [SlurmCollector(config)]
