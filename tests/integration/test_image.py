"""The OCI image (deploy/image, `make image`): built with podman from this checkout, it answers
``hpcinsight --version`` as a non-root user with the OCI labels set, and the sim agent, the worker
and the sink run from it (host network) against the suite's broker, with their rows read back from
the store the sink wrote.

The build is cached: the image is tagged with a hash of the sources that go into it, so a second
run of the suite finds it and builds nothing (the first takes 1-3 min here, the base layer already
in ~/.cache/hpcinsight/image from the set-up)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from tests.conftest import Pipeline, sim_agent

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("HPCINSIGHT_CACHE", Path.home() / ".cache" / "hpcinsight")) / "image"
#: every folder the wheel installs (the package-dir mapping), so a change in any of them rebuilds the image
SOURCES = tuple(sorted(set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values())))
NODES, GPUS, TICKS = 2, 4, 30


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def podman_env() -> dict[str, str]:
    """podman's settings on these machines, as deploy/image/build.sh makes them."""
    env = dict(os.environ)
    if not env.get("CONTAINERS_CONF"):
        CACHE.mkdir(parents=True, exist_ok=True)
        conf, text = CACHE / "containers.conf", "[containers]\ndefault_ulimits = []\n"
        # written once and atomically: rewriting it in place while the container started just before
        # reads it gave that container the default ulimits, which this VM refuses (rlimit type 7)
        if not conf.exists() or conf.read_text() != text:
            tmp = conf.with_name(f"containers.conf.{os.getpid()}")
            tmp.write_text(text)
            tmp.replace(conf)
        env["CONTAINERS_CONF"] = str(conf)
    return env


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", "--runtime", os.environ.get("PODMAN_RUNTIME", "runc"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=podman_env(),
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} exited {result.returncode}: {result.stderr[-3000:]}")
    return result


def source_hash() -> str:
    """Of what goes into the image: the packages' files (deploy/'s chart, units and docs are not in
    the wheel), pyproject.toml and the image's own build files."""
    digest = hashlib.sha256()

    def shipped(path: Path) -> bool:
        rel = path.relative_to(ROOT)
        if not path.is_file() or "__pycache__" in rel.parts or path.suffix == ".pyc":
            return False
        return (
            rel.parts[0] != "deploy"
            or rel.parts[1] == "image"
            or (ROOT / rel.parts[0] / rel.parts[1] / "__init__.py").exists()
            or len(rel.parts) == 2
        )

    files = [ROOT / "pyproject.toml", ROOT / "constraints.txt"] + sorted(
        p for top in SOURCES for p in (ROOT / top).rglob("*") if shipped(p)
    )
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


@pytest.fixture(scope="module")
def image() -> str:
    if not shutil.which("podman") or not shutil.which("runc"):
        _missing("podman and runc are not installed (make setup installs Debian's, as root)")
    tag = f"localhost/hpcinsight:test-{source_hash()}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".test-build.lock", "w") as lock:  # the suite's processes build it once between them
        fcntl.flock(lock, fcntl.LOCK_EX)
        if podman("image", "exists", tag, check=False).returncode != 0:
            _build(tag)
    return tag


def _build(tag: str) -> None:
    build = subprocess.run(
        ["bash", str(ROOT / "deploy" / "image" / "build.sh")],
        capture_output=True,
        text=True,
        timeout=1500,
        env={**podman_env(), "IMAGE": tag, "HOST_PYTHON": str(ROOT / ".venv" / "bin" / "python")},
    )
    assert build.returncode == 0, build.stderr[-5000:]
    print(build.stderr.strip().splitlines()[-1])  # image: <tag> <size> MB
    for line in podman("images", "--format", "{{.Repository}}:{{.Tag}}", "localhost/hpcinsight").stdout.split():
        if line.startswith("localhost/hpcinsight:test-") and line != tag:  # earlier test builds
            podman("rmi", line, check=False)


