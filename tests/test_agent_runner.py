"""The agent loop with the broker unreachable: it keeps sampling, spools to disk, reports health."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from pathlib import Path

from hpcinsight.agents.delivery import Delivery
from hpcinsight.agents.runner import AgentStats, Metrics, run_agent
from hpcinsight.agents.sim.gpu import SimConfig, SimGpuCollector
from hpcinsight.schemas.catalog import AGENT_HEALTH, GPU_SAMPLES_RAW


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sampling_goes_on_without_a_broker_and_everything_waits_in_the_spool(tmp_path: Path) -> None:
    # no broker on purpose; log_level 0 keeps librdkafka from logging its refusals (its error callback still tells)
    delivery = Delivery({"bootstrap.servers": f"127.0.0.1:{_closed_port()}", "log_level": 0}, tmp_path / "spool", window=5)
    stats = AgentStats()
    metrics = Metrics(0, stats, delivery)
    port = metrics.server.server_address[1]
    try:
        deadline = time.monotonic() + 10
        while not delivery.broker_down:  # librdkafka has found the broker unreachable
            assert time.monotonic() < deadline
            time.sleep(0.05)
        run_agent(
            [SimGpuCollector(SimConfig(nodes=2, gpus_per_node=4))],
            delivery,
            "t.",
            interval_s=1.0,
            ticks=30,
            speed=1000.0,
            stop=threading.Event(),
            stats=stats,
            node="n",
        )
        assert stats.ticks == 30 and stats.records == 30 * 8 and stats.messages == 60
        assert delivery.stats.delivered == 0 and delivery.stats.spilled > 0
        records = delivery.spool.read(1000)  # nothing lost: every message is on disk, in order
        topics = [r.topic for r in records]
        assert topics.count(GPU_SAMPLES_RAW.full_name("t.")) + 5 >= 60 and AGENT_HEALTH.full_name("t.") in topics
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "hpcinsight_agent_ticks_total 30.0" in body
        assert "hpcinsight_agent_messages_spilled_total" in body and "hpcinsight_agent_spool_bytes" in body
    finally:
        metrics.close()
        assert delivery.close(drain_timeout=0.5) is False  # could not drain: reported, not hidden
        assert not delivery._thread.is_alive()  # and its sender ended with it (it polled on for good before)
