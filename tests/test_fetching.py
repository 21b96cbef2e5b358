"""The worker's consumer asks the broker to hold a fetch no longer than ``--fetch-wait``.

Faust fixes aiokafka's wait at 1.5 s; streams.fetching says why that stalls a live worker. What
the wait does to latency is measured in bench/ (``latency_10k``); here, that it reaches the
consumer the worker builds, and that a wait it cannot use is refused.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import faust
import pytest

from hpcinsight.core.durations import parse_ms
from hpcinsight.core.settings import load
from hpcinsight.schemas.catalog import ensure_topics
from hpcinsight.streams.app import WorkerOptions, create_app
from hpcinsight.streams.fetching import prompt_fetches


def _wait_of(app: faust.App) -> int:
    """The fetch wait of the aiokafka consumer ``app``'s consumer thread would start."""

    async def build() -> int:
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        try:
            return int(consumer._fetch_max_wait_ms)
        finally:
            await consumer.stop()

    return asyncio.run(build())


@pytest.mark.parametrize(("wait_s", "ms"), [(None, 50), (0.02, 20), (1.0, 1000)])
def test_the_worker_consumer_fetches_with_the_wait_it_was_given(
    wait_s: float | None, ms: int, tmp_path: Path, kafka_bootstrap: str
) -> None:
    options = WorkerOptions() if wait_s is None else WorkerOptions(fetch_wait_s=wait_s)
    prefix = f"fetchwait{uuid.uuid4().hex[:6]}."
    ensure_topics({"bootstrap.servers": kafka_bootstrap}, prefix)
    env = {"KAFKA_BOOTSTRAP": kafka_bootstrap, "HPCINSIGHT_TOPIC_PREFIX": prefix, "HPCINSIGHT_DATA_DIR": str(tmp_path)}
    settings = load(env)
    app, _ = create_app(settings, options)
    assert _wait_of(app) == ms


def test_the_fetch_wait_flag_defaults_to_the_worker_options() -> None:
    from hpcinsight.cli import build_parser

    assert build_parser().parse_args(["worker", "--fetch-wait", "20ms"]).fetch_wait == "20ms"
    default = build_parser().parse_args(["worker"]).fetch_wait
    assert parse_ms(default, "--fetch-wait") / 1000 == WorkerOptions().fetch_wait_s


def test_faust_alone_would_hold_a_fetch_for_one_and_a_half_seconds() -> None:
    # the premise of streams.fetching: should Faust ever take a setting or change its wait, this says so
    plain = faust.App("fetch-wait-plain", broker="kafka://127.0.0.1:1", value_serializer="raw")
    assert _wait_of(plain) == 1500
    prompt = faust.App("fetch-wait-prompt", broker="kafka://127.0.0.1:1", value_serializer="raw")
    prompt_fetches(prompt, 50)
    assert _wait_of(prompt) == 50


def test_a_fetch_wait_it_cannot_use_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from hpcinsight.cli import main

    assert main(["worker", "--fetch-wait", "0ms"]) == 2
    assert "--fetch-wait: at least 1 ms" in capsys.readouterr().err
    with pytest.raises(ValueError, match="fetch wait"):
        prompt_fetches(faust.App("fetch-wait-zero", broker="kafka://127.0.0.1:1"), 0)
