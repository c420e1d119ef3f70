#!/usr/bin/env bash
# Capacity search by recipe at CPU scale on smollm2-135m (4 Gutenberg texts, own m, 2000 steps):
# `recommended`, `recommended-constant` (the former default) and `paper` on the same texts and
# budget, then the report. Resumable, also in the middle of a fit (snapshots every 120 s).
# STEPS=5000 sets the issue's budget instead of 2000; RECIPES and OUT choose recipes and run dir:
#   STEPS=5000 RECIPES=recommended-cosine OUT=runs/capacity-cpu5000 bash scripts/run_capacity_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PT=${PT:-.venv/bin/prototokens}
OUT=${OUT:-runs/capacity-cpu}
for recipe in ${RECIPES:-recommended recommended-constant paper}; do
  "$PT" experiment capacity --scale cpu --recipe "$recipe" --run "$OUT/$recipe" --quiet \
    --snapshot-every 120 ${STEPS:+--steps "$STEPS"}
done
"$PT" report "$OUT"
