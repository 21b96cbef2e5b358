"""The base install (``pip install hpcinsight``, no extra) is what a training node gets: the step
client and the node agent. Built as a wheel from this checkout and installed alone in a fresh
virtual environment, it records training steps and runs an agent tick against the real broker,
whose messages the test reads back; none of the extras' packages is there, and a command that
needs one says which instead of a traceback.

The base dependencies are downloaded once, at constraints.txt's versions, into a wheelhouse in
~/.cache/hpcinsight/wheelhouse; later runs install offline from it (a few seconds)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from hpcinsight.schemas.catalog import GPU_SAMPLES_RAW, STEP_METRICS_RAW, Topic
from tests.conftest import Pipeline

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CACHE = Path(os.environ.get("HPCINSIGHT_CACHE", Path.home() / ".cache" / "hpcinsight")) / "wheelhouse"
STEPS = 20
# what the issue names, and the rest of what the extras bring: none may be importable in a base install
HEAVY = (
    "faust",
    "chdb",
    "fastapi",
    "pyarrow",
    "matplotlib",
    "numpy",
    "aiokafka",
    "datasketches",
    "clickhouse_connect",
    "uvicorn",
    "apprise",
    "requests",
    "rich",
    "kubernetes",
)


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (PEP 503)."""
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group()).lower()


def wheelhouse() -> Path:
    """The base dependencies at constraints.txt's versions, and setuptools to build the wheel with:
    downloaded once for each set of (dependencies, constraints), then reused offline."""
    constraints = (ROOT / "constraints.txt").read_text()
    build_requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    key = hashlib.sha256(json.dumps([PROJECT["dependencies"], build_requires, constraints, sys.version_info[:2]]).encode())
    house = CACHE / f"base-{key.hexdigest()[:12]}"
    if (house / ".complete").exists():
        return house
    for old in CACHE.glob("base-*"):  # of earlier versions
        shutil.rmtree(old, ignore_errors=True)
    partial = CACHE / f".{house.name}-{uuid.uuid4().hex[:6]}"
    got = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--dest",
            str(partial),
            "--constraint",
            str(ROOT / "constraints.txt"),
            *PROJECT["dependencies"],
            *build_requires,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert got.returncode == 0, f"pip could not download the base dependencies:\n{got.stderr[-3000:]}"
    (partial / ".complete").touch()
    try:
        partial.rename(house)
    except OSError:  # another run got there first: its copy is the same
        shutil.rmtree(partial)
    return house


def build_wheel(house: Path, out: Path) -> Path:
    """The project's wheel, built from a copy of what it ships (a stale build/ in the checkout
    would put files into the wheel that the sources no longer have)."""
    src = out / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    for folder in set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--find-links",
            str(house),
            "--wheel-dir",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = out.glob("hpcinsight-*.whl")
    return wheel


def read_topic(bootstrap: str, topic: Topic, prefix: str) -> list[tuple[bytes | None, list[Any]]]:
    """Every message on the topic, decoded: read from the start to the high watermarks."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex}", "enable.auto.commit": False})
    try:
        name = topic.full_name(prefix)
        partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p, end in ends.items() if end > 0])
        out, remaining = [], {p: end for p, end in ends.items() if end > 0}
        while remaining:
            msg = consumer.poll(10)
            assert msg is not None, f"{name}: nothing more to read, {remaining} offsets still to come"
            assert not msg.error(), msg.error()
            if msg.offset() + 1 >= remaining.get(msg.partition(), 0):
                remaining.pop(msg.partition(), None)
            out.append((msg.key(), topic.codec.decode(msg.value())))
        return out
    finally:
        consumer.close()


STEP_SCRIPT = """
import importlib.util, json, sys
import hpcinsight
from hpcinsight.agents.steps import StepRecorder

rec = StepRecorder(job_id=sys.argv[1], rank=1, world_size=2, local_rank=1, node="train-n01", flush_interval_s=0.2)
for _ in range(int(sys.argv[2])):
    with rec.step():
        with rec.phase("forward"):
            pass
rec.close(timeout=30)
print(json.dumps({"dropped": rec.dropped, "package": hpcinsight.__file__,
                  "importable": [m for m in sys.argv[3:] if importlib.util.find_spec(m) is not None]}))
"""


def test_base_install_records_steps_and_runs_the_agent_without_the_extras(pipeline: Pipeline, tmp_path: Path) -> None:
    house = wheelhouse()
    wheel = build_wheel(house, tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-index",
            "--find-links",
            str(house),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]

    listed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "list", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    installed = {_name(d["name"]): d["version"] for d in json.loads(listed.stdout)}
    declared = {_name(r) for r in PROJECT["dependencies"]}
    assert declared <= installed.keys(), declared - installed.keys()
    extras_only = {_name(r) for extra in PROJECT["optional-dependencies"].values() for r in extra} - declared - {"hpcinsight"}
    assert not extras_only & installed.keys(), f"an extra's package is in the base install: {extras_only & installed.keys()}"
    size = sum(f.stat().st_size for f in (venv / "lib").rglob("*") if f.is_file())
    print(
        f"base install: {len(installed)} distributions, {size / 1e6:.0f} MB: "
        + ", ".join(f"{n}=={v}" for n, v in sorted(installed.items()))
    )

    env = {k: v for k, v in pipeline.env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    job = f"job-{uuid.uuid4().hex[:8]}"
    steps = subprocess.run(
        [str(python), "-c", STEP_SCRIPT, job, str(STEPS), *HEAVY],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert steps.returncode == 0, steps.stderr[-3000:]
    report = json.loads(steps.stdout.strip().splitlines()[-1])
    assert Path(report["package"]).is_relative_to(venv), report["package"]  # the wheel's, not this checkout's
    assert report["importable"] == [], f"importable in the base install: {report['importable']}"
    assert report["dropped"] == 0

    hpcinsight = str(venv / "bin" / "hpcinsight")
    agent = subprocess.run(
        [
            hpcinsight,
            "agent",
            "--backend",
            "sim",
            "--nodes",
            "1",
            "--gpus",
            "2",
            "--ticks",
            "1",
            "--interval",
            "0.1",
            "--name",
            "base",
            "--spool-dir",
            str(tmp_path / "spool"),
            "--drain-timeout",
            "60",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert agent.returncode == 0, agent.stderr[-3000:]
    summary = json.loads(agent.stdout.strip().splitlines()[-1])
    assert summary["ticks"] == 1 and summary["dropped"] == 0 and summary["drained"]

    records = [
        r
        for key, batch in read_topic(pipeline.bootstrap, STEP_METRICS_RAW, pipeline.prefix)
        for r in batch
        if key == job.encode()
    ]
    assert sorted(r.step for r in records) == list(range(STEPS))
    assert {(r.job_id, r.rank, r.world_size, r.node) for r in records} == {(job, 1, 2, "train-n01")}
    assert all(set(r.phases) == {"forward"} for r in records)
    samples = [r for _, batch in read_topic(pipeline.bootstrap, GPU_SAMPLES_RAW, pipeline.prefix) for r in batch]
    assert len(samples) == 2 and len({s.gpu_uuid for s in samples}) == 2, samples

    # a command that needs an extra says which, in one line
    for command, extra in (("worker", "pipeline"), ("sink", "store"), ("serve", "web")):
        refused = subprocess.run([hpcinsight, command], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
        assert refused.stderr.strip().startswith(f"hpcinsight {command} needs the '{extra}' extra"), refused.stderr
        assert refused.stderr.strip().endswith(f"pip install 'hpcinsight[{extra}]'"), refused.stderr
