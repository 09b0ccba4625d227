"""The compiled build's guard (kfabric.native): which modules a process imports, and why.

Each case runs a fresh interpreter on a scratch copy of the package, so the real tree's build is never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PROBE = "import kfabric, kfabric.native as n; print(kfabric.BUILD, n.loaded(), n.state())"


def _copy(tmp_path: Path) -> Path:
    """The package's sources alone (no build of the real tree)."""
    skip = shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", "native.digest")
    shutil.copytree(SRC / "kfabric", tmp_path / "kfabric", ignore=skip)
    return tmp_path


def _fake_build(root: Path) -> None:
    """A stand-in extension module for ``kfabric.sched.cycle`` that is importable: a real ``.so`` is not
    needed to test the guard's choice, only a file the import system would prefer to the ``.py``."""
    import kfabric.native as native

    (root / "kfabric" / "sched" / ("cycle" + native._suffix())).write_bytes(b"not a real extension module")


def _digest(root: Path) -> str:
    code = "import kfabric.native as n; print(n.source_digest())"
    env = {**os.environ, "PYTHONPATH": str(root), "KFABRIC_NATIVE": "0"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def _probe(root: Path, setting: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KFABRIC_NATIVE"}
    env["PYTHONPATH"] = str(root)
    if setting is not None:
        env["KFABRIC_NATIVE"] = setting
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    ("build", "setting", "out"),
    [
        ("none", None, "python python none"),
        ("none", "0", "python python none"),
        ("stale", None, "python python stale"),  # an edited source is never hidden by an old build
        ("stale", "auto", "python python stale"),
        ("fresh", "0", "python python fresh"),  # the sources on request, build or not
    ],
    ids=["no-build", "no-build-off", "stale", "stale-auto", "fresh-but-off"],
)
def test_the_sources_are_imported_unless_a_fresh_build_is_wanted(
    tmp_path: Path, build: str, setting: str | None, out: str
) -> None:
    root = _copy(tmp_path)
    if build != "none":
        _fake_build(root)
        digest = _digest(root)
        (root / "kfabric" / "native.digest").write_text(digest if build == "fresh" else "0" * 64 + "\n")
    got = _probe(root, setting)
    assert got.returncode == 0, got.stderr
    assert got.stdout.split() == out.split()


@pytest.mark.parametrize(
    ("build", "setting", "message"),
    [
        ("none", "1", "KFABRIC_NATIVE=1 but the compiled build is missing"),
        ("stale", "1", "KFABRIC_NATIVE=1 but the compiled build is stale"),
        ("none", "yes", "KFABRIC_NATIVE='yes' is not understood"),
    ],
    ids=["missing", "stale", "bad-value"],
)
def test_a_build_that_cannot_be_used_raises_from_import(tmp_path: Path, build: str, setting: str, message: str) -> None:
    """A library's ``import kfabric`` gets the error as an exception (the process is not ended); the ``kfabric``
    command prints it as one line (tests/test_native_errors.py)."""
    root = _copy(tmp_path)
    if build == "stale":
        _fake_build(root)
        (root / "kfabric" / "native.digest").write_text("0" * 64 + "\n")
    got = _probe(root, setting)
    assert got.returncode == 1
    assert f"kfabric.native.NativeBuildError: kfabric: {message}" in got.stderr
    assert "SystemExit" not in got.stderr


def test_a_fresh_build_is_preferred_to_the_sources(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    _fake_build(root)
    (root / "kfabric" / "native.digest").write_text(_digest(root))
    got = _probe(root, None)
    # the stand-in is not a loadable extension module: the import system tried it, which is the point
    assert got.returncode == 1 and "cycle" in got.stderr and "ImportError" in got.stderr


@pytest.mark.parametrize(
    ("argv", "code", "out", "err"),
    [
        (["status"], 0, "none|stale|fresh", ""),
        (["bogus"], 2, "", "usage: python -m kfabric.native_build [build [--force] | clean | status] (got 'bogus')"),
    ],
    ids=["status", "unknown-command"],
)
def test_the_build_command_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], code: int, out: str, err: str
) -> None:
    from kfabric.native_build import main

    assert main(argv) == code
    got = capsys.readouterr()
    assert (got.out.strip() in out.split("|")) if out else got.out == ""
    assert err in got.err
