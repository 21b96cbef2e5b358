"""`hpcinsight demo` prints the unit view's URL and serves the simulated cluster there while it runs."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import ROOT, Pipeline, stop

pytestmark = [pytest.mark.kafka, pytest.mark.integration]


def test_demo_serves_the_unit_view_live(pipeline: Pipeline) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hpcinsight.cli",
            "demo",
            "--duration",
            "40",
            "--speed",
            "4",
            "--windows",
            "10s/5s",
            "--nodes",
            "2",
            "--gpus",
            "4",
        ],
        env={**pipeline.env, "COLUMNS": "200"},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = None
        for line in proc.stdout:
            found = re.search(r"unit view, live while the demo runs: (http://127\.0\.0\.1:\d+/)", line)
            if found:
                url = found.group(1)
                break
        assert url, "the demo printed no unit view URL"
        deadline = time.monotonic() + 90
        while True:
            try:
                cluster = httpx.get(url + "api/cluster", timeout=10).json()
            except httpx.HTTPError:
                cluster = {}
            if cluster.get("gpus") == 8 and cluster.get("jobs") == 1:
                break
            assert time.monotonic() < deadline, f"the demo's unit view did not show the cluster: {cluster}"
            time.sleep(0.5)
        assert 'id="grid"' in httpx.get(url, timeout=30).text
        rest = proc.stdout.read()
        assert proc.wait(240) == 0, rest[-3000:]
        assert "GPUs flagged" in rest
    finally:
        if proc.poll() is None:  # Ctrl-C: the demo stops what it started (SIGTERM would orphan its children)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        stop(proc)
