"""A ``KFABRIC_NATIVE`` setting the guard cannot honour (kfabric.native): a library gets an exception it can catch,
the ``kfabric`` command a one-line error and exit status 2; neither ends the process from inside ``import``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import kfabric.native as native

KFABRIC = Path(sys.executable).with_name("kfabric")
BAD = "KFABRIC_NATIVE='bogus' is not understood: use 1 (compiled build), 0 (Python sources) or auto"


def test_guard_raises_a_value_error_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.ENV, "bogus")
    with pytest.raises(native.NativeBuildError, match="is not understood") as caught:
        native.guard()
    assert isinstance(caught.value, ValueError)
    assert str(caught.value) == f"kfabric: {BAD}"


def test_the_command_keeps_the_error_for_its_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.ENV, "bogus")
    monkeypatch.setattr(native, "_deferred", [])
    assert native.guard(defer=True) == "python"
    with pytest.raises(native.NativeBuildError, match="bogus"):
        native.raise_deferred()
    monkeypatch.setattr(native, "_deferred", [])
    native.raise_deferred()  # nothing kept: nothing raised


def test_a_library_import_raises_and_the_caller_goes_on() -> None:
    code = (
        "try:\n    import kfabric\nexcept ValueError as exc:\n"
        "    print(type(exc).__name__, '|', exc)\nprint('still running')\n"
    )
    env = {**os.environ, native.ENV: "bogus"}
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines() == [f"NativeBuildError | kfabric: {BAD}", "still running"]


@pytest.mark.parametrize("argv", [["queue", "--help"], ["fleet", "list"], []], ids=["fast", "full", "bare"])
def test_the_command_prints_one_line_and_exits_2(argv: list[str]) -> None:
    # the suite's own install (scripts/test.sh) puts the command there: its absence is a broken install, not a skip
    assert KFABRIC.exists(), f"{KFABRIC} is not installed (pip install -e .)"
    env = {**os.environ, native.ENV: "bogus"}
    got = subprocess.run([str(KFABRIC), *argv], env=env, capture_output=True, text=True, check=False)
    assert got.returncode == 2
    assert got.stderr.splitlines() == [f"error: kfabric: {BAD}"]
    assert got.stdout == ""
