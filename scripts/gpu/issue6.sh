#!/usr/bin/env bash
# On the `device` tool's GPU machine: issue #6's capacity searches, resumable over calls.
# Runs from the repository root there, after the staging calls of scripts/gpu/prepare.sh have put the
# GGUF at /tmp/SmolLM2-135M-Instruct.Q4_1.gguf and `gguf` in /tmp/site. Carry .carry/data (the texts)
# and, from the second call on, runs/gpu (brought back as $OUT/gpu-runs.tgz, unpacked here).
# Every call works until BUDGET seconds (default 540), then packs runs/gpu and the report into $OUT.
# A stopped sweep loses only the last minute of the fit in flight (snapshots every 60 s, packed with
# the runs); the next call goes on from there.
set -uo pipefail
export PROTOTOKENS_CACHE=/tmp/ptcache PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
end=$((SECONDS + ${BUDGET:-540}))
pt() { python3 -m prototokens.cli "$@"; }
left() { echo $((end - SECONDS)); }

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
mkdir -p "$PROTOTOKENS_CACHE/data"
[ -e "$PROTOTOKENS_CACHE/data/gutenberg/READY" ] || cp -r .carry/data/gutenberg "$PROTOTOKENS_CACHE/data/"
[ -e "$PROTOTOKENS_CACHE/models/smollm2-135m/READY" ] ||
  pt models --install smollm2-135m /tmp/SmolLM2-135M-Instruct.Q4_1.gguf || exit 1

# the recipe check of issue #6: the full-scale capacity experiment (24 Gutenberg texts, 5000 steps,
# own m and shared m), SmolLM2 only, once per recipe; in bf16 (the GPU default) unless DTYPE=fp32
# (fp32 fits lose tokens when decoded in bf16 and the reverse is untested: docs/recipe.md, "Precision")
for recipe in ${RECIPES:-recommended recommended-cosine recommended-constant}; do
  [ "$(left)" -gt 30 ] || break
  timeout "$(left)" python3 -m prototokens.cli experiment capacity --models smollm2-135m --recipe "$recipe" \
    --run "runs/gpu/capacity/$recipe${DTYPE:+-$DTYPE}" ${DTYPE:+--dtype "$DTYPE"} --quiet --snapshot-every 60
  echo "capacity $recipe: exit $? at ${SECONDS}s"
done
pt report runs/gpu/capacity > "$OUT/report.log" 2>&1 && cp runs/gpu/capacity/report.md "$OUT/" 2>/dev/null
tar czf "$OUT/gpu-runs.tgz" runs/gpu
ls -la "$OUT"
