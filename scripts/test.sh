#!/usr/bin/env bash
# The project's test command: static checks for Slicer's Python 3.9, then the pytest suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
"$PY" -m ruff check SAMVolSegmentLib SAMVolSegment Testing benchmarks
# -q: print only violations (each with the version it needs) and exit 1 on any; without it vermin's verdict
# lists "Incompatible versions: 2.x" (Python 2, which the project does not target), which reads as a failure.
.venv/bin/vermin -q -t=3.9- --no-tips --violations --eval-annotations SAMVolSegmentLib SAMVolSegment
echo "vermin: no violations of Python 3.9 (Slicer 5.6) in SAMVolSegmentLib, SAMVolSegment"
"$PY" -m pytest -q "$@"