def test_the_image_answers_as_a_non_root_cli_with_its_labels(image: str) -> None:
    from hpcinsight import __version__

    assert podman("run", "--rm", image, "--version").stdout.strip() == f"hpcinsight {__version__}"
    [info] = json.loads(podman("image", "inspect", image).stdout)
    config = info["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"][-1] == "hpcinsight"
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.source"] and labels["org.opencontainers.image.revision"]
    size_mb = info["Size"] / 1e6
    print(f"image {image}: {size_mb:.0f} MB")
    assert size_mb < 2000, f"the image grew to {size_mb:.0f} MB"
    # every component is in it
    help_text = podman("run", "--rm", image, "--help").stdout
    for command in ("agent", "worker", "sink", "serve", "alerts", "query", "replay", "eval"):
        assert command in help_text


def _container(pipeline: Pipeline, image: str, name: str, *args: str) -> list[str]:
    env = pipeline.env
    data = pipeline.store.parent
    passed = [
        f"--env={k}={env[k]}" for k in ("KAFKA_BOOTSTRAP", "HPCINSIGHT_TOPIC_PREFIX", "CLICKHOUSE_URL", "HPCINSIGHT_DATA_DIR")
    ]
    return [
        "podman",
        "--runtime",
        os.environ.get("PODMAN_RUNTIME", "runc"),
        "run",
        "--rm",
        f"--name={name}",
        "--network=host",
        f"--volume={data}:{data}",
        *passed,
        image,
        *args,
    ]


def test_agent_worker_and_sink_from_the_image(pipeline: Pipeline, image: str) -> None:
    data = pipeline.store.parent
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o777)  # the image's user (uid 10001) writes the store and the spool here
    tag = pipeline.prefix.strip(".")
    names = {c: f"hpci-{tag}-{c}" for c in ("worker", "sink", "agent")}
    logs = {c: open(pipeline.logs / f"image-{c}.log", "wb") for c in names}
    procs = {}
    try:
        procs["worker"] = subprocess.Popen(
            _container(pipeline, image, names["worker"], "worker", "--windows", "10s/5s", "--job-wait", "2s"),
            stdout=logs["worker"],
            stderr=subprocess.STDOUT,
            env=podman_env(),
        )
        procs["sink"] = subprocess.Popen(
            _container(pipeline, image, names["sink"], "sink", "--batch-age", "0.5"),
            stdout=logs["sink"],
            stderr=subprocess.STDOUT,
            env=podman_env(),
        )
        agent = subprocess.run(
            _container(
                pipeline,
                image,
                names["agent"],
                *sim_agent(NODES, GPUS, ticks=TICKS, speed=10),
            ),
            capture_output=True,
            text=True,
            timeout=300,
            env=podman_env(),
        )
        assert agent.returncode == 0, agent.stderr[-3000:]
        summary = json.loads(agent.stdout.strip().splitlines()[-1])
        produced = summary["topics"]["gpu.samples.raw"]["records"]
        assert produced == NODES * GPUS * TICKS and summary["dropped"] == 0
        try:
            pipeline.wait_caught_up("worker", ["gpu.samples.raw"], timeout=300)
            pipeline.wait_caught_up("clickhouse-sink", ["gpu.samples", "gpu.quantiles"], timeout=300)
        except AssertionError as err:
            raise AssertionError(
                f"{err}\nworker:\n{pipeline.log('image-worker')[-3000:]}\nsink:\n{pipeline.log('image-sink')[-3000:]}"
            ) from None
        for proc in procs.values():
            assert proc.poll() is None, (proc.args, pipeline.log("image-worker"), pipeline.log("image-sink"))
    finally:
        for component in ("sink", "worker"):
            if component in procs:
                subprocess.run(
                    ["podman", "--runtime", os.environ.get("PODMAN_RUNTIME", "runc"), "stop", "-t", "30", names[component]],
                    capture_output=True,
                    timeout=60,
                    env=podman_env(),
                )
        deadline = time.monotonic() + 60
        for proc in procs.values():
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        for log in logs.values():
            log.close()
    assert procs["sink"].returncode == 0, (procs["sink"].returncode, pipeline.log("image-sink")[-3000:])
    # the rows the containers stored, read from the host
    counts = pipeline.sql("SELECT count() AS n, uniqExact(gpu_uuid, ts) AS distinct_n FROM gpu_samples")[0]
    assert counts == {"n": produced, "distinct_n": produced}
    windows = pipeline.sql("SELECT count() AS n FROM gpu_quantiles FINAL WHERE metric = 'gpu_util' AND window = '10s'")[0]["n"]
    assert windows >= NODES * GPUS, pipeline.log("image-worker")
