#!/usr/bin/env bash
# The release ZIP for Slicer users (docs/PACKAGING.md): the committed tree at REF (default HEAD) under one
# top folder, SAMVolSegment-<version>/, the same content as a GitHub release's "Source code (zip)".
#   scripts/release_zip.sh [REF] [OUTPUT_DIR]      e.g. scripts/release_zip.sh v0.1.0 dist
set -euo pipefail
cd "$(dirname "$0")/.."
REF="${1:-HEAD}"
OUT="${2:-dist}"
VERSION="$(git show "$REF:pyproject.toml" | sed -n 's/^version = "\(.*\)"$/\1/p')"
mkdir -p "$OUT"
ZIP="$OUT/SAMVolSegment-$VERSION.zip"
git archive --format=zip --prefix="SAMVolSegment-$VERSION/" -o "$ZIP" "$REF"
echo "$ZIP"
