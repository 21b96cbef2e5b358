"""The agent's collectors from the config file: ``[agent.collectors.<kind>]`` tables, with a flag
given on the command line over them, run against the real broker."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hpcinsight.schemas.catalog import GPU_SAMPLES_RAW, NODE_INVENTORY
from tests.conftest import ROOT, Pipeline

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

TICKS = 3


def agent(pipeline: Pipeline, config: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpcinsight.cli", "agent", *args],
        env={**pipeline.env, "HPCINSIGHT_CONFIG": config},
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        check=False,
    )


def test_the_agent_runs_the_collectors_of_the_config_file(pipeline: Pipeline) -> None:
    config = pipeline.logs / "hpcinsight.toml"
    config.write_text(
        '[agent.collectors.gpu_sim]\nnodes = 3\ngpus = 2\nseed = 5\nnode_prefix = "rack7-"\n\n'
        '[agent.collectors.scheduler_sim]\nnodes = 3\ngpus = 2\nseed = 5\nnode_prefix = "rack7-"\n'
    )
    # --gpus on the command line wins over both tables' gpus = 2
    result = agent(
        pipeline, str(config), "--gpus", "4", "--ticks", str(TICKS), "--speed", "20", "--catch-up", "--drain-timeout", "60"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["dropped"] == 0 and summary["drained"]
    assert summary["topics"][GPU_SAMPLES_RAW.name] == {"messages": 3 * TICKS, "records": 3 * 4 * TICKS}
    assert summary["topics"][NODE_INVENTORY.name]["records"] == 3
    assert (pipeline.store.parent / "spool" / "sim").is_dir()  # the agent is named after its GPU kind, as with --backend sim

    config.write_text("[agent.collectors.gpu_sim]\ngpus = 0\n")
    bad = agent(pipeline, str(config), "--ticks", "1")
    assert bad.returncode != 0 and "[agent.collectors.gpu_sim] gpus: must be between 1 and 16" in bad.stderr


def test_a_scenario_named_by_the_flag_or_the_file_runs_as_the_scenario_kind(pipeline: Pipeline) -> None:
    config = pipeline.logs / "scenario.toml"
    config.write_text('[agent.collectors.scenario]\nnames = ["step-straggler"]\n')
    runs = {
        "file": agent(pipeline, str(config), "--ticks", "2", "--speed", "20", "--catch-up"),
        "flag": agent(pipeline, "", "--scenario", "step-straggler", "--ticks", "2", "--speed", "20", "--catch-up"),
    }
    for how, result in runs.items():
        assert result.returncode == 0, (how, result.stderr[-3000:])
        topics = json.loads(result.stdout.strip().splitlines()[-1])["topics"]
        assert {"gpu.samples.raw", "scheduler.events", "node.inventory"} <= set(topics), (how, topics)
