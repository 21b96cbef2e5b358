"""Go tools built once from the Go module proxy into the project's cache, at exact versions.

The suite checks the Helm chart with a real Helm (and its alerting rules with Prometheus' promtool)
and the alert router against a real Alertmanager;
neither ships as a Debian or PyPI package, and no other download site is reachable here, so the
set-up (``make setup``: ``python -m hpcinsight.deploy.tools.go build``) builds them with the local Go toolchain
into ``~/.cache/hpcinsight/tools/<name>-<version>/<name>``. A later run finds the binary and does
nothing. Tests call :func:`require`, which fails with the reason when a tool is missing (in CI) and
skips outside CI.

Two recipes: ``install`` is ``go install module/cmd@version``; ``source`` downloads the module,
copies it to a writable folder, writes the files its build expects but its module zip lacks
(Alertmanager's web UI bundle is built by npm in its release process; an empty page stands in,
the API is what the tests use), and runs ``go build`` on the package.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("HPCINSIGHT_CACHE", Path.home() / ".cache" / "hpcinsight"))


@dataclass(frozen=True)
class GoTool:
    name: str
    module: str
    version: str
    package: str  # the main package, relative to the module root
    recipe: str = "install"  # install | source
    #: files to create before building from source (path relative to the module root -> content)
    extra_files: dict[str, str] = field(default_factory=dict)
    #: -ldflags of the build (e.g. the version the binary reports, set by the project's release build)
    ldflags: str = ""
    version_args: tuple[str, ...] = ("--version",)
    #: what the binary says its version is, where that is not the module's (Prometheus' v0.3XX.Y is 3.XX.Y)
    reports: str | None = None

    @property
    def binary(self) -> Path:
        return cache_root() / "tools" / f"{self.name}-{self.version}" / self.name


TOOLS: dict[str, GoTool] = {
    "helm": GoTool(
        "helm",
        "helm.sh/helm/v4",
        "v4.3.2",
        "cmd/helm",
        version_args=("version", "--short"),
        ldflags="-X helm.sh/helm/v4/internal/version.version=v4.3.2",
    ),
    # the chart's PrometheusRule: its PromQL checked by Prometheus' own rule checker
    "promtool": GoTool(
        "promtool",
        "github.com/prometheus/prometheus",
        "v0.316.0",
        "cmd/promtool",
        ldflags="-X github.com/prometheus/common/version.Version=3.16.0",
        reports="3.16.0",
    ),
    "alertmanager": GoTool(
        "alertmanager",
        "github.com/prometheus/alertmanager",
        "v0.35.0",
        "cmd/alertmanager",
        recipe="source",
        extra_files={
            "ui/app/dist/index.html": "<!doctype html><title>Alertmanager</title><p>UI not built; the API is at /api/v2/.\n"
        },
        ldflags="-X github.com/prometheus/common/version.Version=0.35.0 -X github.com/prometheus/common/version.Revision=v0.35.0",
    ),
}


class ToolMissing(RuntimeError):
    """A tool is not built and could not be; the message says why and what to run."""


def _go() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise ToolMissing("the Go toolchain is not installed (https://go.dev/doc/install, or Debian's golang package)")
    return go


def _env() -> dict[str, str]:
    # the module cache under the project's cache too, writable (-modcacherw) so it can be cleaned
    return {**os.environ, "GOPATH": str(cache_root() / "gopath"), "GOFLAGS": "-modcacherw", "CGO_ENABLED": "0"}


def build(tool: GoTool, quiet: bool = False) -> Path:
    """The tool's binary, built now if it is not in the cache."""
    if tool.binary.exists():
        return tool.binary
    out = tool.binary.parent
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:  # test processes and set-ups may start together: one builds
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tool.binary.exists():
            return tool.binary
        return _build(tool, out, quiet)


def _build(tool: GoTool, out: Path, quiet: bool) -> Path:
    go, env = _go(), _env()
    if not quiet:
        print(f"tools: building {tool.name} {tool.version} from the Go module proxy (once; cached in {out})", file=sys.stderr)
    log = out / "build.log"
    with open(log, "w") as log_file:

        def run(
            args: list[str], cwd: Path | None = None, extra: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
            result = subprocess.run(
                args, cwd=cwd, env={**env, **(extra or {})}, stdout=subprocess.PIPE, stderr=log_file, text=True
            )
            if result.returncode != 0:
                raise ToolMissing(
                    f"building {tool.name} {tool.version} failed: `{' '.join(args)}` exited {result.returncode}; see {log}"
                )
            return result

        if tool.recipe == "install":
            run(
                [
                    go,
                    "install",
                    *(["-ldflags", tool.ldflags] if tool.ldflags else []),
                    f"{tool.module}/{tool.package}@{tool.version}",
                ],
                extra={"GOBIN": str(out)},
            )
        else:
            info = json.loads(run([go, "mod", "download", "-json", f"{tool.module}@{tool.version}"]).stdout)
            with tempfile.TemporaryDirectory(prefix=f"{tool.name}-src-") as tmp:
                src = Path(tmp) / "src"
                shutil.copytree(info["Dir"], src)
                for dirpath, _dirs, _files in os.walk(src):  # the module cache is read-only, the copy keeps its modes
                    os.chmod(dirpath, 0o755)
                for rel, content in tool.extra_files.items():
                    (src / rel).parent.mkdir(parents=True, exist_ok=True)
                    (src / rel).write_text(content)
                partial = out / f".{tool.name}.partial"
                run(
                    [go, "build", *(["-ldflags", tool.ldflags] if tool.ldflags else []), "-o", str(partial), f"./{tool.package}"],
                    cwd=src,
                )
                partial.rename(tool.binary)
    if not tool.binary.exists():
        raise ToolMissing(f"building {tool.name} {tool.version} left no binary at {tool.binary}; see {log}")
    return tool.binary


def require(name: str) -> Path:
    """The binary for a test: built, or a failure in CI (``CI`` set) and a skip elsewhere, saying why."""
    import pytest

    tool = TOOLS[name]
    if tool.binary.exists():
        return tool.binary
    reason = f"{name} {tool.version} is not built at {tool.binary}: run `make setup` (python -m hpcinsight.deploy.tools.go build {name})"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpcinsight.deploy.tools.go", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="build the named tools (default: all) unless cached")
    b.add_argument("names", nargs="*", metavar="NAME", help=f"one of {', '.join(TOOLS)}")
    sub.add_parser("list", help="each tool, its version and binary path")
    args = parser.parse_args(argv)
    if args.action == "list":
        for tool in TOOLS.values():
            print(f"{tool.name:14} {tool.version:8} {tool.binary}{'' if tool.binary.exists() else '  (not built)'}")
        return 0
    unknown = [n for n in args.names if n not in TOOLS]
    if unknown:
        parser.error(f"unknown tool(s) {', '.join(unknown)}; known: {', '.join(TOOLS)}")
    failed = 0
    for name in args.names or list(TOOLS):
        try:
            print(build(TOOLS[name]))
        except ToolMissing as err:
            print(f"tools: {err}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
