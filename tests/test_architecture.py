"""The house: every folder installs under ``hpcinsight.<room>``, and imports only go down the floors.

From the bottom: the ground (``core/``), then ``schemas/``; the rooms (``agents/``, ``streams/``,
``sinks/``, ``whatif/``) side by side; the services built from rooms (``web/``, ``harness/``,
``deploy/``); the CLI floor (``hpcinsight/``) on top. There is no exception list.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GROUND = ("core",)
ROOMS = ("agents", "streams", "sinks", "whatif")
SERVICES = ("web", "harness", "deploy")
CLI = "hpcinsight"
FOLDERS = (*GROUND, "schemas", *ROOMS, *SERVICES)

#: what each folder may import from the project, besides itself
ALLOWED: dict[str, tuple[str, ...]] = {
    "core": (),
    "schemas": ("core",),
    **{room: ("core", "schemas") for room in ROOMS},
    **{service: ("core", "schemas", *ROOMS) for service in SERVICES},
    # the harness starts the local broker that deploy/local launches, as `hpcinsight demo` does
    "harness": ("core", "schemas", *ROOMS, "deploy"),
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def project_folder(module: str) -> str | None:
    """The folder a module of the project lives in (``hpcinsight.sinks.query`` -> ``sinks``)."""
    parts = module.split(".")
    if parts[0] != "hpcinsight":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in FOLDERS else CLI


def python_files(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_floor_imports_only_the_floors_below_it(folder: str) -> None:
    allowed = {folder, *ALLOWED[folder]}
    wrong = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in python_files(folder)
        for module in imported_modules(path)
        if (where := project_folder(module)) is not None and where not in allowed
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("folder", [*FOLDERS, CLI, "tests", "bench"])
def test_nothing_imports_a_room_by_its_folder_name(folder: str) -> None:
    """``import agents`` would work from the repository's root and load a second copy of the
    module; installed, it would find some other distribution's ``agents``."""
    tops = {*FOLDERS, "whatif"}
    wrong = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in python_files(folder)
        for module in imported_modules(path)
        if module.split(".")[0] in tops
    ]
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_another_modules_private_names() -> None:
    wrong = []
    for folder in (*FOLDERS, CLI):
        for path in python_files(folder):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hpcinsight"):
                    wrong += [
                        f"{path.relative_to(ROOT)}: {node.module}.{a.name}"
                        for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")
                    ]
    assert not wrong, "\n".join(wrong)


def test_the_package_list_installs_every_folder_with_code_under_the_namespace() -> None:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = tool["package-dir"]
    assert mapping == {"hpcinsight": "hpcinsight", **{f"hpcinsight.{f}": f for f in FOLDERS}}
    expected = sorted(
        "hpcinsight." + ".".join(init.parent.relative_to(ROOT).parts) if init.parent.name != CLI else CLI
        for folder in (*FOLDERS, CLI)
        for init in (ROOT / folder).rglob("__init__.py")
        if "__pycache__" not in init.parts
    )
    assert sorted(tool["packages"]) == expected


def test_the_agent_never_loads_pyarrow_or_numpy() -> None:
    """The agent runs on every node: encoding events must not pull in the columnar stack (pyarrow
    alone is some 40 MB of resident memory), which only the sink and the query side use."""
    import subprocess
    import sys

    modules = [
        "hpcinsight.schemas.catalog",
        "hpcinsight.agents.runner",
        "hpcinsight.agents.delivery",
        "hpcinsight.agents.gpu_nvml",
        "hpcinsight.agents.ib_sysfs",
        "hpcinsight.agents.cgroup",
        "hpcinsight.agents.steps",
        "hpcinsight.agents.scheduler.slurm",
        "hpcinsight.agents.scheduler.kubernetes",
    ]
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(sorted(m for m in ('pyarrow', 'numpy', 'pandas') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
