"""The dependency rule of docs/architecture.md, enforced: the pure core imports no outer layer."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(src: Path, config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(config), "--no-cache"],
        cwd=src.parent,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_contracts_kept_on_the_real_tree() -> None:
    result = _lint(SRC, ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("where", "bad_import"),
    [
        ("sched", "import kfabric.cli.main"),
        ("sched", "import yaml"),
        ("model", "from kfabric.scenarios import loader"),
        ("model", "import kfabric.sim"),
        ("sched", "import rich.console"),
        ("api", "from kfabric.store import tables"),
        ("api", "import kfabric.store.group_commit"),
    ],
    ids=[
        "sched->cli",
        "sched->yaml",
        "model->scenarios",
        "model->sim",
        "sched->terminal",
        "api->store",
        "api->store-module",
    ],
)
def test_a_bad_import_breaks_the_contract(tmp_path: Path, where: str, bad_import: str) -> None:
    src = tmp_path / "src"
    shutil.copytree(SRC / "kfabric", src / "kfabric", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "kfabric" / where / "_deliberately_bad.py").write_text(bad_import + "\n")
    config = tmp_path / "pyproject.toml"
    shutil.copy(ROOT / "pyproject.toml", config)
    result = _lint(src, config)
    assert result.returncode != 0
    assert f"kfabric.{where}._deliberately_bad" in result.stdout
    assert "BROKEN" in result.stdout


def test_every_outer_package_is_forbidden_to_the_core() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["id"] == "pure-core")
    packages = {p.name for p in (SRC / "kfabric").iterdir() if (p / "__init__.py").exists()}
    outer = packages - {"model", "sched"}
    missing = sorted(f"kfabric.{p}" for p in outer if f"kfabric.{p}" not in contract["forbidden_modules"])
    assert missing == [], f"add {missing} to the pure-core contract in pyproject.toml"


def test_the_api_reaches_the_store_only_through_the_service() -> None:
    """The thin-API contract (issue 20) covers the whole API package: routes call service functions."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["id"] == "api-not-store")
    assert "kfabric.api" in contract["source_modules"]
    assert contract["forbidden_modules"] == ["kfabric.store"]


#: the longest function the scheduling core may have (issue 20: a step that grows past it is split)
CORE_FUNCTION_LINES = 60


def long_functions(package: Path, limit: int) -> list[str]:
    """``file:line name (N lines)`` for each function of ``package`` longer than ``limit`` lines."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(package)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_of_the_scheduling_core_is_long() -> None:
    assert long_functions(SRC / "kfabric" / "sched", CORE_FUNCTION_LINES) == []


def test_a_long_function_is_reported(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(CORE_FUNCTION_LINES))
    (tmp_path / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    found = long_functions(tmp_path, CORE_FUNCTION_LINES)
    assert [f.split(" ", 1)[1] for f in found] == [f"long ({CORE_FUNCTION_LINES + 1} lines)"]
