"""``python -m kfabric.native_build [build [--force] | clean | status]``: make (the default), remove or check
the compiled build of the scheduling core and the simulator (see :mod:`kfabric.native`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from kfabric.native import (
    COMPILED,
    DIGEST_FILE,
    PACKAGE_DIR,
    _suffix,
    built_files,
    clean,
    source_digest,
    sources,
    state,
)


class NativeError(RuntimeError):
    """The compiled build could not be made."""


_SETUP = """
import sys
from setuptools import setup
from mypyc.build import mypycify

files = sys.argv.pop(1).split(",")
setup(name="kfabric_native", ext_modules=mypycify(["--config-file", "mypy.ini", *files], opt_level="3"))
"""

_MYPY_INI = """
[mypy]
python_version = 3.11
ignore_missing_imports = True
strict = True
"""


def build(jobs: int | None = None, quiet: bool = True) -> None:
    """Compile :data:`COMPILED` with mypyc (in a scratch copy of the sources) and install the extension
    modules next to the sources. Needs mypy (the ``dev`` extra) and a C compiler with Python's headers."""
    digest = source_digest()
    src_root = PACKAGE_DIR.parent
    with tempfile.TemporaryDirectory(prefix="kfabric-native-") as tmp:
        work = Path(tmp)
        shutil.copytree(src_root / "kfabric", work / "kfabric", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
        (work / "mypy.ini").write_text(_MYPY_INI)
        (work / "setup.py").write_text(_SETUP)
        files = [str(p.relative_to(src_root)) for p in sources()]
        cmd = [
            sys.executable,
            "setup.py",
            ",".join(files),
            "build_ext",
            "--inplace",
            "-j",
            str(jobs or os.cpu_count() or 1),
        ]
        done = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
            raise NativeError(f"mypyc build failed (exit {done.returncode}); the Python sources stay in use:\n{tail}")
        clean()
        suffix = _suffix()
        for made in work.rglob("*" + suffix):
            rel = made.relative_to(work)
            if rel.parts[0] == "build":
                continue
            shutil.copy2(made, src_root / rel)
    DIGEST_FILE.write_text(digest + "\n")
    if not quiet:
        print(f"kfabric: compiled {', '.join(COMPILED)} ({len(built_files())} extension modules)", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args else "build"
    if command == "build":
        if state() == "fresh" and "--force" not in args:
            print("kfabric: compiled build is up to date", file=sys.stderr)
            return 0
        try:
            build(quiet=False)
        except NativeError as exc:
            print(f"kfabric: {exc}", file=sys.stderr)
            return 1
        return 0
    if command == "clean":
        clean()
        return 0
    if command == "status":
        print(state())
        return 0
    usage = "usage: python -m kfabric.native_build [build [--force] | clean | status]"
    print(f"{usage} (got {command!r})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
