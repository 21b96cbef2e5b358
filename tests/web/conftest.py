"""The web service on a loopback port, over a synthetic cluster (no broker needed)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from hpcinsight.core.settings import Secret
from hpcinsight.web.app import create_app
from hpcinsight.web.state import ClusterState
from hpcinsight.web.synthetic import SyntheticCluster

TOKEN = "s3cret-token-for-tests-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    url: str
    state: ClusterState
    cluster: SyntheticCluster
    token: str | None


class StubResult:
    def __init__(self, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
        self.column_names, self.result_rows = columns, rows


class StubClient:
    """Stands in for a ClickHouse client: records what it was asked, answers one row."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, Any]] = []

    def query(self, sql: str, parameters: Any = None, settings: Any = None) -> StubResult:
        self.calls.append((sql, parameters, settings))
        return StubResult(["x", "y"], [(1, float("nan"))])

    def close(self) -> None:
        pass


def serve(state: ClusterState, token: str | None, store: Any = None, interval: float = 0.3) -> Iterator[str]:
    import uvicorn

    app = create_app(
        state, Secret(token) if token else None, store, job_threshold=lambda team, user: 30.0, frame_interval_s=interval
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the web service did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def stub_client() -> StubClient:
    return StubClient()


@pytest.fixture(params=[None, TOKEN], ids=["open", "token"])
def served(request: pytest.FixtureRequest, stub_client: StubClient) -> Iterator[Served]:
    state = ClusterState()
    cluster = SyntheticCluster(state, nodes=12, gpus=8, job_nodes=4)
    cluster.tick()
    cluster.open_anomaly("node-0002", 5, "gpu_outlier")
    for url in serve(state, request.param, lambda: stub_client):
        yield Served(url, state, cluster, request.param)
