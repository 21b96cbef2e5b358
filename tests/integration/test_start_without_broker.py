"""Components started while the broker is away wait for it, and then work.

The chaos campaign restarted a sink while the broker was restarting, under load: the sink's
start-up asked the broker for its topics once, gave up after 30 s and exited. Here the sink and an
agent start with no broker at their address at all; the broker comes up there only once both have
said they are waiting. Both must still run, and every sample the agent took afterwards be stored.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from hpcinsight.deploy.local.kafka import LocalKafka, free_ports
from tests.conftest import Pipeline, stop

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

WAITING = "the broker does not answer"
NODES, GPUS, TICKS = 2, 4, 20  # the agent's 20 ticks, 0.2 s apart once it runs


def test_a_sink_and_an_agent_started_before_the_broker_wait_for_it(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    logs = tmp_path / "logs"
    logs.mkdir()
    p = Pipeline(f"127.0.0.1:{port}", f"w{uuid.uuid4().hex[:8]}.", tmp_path / "data" / "clickhouse", logs)
    sink = p.start("sink", "sink", "--batch-age", "0.5")
    agent = p.start(
        "agent",
        "agent",
        "--backend",
        "sim",
        "--nodes",
        str(NODES),
        "--gpus",
        str(GPUS),
        "--ticks",
        str(TICKS),
        "--interval",
        "0.2",
    )
    broker = LocalKafka(tmp_path / "kafka", port=port, heap="384m")
    try:
        p.poll(lambda: WAITING in p.log("sink") and WAITING in p.log("agent"), sink, agent)
        broker.start()
        assert agent.wait(300) == 0, p.log("agent")[-3000:]
        p.wait_caught_up("clickhouse-sink", ["gpu.processes"], timeout=180)
        assert sink.poll() is None, "the sink exited:\n" + p.log("sink")[-3000:]
    finally:
        for proc in (agent, sink):
            if proc.poll() is None:
                stop(proc)
        broker.stop()
    sent = _last_json(p.log("agent"))["topics"]["gpu.processes"]["records"]
    assert sent > 0
    assert p.sql("SELECT count() AS n FROM gpu_processes")[0]["n"] == sent


def _last_json(log: str) -> dict:
    return json.loads(next(line for line in reversed(log.splitlines()) if line.startswith("{")))
