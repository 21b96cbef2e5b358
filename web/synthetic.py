"""A synthetic cluster for the web service's tests and the rendering benchmark: ``nodes`` x ``gpus``
GPUs in zones and pools, jobs on node sets, values that move every tick, anomalies on demand.
The events are the schemas' own, fed through the same :class:`ClusterState` methods as Kafka's."""

from __future__ import annotations

import math
import random
import time

from hpcinsight.schemas.events import Anomaly, GpuSample, NodeInventory
from hpcinsight.web.state import ClusterState


class SyntheticCluster:
    def __init__(
        self, state: ClusterState, nodes: int = 1280, gpus: int = 8, zones: int = 4, job_nodes: int = 16, seed: int = 0
    ) -> None:
        self.state, self.nodes, self.gpus = state, nodes, gpus
        self.rng = random.Random(seed)
        self.names = [f"node-{n:04d}" for n in range(nodes)]
        self.zone = {name: f"z{n % zones}" for n, name in enumerate(self.names)}
        now = int(time.time() * 1000)
        state.add_inventory(
            [
                NodeInventory(
                    ts=now,
                    node=name,
                    gpu_count=gpus,
                    gpu_model="H100" if n % 3 else "A100",
                    zone=self.zone[name],
                    pool="train" if n % 5 else "infer",
                )
                for n, name in enumerate(self.names)
            ]
        )
        # 7 nodes of each ``job_nodes`` run a job, one idles
        self.job_of = {
            name: (None if n % job_nodes == job_nodes - 1 else f"job-{n // job_nodes:04d}") for n, name in enumerate(self.names)
        }
        self.tick_no = 0

    def uuid(self, node: str, gpu: int) -> str:
        return f"GPU-{node}-{gpu}"

    def tick(self, ts_ms: int | None = None) -> int:
        ts = ts_ms if ts_ms is not None else int(time.time() * 1000)
        self.tick_no += 1
        phase = self.tick_no / 10
        samples = []
        for n, node in enumerate(self.names):
            job = self.job_of[node]
            k = int(job[4:]) if job else 0
            for g in range(self.gpus):
                base = 85 if job else 2
                util = max(0.0, min(100.0, base + 12 * math.sin(phase + n * 0.3 + g) + self.rng.uniform(-4, 4)))
                samples.append(
                    GpuSample(
                        node=node,
                        gpu_index=g,
                        gpu_uuid=self.uuid(node, g),
                        ts=ts,
                        gpu_util=util,
                        mem_used_bytes=int(80e9 * util / 100),
                        mem_total_bytes=int(80e9),
                        power_w=80 + 6 * util,
                        temperature_c=35 + util / 3,
                        job_id=job,
                        user=f"user{k % 17}" if job else None,
                        team=f"team{k % 5}" if job else None,
                        zone=self.zone[node],
                    )
                )
        self.state.add_samples(samples)
        return len(samples)

    def open_anomaly(self, node: str, gpu: int, kind: str = "gpu_outlier") -> str:
        now = int(time.time() * 1000)
        uid = f"{kind}:{self.uuid(node, gpu)}"
        self.state.add_anomalies(
            [
                Anomaly(
                    id=uid,
                    kind=kind,
                    severity="warning",
                    state="firing",
                    subject_type="gpu",
                    subject=self.uuid(node, gpu),
                    ts=now,
                    started_at=now,
                    window_start=now - 60_000,
                    window_end=now,
                    message="synthetic",
                    evidence={},
                    node=node,
                    gpu_uuid=self.uuid(node, gpu),
                    job_id=self.job_of[node],
                )
            ]
        )
        return uid
