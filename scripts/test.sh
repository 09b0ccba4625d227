#!/usr/bin/env bash
# The whole test suite: set up .venv, then lint, format check, types, layer contract, tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -k fleet).
set -euo pipefail
cd "$(dirname "$0")/.."
KFABRIC_WITH_RAY=1 bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff check" && ruff check src tests benchmarks
echo "== ruff format --check" && ruff format --check src tests benchmarks
echo "== mypy" && mypy
echo "== import contracts" && lint-imports --no-cache
# KFABRIC_TEST_WORKERS=N: N pytest-xdist workers (the suite mostly waits on servers; README); default serial
workers=()
if [ -n "${KFABRIC_TEST_WORKERS:-}" ]; then
  if ! [[ "$KFABRIC_TEST_WORKERS" =~ ^[1-9][0-9]?$ ]]; then
    echo "error: KFABRIC_TEST_WORKERS='$KFABRIC_TEST_WORKERS' is not a worker count (fix: a number from 1 to 99)" >&2
    exit 2
  fi
  workers=(-n "$KFABRIC_TEST_WORKERS")
fi
echo "== pytest (Python sources)" && pytest "${workers[@]}" "$@"
# the compiled build (when bootstrap could make it) must decide exactly as the sources do: the core's and the
# simulator's tests again, golden summaries included, on the extension modules
native=$(python -m kfabric.native_build status)
if [ "${KFABRIC_REQUIRE_NATIVE:-0}" = "1" ] && [ "$native" != "fresh" ]; then
  echo "error: the compiled build is $native (KFABRIC_REQUIRE_NATIVE=1): see the mypyc output above" >&2
  exit 1
fi
if [ "$native" = "fresh" ] && [ $# -eq 0 ]; then
  echo "== pytest (compiled build: tests/sched tests/sim)" && KFABRIC_NATIVE=1 pytest tests/sched tests/sim
fi
