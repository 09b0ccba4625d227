#!/usr/bin/env bash
# The main job: set up .venv, then replay 30 days of the synthetic national workload on the korea-2030 fleet
# (from 1 Jan 2026: the first government batch online; scheduling batched every 5 minutes) under two
# policies, and write the HTML report.
# Extra arguments go to `kfabric simulate` (e.g. --seed 7).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
out=runs/main
rm -rf "$out"
.venv/bin/kfabric simulate --fleet korea-2030 --workload national:on=2026-01-01 --start 2026-01-01 --days 30 \
  --interval 300 --policy multifactor --policy kfabric --seed 0 --out "$out" "$@"
.venv/bin/kfabric report "$out/multifactor" "$out/kfabric" --out "$out/report.html"
