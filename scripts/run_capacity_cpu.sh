#!/usr/bin/env bash
# Capacity search by recipe at CPU scale on smollm2-135m (4 Gutenberg texts, own m, 2000 steps):
# `recommended`, `recommended-constant` (the former default) and `paper` on the same texts and
# budget, then the report. Resumable, also in the middle of a fit (snapshots every 120 s).
# STEPS=5000 sets the issue's budget instead of 2000, SHARE_M=all one m shared by the texts (run
# dir RECIPE-shared), MODEL another model (run dir MODEL-RECIPE), TEXTS fewer texts (the first
# TEXTS of the 4); RECIPES and OUT choose the recipes and the parent run dir:
#   STEPS=5000 RECIPES=recommended-cosine OUT=runs/capacity-cpu5000 bash scripts/run_capacity_cpu.sh
#   STEPS=5000 SHARE_M=all RECIPES=recommended OUT=runs/capacity-cpu5000 bash scripts/run_capacity_cpu.sh
#   STEPS=5000 MODEL=gemma3-270m TEXTS=1 RECIPES=recommended-cosine OUT=runs/capacity-cpu5000 bash scripts/run_capacity_cpu.sh
# Two searches can share the 2 cores side by side, each run with OMP_NUM_THREADS=1.
set -euo pipefail
cd "$(dirname "$0")/.."
PT=${PT:-.venv/bin/prototokens}
OUT=${OUT:-runs/capacity-cpu}
prefix="" suffix=""
if [ -n "${MODEL:-}" ]; then prefix="$MODEL-"; fi
if [ "${SHARE_M:-1}" = all ]; then suffix=-shared; fi
for recipe in ${RECIPES:-recommended recommended-constant paper}; do
  "$PT" experiment capacity --scale cpu --recipe "$recipe" --run "$OUT/$prefix$recipe$suffix" --quiet \
    --snapshot-every 120 ${STEPS:+--steps "$STEPS"} ${SHARE_M:+--share-m "$SHARE_M"} \
    ${MODEL:+--models "$MODEL"} ${TEXTS:+--texts "$TEXTS"}
done
"$PT" report "$OUT"
