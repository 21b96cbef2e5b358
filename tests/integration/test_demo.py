"""`hpcinsight demo` runs the whole pipeline and prints the idle GPU flagged."""

from __future__ import annotations

import pytest

from tests.conftest import Pipeline

pytestmark = [pytest.mark.kafka, pytest.mark.integration]


def test_demo_prints_table_with_idle_gpu_flagged(pipeline: Pipeline) -> None:
    result = pipeline.run("demo", "--duration", "40", "--speed", "4", "--windows", "10s/5s",
                          "--nodes", "2", "--gpus", "4", timeout=240)
    out = result.stdout
    assert "GPU utilisation per GPU" in out and "Anomalies" in out
    assert "GPUs flagged: sim-node-01 GPU 3" in out, out
    assert "gpu_underused (resolved)" in out
    assert "rows stored: gpu_samples 320" in out.replace("\n", " ")
    # the store outlives the demo: query reads it afterwards
    assert pipeline.sql("SELECT count() AS n FROM gpu_samples")[0]["n"] == 320
