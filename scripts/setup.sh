#!/usr/bin/env bash
# Create ./.venv and install the engine with everything the tests and the demo need (CPU-only torch).
# torch is installed first and pinned: an open range would pull a multi-GB CUDA build from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==${SAMVOLSEG_TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install --quiet -e ".[dev,eval]"
echo "SAMVolSegment installed in $(pwd)/.venv"
