"""Fault-injection scenarios with ground truth: YAML files describing a sim cluster, its jobs and faults.

A scenario is data (``harness/scenarios/*.yaml``, or any file): a cluster of nodes x GPUs with
InfiniBand ports, a seed and a duration, jobs placed on node sets with a usage profile (warm-up,
steady training, evaluation phases, checkpoint pauses, data-loading stalls, training steps), and
faults with their kind, target and onset/end. From each fault come the *labels*: which detector
must flag which subject during which span (``must``), and which further flags are true but not
required (``may``: e.g. a thermally throttled GPU is also out of line with its peers; such a flag
counts neither as a hit nor as a false positive). A fault may list its labels itself
(``expect``/``allow``), and a scenario may add labels of its own. Every other flag raised on the
scenario's cluster is a false positive, so a scenario without faults is a trap: it must raise nothing.

The file is checked as a whole before anything runs; every error names the file and the place
(``faults[2].node: ...``). :meth:`Scenario.collectors` builds the sim agent's collectors for it.
Several scenarios can run in one pipeline at once: each names its nodes ``<scenario>-node-NN`` and
its jobs ``<scenario>.<job>``, so their subjects never meet.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from hpcinsight.agents.registry import build as build_collectors
from hpcinsight.agents.registry import check, collector_kind
from hpcinsight.agents.sim.gpu import FAULT_KINDS as GPU_FAULT_KINDS
from hpcinsight.agents.sim.gpu import GpuSimConfig, IdleGpu, InjectedFault, InjectedXid, SimClusterConfig, SimConfig, gpu_uuid
from hpcinsight.agents.sim.ib import IbFault, SimIbConfig
from hpcinsight.agents.sim.workload import JobFault, Profile, SimJob, Workload
from hpcinsight.core.yamlfile import YamlSyntaxError, load_yaml

NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,40}")
#: the built-in job profiles; a scenario may name one and change some of its fields
PROFILES: dict[str, Profile] = {
    # steady data-parallel training: a warm-up at lower load, then busy with data-loading stalls now and then
    "training": Profile(util=88, noise=4, dip_rate=0.03, warmup_s=90, warmup_util=40, step_s=1.0),
    # the same with everything a real run does besides computing: evaluation phases, checkpoint pauses,
    # more frequent stalls and more noise
    "training-noisy": Profile(
        util=85,
        noise=6,
        dip_rate=0.06,
        warmup_s=120,
        warmup_util=35,
        eval_every_s=300,
        eval_s=45,
        eval_util=50,
        checkpoint_every_s=420,
        checkpoint_s=30,
        step_s=1.2,
    ),
    # an inference service: moderate, bursty load, no training steps, little fabric traffic
    "inference": Profile(util=45, noise=12, dip_rate=0.0, step_s=None, ib_load=0.05),
}
GPU_HEALTH_CONDITION = {
    "thermal": "thermal_throttle",
    "power": "power_throttle",
    "clock": "clock_stuck_low",
    "ecc": "ecc_uncorrectable",
    "remap": "row_remap_pending",
}
IB_FAULT_KINDS = ("ib_degrade", "ib_slow", "ib_flap")
JOB_FAULT_KINDS = ("straggler", "imbalance", "hang", "underuse", "slow_node", "restart", "scale")
FAULT_KINDS = (*GPU_FAULT_KINDS, "idle", "xid", *IB_FAULT_KINDS, *JOB_FAULT_KINDS)
#: faults that happen at one instant: their labels' span is [onset, onset] (plus the grace)
POINT_FAULTS = ("ecc", "xid", "ib_flap")
DETECTORS = ("gpu_health", "gpu_outlier", "gpu_underused", "gpu_xid", "hang", "job_underused", "slow_interconnect", "straggler")
DEFAULT_GRACE_S = 180.0


class ScenarioError(ValueError):
    """A scenario file that cannot be used, with the file and the place of the error."""


class TraceMissing(ScenarioError):
    """A trace scenario whose recorded data is not on this machine (it is read in place, never shipped)."""


@dataclass(frozen=True)
class Label:
    """Ground truth: ``detector`` must (or may) flag ``subject`` between ``onset_s`` and ``end_s`` (+ ``grace_s``)."""

    scenario: str
    detector: str
    subject: str
    onset_s: float
    end_s: float
    grace_s: float
    fault: str  # what caused it, for the report
    required: bool = True
    ends: bool = True  # the fault ended before the scenario did (its incident can be timed to resolve)


@dataclass(frozen=True)
class FaultSpec:
    """One injected fault as the scenario states it (for labels, plots and the report)."""

    kind: str
    onset_s: float
    end_s: float
    node: int | None = None
    gpu: int | None = None
    port: int | None = None
    job: str | None = None  # the pipeline's job id
    rank: int | None = None
    ranks: int | None = None  # scale: the new world size

    def describe(self) -> str:
        where = [
            f"job {self.job}" if self.job else "",
            f"rank {self.rank}" if self.rank is not None else "",
            f"node {self.node}" if self.node is not None else "",
            f"GPU {self.gpu}" if self.gpu is not None else "",
            f"port {self.port}" if self.port is not None else "",
        ]
        span = f"@{self.onset_s:g}" + ("" if self.kind in POINT_FAULTS else f"-{self.end_s:g}")
        return f"{self.kind} {' '.join(w for w in where if w)} {span}"


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    seed: int
    duration_s: float
    nodes: int
    gpus_per_node: int
    ib_ports: int
    jobs: tuple[SimJob, ...]
    faults: tuple[FaultSpec, ...]
    labels: tuple[Label, ...]
    gpu_faults: tuple[InjectedFault, ...] = ()
    idle: tuple[IdleGpu, ...] = ()
    xids: tuple[InjectedXid, ...] = ()
    ib_faults: tuple[IbFault, ...] = ()
    job_faults: tuple[JobFault, ...] = ()
    path: str = ""
    node_models: tuple[str, ...] = ()  # GPU model of each node (empty: the sim's default on all)
    trace: Any = None  # a recorded trace replayed instead of simulated (:class:`hpcinsight.harness.traces.Trace`)

    @property
    def simulated(self) -> bool:
        return self.trace is None

    @property
    def node_prefix(self) -> str:
        return f"{self.name}-node-"

    def node_name(self, node: int) -> str:
        return f"{self.node_prefix}{node:02d}"

    def gpu_uuid(self, node: int, gpu: int) -> str:
        return gpu_uuid(self.seed, self.node_name(node), gpu)

    def job_id(self, name: str) -> str:
        return f"{self.name}.{name}"

    def workload(self) -> Workload:
        degraded = tuple((f.node, f.start_s, f.end_s) for f in self.ib_faults if f.kind in ("degrade", "slow"))
        return Workload(self.jobs, self.job_faults, self.duration_s, degraded, self.node_models, self.gpus_per_node)

    def sim_config(self) -> SimConfig:
        return SimConfig(
            nodes=self.nodes,
            gpus_per_node=self.gpus_per_node,
            seed=self.seed,
            idle=self.idle,
            node_prefix=self.node_prefix,
            job_id=None,
            faults=self.gpu_faults,
            workload=self.workload(),
        )

    def ib_config(self) -> SimIbConfig:
        return SimIbConfig(
            nodes=self.nodes,
            ports=self.ib_ports,
            seed=self.seed,
            node_prefix=self.node_prefix,
            faults=self.ib_faults,
            workload=self.workload(),
        )

    def collector_configs(self) -> dict[str, Any]:
        """The sim agent's collector kinds for this scenario and their typed configs: GPUs (samples,
        processes, XIDs), IB ports, the scheduler's view of its jobs and the jobs' training steps."""
        workload = self.workload()
        cluster = SimClusterConfig(
            nodes=self.nodes,
            gpus=self.gpus_per_node,
            seed=self.seed,
            node_prefix=self.node_prefix,
            job_id=None,
            workload=workload,
        )
        return {
            "gpu_sim": GpuSimConfig(
                nodes=self.nodes,
                gpus=self.gpus_per_node,
                seed=self.seed,
                node_prefix=self.node_prefix,
                job_id=None,
                idle=self.idle,
                faults=self.gpu_faults,
                xids=self.xids,
                workload=workload,
            ),
            "ib_sim": self.ib_config(),
            "scheduler_sim": cluster,
            "step_sim": cluster,
        }

    def collectors(self) -> list[Any]:
        """The sim agent's collectors for this scenario, built as every agent's are (:mod:`hpcinsight.agents.registry`)."""
        return build_collectors(self.collector_configs())

    def owns(self, node: str | None, job_id: str | None) -> bool:
        """Whether a flag on ``node`` or ``job_id`` is about this scenario's cluster."""
        return bool(node and node.startswith(self.node_prefix)) or bool(job_id and job_id.startswith(f"{self.name}."))

    @property
    def ticks(self) -> int:
        return int(math.ceil(self.duration_s))


