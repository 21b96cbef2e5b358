"""The live cluster state the web service serves, built from the topics' events.

One row per GPU in arrival order (an index that never changes while the process runs), plain
Python lists per metric so a frame of 10,240 GPUs is a few list comprehensions. Anomalies are
kept while open (fired, not yet resolved). Thread-safe: the Kafka feed thread writes, request
handlers read, under one lock.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from hpcinsight.schemas.events import Anomaly, GpuQuantiles, GpuSample, JobQuantiles, NodeInventory, SchedulingKpi

#: the metrics a frame carries, each as one integer per GPU (-1: not known)
METRICS = ("util", "power", "mem", "temp", "p95")
#: what a filter value may look like: labels as the schemas allow them, no control characters
_FILTER_VALUE = re.compile(r"[\w.:@/+=-]{1,128}", re.ASCII)
FILTERS = ("team", "user", "job", "model", "kind", "node", "zone")


class FilterError(ValueError):
    """A filter the server refuses; the message says which and why."""


@dataclass(frozen=True)
class Filter:
    team: str | None = None
    user: str | None = None
    job: str | None = None
    model: str | None = None
    kind: str | None = None  # anomaly kind: only GPUs with an open anomaly of this kind
    node: str | None = None
    zone: str | None = None

    @classmethod
    def parse(cls, given: dict[str, str | None]) -> Filter:
        values = {}
        for name, value in given.items():
            if name not in FILTERS:
                raise FilterError(f"unknown filter {name!r}; filters: {', '.join(FILTERS)}")
            if value in (None, ""):
                continue
            if not _FILTER_VALUE.fullmatch(value):
                raise FilterError(f"filter {name}: {value[:40]!r} is not a label (1-128 letters, digits or ._:@/+=-)")
            values[name] = value
        return cls(**values)

    def key(self) -> tuple:
        return (self.team, self.user, self.job, self.model, self.kind, self.node, self.zone)


def _num(value: float | None, scale: float = 1.0) -> int:
    return -1 if value is None else int(round(value * scale))


class ClusterState:
    def __init__(self, max_gpus: int = 100_000) -> None:
        self.lock = threading.Lock()
        self.max_gpus = max_gpus
        self.index: dict[str, int] = {}
        self.node: list[str] = []
        self.gpu: list[int] = []
        self.uuid: list[str] = []
        self.zone: list[str] = []
        self.job: list[str | None] = []
        self.user: list[str | None] = []
        self.team: list[str | None] = []
        self.ts: list[int] = []
        self.values: dict[str, list[int]] = {m: [] for m in METRICS}
        self.layout_version = 0  # bumps when a GPU appears (the order of GPUs never changes)
        self.attribution_version = 0  # bumps when a GPU changes job, or an anomaly opens or closes
        self.nodes: dict[str, NodeInventory] = {}
        self.open: dict[str, Anomaly] = {}  # id -> the firing record
        self.gpu_kinds: dict[str, set[str]] = {}  # gpu uuid -> kinds open on it
        self.node_kinds: dict[str, set[str]] = {}  # node -> kinds open on the node or its links (all its GPUs show them)
        self.job_kinds: dict[str, set[str]] = {}  # job -> kinds open on the job itself (a hang, an under-used job)
        self.job_quantiles: dict[tuple[str, str, str], JobQuantiles] = {}
        self.gpu_quantiles: dict[tuple[str, str, str], GpuQuantiles] = {}
        self.kpis: dict[tuple[str, str, str], SchedulingKpi] = {}
        self.updated_ms = 0
        self.received = 0

    # -- writing -------------------------------------------------------------------------
    def _slot(self, node: str, gpu: int, uuid: str) -> int | None:
        i = self.index.get(uuid)
        if i is None:
            if len(self.uuid) >= self.max_gpus:
                return None
            i = self.index[uuid] = len(self.uuid)
            self.node.append(node)
            self.gpu.append(gpu)
            self.uuid.append(uuid)
            self.zone.append("")
            for col in (self.job, self.user, self.team):
                col.append(None)
            self.ts.append(0)
            for m in METRICS:
                self.values[m].append(-1)
            self.layout_version += 1
        return i

    def add_samples(self, samples: list[GpuSample]) -> None:
        with self.lock:
            for s in samples:
                i = self._slot(s.node, s.gpu_index, s.gpu_uuid)
                if i is None or s.ts < self.ts[i]:
                    continue
                self.ts[i] = s.ts
                if (self.job[i], self.user[i], self.team[i]) != (s.job_id, s.user, s.team):
                    if self.job[i] != s.job_id:
                        self.values["p95"][i] = -1
                    self.job[i], self.user[i], self.team[i] = s.job_id, s.user, s.team
                    self.attribution_version += 1
                if s.zone and self.zone[i] != s.zone:
                    self.zone[i] = s.zone
                    self.layout_version += 1
                v = self.values
                v["util"][i] = _num(s.gpu_util)
                v["power"][i] = _num(s.power_w)
                v["temp"][i] = _num(s.temperature_c)
                v["mem"][i] = (
                    _num(s.mem_used_bytes * 100 / s.mem_total_bytes) if s.mem_used_bytes is not None and s.mem_total_bytes else -1
                )
                self.updated_ms = max(self.updated_ms, s.ts)
            self.received += len(samples)

    def add_gpu_quantiles(self, rows: list[GpuQuantiles]) -> None:
        with self.lock:
            for q in rows:
                if not _keep_newest(self.gpu_quantiles, (q.gpu_uuid, q.metric, q.window), q, "window_end"):
                    continue
                if q.metric == "gpu_util" and q.window == "since_start":
                    i = self.index.get(q.gpu_uuid)
                    if i is not None and q.job_id == self.job[i]:
                        self.values["p95"][i] = _num(q.p95)

    def add_job_quantiles(self, rows: list[JobQuantiles]) -> None:
        with self.lock:
            for q in rows:
                _keep_newest(self.job_quantiles, (q.job_id, q.metric, q.window), q, "window_end")

    def add_anomalies(self, rows: list[Anomaly]) -> None:
        with self.lock:
            for a in rows:
                if a.state == "resolved":
                    self.open.pop(a.id, None)
                else:
                    self.open[a.id] = a
            kinds: dict[str, set[str]] = {}
            node_kinds: dict[str, set[str]] = {}
            job_kinds: dict[str, set[str]] = {}
            for a in self.open.values():
                if a.gpu_uuid:
                    kinds.setdefault(a.gpu_uuid, set()).add(a.kind)
                elif a.subject_type in ("node", "link") and a.node:
                    node_kinds.setdefault(a.node, set()).add(a.kind)
                elif a.subject_type == "job" and a.job_id:
                    job_kinds.setdefault(a.job_id, set()).add(a.kind)
            if (kinds, node_kinds, job_kinds) != (self.gpu_kinds, self.node_kinds, self.job_kinds):
                self.gpu_kinds, self.node_kinds, self.job_kinds = kinds, node_kinds, job_kinds
                self.attribution_version += 1

    def _open_kinds(self, i: int) -> set[str]:
        """Kinds open on the GPU, on its node, or on the job that holds it now."""
        on_gpu, on_node = self.gpu_kinds.get(self.uuid[i]), self.node_kinds.get(self.node[i])
        job = self.job[i]
        on_job = self.job_kinds.get(job) if job else None
        if not on_node and not on_job:
            return on_gpu or set()
        return set().union(on_gpu or (), on_node or (), on_job or ())

    def add_kpis(self, rows: list[SchedulingKpi]) -> None:
        with self.lock:
            for k in rows:
                _keep_newest(self.kpis, (k.kpi, k.dimension, k.group), k, "ts")

    def add_inventory(self, rows: list[NodeInventory]) -> None:
        with self.lock:
            for n in rows:
                if _keep_newest(self.nodes, n.node, n, "ts"):
                    self.layout_version += 1

    # -- reading (callers hold no lock; each method takes it) --------------------------------
    def _model(self, i: int) -> str:
        inv = self.nodes.get(self.node[i])
        return (inv.gpu_model or "") if inv else ""

    def _pool(self, i: int) -> str:
        inv = self.nodes.get(self.node[i])
        return (inv.pool or "") if inv else ""

    def _zone(self, i: int) -> str:
        inv = self.nodes.get(self.node[i])
        return self.zone[i] or ((inv.zone or "") if inv else "")

    def select(self, f: Filter) -> list[int]:
        """Indices of the GPUs the filter keeps, in layout order (zone, pool, node, GPU)."""
        with self.lock:
            return self._select(f)

    def _select(self, f: Filter) -> list[int]:
        keep = []
        for i in range(len(self.uuid)):
            if f.team and self.team[i] != f.team or f.user and self.user[i] != f.user or f.job and self.job[i] != f.job:
                continue
            if f.node and self.node[i] != f.node or f.zone and self._zone(i) != f.zone or f.model and self._model(i) != f.model:
                continue
            if f.kind and f.kind not in self._open_kinds(i):
                continue
            keep.append(i)
        keep.sort(key=lambda i: (self._zone(i), self._pool(i), self.node[i], self.gpu[i]))
        return keep

    def layout(self, f: Filter) -> tuple[list[int], dict[str, Any]]:
        """The GPUs of a view and the layout message that names them (sent when it changes)."""
        with self.lock:
            idx = self._select(f)
            return idx, {
                "version": [self.layout_version, self.attribution_version],
                "fields": ["node", "gpu", "uuid", "zone", "pool", "model"],
                "gpus": [[self.node[i], self.gpu[i], self.uuid[i], self._zone(i), self._pool(i), self._model(i)] for i in idx],
            }

    def versions(self) -> tuple[int, int]:
        return self.layout_version, self.attribution_version

    def frame(self, idx: list[int], metrics: tuple[str, ...] = METRICS) -> dict[str, Any]:
        """One update of a view: per metric an array of integers in layout order, the job of each
        GPU as an index into ``jobs`` (-1: none), and a bitmask of its open anomaly kinds into ``kinds``."""
        with self.lock:
            jobs: dict[str, int] = {}
            job_rows: list[list[str | None]] = []
            job_col = []
            for i in idx:
                j = self.job[i]
                if j is None:
                    job_col.append(-1)
                    continue
                k = jobs.get(j)
                if k is None:
                    k = jobs[j] = len(job_rows)
                    job_rows.append([j, self.user[i], self.team[i]])
                job_col.append(k)
            kinds = sorted(
                {k for s in (*self.gpu_kinds.values(), *self.node_kinds.values(), *self.job_kinds.values()) for k in s}
            )
            bit = {k: 1 << n for n, k in enumerate(kinds)}
            anom = []
            for i in idx:
                open_kinds = self._open_kinds(i)
                anom.append(sum(bit[k] for k in open_kinds) if open_kinds else 0)
            out: dict[str, Any] = {"t": self.updated_ms, "n": len(idx)}
            for m in metrics:
                col = self.values[m]
                out[m] = [col[i] for i in idx]
            out.update(job=job_col, jobs=job_rows, anom=anom, kinds=kinds)
            return out

    # -- REST views ------------------------------------------------------------------------
    def gpu_row(self, i: int) -> dict[str, Any]:
        return {
            "node": self.node[i],
            "gpu": self.gpu[i],
            "uuid": self.uuid[i],
            "zone": self._zone(i),
            "pool": self._pool(i),
            "model": self._model(i),
            "job": self.job[i],
            "user": self.user[i],
            "team": self.team[i],
            "last_sample_ms": self.ts[i],
            **{m: (None if self.values[m][i] < 0 else self.values[m][i]) for m in METRICS},
            "open_anomalies": sorted(self._open_kinds(i)),
        }

    def summary(self) -> dict[str, Any]:
        with self.lock:
            now_ms = int(time.time() * 1000)
            n = len(self.uuid)
            busy = sum(1 for j in self.job if j)
            util = [u for u in self.values["util"] if u >= 0]
            return {
                "gpus": n,
                "nodes": len(set(self.node)),
                "gpus_allocated": busy,
                "allocation_rate": round(busy / n, 4) if n else None,
                "mean_util": round(sum(util) / len(util), 1) if util else None,
                "jobs": len({j for j in self.job if j}),
                "open_anomalies": len(self.open),
                "open_by_kind": _count(a.kind for a in self.open.values()),
                "last_sample_ms": self.updated_ms,
                "age_s": round((now_ms - self.updated_ms) / 1000, 1) if self.updated_ms else None,
                "kpis": self._kpis(dimension="cluster"),
                "fragmentation": self._fragmentation(),
                "messages": self.received,
            }

    def _fragmentation(self) -> dict[str, float | int | None]:
        """The cluster's fragmentation from the newest KPI rows: stranded GPUs (free on partly used
        nodes) and FGD's expected fragmentation (free GPU capacity the recent jobs' typical shapes
        could not use), in GPUs and as a share of the free capacity; None where the worker has not
        said it yet (no KPI stream, or no job has said its shape)."""

        def value(kpi: str) -> float | None:
            k = self.kpis.get((kpi, "cluster", "all"))
            return k.value if k is not None else None

        return {
            "free_gpus": value("free_gpus"),
            "stranded_gpus": value("stranded_gpus"),
            "stranded_share": value("stranded_share"),
            "fgd_gpus": value("fgd_fragmentation_gpus"),
            "fgd_rate": value("fgd_fragmentation_rate"),
        }

    def _kpis(self, kpi: str | None = None, dimension: str | None = None) -> list[dict[str, Any]]:
        rows = [
            k for k in self.kpis.values() if (kpi is None or k.kpi == kpi) and (dimension is None or k.dimension == dimension)
        ]
        rows.sort(key=lambda k: (k.kpi, k.dimension, k.group))
        return [
            {"kpi": k.kpi, "dimension": k.dimension, "group": k.group, "value": k.value, "count": k.count, "ts": k.ts}
            for k in rows
        ]

    def kpis_view(self, kpi: str | None, dimension: str | None) -> list[dict[str, Any]]:
        with self.lock:
            return self._kpis(kpi, dimension)

    def node_view(self, node: str) -> dict[str, Any] | None:
        with self.lock:
            idx = [i for i, n in enumerate(self.node) if n == node]
            inv = self.nodes.get(node)
            if not idx and inv is None:
                return None
            return {
                "node": node,
                "inventory": _inventory(inv),
                "gpus": [self.gpu_row(i) for i in sorted(idx, key=self.gpu.__getitem__)],
                "open_anomalies": [_anomaly(a) for a in self.open.values() if a.node == node],
            }

    def gpu_view(self, uuid: str) -> dict[str, Any] | None:
        with self.lock:
            i = self.index.get(uuid)
            if i is None:
                return None
            q = [
                {"metric": m, "window": w, "p25": v.p25, "p50": v.p50, "p95": v.p95, "mean": v.mean, "window_end": v.window_end}
                for (u, m, w), v in sorted(self.gpu_quantiles.items())
                if u == uuid
            ]
            return {
                **self.gpu_row(i),
                "quantiles": q,
                "anomalies": [_anomaly(a) for a in self.open.values() if a.gpu_uuid == uuid],
            }

    def job_view(self, job: str) -> dict[str, Any] | None:
        with self.lock:
            idx = [i for i, j in enumerate(self.job) if j == job]
            q = [
                {
                    "metric": m,
                    "window": w,
                    "gpus": v.gpus,
                    "p25": v.p25,
                    "p50": v.p50,
                    "p95": v.p95,
                    "mean": v.mean,
                    "window_start": v.window_start,
                    "window_end": v.window_end,
                    "user": v.user,
                    "team": v.team,
                }
                for (j, m, w), v in sorted(self.job_quantiles.items())
                if j == job
            ]
            anomalies = [_anomaly(a) for a in self.open.values() if a.job_id == job]
            if not idx and not q and not anomalies:
                return None
            return {"job": job, "gpus": [self.gpu_row(i) for i in idx], "quantiles": q, "open_anomalies": anomalies}

    def anomalies_view(self, kind: str | None) -> list[dict[str, Any]]:
        with self.lock:
            return [_anomaly(a) for a in sorted(self.open.values(), key=lambda a: a.started_at) if kind is None or a.kind == kind]


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def _keep_newest(table: dict[Any, Any], key: Any, row: Any, time_field: str) -> bool:
    """Store ``row`` under ``key`` unless what is there is newer (by ``time_field``); True if stored.
    Topics are read at least once and in no order across partitions: an older row must not win."""
    old = table.get(key)
    if old is not None and getattr(old, time_field) > getattr(row, time_field):
        return False
    table[key] = row
    return True


def _anomaly(a: Anomaly) -> dict[str, Any]:
    return {
        "id": a.id,
        "kind": a.kind,
        "severity": a.severity,
        "state": a.state,
        "subject_type": a.subject_type,
        "subject": a.subject,
        "started_at": a.started_at,
        "ts": a.ts,
        "message": a.message,
        "node": a.node,
        "gpu_uuid": a.gpu_uuid,
        "job_id": a.job_id,
    }


def _inventory(n: NodeInventory | None) -> dict[str, Any] | None:
    if n is None:
        return None
    return {
        "gpu_count": n.gpu_count,
        "gpu_model": n.gpu_model,
        "cpus": n.cpus,
        "memory_bytes": n.memory_bytes,
        "zone": n.zone,
        "pool": n.pool,
        "ts": n.ts,
    }
