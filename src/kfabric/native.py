"""Optional compiled build of the scheduling core and the simulator (mypyc), and the guard that keeps it honest.

The Python sources are the reference and always work on their own. ``python -m kfabric.native_build``
compiles the packages in :data:`COMPILED` with mypyc into extension modules next to the sources (``*.so``,
ignored by git) and records a digest of the sources they came from. Python prefers an extension module to a
``.py`` file of the same name, so a fresh build is what ``import kfabric.sched`` loads.

:func:`guard` runs when ``kfabric`` is imported. It loads the ``.py`` sources instead of the build when:

* ``KFABRIC_NATIVE=0`` (the test suite's default: tests that swap module attributes need the sources), or
* the build is stale: a source changed since it was compiled (an edit is never hidden by an old build).

``KFABRIC_NATIVE=1`` insists on the build: a missing or stale build is an error, not a silent fallback.
The scheduling decisions are the same either way (the golden tests run on both).

The guard never ends the process: a setting it cannot honour raises :class:`NativeBuildError` from
``import kfabric``. In the ``kfabric`` command the error is kept instead (the sources are imported meanwhile)
and the command's entry point raises it where it prints errors (one line, exit status 2:
:func:`raise_deferred`).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

#: the packages compiled (every module in them): the scheduling core and the simulator's event loop
COMPILED = ("kfabric.sched", "kfabric.sim")
#: packages the compiled code was type-checked against (their constants and types are built in): part of the digest
DEPENDS = ("kfabric.model",)
PACKAGE_DIR = Path(__file__).resolve().parent
DIGEST_FILE = PACKAGE_DIR / "native.digest"
ENV = "KFABRIC_NATIVE"


def sources(packages: Sequence[str] = COMPILED) -> list[Path]:
    """The ``.py`` files of ``packages`` (by default: those compiled), in a stable order."""
    found: list[Path] = []
    for package in packages:
        found.extend(sorted((PACKAGE_DIR.parent / package.replace(".", "/")).glob("*.py")))
    return found


def source_digest() -> str:
    """SHA-256 over the compiled sources' names and contents, and the interpreter's extension suffix."""
    h = hashlib.sha256(_suffix().encode())
    for path in sources((*COMPILED, *DEPENDS)):
        h.update(str(path.relative_to(PACKAGE_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _suffix() -> str:
    return str(sysconfig.get_config_var("EXT_SUFFIX") or ".so")


def built_files() -> list[Path]:
    """Extension modules of a build in the source tree (the packages' modules and mypyc's shared library)."""
    suffix = _suffix()
    found = [p for package in COMPILED for p in (PACKAGE_DIR.parent / package.replace(".", "/")).glob("*" + suffix)]
    found.extend(PACKAGE_DIR.parent.glob("*__mypyc" + suffix))
    return sorted(found)


def state() -> str:
    """``"fresh"`` (a build of the current sources), ``"stale"`` (a build of other sources) or ``"none"``."""
    if not built_files():
        return "none"
    try:
        recorded = DIGEST_FILE.read_text().strip()
    except OSError:
        return "stale"
    return "fresh" if recorded == source_digest() else "stale"


class _SourcesFirst:
    """A meta path finder (``find_spec`` is the whole protocol; not derived from ``importlib.abc``, whose import
    costs ~30 ms) that finds the compiled packages' modules as ``.py`` sources, ahead of any extension module."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not any(fullname == p or fullname.startswith(p + ".") for p in COMPILED):
            return None
        leaf = fullname.rpartition(".")[2]
        for entry in path or ():
            package = os.path.join(entry, leaf)
            init = os.path.join(package, "__init__.py")
            if os.path.isfile(init):
                return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[package])
            module = package + ".py"
            if os.path.isfile(module):
                return importlib.util.spec_from_file_location(fullname, module)
        return None


class NativeBuildError(ValueError):
    """``KFABRIC_NATIVE`` asks for something the guard cannot do: a value it does not understand, or ``1`` (the
    compiled build) while the build is missing or stale. The message says which and how to fix it."""


#: the guard's error in the ``kfabric`` command, kept for its entry point to raise (see :func:`raise_deferred`)
_deferred: list[NativeBuildError] = []


def guard(defer: bool = False) -> str:
    """Decide, once per process, whether the compiled build or the sources are imported; returns which
    (``"native"`` or ``"python"``). A setting that cannot be honoured raises :class:`NativeBuildError`; with
    ``defer`` (the ``kfabric`` command) the error is kept for :func:`raise_deferred` and the sources are used."""
    try:
        return _choose()
    except NativeBuildError as exc:
        if not defer:
            raise
        _deferred.append(exc)
        if not any(isinstance(f, _SourcesFirst) for f in sys.meta_path):
            sys.meta_path.insert(0, _SourcesFirst())
        return "python"


def _choose() -> str:
    want = os.environ.get(ENV, "auto").strip().lower()
    if want not in ("0", "1", "auto", ""):
        raise NativeBuildError(
            f"kfabric: {ENV}={want!r} is not understood: use 1 (compiled build), 0 (Python sources) or auto"
        )
    if any(isinstance(f, _SourcesFirst) for f in sys.meta_path):
        return "python"
    now = state() if want != "0" else "none"
    if want == "1" and now != "fresh":
        raise NativeBuildError(
            f"kfabric: {ENV}=1 but the compiled build is {'missing' if now == 'none' else 'stale'}: "
            "run `.venv/bin/python -m kfabric.native_build`, or unset KFABRIC_NATIVE to use the Python sources"
        )
    if now == "fresh":
        return "native"
    sys.meta_path.insert(0, _SourcesFirst())
    return "python"


def command_process() -> bool:
    """Whether this process is the ``kfabric`` command (its console script), whose entry point prints the guard's
    error as one line instead of a traceback; every other process (a library user, a test, a server) gets the
    exception from ``import kfabric``."""
    argv = getattr(sys, "argv", None) or [""]
    return Path(argv[0]).name == "kfabric"


def raise_deferred() -> None:
    """Raise the guard's kept error, if any (called by the ``kfabric`` command where it prints errors)."""
    if _deferred:
        raise _deferred[0]


def loaded() -> str:
    """Which kind of module ``kfabric.sched.cycle`` is in this process: ``"native"`` or ``"python"``."""
    import kfabric.sched.cycle as probe

    return "python" if str(probe.__file__).endswith(".py") else "native"


def clean() -> None:
    for path in built_files():
        path.unlink()
    DIGEST_FILE.unlink(missing_ok=True)
