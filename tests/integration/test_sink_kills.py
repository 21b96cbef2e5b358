"""The sink killed -9 a few times while it inserts, behind a feed with the worker's replays:
every sample stored once and counted once in every rollup (``make chaos-sink`` runs it longer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.chaos.sink import campaign

pytestmark = [pytest.mark.kafka, pytest.mark.integration]


def test_the_sink_killed_while_it_inserts_loses_and_counts_twice_nothing(kafka_bootstrap: str, tmp_path: Path) -> None:
    result = campaign(kafka_bootstrap, tmp_path, kills=3, seed=5, nodes=32, ticks=600, rate=40.0)
    assert result["verdict"] == "PASS", json.dumps(result, indent=1)  # whole: the last sink's words included
    assert result["samples"] == 600 * 32 * 8
