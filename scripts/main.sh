#!/usr/bin/env bash
# The main job: set up .venv, then show the korea-2030 reference fleet.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/kfabric fleet show korea-2030 "$@"
