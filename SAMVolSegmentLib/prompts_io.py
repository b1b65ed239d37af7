"""Reading click prompts from files: Slicer markups (``.mrk.json``), a simple JSON, or CSV — all in RAS mm.

Sign rules:

* Slicer ``.mrk.json``: every point of a markup whose name starts with ``neg``, ``-`` or ``exclude`` is
  negative (e.g. a point list named "negative"); a control point whose ``label`` or ``description`` is
  ``negative`` (or starts with ``-``) is negative too; all other points are positive. A markup of type
  ``ROI`` gives the box. Positions are converted from the file's ``coordinateSystem`` (``LPS`` or ``RAS``).
* Simple JSON: ``{"points": [{"ras": [r, a, s], "positive": true}, ...], "box_ras": [[r,a,s], [r,a,s]]}``.
* CSV: rows ``r,a,s,positive`` (``positive`` is 1/0, true/false, +/-); a header row is allowed.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from .errors import InvalidPromptError
from .geometry import lps_to_ras

NEGATIVE_PREFIXES = ("neg", "-", "exclude", "background")


@dataclass(frozen=True)
class Prompts:
    """Clicks (RAS mm, in file order) and an optional axis-aligned RAS box."""

    points_ras: np.ndarray  # (N, 3)
    positive: np.ndarray  # (N,) bool
    box_ras: Optional[Tuple[np.ndarray, np.ndarray]] = None

    def __len__(self) -> int:
        return int(self.points_ras.shape[0])


def read_prompts(path) -> Prompts:
    """Read prompts from ``.mrk.json``, ``.json`` or ``.csv`` (see the module docstring for the rules)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidPromptError(f"Prompt file {path} not found.")
    name = path.name.lower()
    try:
        if name.endswith(".csv"):
            prompts = _read_csv(path)
        else:
            data = json.loads(path.read_text())
            prompts = _read_markups(data) if "markups" in data else _read_simple_json(data)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise InvalidPromptError(f"Cannot read prompts from {path}: {exc}. See `samvolseg segment --help`.") from exc
    if len(prompts) == 0 and prompts.box_ras is None:
        raise InvalidPromptError(f"{path} holds no points and no box; add at least one positive point.")
    return prompts


def _is_negative(text: str) -> bool:
    return text.strip().lower().startswith(NEGATIVE_PREFIXES)


def _read_markups(data: dict) -> Prompts:
    points: List[np.ndarray] = []
    signs: List[bool] = []
    box = None
    system = str(data.get("coordinateSystem", "LPS")).upper()
    for markup in data["markups"]:
        markup_system = str(markup.get("coordinateSystem", system)).upper()

        def to_ras(values, markup_system=markup_system) -> np.ndarray:
            xyz = np.asarray(values, dtype=np.float64).reshape(1, 3)
            return (lps_to_ras(xyz) if markup_system == "LPS" else xyz)[0]

        if markup.get("type") == "ROI":
            centre = to_ras(markup["center"])
            half = np.asarray(markup["size"], dtype=np.float64) / 2
            if markup.get("orientation") is not None and not np.allclose(
                np.asarray(markup["orientation"], dtype=float).reshape(3, 3), np.eye(3)
            ):
                raise InvalidPromptError("Rotated ROI boxes are not supported; use an axis-aligned ROI.")
            box = (centre - half, centre + half)
            continue
        markup_negative = _is_negative(str(markup.get("name", "")))
        for point in markup.get("controlPoints", []):
            negative = markup_negative or _is_negative(str(point.get("label", ""))) or _is_negative(
                str(point.get("description", ""))
            )
            points.append(to_ras(point["position"]))
            signs.append(not negative)
    return _prompts(points, signs, box)


def _read_simple_json(data: dict) -> Prompts:
    points = [np.asarray(p["ras"], dtype=np.float64).reshape(3) for p in data.get("points", [])]
    signs = [bool(p.get("positive", True)) for p in data.get("points", [])]
    box = None
    if data.get("box_ras") is not None:
        lo, hi = (np.asarray(c, dtype=np.float64).reshape(3) for c in data["box_ras"])
        box = (lo, hi)
    return _prompts(points, signs, box)


def _read_csv(path: Path) -> Prompts:
    points, signs = [], []
    with path.open(newline="") as f:
        for row in csv.reader(f):
            if not row or row[0].strip().startswith("#"):
                continue
            try:
                xyz = [float(v) for v in row[:3]]
            except ValueError:
                continue  # header row
            flag = row[3].strip().lower() if len(row) > 3 else "1"
            points.append(np.asarray(xyz, dtype=np.float64))
            signs.append(flag not in ("0", "false", "-", "neg", "negative", "no"))
    return _prompts(points, signs, None)


def _prompts(points, signs, box) -> Prompts:
    array = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if not np.all(np.isfinite(array)):
        raise InvalidPromptError("Prompt coordinates must be finite numbers.")
    return Prompts(array, np.asarray(signs, dtype=bool).reshape(-1), box)
