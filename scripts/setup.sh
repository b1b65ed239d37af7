#!/usr/bin/env bash
# Create ./.venv and install the engine with everything the tests and the demo need (CPU-only torch).
# torch is installed first and pinned: an open range would pull a multi-GB CUDA build.
#   PYTHON=python3.11 ./scripts/setup.sh              choose the interpreter (default: python3)
#   SAMVOLSEG_TORCH_VERSION=2.8.0 ./scripts/setup.sh  choose the torch version (default: 2.13.0)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${SAMVOLSEG_TORCH_VERSION:-2.13.0}"
START=$SECONDS

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "setup: $PYTHON not found; install Python >= 3.10 or point PYTHON at one (PYTHON=python3.11 $0)." >&2
  exit 1
fi
PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))'; then
  echo "setup: Python $PY_VERSION is too old; SAMVolSegment needs Python >= 3.9 (>= 3.10 for the default torch)." >&2
  exit 1
fi
# torch 2.13.0 has no wheels for Python 3.9; stop with the way out instead of pip's resolver error.
if [ -z "${SAMVOLSEG_TORCH_VERSION:-}" ] && ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "setup: Python $PY_VERSION found, but the default torch $TORCH_VERSION needs Python >= 3.10: use a newer Python" \
       "(PYTHON=python3.11 $0) or a torch with Python $PY_VERSION wheels (SAMVOLSEG_TORCH_VERSION=2.8.0 $0)." >&2
  exit 1
fi

step() { echo "[$1/4 $((SECONDS - START))s] $2"; }
if [ ! -x .venv/bin/python ]; then
  step 1 "creating .venv with $PYTHON (Python $PY_VERSION)"
  "$PYTHON" -m venv .venv
else
  step 1 "reusing .venv ($(.venv/bin/python --version))"
fi
step 2 "upgrading pip"
.venv/bin/python -m pip install --quiet --upgrade pip
step 3 "installing torch==$TORCH_VERSION (the largest download; a minute or more)"
.venv/bin/python -m pip install --quiet "torch==$TORCH_VERSION"
step 4 "installing SAMVolSegment (editable) with numpy, SimpleITK, scipy, matplotlib, tqdm, dask, the test tools and slicer-core"
# setuptools prints an informational "Editable installation" notice for every editable install of a
# flat-layout project; it is not a problem of this project, so it is filtered (by its message only).
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install --quiet -e ".[dev,eval,batch,slicer]"
echo "SAMVolSegment installed in $(pwd)/.venv in $((SECONDS - START)) s."
echo "Run .venv/bin/samvolseg demo (or 'source .venv/bin/activate' first, then samvolseg ...)."
