"""The do-nothing Faust app behind the floor benchmark counts exactly the messages of a topic.

Its rate is only worth something if it stops on the last message and not before: one event at a
time and through ``Stream.take``, on a real broker; asked for one more than the topic holds, it
says how many it saw instead of reporting a rate.
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest

from bench.faust_floor import floor_rates, run_floor
from bench.stream import _produce
from hpcinsight.core.topics import create_topics
from hpcinsight.schemas.catalog import GPU_SAMPLES_RAW

MESSAGES = 40


@pytest.fixture
def topic(kafka_bootstrap: str) -> str:
    prefix = f"floortest{uuid.uuid4().hex[:6]}."
    (name,) = create_topics({"bootstrap.servers": kafka_bootstrap}, [dataclasses.replace(GPU_SAMPLES_RAW, name="t")], prefix)
    _produce(kafka_bootstrap, name, [(f"node-{i % 7}".encode(), b"{}" * (i + 1)) for i in range(MESSAGES)])
    return name


def test_the_floor_app_counts_exactly_the_topic(kafka_bootstrap: str, topic: str, tmp_path: Path) -> None:
    assert run_floor(kafka_bootstrap, topic, MESSAGES, str(tmp_path)) > 0
    assert min(floor_rates(kafka_bootstrap, topic, MESSAGES, str(tmp_path), {"stream_buffer_maxsize": 64}, take=16)) > 0
    with pytest.raises(RuntimeError, match=f"FLOOR_SHORT {MESSAGES}\\b"):
        floor_rates(kafka_bootstrap, topic, MESSAGES + 1, str(tmp_path), idle_s=2)
