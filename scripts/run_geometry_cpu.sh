#!/usr/bin/env bash
# Section 4 geometry at CPU scale on smollm2-135m (docs/results/geometry-smollm2/README.md):
# 8 Gutenberg contexts x 4 sampled continuations of 16 tokens, 4 seeds for the last one, large-init,
# then every analysis (Bezier at a reduced scale) and the report. About 25 min on 2 CPU cores.
# Resumable: a rerun reuses the saved fits. Output: runs/geometry-smollm2/.
set -euo pipefail
cd "$(dirname "$0")/.."
PT=${PT:-.venv/bin/prototokens}
DIR=${DIR:-runs/geometry-smollm2}
"$PT" geometry build "$DIR" --contexts 8 --continuations 4 --tokens 16 --seeds 4 --recipe large-init --steps 500 --quiet
"$PT" geometry run "$DIR" --analyses distances text_control interpolation probing
"$PT" geometry run "$DIR" --analyses bezier --bezier-steps 100 --bezier-lr 0.1 --bezier-taus 4 --bezier-texts 2 --bezier-pairs 3
"$PT" report "$DIR"
