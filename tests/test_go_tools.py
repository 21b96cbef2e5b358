"""deploy/tools/go.py: the Go tools the suite drives are the versions the set-up pins, and a test
that needs a missing one fails in CI (never a silent skip) and skips elsewhere, saying what to run."""

from __future__ import annotations

import subprocess

import pytest

from hpcinsight.deploy.tools import go
from hpcinsight.deploy.tools.go import TOOLS, require


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_the_built_tool_is_the_pinned_version(name: str) -> None:
    binary = require(name)
    result = subprocess.run([str(binary), *TOOLS[name].version_args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert (TOOLS[name].reports or TOOLS[name].version.removeprefix("v")) in result.stdout + result.stderr


def test_a_missing_tool_fails_in_ci_and_skips_elsewhere(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HPCINSIGHT_CACHE", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"helm v4\.3\.2 is not built .*make setup"):
        require("helm")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="make setup"):
        require("helm")


def test_an_unknown_tool_is_refused(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        go.main(["build", "kubectl"])
    assert exit_.value.code == 2 and "unknown tool(s) kubectl; known: helm, promtool, alertmanager" in capsys.readouterr().err


def test_a_failed_build_says_where_its_log_is(tmp_path, monkeypatch) -> None:
    """A version the module proxy does not have: the error names the command and the log, and no
    binary is left behind to be taken for a good one."""
    monkeypatch.setenv("HPCINSIGHT_CACHE", str(tmp_path))
    monkeypatch.setenv("GOPROXY", "off")  # nothing fetched: fails at once, offline
    bogus = go.GoTool("helm", "helm.sh/helm/v4", "v4.0.0-does-not-exist", "cmd/helm")
    with pytest.raises(go.ToolMissing, match=r"building helm v4\.0\.0-does-not-exist failed: .*see .*build\.log"):
        go.build(bogus, quiet=True)
    assert not bogus.binary.exists()
