#!/usr/bin/env bash
# Run every registered experiment at CPU scale, then write the report.
# Resumable: rerun to continue where it stopped. Output: $RUN/*/results.sqlite, $RUN/report.md.
#   RUN          run directory (default runs/cpu)
#   EXPERIMENTS  a subset of experiments (default: all seven)
#   MODEL        a model other than the configs' CPU-scale one (smollm2-135m); its runs go to
#                $RUN/$MODEL-NAME, beside the default model's, so one report covers both.
# Example: MODEL=gemma3-270m EXPERIMENTS="table3 fig3-mem2" RUN=runs/cpu2 bash scripts/run_cpu_experiments.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PT=${PT:-.venv/bin/prototokens}
RUN=${RUN:-runs/cpu}
for name in ${EXPERIMENTS:-table1 table3 fig3-mem1 table2-m table2-e table4 fig3-mem2}; do
  if [ -n "${MODEL:-}" ]; then
    "$PT" experiment "$name" --scale cpu --models "$MODEL" --run "$RUN/$MODEL-$name" --quiet
  else
    "$PT" experiment "$name" --scale cpu --run "$RUN/$name" --quiet
  fi
done
"$PT" report "$RUN"
