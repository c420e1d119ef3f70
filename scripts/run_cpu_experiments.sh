#!/usr/bin/env bash
# Run every registered experiment at CPU scale on smollm2-135m, then write the report.
# Resumable: rerun to continue where it stopped. Output: runs/cpu/*/results.sqlite, runs/cpu/report.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PT=${PT:-.venv/bin/prototokens}
for name in ${EXPERIMENTS:-table1 table3 fig3-mem1 table2-m table2-e table4 fig3-mem2}; do
  "$PT" experiment "$name" --scale cpu --run "runs/cpu/$name" --quiet
done
"$PT" report runs/cpu
