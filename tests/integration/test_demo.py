"""`hpcinsight demo` runs the whole pipeline and prints the idle GPU flagged."""

from __future__ import annotations

import pytest

from tests.conftest import Pipeline

pytestmark = [pytest.mark.kafka, pytest.mark.integration]


def test_demo_prints_table_with_idle_gpu_flagged(pipeline: Pipeline) -> None:
    result = pipeline.run(
        "demo", "--duration", "40", "--speed", "4", "--windows", "10s/5s", "--nodes", "2", "--gpus", "4", timeout=240
    )
    out = result.stdout
    assert "GPU utilisation per GPU" in out and "Anomalies" in out
    assert "GPUs flagged: sim-node-01 GPU 3" in out, out
    assert "gpu_underused (resolved)" in out
    assert "rows stored: gpu_samples 320" in out.replace("\n", " ")
    # the store outlives the demo: query reads it afterwards
    assert pipeline.sql("SELECT count() AS n FROM gpu_samples")[0]["n"] == 320


def test_sigterm_stops_the_demo_and_everything_it_started(pipeline: Pipeline) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    log = open(pipeline.logs / "demo-sigterm.log", "wb")
    demo = subprocess.Popen(
        [sys.executable, "-m", "hpcinsight.cli", "demo", "--duration", "600", "--nodes", "1", "--gpus", "2"],
        env=pipeline.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        agent_log = pipeline.store.parent / "logs" / "agent.log"
        while not agent_log.exists() and demo.poll() is None:  # bounded by the suite's per-test timeout
            time.sleep(0.5)
        time.sleep(3)  # the agent under way, the worker and the sink started before it
        assert demo.poll() is None and agent_log.exists(), (pipeline.logs / "demo-sigterm.log").read_text()[-3000:]
        demo.send_signal(signal.SIGTERM)  # to the demo alone, as `kill PID` does
        assert demo.wait(90) == 128 + signal.SIGTERM
        # nothing it started (worker, sink, agent, unit view) is left in its session: the demo waits for
        # each child it stops, so by its exit they are gone
        try:
            os.killpg(demo.pid, 0)
        except ProcessLookupError:
            pass
        else:
            left = subprocess.run(["ps", "-o", "pid,args", "-g", str(demo.pid)], capture_output=True, text=True).stdout
            raise AssertionError(f"processes of the demo's session outlived it:\n{left}")
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
        log.close()
