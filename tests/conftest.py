"""Shared fixtures: one real Kafka broker per test process (``make test`` runs several with
pytest-xdist), and a way to run the CLI.

The broker is, in order of preference: the cluster named by ``KAFKA_BOOTSTRAP``; a
testcontainers Kafka where a Docker engine answers; otherwise a KRaft broker started from
the Maven Central jars by :mod:`hpcinsight.deploy.local.kafka`. Each test gets its own topic prefix,
so tests share the broker without seeing each other's data.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    if _docker_available():
        from testcontainers.kafka import KafkaContainer

        from hpcinsight.deploy.local.kafka import KAFKA_VERSION

        with KafkaContainer(f"apache/kafka:{KAFKA_VERSION}").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    from hpcinsight.deploy.local.kafka import LocalKafka

    with LocalKafka() as kafka:
        yield kafka.bootstrap


@dataclass
class Pipeline:
    """Environment of one test's pipeline: its broker, topic prefix and embedded store."""

    bootstrap: str
    prefix: str
    store: Path
    logs: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP": self.bootstrap,
            "HPCINSIGHT_TOPIC_PREFIX": self.prefix,
            "CLICKHOUSE_URL": f"chdb://{self.store}",
            "HPCINSIGHT_DATA_DIR": str(self.store.parent),
            "PYTHONUNBUFFERED": "1",
        }

    def topic(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def client_config(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap}

    def start(self, name: str, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")
        return subprocess.Popen(
            [sys.executable, "-m", "hpcinsight.cli", *args],
            env={**self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def run(self, *args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "hpcinsight.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"hpcinsight {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
        return result

    def sql(self, query: str) -> list[dict[str, Any]]:
        """Query the store through the CLI, as a user would (the store must not be open elsewhere)."""
        return json.loads(self.run("query", query, "--format", "json").stdout)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def poll(self, condition: Callable[[], bool], *alive: subprocess.Popen[bytes]) -> None:
        """Until ``condition()`` holds, while the given processes run. No clock: a condition that
        never comes is a hang, which pytest-timeout ends with the test's stack."""
        while not condition():
            for proc in alive:
                assert proc.poll() is None, f"{proc.args} exited with {proc.returncode}"
            time.sleep(0.3)

    def job_stage_settled(self) -> bool:
        """Every job window the stored GPU windows call for is stored too (the job stage holds a
        job's first windows back ``--job-wait`` for GPUs nobody knows of yet)."""
        ends = "SELECT window, max(window_end) AS e FROM {} FINAL WHERE metric = 'gpu_util' GROUP BY window ORDER BY window"
        gpu = self.sql(ends.format("gpu_quantiles"))
        return bool(gpu) and gpu == self.sql(ends.format("job_quantiles"))

    def wait_caught_up(self, group: str, topics: list[str], timeout: float = 120) -> None:
        from hpcinsight.core.kafka import lag

        deadline = time.monotonic() + timeout
        while (remaining := lag(self.client_config(), f"{self.prefix}{group}", [self.topic(t) for t in topics])) > 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"group {group} still {remaining} messages behind after {timeout} s")
            time.sleep(0.5)


@pytest.fixture
def pipeline(kafka_bootstrap: str, tmp_path: Path) -> Pipeline:
    logs = tmp_path / "logs"
    logs.mkdir()
    p = Pipeline(kafka_bootstrap, f"t{uuid.uuid4().hex[:10]}.", tmp_path / "data" / "clickhouse", logs)
    from hpcinsight.schemas.catalog import ensure_topics

    ensure_topics(p.client_config(), p.prefix)
    return p


def samples_by_gpu(pipeline: Pipeline, metric: str = "gpu_util") -> dict[str, list[tuple[int, float]]]:
    assert metric.isidentifier()
    by_gpu: dict[str, list[tuple[int, float]]] = {}
    for row in pipeline.sql(f"SELECT gpu_uuid, toUnixTimestamp64Milli(ts) AS ts, {metric} AS v FROM gpu_samples FINAL"):
        by_gpu.setdefault(row["gpu_uuid"], []).append((row["ts"], row["v"]))
    return by_gpu


def rank_error_ok(values: Any, q: float, v: float, eps: float = 0.01) -> bool:
    """``v`` answers quantile ``q`` of ``values`` within ``eps`` normalised rank error (the KLL
    sketches' documented bound is 0.68%); ranks among float32 values, as sketched and stored."""
    import numpy as np

    values = np.asarray(values, dtype=np.float32)
    v = np.float32(v)
    return float(np.mean(values < v)) - eps <= q <= float(np.mean(values <= v)) + eps


def check_windows_against_numpy(
    pipeline: Pipeline, samples_per_window: int, metric: str = "gpu_util", window: str | None = None
) -> dict[str, list[int]]:
    """Every stored sliding window of ``window`` (default: the shortest) holds exactly the stored
    samples of its span, one for each tick its node's agent made in it, its mean is theirs, and
    its quantiles are within 1% rank error of the exact ones computed by numpy. A window spans
    ``samples_per_window`` ticks, fewer where the agent skipped overrun ticks (it does so rather
    than bunch them, and a loaded test machine can make it skip several). Returns window ends per
    GPU, in order."""
    import numpy as np

    by_gpu = samples_by_gpu(pipeline, metric)
    node_of = {r["gpu_uuid"]: r["node"] for r in pipeline.sql("SELECT DISTINCT gpu_uuid, node FROM gpu_samples")}
    ticks: dict[str, set[int]] = {}  # per node, the times its agent sampled (every GPU of it at once)
    for gpu, rows in by_gpu.items():
        ticks.setdefault(node_of[gpu], set()).update(t for t, _ in rows)
    label = (
        window
        or pipeline.sql(
            f"SELECT window FROM gpu_quantiles WHERE metric = '{metric}' AND window != 'since_start' "
            "ORDER BY window_end - window_start LIMIT 1"
        )[0]["window"]
    )
    windows = pipeline.sql(
        "SELECT gpu_uuid, toUnixTimestamp64Milli(window_start) AS s, toUnixTimestamp64Milli(window_end) AS e, "
        f"count, p25, p50, p95, mean FROM gpu_quantiles FINAL WHERE metric = '{metric}' AND window = '{label}' "
        "ORDER BY gpu_uuid, e"
    )
    assert windows, f"no {label} windows stored"
    ends: dict[str, list[int]] = {}
    for w in windows:
        ends.setdefault(w["gpu_uuid"], []).append(w["e"])
        values = np.array([v for t, v in by_gpu[w["gpu_uuid"]] if w["s"] <= t < w["e"]])
        made = sum(w["s"] <= t < w["e"] for t in ticks[node_of[w["gpu_uuid"]]])
        assert w["count"] == values.size == made, (w, made)
        assert samples_per_window // 2 <= made <= samples_per_window, (w, made)
        for q, name in ((0.25, "p25"), (0.5, "p50"), (0.95, "p95")):
            assert rank_error_ok(values, q, w[name]), (w, name, sorted(values.tolist()))
        assert w["mean"] == pytest.approx(float(values.astype(np.float64).mean()), abs=1e-3, rel=1e-6)
    return ends


def sim_agent(nodes: int, gpus: int, *, ticks: int | None = None, speed: float = 10) -> list[str]:
    """``hpcinsight agent`` on the sim backend as the tests run it: ``speed`` times real time, and
    catching up on an overrun tick rather than skipping it. Skipping keeps the ticks sampled but
    moves the sim clock, so a scenario's fault or job end landed elsewhere under load (b44fc51);
    caught up, the timeline a test asserts on is the same however loaded the machine is."""
    ticked = [] if ticks is None else ["--ticks", str(ticks)]
    return ["agent", "--backend", "sim", "--nodes", str(nodes), "--gpus", str(gpus), *ticked, "--speed", str(speed), "--catch-up"]


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    from hpcinsight.harness.supervisor import terminate

    return terminate(proc, timeout)
