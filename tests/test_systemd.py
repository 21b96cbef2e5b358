"""deploy/systemd: the units are what systemd accepts (``systemd-analyze verify`` under a root that
holds the host's own system units and the install path /opt/hpcinsight/bin/hpcinsight), hardened
(``systemd-analyze security --offline``), their command lines parse with the real CLI, and the
example environment file loads with the real configuration loader; a wrong value in it stops the
component with the setting named."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "deploy" / "systemd"
SERVICES = sorted(p.name for p in UNITS.glob("*.service"))
INSTANCE = "1"


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        reason = "systemd-analyze is not installed (Debian: apt-get install systemd)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return tool


def unit_name(service: str) -> str:
    return service.replace("@.", f"@{INSTANCE}.")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root for systemd-analyze: the host's system units (targets the units are ordered after),
    ours in /etc/systemd/system, and /opt/hpcinsight/bin/hpcinsight, where the docs install the
    CLI (a venv), here a wrapper that runs this checkout's."""
    systemd_analyze()
    root = tmp_path_factory.mktemp("root")
    shutil.copytree("/lib/systemd/system", root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    for unit in UNITS.glob("hpcinsight*"):
        if unit.suffix in (".service", ".target"):
            shutil.copy(unit, root / "etc" / "systemd" / "system")
    dropin = root / "etc" / "systemd" / "system" / "hpcinsight-agent.service.d"  # mutual TLS, as docs/deploy.md installs it
    dropin.mkdir()
    shutil.copy(UNITS / "kafka-mtls.conf", dropin)
    cli = root / "opt" / "hpcinsight" / "bin" / "hpcinsight"
    cli.parent.mkdir(parents=True)
    cli.write_text(f'#!/bin/sh\nexec {shlex.quote(str(Path(sys.executable).parent / "hpcinsight"))} "$@"\n')
    cli.chmod(0o755)
    (root / "bin").mkdir()
    shutil.copy(shutil.which("kill") or "/bin/kill", root / "bin" / "kill")  # ExecReload of the alert router
    return root


def verify(root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([systemd_analyze(), "verify", f"--root={root}", *units], capture_output=True, text=True, timeout=60)


def test_the_units_cover_every_host_role() -> None:
    assert set(SERVICES) == {
        "hpcinsight-agent.service",
        "hpcinsight-slurm.service",
        "hpcinsight-worker@.service",
        "hpcinsight-sink@.service",
        "hpcinsight-serve.service",
        "hpcinsight-alerts.service",
    }


def test_systemd_analyze_verify_is_clean(root: Path) -> None:
    result = verify(root, *[unit_name(s) for s in SERVICES], "hpcinsight.target")
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_verify_does_catch_a_broken_unit(root: Path) -> None:
    """The check above can fail: a misspelt directive and a missing program are reported."""
    broken = root / "etc" / "systemd" / "system" / "hpcinsight-broken.service"
    text = (UNITS / "hpcinsight-serve.service").read_text()
    broken.write_text(
        text.replace("ProtectSystem=strict", "ProtectSystem=strict\nProtectSystm=yes").replace(
            "/opt/hpcinsight/bin/hpcinsight serve", "/opt/hpcinsight/bin/hpcinsight-missing serve"
        )
    )
    try:
        result = verify(root, "hpcinsight-broken.service")
    finally:
        broken.unlink()
    assert "Unknown key 'ProtectSystm'" in result.stderr
    assert "hpcinsight-missing is not executable" in result.stderr and result.returncode != 0


@pytest.mark.parametrize("service", SERVICES)
def test_the_units_are_hardened(root: Path, service: str) -> None:
    """systemd's own exposure score (0 = locked down, 10 = unprotected); the agent keeps the GPU
    device nodes and every process's /proc visible (NVML, per-process attribution)."""
    text = (UNITS / service).read_text()
    for setting in (
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
        "RestrictNamespaces=yes",
    ):
        assert setting in text, (service, setting)
    if service == "hpcinsight-agent.service":
        assert "PrivateDevices" not in text and "DevicePolicy=closed" in text and "DeviceAllow=char-nvidia-frontend rw" in text
        assert "ProtectProc" not in text
    else:
        assert "PrivateDevices=yes" in text
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", f"--root={root}", unit_name(service)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    assert float(match.group(1)) <= (2.0 if service == "hpcinsight-agent.service" else 1.8), result.stdout


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as systemd reads an EnvironmentFile (comments with # or ;, quotes stripped)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def service_env(service: str, env_path: Path, credentials: Path) -> dict[str, str]:
    """The unit's environment as systemd builds it: Environment= lines, then the EnvironmentFile
    (which wins), with %i and %d (the credentials directory) filled in."""
    env: dict[str, str] = {}
    for line in (UNITS / service).read_text().splitlines():
        if line.startswith("Environment="):
            for assignment in shlex.split(line.removeprefix("Environment=")):
                key, value = assignment.split("=", 1)
                env[key] = value.replace("%i", INSTANCE).replace("%d", str(credentials))
    env.update(env_file(env_path))
    return env


def exec_start(service: str, env: dict[str, str]) -> list[str]:
    [line] = [ln for ln in (UNITS / service).read_text().splitlines() if ln.startswith("ExecStart=")]
    line = line.removeprefix("ExecStart=").replace("%i", INSTANCE)
    argv = shlex.split(line)
    assert argv[0] == "/opt/hpcinsight/bin/hpcinsight"
    return [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], a) for a in argv[1:]]


def test_the_mutual_tls_drop_in_gives_the_agent_its_key(root: Path, tmp_path: Path, credentials: Path) -> None:
    """The drop-in is part of the verified agent unit above; with it and a certificate in the env
    file, the agent's settings carry the client certificate and key to librdkafka."""
    from hpcinsight.core.settings import load

    shown = subprocess.run(
        [systemd_analyze(), "cat-config", f"--root={root}", "systemd/system/hpcinsight-agent.service.d/kafka-mtls.conf"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "LoadCredential=kafka-client-key:" in shown.stdout, shown.stderr
    (credentials / "kafka-client-key").write_text("-----BEGIN PRIVATE KEY-----\n")
    cert, ca = tmp_path / "client.crt", tmp_path / "ca.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    env_path = tmp_path / "hpcinsight.env"
    env_path.write_text(
        (UNITS / "hpcinsight.env.example").read_text().replace("KAFKA_SECURITY_PROTOCOL=PLAINTEXT", "KAFKA_SECURITY_PROTOCOL=SSL")
        + f"KAFKA_SSL_CAFILE={ca}\nKAFKA_SSL_CERTFILE={cert}\n"
    )
    env = service_env("hpcinsight-agent.service", env_path, credentials)
    for line in (UNITS / "kafka-mtls.conf").read_text().splitlines():
        if line.startswith("Environment="):
            key, value = line.removeprefix("Environment=").split("=", 1)
            env[key] = value.replace("%d", str(credentials))
    conf = load(env).kafka.client_config()
    assert conf["ssl.certificate.location"] == str(cert) and conf["ssl.key.location"] == str(credentials / "kafka-client-key")


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    creds = tmp_path / "credentials"
    creds.mkdir()
    for name in ("kafka-sasl-password", "clickhouse-password"):
        (creds / name).write_text("\n")  # the units' SetCredential= default: none
    (creds / "api-token").write_text("0123456789abcdef0123\n")
    return creds


@pytest.mark.parametrize("service", SERVICES)
def test_every_command_line_parses_with_the_cli(service: str, credentials: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hpcinsight.cli import build_parser

    env = service_env(service, UNITS / "hpcinsight.env.example", credentials)
    args = exec_start(service, env)
    try:
        build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"{service}: `hpcinsight {shlex.join(args)}` does not parse: {capsys.readouterr().err.strip()}")


@pytest.mark.parametrize("service", SERVICES)
def test_the_example_settings_load(service: str, credentials: Path) -> None:
    from hpcinsight.core.settings import load
    from hpcinsight.web.serve import api_token

    env = service_env(service, UNITS / "hpcinsight.env.example", credentials)
    settings = load(env)
    assert settings.kafka.bootstrap and settings.clickhouse.url.startswith("http://")
    assert str(settings.data_dir).startswith("/var/lib/hpcinsight/")
    if service == "hpcinsight-serve.service":
        assert api_token(env) is not None


def test_a_wrong_setting_stops_the_component_naming_it(tmp_path: Path, credentials: Path) -> None:
    """The worker's own command line and environment, from an env file with a typo: it exits at
    once, the journal gets one line naming the setting, and no traceback."""
    bad = tmp_path / "hpcinsight.env"
    bad.write_text(
        (UNITS / "hpcinsight.env.example")
        .read_text()
        .replace("KAFKA_SECURITY_PROTOCOL=PLAINTEXT", "KAFKA_SECURITY_PROTOCOL=SASL_SSLL")
    )
    env = service_env("hpcinsight-worker@.service", bad, credentials)
    env["HPCINSIGHT_DATA_DIR"] = str(tmp_path / "data")
    args = exec_start("hpcinsight-worker@.service", env)
    result = subprocess.run(
        [sys.executable, "-m", "hpcinsight.cli", *args],
        env={**env, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode != 0
    assert "KAFKA_SECURITY_PROTOCOL" in result.stderr and "SASL_SSLL" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
