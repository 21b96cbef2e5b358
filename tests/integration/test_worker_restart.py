"""The Faust worker SIGKILLed mid-incident and restarted: no window lost, no incident doubled,
the since-start quantiles carry on from the checkpoints."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from hpcinsight.core.kafka import message_count
from tests.conftest import Pipeline, check_windows_against_numpy, rank_error_ok, samples_by_gpu, sim_agent, stop

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

NODES, GPUS, TICKS, WINDOW_S, HOP_S = 2, 4, 80, 4, 2
LATENESS_S = 2  # a window closes once a sample this far past its end arrives
SPEED = 2  # sample time runs twice as fast as Kafka's clock
# Series checkpoint every 10 s of sample time; the restart restores them and replays the raw
# samples from 1 s (Kafka time) before the oldest checkpoint, so the since-start view must come from
# the checkpoints: the replay alone cannot count the samples before it. The idle incident starts at
# 10 s and the kill comes after 32 s of sample time, so the replay cannot see the onset: the
# incident must come back from the anomalies topic.
IDLE = "1:2@10-56"
KILL_AFTER_S = 32 / SPEED


def committed(pipeline: Pipeline, group: str, topic: str) -> int:
    consumer = Consumer({**pipeline.client_config(), "group.id": pipeline.prefix + group})
    try:
        partitions = consumer.list_topics(pipeline.topic(topic), timeout=10).topics[pipeline.topic(topic)].partitions
        offsets = consumer.committed([TopicPartition(pipeline.topic(topic), p) for p in partitions], timeout=10)
        return sum(max(tp.offset, 0) for tp in offsets)
    finally:
        consumer.close()


def test_worker_killed_and_restarted_continues_exactly(pipeline: Pipeline, tmp_path: Path) -> None:
    worker_args = (
        "worker",
        "--windows",
        f"{WINDOW_S}s/{HOP_S}s,20s/10s",
        "--since-start-every",
        "10s",
        "--checkpoint-every",
        "10s",
        "--replay-margin",
        "1s",
        "--lateness",
        f"{LATENESS_S}s",
    )
    # the idle GPU is busy again for the last 24 s of sample time: its incident's quiet time (10 min by default,
    # for windows of a minute) is shortened to the test's 4 s windows, as every span of this test is
    config = tmp_path / "detectors.toml"
    config.write_text("[detectors.gpu_underused]\nquiet_s = 4\n")
    env = {"HPCINSIGHT_CONFIG": str(config)}
    worker = pipeline.start("worker-1", *worker_args, extra_env=env)
    sink = pipeline.start("sink", "sink", "--batch-age", "0.3")
    agent = pipeline.start(
        "agent",
        *sim_agent(NODES, GPUS, ticks=TICKS, speed=SPEED),
        "--idle",
        IDLE,
    )
    started = time.monotonic()
    try:
        # kill the worker once it has fired the incident (the GPU is still idle) and committed
        # some progress, so the restart has state to rebuild
        deadline = time.monotonic() + 90
        while (
            message_count(pipeline.client_config(), [pipeline.topic("anomalies")])[pipeline.topic("anomalies")] == 0
            or committed(pipeline, "worker", "gpu.samples.raw") == 0
            or time.monotonic() - started < KILL_AFTER_S
        ):
            assert time.monotonic() < deadline and worker.poll() is None, pipeline.log("worker-1")
            time.sleep(0.2)
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
        worker = pipeline.start("worker-2", *worker_args, extra_env=env)
        assert agent.wait(120) == 0, pipeline.log("agent")
        produced = json.loads(pipeline.log("agent").strip().splitlines()[-1])["topics"]["gpu.samples.raw"]
        pipeline.wait_caught_up("worker", ["gpu.samples.raw"])
        pipeline.wait_caught_up("clickhouse-sink", ["gpu.samples", "gpu.quantiles", "anomalies", "dead.letters"])
    finally:
        stop(agent)
        stop(worker)
        assert stop(sink) == 0, pipeline.log("sink")
    assert f"restored {NODES * GPUS * 3} series" in pipeline.log("worker-2"), pipeline.log("worker-2")

    # replays of the at-least-once worker collapse on the tables' keys: FINAL sees each sample once
    counts = pipeline.sql("SELECT count() AS n, uniqExact(gpu_uuid, ts) AS distinct_n FROM gpu_samples FINAL")[0]
    assert counts == {"n": produced["records"], "distinct_n": produced["records"]}

    ends = check_windows_against_numpy(pipeline, samples_per_window=WINDOW_S, window=f"{WINDOW_S}s")
    check_windows_against_numpy(pipeline, samples_per_window=20, window="20s")
    by_gpu = samples_by_gpu(pipeline)
    assert len(ends) == NODES * GPUS
    for gpu, series in ends.items():
        first_ts, last_ts = min(t for t, _ in by_gpu[gpu]), max(t for t, _ in by_gpu[gpu])
        expected = list(range(series[0], last_ts - LATENESS_S * 1000 + 1, HOP_S * 1000))
        assert series == expected, f"{gpu}: windows missing across the restart"
        assert series[0] - WINDOW_S * 1000 < first_ts + HOP_S * 1000

    anomalies = pipeline.sql("SELECT id, state FROM anomalies FINAL WHERE kind = 'gpu_underused' ORDER BY ts, state")
    assert [a["state"] for a in anomalies] == ["firing", "resolved"], anomalies
    assert anomalies[0]["id"] == anomalies[1]["id"]

    # every since-start view counts every sample of its GPU before its end, across the restart
    since = pipeline.sql(
        "SELECT gpu_uuid, toUnixTimestamp64Milli(window_end) AS e, count, p50 FROM gpu_quantiles FINAL "
        "WHERE metric = 'gpu_util' AND window = 'since_start' ORDER BY gpu_uuid, e"
    )
    assert len(since) >= NODES * GPUS * 6
    for s in since:
        values = [v for t, v in by_gpu[s["gpu_uuid"]] if t < s["e"]]
        assert s["count"] == len(values), s
        assert rank_error_ok(values, 0.5, s["p50"])
