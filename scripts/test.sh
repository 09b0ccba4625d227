#!/usr/bin/env bash
# The whole test suite: set up .venv, then lint, format check, types, layer contract, tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -k fleet).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff check" && ruff check src tests benchmarks
echo "== ruff format --check" && ruff format --check src tests benchmarks
echo "== mypy" && mypy
echo "== import contracts" && lint-imports --no-cache
echo "== pytest" && pytest "$@"
