"""Collector kinds: registered by their modules, configured from ``[agent.collectors.<kind>]`` tables
and from the agent's flags (flags over the file), built by one call for the CLI and the scenarios."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hpcinsight.agents import registry
from hpcinsight.agents.base import Collector
from hpcinsight.agents.gpu_nvml import NvmlConfig
from hpcinsight.agents.ib_sysfs import IbConfig
from hpcinsight.agents.sim.gpu import (
    IdleGpu,
    InjectedFault,
    SimConfig,
    SimGpuCollector,
    SimProcessCollector,
    SimXidCollector,
)
from hpcinsight.agents.sim.ib import IbFault, SimIbCollector, SimIbConfig
from hpcinsight.agents.sim.scheduler import SimSchedulerCollector
from hpcinsight.agents.sim.steps import SimStepCollector
from hpcinsight.cli import agent_collector_tables, build_parser
from hpcinsight.core.settings import ConfigError, load
from hpcinsight.schemas.catalog import GPU_SAMPLES_RAW
from hpcinsight.schemas.events import Event, GpuSample

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000_000


# --- a collector kind of this test module: what adding a collector takes ---------------------------
@dataclass(frozen=True)
class TinyConfig:
    """``[agent.collectors.tiny]``: ``gpus`` fake GPUs on ``node`` at ``util`` percent."""

    node: str = "tiny-node"
    gpus: int = 1
    util: float = 50.0

    def __post_init__(self) -> None:
        registry.check(self.gpus >= 1, "gpus", "must be >= 1")


class TinyCollector(Collector[TinyConfig]):
    topic = GPU_SAMPLES_RAW

    def __init__(self, config: TinyConfig) -> None:
        super().__init__(config)
        self.closed = False

    def sample(self, now_ms: int) -> list[Event]:
        return [
            GpuSample(node=self.config.node, gpu_index=i, gpu_uuid=f"GPU-tiny-{i}", ts=now_ms, gpu_util=self.config.util)
            for i in range(self.config.gpus)
        ]

    def close(self) -> None:
        self.closed = True


BUILT: list[TinyCollector] = []


@pytest.fixture
def tiny() -> Iterator[None]:
    def build_tiny(config: TinyConfig) -> list[Collector[Any]]:
        BUILT.append(TinyCollector(config))
        return [BUILT[-1]]

    registry.collector_kind("tiny", TinyConfig)(build_tiny)
    BUILT.clear()
    yield
    registry.unregister("tiny")


def test_a_kind_registered_by_a_test_module_is_built_from_the_config_file(tiny: None, tmp_path: Path) -> None:
    config = tmp_path / "hpcinsight.toml"
    config.write_text('[agent.collectors.tiny]\nnode = "n7"\ngpus = 3\nutil = 87.5\n')
    settings = load({"HPCINSIGHT_CONFIG": str(config)})
    assert settings.collectors == {"tiny": {"node": "n7", "gpus": 3, "util": 87.5}}
    (collector,) = registry.build(settings.collectors)
    assert isinstance(collector, TinyCollector) and collector.config == TinyConfig(node="n7", gpus=3, util=87.5)
    samples = collector.sample(T0)
    assert [(s.node, s.gpu_index, s.gpu_util, s.ts) for s in samples] == [("n7", i, 87.5, T0) for i in range(3)]
    assert "tiny" in registry.discover()


def test_errors_name_the_table_and_the_setting(tiny: None) -> None:
    cases = {
        "[agent.collectors.tiny] gpus: must be >= 1": {"tiny": {"gpus": 0}},
        "[agent.collectors.tiny] gpus: Expected int, got str": {"tiny": {"gpus": "many"}},
        "[agent.collectors.tiny] has no setting colour; its settings: node, gpus, util": {"tiny": {"colour": "red"}},
        "[agent.collectors] no collector kind tinny; known: ": {"tinny": {}},
        "[agent.collectors.gpu_sim] gpus: must be between 1 and 16": {"gpu_sim": {"gpus": 17}},
        "[agent.collectors.gpu_sim] idle: --idle expects NODE:GPU[@START-END], got 'x'": {"gpu_sim": {"idle": ["x"]}},
        "[agent.collectors.gpu_sim] faults: thermal fault on GPU 5:0 is outside the 4x8 cluster": {
            "gpu_sim": {"faults": ["thermal:5:0@1-2"]}
        },
        "[agent.collectors.gpu_sim] has no setting workload": {"gpu_sim": {"workload": {}}},  # Python callers only
        "[agent.collectors.ib_sysfs] root: expected a path (a string), got int": {"ib_sysfs": {"root": 3}},
        "[agent.collectors.scheduler_trace] speedup: must be a positive number": {"scheduler_trace": {"speedup": 0}},
        "[agent.collectors.scheduler_kubernetes] labels: no setting usr_label": {
            "scheduler_kubernetes": {"labels": {"usr_label": "x"}}
        },
        "[agent.collectors.step_sim] workload: simulated training steps need a workload": {"step_sim": {}},
    }
    for message, tables in cases.items():
        with pytest.raises(ValueError) as err:
            registry.build(tables)
        assert str(err.value).startswith(message), (tables, str(err.value))


def test_every_config_is_checked_before_any_collector_is_made_and_a_failure_closes_those_made(tiny: None) -> None:
    with pytest.raises(ValueError, match="gpu_sim"):
        registry.build({"tiny": {}, "gpu_sim": {"nodes": 0}})
    assert BUILT == []  # nothing made: the second table was wrong

    @dataclass(frozen=True)
    class Broken:
        pass

    def build_broken(config: Broken) -> list[Collector[Any]]:
        raise RuntimeError("the device went away")

    registry.collector_kind("broken", Broken)(build_broken)
    try:
        with pytest.raises(RuntimeError, match="went away"):
            registry.build({"tiny": {}, "broken": {}})
    finally:
        registry.unregister("broken")
    assert len(BUILT) == 1 and BUILT[0].closed


def test_a_kind_is_taken_once(tiny: None) -> None:
    def other(config: TinyConfig) -> list[Collector[Any]]:
        return []

    with pytest.raises(ValueError, match="collector kind tiny is taken by"):
        registry.collector_kind("tiny", TinyConfig)(other)


def test_the_built_in_kinds_are_discovered_with_their_settings() -> None:
    kinds = registry.discover()
    assert {
        "gpu_sim",
        "gpu_nvml",
        "ib_sim",
        "ib_sysfs",
        "step_sim",
        "scheduler_sim",
        "scheduler_trace",
        "scheduler_kubernetes",
        "scheduler_slurm",
    } <= set(kinds)
    assert kinds["gpu_sim"].settings() == ["nodes", "gpus", "seed", "node_prefix", "job_id", "idle", "faults", "xids"]
    assert "workload" not in kinds["ib_sim"].settings()


# --- the agent's flags map onto the same configs ------------------------------------------------------
def tables(*argv: str, file: dict[str, dict[str, Any]] | None = None) -> tuple[str, dict[str, dict[str, Any]]]:
    return agent_collector_tables(build_parser().parse_args(["agent", *argv]), file or {})


def test_the_flags_without_a_file_choose_what_they_always_did() -> None:
    assert tables() == ("sim", {"gpu_sim": {}})
    assert tables("--backend", "nvml", "--ib", "--node", "n1", "--ib-root", "/x") == (
        "nvml",
        {"gpu_nvml": {"node": "n1"}, "ib_sysfs": {"node": "n1", "root": "/x"}},
    )
    assert tables("--backend", "none", "--scheduler", "trace", "--trace-dir", "d", "--trace-limit", "5") == (
        "none",
        {"scheduler_trace": {"data_dir": "d", "limit": 5}},
    )
    assert tables("--ib", "--scheduler", "sim", "--nodes", "2", "--gpus", "3", "--seed", "4", "--ib-fault", "degrade:1@5-9") == (
        "sim",
        {
            "gpu_sim": {"nodes": 2, "gpus": 3, "seed": 4},
            "ib_sim": {"nodes": 2, "seed": 4, "faults": ["degrade:1@5-9"]},
            "scheduler_sim": {"nodes": 2, "gpus": 3, "seed": 4},
        },
    )
    assert tables("--scenario", "a", "--scenario", "b.yaml") == ("sim", {"scenario": {"names": ["a", "b.yaml"]}})
    assert tables("--backend", "none", "--scheduler", "kubernetes", "--k8s-namespace", "ml") == (
        "none",
        {"scheduler_kubernetes": {"namespace": "ml"}},
    )


def test_flags_that_cannot_apply_are_refused_as_before() -> None:
    for argv, message in (
        (("--backend", "nvml", "--fault", "thermal:0:0"), "--fault needs --backend sim"),
        (
            (
                "--ib-fault",
                "flap:0:1@3",
            ),
            "--ib-fault --backend sim --ib",
        ),
        (("--scenario", "x", "--ib"), "--scenario brings its own"),
        (("--scenario", "x", "--scheduler", "sim"), "--scenario brings its own"),
        (
            (
                "--backend",
                "none",
            ),
            "nothing to sample",
        ),
    ):
        with pytest.raises(ValueError, match=message):
            tables(*argv)


def test_flags_win_over_the_file_and_the_file_fills_in_the_rest() -> None:
    file = {"gpu_sim": {"nodes": 16, "seed": 3, "node_prefix": "rack1-"}, "scheduler_slurm": {"poll_s": 10}}
    assert tables(file=file) == (
        "sim",
        {"gpu_sim": {"nodes": 16, "seed": 3, "node_prefix": "rack1-"}, "scheduler_slurm": {"poll_s": 10}},
    )
    assert tables("--nodes", "2", file=file) == (
        "sim",
        {"gpu_sim": {"nodes": 2, "seed": 3, "node_prefix": "rack1-"}, "scheduler_slurm": {"poll_s": 10}},
    )
    # --backend and --scheduler choose: the file's GPU and scheduler kinds give way
    assert tables("--backend", "nvml", "--scheduler", "none", file=file) == ("nvml", {"gpu_nvml": {}})
    # a file of real collectors alone runs just those (the sim default is for the flags alone)
    assert tables(file={"gpu_nvml": {"rescan_s": 30}}) == ("nvml", {"gpu_nvml": {"rescan_s": 30}})
    assert tables("--ib", file={"gpu_nvml": {}}) == ("nvml", {"gpu_nvml": {}, "ib_sysfs": {}})
    assert tables(file={"scheduler_trace": {"speedup": 600}}) == ("none", {"scheduler_trace": {"speedup": 600}})


def test_the_flags_build_the_collectors_the_agent_always_ran() -> None:
    """What the if/elif wiring made: the same classes in the same order, and the same samples."""
    argv = (
        "--ib",
        "--scheduler",
        "sim",
        "--nodes",
        "2",
        "--gpus",
        "2",
        "--seed",
        "7",
        "--idle",
        "1:1@0-3",
        "--fault",
        "thermal:0:1@1-4",
        "--xid",
        "0:0@2:79",
        "--ib-fault",
        "flap:1:2@2",
    )
    built = registry.build(tables(*argv)[1])
    assert [type(c) for c in built] == [
        SimGpuCollector,
        SimProcessCollector,
        SimXidCollector,
        SimIbCollector,
        SimSchedulerCollector,
    ]
    before = SimGpuCollector(
        SimConfig(
            nodes=2, gpus_per_node=2, seed=7, idle=(IdleGpu.parse("1:1@0-3"),), faults=(InjectedFault.parse("thermal:0:1@1-4"),)
        )
    )
    ib_before = SimIbCollector(SimIbConfig(nodes=2, seed=7, faults=(IbFault.parse("flap:1:2@2"),)))
    for tick in range(5):
        now = T0 + tick * 1000
        assert built[0].sample(now) == before.sample(now)
        assert built[3].sample(now) == ib_before.sample(now)
        xids = built[2].sample(now)
        assert [(x.node, x.gpu_index, x.xid) for x in xids] == ([("sim-node-00", 0, 79)] if tick == 2 else [])
    nvml = registry.discover()["gpu_nvml"].config(tables("--backend", "nvml", "--node", "n1")[1]["gpu_nvml"])
    assert nvml == NvmlConfig(node="n1")
    assert registry.discover()["ib_sysfs"].config(tables("--backend", "none", "--ib")[1]["ib_sysfs"]) == IbConfig()


def test_a_scenario_is_built_through_the_registry() -> None:
    from hpcinsight.harness.scenario import load as load_scenario

    scenario = load_scenario("step-straggler")
    built = scenario.collectors()
    assert [type(c) for c in built] == [
        SimGpuCollector,
        SimProcessCollector,
        SimXidCollector,
        SimIbCollector,
        SimSchedulerCollector,
        SimStepCollector,
    ]
    assert built[0].config == scenario.sim_config() and built[3].config == scenario.ib_config()
    # and the agent's --scenario, or a config file's [agent.collectors.scenario], names it
    via_kind = registry.build({"scenario": {"names": [scenario.path]}})
    assert [type(c) for c in via_kind] == [type(c) for c in built]
    assert via_kind[0].sample(T0) == built[0].sample(T0)


def test_the_config_file_must_hold_tables_of_collectors(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    for text, message in (
        ("[agent]\nname = 'x'\n", r"\[agent\] in HPCINSIGHT_CONFIG may hold only"),
        ("[agent.collectors]\ngpu_sim = 3\n", r"\[agent.collectors\] in HPCINSIGHT_CONFIG must hold one table"),
    ):
        config.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load({"HPCINSIGHT_CONFIG": str(config)})
    config.write_text("")
    assert load({"HPCINSIGHT_CONFIG": str(config)}).collectors == {}


def test_discovering_every_kind_never_loads_pyarrow_or_numpy() -> None:
    """The registry imports every agent module (to find their kinds): the agent must stay light."""
    code = (
        "import sys\nfrom hpcinsight.agents import registry\nregistry.discover()\n"
        "print(sorted(m for m in ('pyarrow', 'numpy', 'pandas') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
