#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv) with kfabric and its dev tools.
# Idempotent: reinstalls only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.kfabric-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "kfabric: installing into .venv (first run takes about a minute)..." >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 \
    | grep -v "WARNING: Location" >&2 || true
  .venv/bin/python -c "import kfabric" # fail loudly if the install did not work
  touch "$stamp"
fi
# Ray (~240 MB) for `kfabric sweep --ray` and its test: the ray extra, only where asked (scripts/test.sh asks);
# a platform without a ray wheel keeps the rest
if [ "${KFABRIC_WITH_RAY:-0}" = "1" ] &&
  ! .venv/bin/python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("ray") is None)'; then
  echo "kfabric: installing the ray extra into .venv..." >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,ray]" 2>&1 \
    | grep -v "WARNING: Location" >&2 || true
  .venv/bin/python -c "import ray" 2>/dev/null ||
    echo "kfabric: the ray extra did not install: \`kfabric sweep --ray\` and its test are unavailable" >&2
fi
# the compiled build of the scheduling core and simulator (mypyc; ~1.5 min after each change to them): optional,
# the Python sources are used when it cannot be made (no C compiler) or is older than the sources
if [ "${KFABRIC_NATIVE:-auto}" != "0" ] && [ "$(.venv/bin/python -m kfabric.native_build status)" != "fresh" ]; then
  echo "kfabric: compiling the scheduling core and simulator with mypyc (about 1.5 minutes)..." >&2
  .venv/bin/python -m kfabric.native_build build ||
    echo "kfabric: compiled build not made (see above): the Python sources are used (slower, same decisions)" >&2
fi
