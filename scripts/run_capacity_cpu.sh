#!/usr/bin/env bash
# Capacity search by recipe at CPU scale on smollm2-135m (4 Gutenberg texts, own m, 2000 steps):
# `recommended`, `recommended-constant` (the former default) and `paper` on the same texts and
# budget, then the report. Resumable.
set -euo pipefail
cd "$(dirname "$0")/.."
PT=${PT:-.venv/bin/prototokens}
OUT=${OUT:-runs/capacity-cpu}
for recipe in ${RECIPES:-recommended recommended-constant paper}; do
  "$PT" experiment capacity --scale cpu --recipe "$recipe" --run "$OUT/$recipe" --quiet
done
"$PT" report "$OUT"
