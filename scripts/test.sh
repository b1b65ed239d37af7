#!/usr/bin/env bash
# The project's test command: static checks for Slicer's Python 3.9, then the pytest suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
"$PY" -m ruff check SAMVolSegmentLib SAMVolSegment Testing benchmarks
.venv/bin/vermin -t=3.9- --no-tips --violations --eval-annotations SAMVolSegmentLib SAMVolSegment
"$PY" -m pytest -q "$@"