@dataclass(frozen=True)
class ScenarioCollectorsConfig:
    """``[agent.collectors.scenario]``: simulate these scenarios (library names or YAML files), as
    ``agent --scenario`` does: their clusters, jobs, IB ports, scheduler events, steps and faults."""

    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check(bool(self.names), "names", "give at least one scenario: a name from the library or a YAML file")


@collector_kind("scenario", ScenarioCollectorsConfig)
def scenario_collectors(config: ScenarioCollectorsConfig) -> list[Any]:
    """Every named scenario's collectors, one after the other (each its own cluster: their names never meet)."""
    out: list[Any] = []
    try:
        for name in config.names:
            out += load(name).collectors()
    except BaseException:
        for collector in out:
            collector.close()
        raise
    return out


# --- loading ----------------------------------------------------------------------------------
def library_dir() -> Path:
    return Path(str(resources.files("hpcinsight.harness") / "scenarios"))


def library() -> list[str]:
    """Names of the scenarios shipped with hpcinsight, in order."""
    return sorted(p.stem for p in library_dir().glob("*.yaml"))


def load(name_or_path: str) -> Scenario:
    """A scenario of the library by name, or from a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = library_dir() / f"{name_or_path}.yaml"
        if not path.exists():
            raise ScenarioError(f"no scenario {name_or_path!r}; the library has: {', '.join(library())}")
    try:
        text = path.read_text()
    except OSError as err:
        raise ScenarioError(f"{path}: {err.strerror or err}") from None
    return parse(text, str(path), default_name=path.stem)


def parse(text: str, where: str = "<scenario>", default_name: str | None = None) -> Scenario:
    try:
        doc = load_yaml(text)
    except YamlSyntaxError as err:
        at = f" (line {err.line}, column {err.column})" if err.line is not None else ""
        raise ScenarioError(f"{where}: not valid YAML{at}: {err.problem}") from None
    try:
        return _Builder(where).scenario(doc, default_name)
    except ScenarioError:
        raise
    except ValueError as err:  # raised by the sim's own checks (overlapping jobs, faults outside the cluster)
        raise ScenarioError(f"{where}: {err}") from None


class _Builder:
    """Turns the parsed YAML into a :class:`Scenario`, naming the place of every error."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, at: str, message: str) -> ScenarioError:
        return ScenarioError(f"{self.where}: {at}: {message}" if at else f"{self.where}: {message}")

    def mapping(
        self, value: Any, at: str, allowed: set[str], required: frozenset[str] | set[str] = frozenset()
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(at, f"expected a mapping, got {type(value).__name__}")
        unknown = sorted(set(map(str, value)) - allowed)
        if unknown:
            raise self.fail(at, f"unknown key {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")
        missing = sorted(required - set(value))
        if missing:
            raise self.fail(at, f"missing {', '.join(missing)}")
        return value

    def number(self, value: Any, at: str, minimum: float | None = 0.0, integer: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            raise self.fail(at, f"expected {'a whole number' if integer else 'a number'}, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.fail(at, f"must be at least {minimum:g}, got {value!r}")
        return value

    def nodes(self, value: Any, at: str, count: int) -> tuple[int, ...]:
        """``3``, ``[0, 2]``, ``"0-3"`` or ``[0, "2-3"]``: node indices in the cluster."""
        items = value if isinstance(value, list) else [value]
        out: list[int] = []
        for item in items:
            if isinstance(item, int) and not isinstance(item, bool):
                out.append(item)
            elif isinstance(item, str) and (m := re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", item)):
                lo, hi = int(m.group(1)), int(m.group(2))
                if hi < lo:
                    raise self.fail(at, f"range {item!r} runs backwards")
                out.extend(range(lo, hi + 1))
            else:
                raise self.fail(at, f'expected node numbers (3, [0, 2] or "0-3"), got {item!r}')
        for n in out:
            if n >= count:
                raise self.fail(at, f"node {n} is outside the {count}-node cluster")
        return tuple(out)

    def scenario(self, doc: Any, default_name: str | None) -> Scenario:
        if isinstance(doc, dict) and "trace" in doc:
            return self.trace_scenario(doc, default_name)
        top = self.mapping(
            doc,
            "",
            {"name", "description", "seed", "duration_s", "cluster", "jobs", "faults", "expect", "allow", "grace_s"},
            {"duration_s", "cluster"},
        )
        name = top.get("name", default_name)
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise self.fail("name", f"expected lower-case letters, digits and '-' (at most 41), got {name!r}")
        cluster = self.mapping(top["cluster"], "cluster", {"nodes", "gpus_per_node", "ib_ports", "gpu_models"}, {"nodes"})
        nodes = int(self.number(cluster["nodes"], "cluster.nodes", 1, integer=True))
        gpus = int(self.number(cluster.get("gpus_per_node", 8), "cluster.gpus_per_node", 1, integer=True))
        if gpus > 16:
            raise self.fail("cluster.gpus_per_node", "at most 16")
        ports = int(self.number(cluster.get("ib_ports", 8), "cluster.ib_ports", 1, integer=True))
        duration = self.number(top["duration_s"], "duration_s", 10)
        grace = self.number(top.get("grace_s", DEFAULT_GRACE_S), "grace_s")
        seed = int(self.number(top.get("seed", 0), "seed", None, integer=True))
        models: tuple[str, ...] = ()
        if "gpu_models" in cluster:  # {"0-1": H100, "2-3": A100}: every node named once
            raw = self.mapping(cluster["gpu_models"], "cluster.gpu_models", set(map(str, cluster["gpu_models"] or {})))
            named: dict[int, str] = {}
            for spec, model in raw.items():
                for n in self.nodes(str(spec) if "-" in str(spec) else int(spec), "cluster.gpu_models", nodes):
                    named[n] = str(model)
            if set(named) != set(range(nodes)):
                raise self.fail("cluster.gpu_models", f"name the model of every node 0..{nodes - 1}")
            models = tuple(named[n] for n in range(nodes))
        base = Scenario(
            name,
            str(top.get("description", "")).strip(),
            seed,
            duration,
            nodes,
            gpus,
            ports,
            (),
            (),
            (),
            path=self.where,
            node_models=models,
        )
        jobs = tuple(self.job(j, f"jobs[{i}]", base) for i, j in enumerate(self.listing(top.get("jobs", []), "jobs")))
        base = replace(base, jobs=jobs)
        gpu_faults: list[InjectedFault] = []
        idle: list[IdleGpu] = []
        xids: list[InjectedXid] = []
        ib_faults: list[IbFault] = []
        job_faults: list[JobFault] = []
        specs: list[FaultSpec] = []
        labels: list[Label] = []
        for i, raw in enumerate(self.listing(top.get("faults", []), "faults")):
            at = f"faults[{i}]"
            spec, injected, fault_labels = self.fault(raw, at, base, grace)
            specs.append(spec)
            labels += fault_labels
            target = {InjectedFault: gpu_faults, IdleGpu: idle, InjectedXid: xids, IbFault: ib_faults, JobFault: job_faults}
            target[type(injected)].append(injected)
        for key, required in (("expect", True), ("allow", False)):
            for i, raw in enumerate(self.listing(top.get(key, []), key)):
                labels.append(self.label(raw, f"{key}[{i}]", base, grace, required, "stated in the scenario"))
        scenario = replace(
            base,
            faults=tuple(specs),
            labels=tuple(labels),
            gpu_faults=tuple(gpu_faults),
            idle=tuple(idle),
            xids=tuple(xids),
            ib_faults=tuple(ib_faults),
            job_faults=tuple(job_faults),
        )
        scenario.sim_config()  # the sim's own checks: jobs sharing a GPU, faults outside the cluster
        scenario.ib_config()
        return scenario

    def trace_scenario(self, doc: dict[str, Any], default_name: str | None) -> Scenario:
        """A recorded trace (:mod:`hpcinsight.harness.traces`): its stretch, placement and labels from the data alone."""
        from hpcinsight.harness import traces

        top = self.mapping(doc, "", {"name", "description", "trace", "grace_s"}, {"trace"})
        name = top.get("name", default_name)
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise self.fail("name", f"expected lower-case letters, digits and '-' (at most 41), got {name!r}")
        t = self.mapping(top["trace"], "trace", {f.name for f in fields(traces.TraceSpec)}, {"file"})
        numbers = {
            k: (
                int(self.number(v, f"trace.{k}", 1, integer=True))
                if k in ("pods", "per_job", "min_idle_min", "merge_min")
                else self.number(v, f"trace.{k}")
            )
            for k, v in t.items()
            if k != "file"
        }
        spec = traces.TraceSpec(file=str(t["file"]), **numbers)
        try:
            trace = traces.read(spec, Path(self.where).parent)
        except FileNotFoundError as err:
            raise TraceMissing(f"{self.where}: trace.file: {err}") from None
        except (OSError, ValueError, KeyError) as err:
            raise self.fail("trace.file", str(err)) from None
        grace = self.number(top.get("grace_s", DEFAULT_GRACE_S), "grace_s")
        jobs = max(trace.job_of.values()) + 1
        base = Scenario(
            name,
            str(top.get("description", "")).strip(),
            0,
            trace.minutes * 60.0,
            jobs,
            spec.per_job,
            1,
            (),
            (),
            (),
            path=self.where,
            trace=trace,
        )
        return replace(base, labels=tuple(trace_labels(base, grace)))

    def listing(self, value: Any, at: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(at, f"expected a list, got {type(value).__name__}")
        return value

    def job(self, raw: Any, at: str, sc: Scenario) -> SimJob:
        j = self.mapping(
            raw, at, {"id", "nodes", "gpus", "start_s", "end_s", "user", "team", "priority", "profile"}, {"id", "nodes"}
        )
        if not isinstance(j["id"], str) or not NAME.fullmatch(j["id"]):
            raise self.fail(f"{at}.id", f"expected lower-case letters, digits and '-', got {j['id']!r}")
        nodes = self.nodes(j["nodes"], f"{at}.nodes", sc.nodes)
        gpus: tuple[int, ...] = ()
        if "gpus" in j:
            gpus = tuple(int(self.number(g, f"{at}.gpus", 0, integer=True)) for g in self.listing(j["gpus"], f"{at}.gpus"))
            if any(g >= sc.gpus_per_node for g in gpus):
                raise self.fail(f"{at}.gpus", f"a node has GPUs 0..{sc.gpus_per_node - 1}")
        start = self.number(j.get("start_s", 0), f"{at}.start_s")
        end = self.number(j["end_s"], f"{at}.end_s") if j.get("end_s") is not None else math.inf
        texts = {}
        for key, default in (("user", "alice"), ("team", "llm"), ("priority", "high")):
            value = j.get(key, default)
            if not isinstance(value, str) or not value:
                raise self.fail(f"{at}.{key}", f"expected a name, got {value!r}")
            texts[key] = value
        try:
            return SimJob(
                sc.job_id(j["id"]),
                nodes,
                gpus,
                start,
                end,
                profile=self.profile(j.get("profile", "training"), f"{at}.profile"),
                **texts,
            )
        except ValueError as err:
            raise self.fail(at, str(err)) from None

    def profile(self, raw: Any, at: str) -> Profile:
        """A built-in profile's name, or ``{base: NAME, FIELD: VALUE, ...}``."""
        if isinstance(raw, str):
            raw = {"base": raw}
        names = {f.name for f in fields(Profile)}
        p = self.mapping(raw, at, names | {"base"})
        base_name = p.get("base", "training")
        if base_name not in PROFILES:
            raise self.fail(f"{at}.base" if "base" in p else at, f"no profile {base_name!r}; built in: {', '.join(PROFILES)}")
        changes = {}
        for key, value in p.items():
            if key == "base":
                continue
            changes[key] = None if key == "step_s" and value is None else self.number(value, f"{at}.{key}")
        try:
            return replace(PROFILES[base_name], **changes)
        except ValueError as err:
            raise self.fail(at, str(err)) from None

    def fault(self, raw: Any, at: str, sc: Scenario, grace: float) -> tuple[FaultSpec, Any, list[Label]]:
        keys = {
            "kind",
            "node",
            "gpu",
            "port",
            "job",
            "rank",
            "onset_s",
            "end_s",
            "xid",
            "count",
            "factor",
            "cov",
            "util",
            "expect",
            "allow",
            "spin",
            "factor_hi",
            "ranks",
        }
        f = self.mapping(raw, at, keys, {"kind", "onset_s"})
        kind = f["kind"]
        if kind not in FAULT_KINDS:
            raise self.fail(f"{at}.kind", f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
        onset = self.number(f["onset_s"], f"{at}.onset_s")
        end = self.number(f["end_s"], f"{at}.end_s") if f.get("end_s") is not None else math.inf
        if end <= onset and kind not in POINT_FAULTS:
            raise self.fail(f"{at}.end_s", "must be after onset_s")
        need = (
            ("job", "node")
            if kind == "slow_node"
            else ("job",)
            if kind in JOB_FAULT_KINDS
            else ("node",)
            if kind in ("ib_degrade", "ib_slow")
            else ("node", "port")
            if kind == "ib_flap"
            else ("node", "gpu")
        )
        for key in need:
            if key not in f:
                raise self.fail(at, f"a {kind} fault needs {' and '.join(need)}")
        node = gpu = port = rank = None
        job_id = None
        if "node" in f:
            node = self.nodes(f["node"], f"{at}.node", sc.nodes)
            if len(node) != 1:
                raise self.fail(f"{at}.node", "a fault is on one node")
            node = node[0]
        if "gpu" in f:
            gpu = int(self.number(f["gpu"], f"{at}.gpu", 0, integer=True))
            if gpu >= sc.gpus_per_node:
                raise self.fail(f"{at}.gpu", f"a node has GPUs 0..{sc.gpus_per_node - 1}")
        if "port" in f:
            port = int(self.number(f["port"], f"{at}.port", 0, integer=True))
            if port >= sc.ib_ports:
                raise self.fail(f"{at}.port", f"a node has ports 0..{sc.ib_ports - 1}")
        if "job" in f:
            job_id = sc.job_id(str(f["job"]))
            if job_id not in {j.job_id for j in sc.jobs}:
                raise self.fail(f"{at}.job", f"no job {f['job']!r} in the scenario")
        if "rank" in f:
            rank = int(self.number(f["rank"], f"{at}.rank", 0, integer=True))
        point_end = onset if kind in POINT_FAULTS else min(end, sc.duration_s)
        spec = FaultSpec(
            kind, onset, point_end, node, gpu, port, job_id, rank, int(f["ranks"]) if isinstance(f.get("ranks"), int) else None
        )
        try:
            injected = self.inject(kind, f, at, onset, end, node, gpu, port, job_id, rank)
        except ValueError as err:
            raise self.fail(at, str(err)) from None
        if "expect" in f:
            labels = [
                self.label(x, f"{at}.expect[{i}]", sc, grace, True, spec.describe(), spec)
                for i, x in enumerate(self.listing(f["expect"], f"{at}.expect"))
            ]
        else:
            labels = self.derived(spec, sc, grace)
        labels += [
            self.label(x, f"{at}.allow[{i}]", sc, grace, False, spec.describe(), spec)
            for i, x in enumerate(self.listing(f.get("allow", []), f"{at}.allow"))
        ]
        return spec, injected, labels

    def inject(
        self,
        kind: str,
        f: dict[str, Any],
        at: str,
        onset: float,
        end: float,
        node: int | None,
        gpu: int | None,
        port: int | None,
        job_id: str | None,
        rank: int | None,
    ) -> Any:
        if kind in GPU_FAULT_KINDS:
            return InjectedFault(kind, node, gpu, onset, end)
        if kind == "idle":
            return IdleGpu(node, gpu, onset, end)
        if kind == "xid":
            code = int(self.number(f.get("xid", 79), f"{at}.xid", 1, integer=True))
            count = int(self.number(f.get("count", 1), f"{at}.count", 1, integer=True))
            return InjectedXid(node, gpu, onset, code, count)
        if kind in ("ib_degrade", "ib_slow"):
            return IbFault(kind[3:], node, onset, end)
        if kind == "ib_flap":
            return IbFault("flap", node, onset, port=port)
        extra: dict[str, Any] = {}
        for key in ("factor", "cov", "util", "factor_hi"):
            if key in f:
                extra[key] = self.number(f[key], f"{at}.{key}")
        if "ranks" in f:
            extra["ranks"] = int(self.number(f["ranks"], f"{at}.ranks", 1, integer=True))
        if "spin" in f:
            if not isinstance(f["spin"], bool) or kind != "hang":
                raise self.fail(f"{at}.spin", "true or false, on a hang")
            extra["spin"] = f["spin"]
        return JobFault(kind, job_id, onset, end, rank=rank, node=node, **extra)

    def derived(self, spec: FaultSpec, sc: Scenario, grace: float) -> list[Label]:
        """The labels a fault implies (see docs/evaluation.md): what must fire, and what may."""

        def lab(detector: str, subject: str, required: bool = True) -> Label:
            return Label(
                sc.name, detector, subject, spec.onset_s, spec.end_s, grace, spec.describe(), required, spec.end_s < sc.duration_s
            )

        kind = spec.kind
        if spec.node is not None and spec.gpu is not None:
            uuid = sc.gpu_uuid(spec.node, spec.gpu)
        if kind in GPU_HEALTH_CONDITION:
            out = [lab("gpu_health", f"{uuid}/{GPU_HEALTH_CONDITION[kind]}")]
            if kind in ("thermal", "power", "clock"):  # slower clocks set the GPU apart from its peers too
                out.append(lab("gpu_outlier", uuid, required=False))
            return out
        if kind == "slow":
            return [lab("gpu_outlier", uuid)]
        if kind == "idle":
            return [lab("gpu_underused", uuid), lab("gpu_outlier", uuid, required=False)]
        if kind == "xid":
            return [lab("gpu_xid", uuid)]
        if kind in ("ib_degrade", "ib_slow"):
            node = sc.node_name(spec.node)
            return [lab("slow_interconnect", node)] + [
                lab("slow_interconnect", f"{node}/mlx5_{p}/1", required=False) for p in range(sc.ib_ports)
            ]
        if kind == "ib_flap":
            return [lab("slow_interconnect", f"{sc.node_name(spec.node)}/mlx5_{spec.port}/1")]
        if kind == "straggler":
            return [lab("straggler", f"{spec.job}/rank-{spec.rank}")]
        if kind == "imbalance":
            return [lab("straggler", f"{spec.job}/imbalance")]
        if kind == "slow_node":  # the node's ranks are a slow group; its GPUs wait, out of line with their peers
            job = next(j for j in sc.jobs if j.job_id == spec.job)
            placed = Workload.placement(job, sc.gpus_per_node)
            return [lab("straggler", f"{spec.job}/imbalance"), lab("gpu_outlier", sc.node_name(spec.node), required=False)] + [
                lab(d, s, required=False)
                for r, (n, g) in enumerate(placed)
                if n == spec.node
                for d, s in (("gpu_outlier", sc.gpu_uuid(n, g)), ("straggler", f"{spec.job}/rank-{r}"))
            ]
        if kind == "scale":  # the ranks it scaled away leave their GPUs allocated and idle: under-used
            job = next(j for j in sc.jobs if j.job_id == spec.job)
            placed = Workload.placement(job, sc.gpus_per_node)
            return [lab("gpu_underused", sc.gpu_uuid(n, g)) for r, (n, g) in enumerate(placed) if r >= (spec.ranks or 0)]
        if kind == "restart":  # what a healthy job does: nothing must fire
            return []
        if kind == "hang":  # every GPU of a hung job idles: gpu_underused is right to say so
            job = next(j for j in sc.jobs if j.job_id == spec.job)
            return [lab("hang", spec.job)] + [
                lab("gpu_underused", sc.gpu_uuid(n, g), required=False) for n, g in Workload.placement(job, sc.gpus_per_node)
            ]
        if kind == "underuse":  # a job at ~15% dips below gpu_underused's 10% in its slower phases: true too
            job = next(j for j in sc.jobs if j.job_id == spec.job)
            return [lab("job_underused", spec.job)] + [
                lab("gpu_underused", sc.gpu_uuid(n, g), required=False) for n, g in Workload.placement(job, sc.gpus_per_node)
            ]
        raise AssertionError(kind)

    def label(
        self, raw: Any, at: str, sc: Scenario, grace: float, required: bool, why: str, spec: FaultSpec | None = None
    ) -> Label:
        """``{detector, node, gpu, port, job, rank, condition, subject, onset_s, end_s, grace_s}``: one label.

        The subject is built as the detector names it (GPU UUID, ``UUID/condition``, node, ``node/mlx5_P/1``,
        job, ``job/rank-R``, ``job/imbalance``) from the other keys, or given whole as ``subject``. Times
        default to the fault's."""
        x = self.mapping(
            raw,
            at,
            {
                "detector",
                "node",
                "gpu",
                "port",
                "job",
                "rank",
                "condition",
                "subject",
                "onset_s",
                "end_s",
                "grace_s",
                "imbalance",
            },
            {"detector"},
        )
        detector = x["detector"]
        if detector not in DETECTORS:
            raise self.fail(f"{at}.detector", f"unknown detector {detector!r}; known: {', '.join(DETECTORS)}")
        if "subject" in x:
            subject = str(x["subject"])
        elif "job" in x:
            job = sc.job_id(str(x["job"]))
            subject = f"{job}/rank-{x['rank']}" if "rank" in x else f"{job}/imbalance" if x.get("imbalance") else job
        elif "node" in x:
            node = self.nodes(x["node"], f"{at}.node", sc.nodes)[0]
            if "gpu" in x:
                subject = sc.gpu_uuid(node, int(self.number(x["gpu"], f"{at}.gpu", 0, integer=True)))
                if "condition" in x:
                    subject = f"{subject}/{x['condition']}"
            elif "port" in x:
                subject = f"{sc.node_name(node)}/mlx5_{x['port']}/1"
            else:
                subject = sc.node_name(node)
        else:
            raise self.fail(at, "a label needs a subject, or job, or node (with gpu or port)")
        onset = self.number(x["onset_s"], f"{at}.onset_s") if "onset_s" in x else spec.onset_s if spec else None
        end = self.number(x["end_s"], f"{at}.end_s") if "end_s" in x else spec.end_s if spec else sc.duration_s
        if onset is None:
            raise self.fail(at, "a label of the scenario needs onset_s")
        label_grace = self.number(x.get("grace_s", grace), f"{at}.grace_s")
        return Label(sc.name, detector, subject, onset, end, label_grace, why, required, end < sc.duration_s)


def trace_place(sc: Scenario, pod: str) -> tuple[str, int, str, str]:
    """(node, GPU index, GPU uuid, job id) a trace pod is replayed as: ``per_job`` pods to a job, one job a node."""
    trace = sc.trace
    job = trace.job_of[pod]
    index = list(trace.series).index(pod) % trace.spec.per_job
    return sc.node_name(job), index, f"GPU-{sc.name}-{pod[:12]}", sc.job_id(f"svc-{job:02d}")


def trace_labels(sc: Scenario, grace: float) -> list[Label]:
    """Labels of a trace scenario from its data alone (see :mod:`hpcinsight.harness.traces`)."""
    from hpcinsight.harness import traces
    from hpcinsight.streams.detectors.job_underused import JobUnderusedConfig

    trace, spec = sc.trace, sc.trace.spec
    out: list[Label] = []
    end_s = trace.minutes * 60.0
    for pod, series in trace.series.items():
        _, _, uuid, _ = trace_place(sc, pod)
        for a, b in traces.idle_spells(series, spec.idle_pct, spec.merge_min):
            required = b - a >= spec.min_idle_min
            why = f"idle spell of pod {pod[:12]} ({b - a} min)"
            out.append(Label(sc.name, "gpu_underused", uuid, a * 60.0, b * 60.0, grace, why, required, b * 60.0 < end_s))
    cfg = JobUnderusedConfig()
    for job in sorted(set(trace.job_of.values())):
        pods = [p for p, j in trace.job_of.items() if j == job]
        job_id = sc.job_id(f"svc-{job:02d}")
        busy = total = 0
        low: list[int] = []  # minutes (after the warm-up) at which under 5% of its GPU-minutes so far were busy
        for m in range(trace.minutes):
            busy += sum(trace.series[p][m] >= spec.busy_pct for p in pods)
            total += len(pods)
            if m * 60 >= cfg.warmup_s and busy < 0.05 * total:
                low.append(m)
        runs: list[list[int]] = []
        for m in low:
            if runs and m == runs[-1][1]:
                runs[-1][1] = m + 1
            else:
                runs.append([m, m + 1])
        for a, b in runs:
            if (b - a) * 60 >= cfg.for_s:
                out.append(
                    Label(
                        sc.name,
                        "job_underused",
                        job_id,
                        a * 60.0,
                        b * 60.0,
                        grace,
                        f"{job_id}: under 5% of its GPU-minutes since start at {spec.busy_pct:g}% or more",
                        True,
                        b * 60.0 < end_s,
                    )
                )
    return out


def check_library() -> list[Scenario]:
    """Load every scenario of the library (raises the first error) and check their names are their files'."""
    out = []
    for name in library():
        try:
            scenario = load(name)
        except TraceMissing:
            continue  # its data is not on this machine
        if scenario.name != name:
            raise ScenarioError(f"{scenario.path}: name {scenario.name!r} differs from its file name")
        out.append(scenario)
    return out
