"""agents/, streams/ and sinks/ never import one another; they meet in schemas/ and the config."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ("agents", "streams", "sinks", "whatif")
SHARED = ("schemas", "hpcinsight.config")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


@pytest.mark.parametrize("component", COMPONENTS)
def test_components_import_only_themselves_schemas_and_config(component: str) -> None:
    project = {"agents", "streams", "sinks", "schemas", "hpcinsight", "deploy", "whatif"}
    for path in sorted((ROOT / component).rglob("*.py")):
        for module in imported_modules(path):
            top = module.split(".")[0]
            if top not in project or top == component:
                continue
            assert module.startswith(SHARED), f"{path.relative_to(ROOT)} imports {module}"


def test_schemas_import_no_component() -> None:
    for path in sorted((ROOT / "schemas").rglob("*.py")):
        for module in imported_modules(path):
            assert module.split(".")[0] not in {"agents", "streams", "sinks", "hpcinsight", "deploy", "whatif"}, f"{path} imports {module}"


def test_the_agent_never_loads_pyarrow_or_numpy() -> None:
    """The agent runs on every node: encoding events must not pull in the columnar stack (pyarrow
    alone is some 40 MB of resident memory), which only the sink and the query side use."""
    import subprocess
    import sys

    modules = ["schemas.catalog", "agents.runner", "agents.delivery", "agents.gpu_nvml", "agents.ib_sysfs", "agents.cgroup",
               "agents.steps", "agents.scheduler.slurm", "agents.scheduler.kubernetes"]
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(sorted(m for m in ('pyarrow', 'numpy', 'pandas') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
