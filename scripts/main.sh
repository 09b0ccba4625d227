#!/usr/bin/env bash
# The main job: set up .venv, then replay 10 days of the synthetic national workload on the korea-2030 fleet
# under two policies (scheduling batched every 5 minutes), and write the HTML report.
# Why 15-25 June 2026: the days of the scenario in which everything competes at once (dates from
# src/kfabric/scenarios/data/korea-2030.yaml): five owners online (government B200/H200, KISTI's GH200 and SK's
# lendable RTX PRO 6000 from 1 June, Samsung's and NAVER's own pools since March; 46,640 GPUs), the five
# sovereign foundation-model teams at the start of their stage-2 grants (1,000 B200 reserved each, to December),
# the 2026 national GPU grant round, all five start-up grants, and the first private capacity lent to the
# fabric. Ten days keep it under 3 minutes on 2 cores and still span the 7-day under-use window of grants.
# Extra arguments go to `kfabric simulate` (e.g. --seed 7).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
out=runs/main
rm -rf "$out"
.venv/bin/kfabric simulate --fleet korea-2030 --workload national:on=2026-06-15 --start 2026-06-15 --days 10 \
  --interval 300 --policy multifactor --policy kfabric --seed 0 --out "$out" "$@"
.venv/bin/kfabric report "$out/multifactor" "$out/kfabric" --out "$out/report.html"
