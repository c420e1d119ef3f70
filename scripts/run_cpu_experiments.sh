#!/usr/bin/env bash
# Run every registered experiment at CPU scale on smollm2-135m, then write the report.
# Resumable: rerun to continue where it stopped. Output: $RUN/*/results.sqlite, $RUN/report.md
# (RUN defaults to runs/cpu; EXPERIMENTS picks a subset).
set -euo pipefail
cd "$(dirname "$0")/.."
PT=${PT:-.venv/bin/prototokens}
RUN=${RUN:-runs/cpu}
for name in ${EXPERIMENTS:-table1 table3 fig3-mem1 table2-m table2-e table4 fig3-mem2}; do
  "$PT" experiment "$name" --scale cpu --run "$RUN/$name" --quiet
done
"$PT" report "$RUN"
