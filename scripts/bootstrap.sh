#!/usr/bin/env bash
# Create .venv with the pinned CPU build of torch and prototokens installed in editable mode.
#   bash scripts/bootstrap.sh        # the library and its CLI
#   bash scripts/bootstrap.sh dev    # ... plus pytest and ruff
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
# torch==2.13.0 is the CPU wheel on this platform; an unpinned torch pulls a multi-GB CUDA build.
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
extra=""
[ "${1:-}" = dev ] && extra="[dev]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra}"
