"""Reading prompts from files: Slicer markups (``.mrk.json``), a simple JSON, or CSV — all in RAS mm.

Formats and sign rules:

* **Slicer markups** (``.mrk.json``, any JSON with a ``"markups"`` list): every control point of every
  point-list markup (``Fiducial``, ``PointList``...) is a click. Its position is in the markup's
  ``coordinateSystem`` (``"LPS"``, Slicer's default for files, or ``"RAS"``; a file-level value applies when
  a markup has none) and is converted to RAS. Points whose ``positionStatus`` is not ``"defined"`` are
  skipped. A point is **negative** when its markup's ``name`` or the point's ``label`` or ``description``
  starts with ``neg``, ``-``, ``exclude`` or ``background`` (case-insensitive), e.g. a point list named
  "negative" or a point labelled "neg-1"; all other points are positive. One ``ROI`` markup (axis-aligned)
  gives the box. A ``Curve`` markup is a **scribble** and a ``ClosedCurve`` a **lasso** (through their control
  points; the same sign rule by the markup's name or description).
* **Simple JSON**: ``{"points": [{"ras": [r, a, s], "positive": true}, ...], "box_ras": [[r, a, s], [r, a, s]],
  "scribbles": [{"ras": [[r, a, s], ...], "positive": false}], "lassos": [{"ras": [[r, a, s], ...]}]}``;
  ``positive`` defaults to true and accepts true/false, 1/0, "+"/"-"; the box corners may come in any order;
  every key is optional.
* **CSV**: rows ``r,a,s[,positive]`` with ``positive`` 1/0, true/false, +/-, pos/neg (default positive); a
  first row none of whose r, a, s cells is a number is a header (a row with one misspelt number is an error);
  ``#`` starts a comment row. UTF-8 (with or without a byte-order mark) or Windows-1252.

A session applies a file's prompts kind by kind — the box, the lassos, the scribbles, then the clicks — each
kind in file order (:func:`SAMVolSegmentLib.batch.run_prompts`): the outline first, corrections last.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InvalidPromptError
from .geometry import BoxRAS, lps_to_ras, ordered_box

#: Most clicks one mask takes (the session refuses more, so does a prompt file). The decoder attends to every
#: click of a ROI, so a click costs more the more came before it (about 30 ms at click 100, 130 ms at 1,400
#: on a CPU): a file of 10,000 points would run for an hour.
MAX_CLICKS = 500
NEGATIVE_PREFIXES = ("neg", "-", "exclude", "background")
_TRUE = ("1", "true", "+", "pos", "positive", "yes", "y")
_FALSE = ("0", "false", "-", "neg", "negative", "no", "n")
_FORMATS = ('give a Slicer .mrk.json, a JSON {"points": [{"ras": [r, a, s], "positive": true}]} '
            "or a CSV r,a,s,positive")


@dataclass(frozen=True)
class Stroke:
    """A scribble (open polyline) or lasso (closed contour): (N, 3) float64 RAS mm points and its sign."""

    points_ras: np.ndarray
    positive: bool = True

    def to_json(self) -> dict:
        return {"ras": np.asarray(self.points_ras).tolist(), "positive": bool(self.positive)}


@dataclass(frozen=True)
class Prompts:
    """Clicks, an optional box, scribbles and lassos, all in RAS mm.

    Attributes:
        points_ras: (N, 3) float64, file order.
        positive: (N,) bool.
        box_ras: ``(min_ras (3,), max_ras (3,))`` of an axis-aligned box, or None.
        scribbles, lassos: :class:`Stroke` tuples in file order.
    """

    points_ras: np.ndarray
    positive: np.ndarray
    box_ras: Optional[BoxRAS] = None
    scribbles: Tuple[Stroke, ...] = ()
    lassos: Tuple[Stroke, ...] = ()

    def __len__(self) -> int:
        return int(self.points_ras.shape[0])

    def to_json(self) -> dict:
        """The simple-JSON form (what :func:`read_prompts` reads back)."""
        data: dict = {"points": [{"ras": p.tolist(), "positive": bool(s)} for p, s in zip(self.points_ras, self.positive)]}
        if self.box_ras is not None:
            data["box_ras"] = [np.asarray(c).tolist() for c in self.box_ras]
        for key, strokes in (("scribbles", self.scribbles), ("lassos", self.lassos)):
            if strokes:
                data[key] = [stroke.to_json() for stroke in strokes]
        return data


def as_strokes(value: Any, what: str) -> Tuple[Stroke, ...]:
    """Scribbles or lassos given to the Python API: :class:`Stroke` objects or ``(points_ras (N, 3), positive)``
    pairs. Raises :class:`InvalidPromptError` for anything else (the points themselves are checked by the session).
    """
    if value is None:
        return ()
    strokes = []
    for number, item in enumerate(value):
        if isinstance(item, Stroke):
            strokes.append(item)
            continue
        try:
            points, positive = item
            strokes.append(Stroke(np.asarray(points, dtype=np.float64).reshape(-1, 3), _parse_sign(positive)))
        except (TypeError, ValueError):
            raise InvalidPromptError(f"{what} {number + 1}: give (points_ras (N, 3), positive) or a Stroke.") from None
    return tuple(strokes)


def read_prompts(path: Union[str, Path], require_positive: bool = True) -> Prompts:
    """Read prompts from ``.mrk.json``, ``.json`` or ``.csv`` (see the module docstring for the rules).

    Args:
        path: the prompt file.
        require_positive: refuse a file with neither a positive point nor a box (see :func:`check_prompts`);
            False when the caller adds a box of its own.
    Raises:
        InvalidPromptError: missing, empty or malformed file, non-finite coordinates, more than
            :data:`MAX_CLICKS` points, or no positive point and no box.
    """
    path = Path(path)
    if path.is_dir():
        raise InvalidPromptError(f"Prompt file {path} is a folder; give the prompt file inside it.")
    if not path.is_file():
        raise InvalidPromptError(f"Prompt file {path} not found; check the path.")
    text = _read_text(path)
    if not text.strip():
        raise InvalidPromptError(f"Prompt file {path} is empty; {_FORMATS}.")
    try:
        if path.name.lower().endswith(".csv"):
            prompts = _read_csv(text)
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InvalidPromptError(
                    f"Prompt file {path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                    f"{_FORMATS} (a .csv name is read as CSV)."
                ) from None
            except RecursionError:
                raise InvalidPromptError(f"Prompt file {path} is JSON nested too deeply to be a prompt file; "
                                         f"{_FORMATS}.") from None
            if not isinstance(data, dict):
                raise ValueError("the top level must be a JSON object")
            prompts = _read_markups(data) if "markups" in data else _read_simple_json(data)
    except InvalidPromptError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise InvalidPromptError(f"Cannot read prompts from {path}: {exc}. {_FORMATS[0].upper()}{_FORMATS[1:]}.") from exc
    if len(prompts) > MAX_CLICKS:
        raise InvalidPromptError(f"Prompt file {path} holds {len(prompts)} points; a mask takes at most {MAX_CLICKS} "
                                 "clicks. Keep the points that matter (a box plus a few clicks usually suffice).")
    if require_positive:
        check_prompts(prompts.positive, prompts.box_ras is not None, where=str(path),
                      positive_strokes=any(s.positive for s in (*prompts.scribbles, *prompts.lassos)))
    return prompts


def check_prompts(positive: Sequence[bool], has_box: bool, where: str = "The prompts",
                  positive_strokes: bool = False) -> None:
    """A prompt set must hold at least one positive point, positive scribble or lasso, or a box.

    Negative clicks only take voxels away from a mask; without a positive prompt or a box there is nothing
    to take them from, and a model would answer with an arbitrary mask.

    Raises:
        InvalidPromptError: no positive prompt and no box (the message says which of the two is missing).
    """
    signs = np.asarray(positive, dtype=bool).reshape(-1)
    if signs.any() or has_box or positive_strokes:
        return
    if signs.size == 0:
        raise InvalidPromptError(f"{where} holds no points and no box (and no positive scribble or lasso); add at "
                                 "least one positive point.")
    raise InvalidPromptError(
        f"{where} holds only negative points ({signs.size}); add at least one positive point on the structure "
        "(or a box): negative points only remove voxels from a mask."
    )


def _is_negative(text: Any) -> bool:
    return str(text or "").strip().lower().startswith(NEGATIVE_PREFIXES)


def _parse_sign(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"positive must be true/false, 1/0 or +/-, got {value!r}")


def _xyz(values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.shape != (3,):
        raise ValueError(f"a point needs 3 coordinates, got {values!r}")
    return array


def _read_markups(data: dict) -> Prompts:
    points: List[np.ndarray] = []
    signs: List[bool] = []
    curves: dict = {"Curve": [], "ClosedCurve": []}
    box = None
    file_system = str(data.get("coordinateSystem", "LPS")).upper()
    markups = data["markups"]
    if not isinstance(markups, list):
        raise ValueError(f'"markups" must be a list of markups, got {type(markups).__name__}')
    for number, markup in enumerate(markups):
        if not isinstance(markup, dict):
            raise ValueError(f"markup {number + 1} must be an object, got {markup!r}")
        system = str(markup.get("coordinateSystem", file_system)).upper()
        if system not in ("LPS", "RAS"):
            raise ValueError(f"coordinateSystem must be LPS or RAS, got {system!r}")

        def to_ras(values: Any, system: str = system) -> np.ndarray:
            xyz = _xyz(values)
            return lps_to_ras(xyz.reshape(1, 3))[0] if system == "LPS" else xyz

        if markup.get("type") == "ROI":
            if box is not None:
                raise InvalidPromptError("The markups file holds more than one ROI; keep one box.")
            orientation = markup.get("orientation")
            if orientation is not None and not np.allclose(np.abs(np.asarray(orientation, float).reshape(3, 3)), np.eye(3)):
                raise InvalidPromptError("Rotated ROI boxes are not supported; use an axis-aligned ROI.")
            centre, half = to_ras(markup["center"]), np.abs(_xyz(markup["size"])) / 2
            box = (centre - half, centre + half)
            continue
        markup_negative = _is_negative(markup.get("name"))
        control_points = markup.get("controlPoints") or []
        if not isinstance(control_points, list):
            raise ValueError(f'"controlPoints" of markup {number + 1} must be a list of points')
        defined = []
        for point in control_points:
            if not isinstance(point, dict):
                raise ValueError(f"a control point of markup {number + 1} must be an object, got {point!r}")
            if str(point.get("positionStatus", "defined")).lower() != "defined":
                continue  # a point still being placed, or removed from the view
            defined.append(point)
        if markup.get("type") in curves:  # a curve is one prompt: its sign is the markup's
            if defined:
                negative = markup_negative or _is_negative(markup.get("description"))
                stroke = Stroke(np.stack([to_ras(point["position"]) for point in defined]), not negative)
                curves[markup["type"]].append(stroke)
            continue
        for point in defined:
            negative = markup_negative or _is_negative(point.get("label")) or _is_negative(point.get("description"))
            points.append(to_ras(point["position"]))
            signs.append(not negative)
    return _prompts(points, signs, box, curves["Curve"], curves["ClosedCurve"])


def _read_simple_json(data: dict) -> Prompts:
    entries = data.get("points") or []
    points = [_xyz(p["ras"]) for p in entries]
    signs = [_parse_sign(p.get("positive", True)) for p in entries]
    box = None
    if data.get("box_ras") is not None:
        corners = np.stack([_xyz(c) for c in data["box_ras"]])
        if corners.shape != (2, 3):
            raise ValueError("box_ras needs two corners [[r, a, s], [r, a, s]]")
        box = ordered_box(corners)
    strokes = {key: [Stroke(np.stack([_xyz(p) for p in entry["ras"]]), _parse_sign(entry.get("positive", True)))
                     for entry in data.get(key) or []] for key in ("scribbles", "lassos")}
    return _prompts(points, signs, box, strokes["scribbles"], strokes["lassos"])


def _read_text(path: Path) -> str:
    """A prompt file's text: UTF-8 (a leading byte-order mark, as Excel's "CSV UTF-8" writes, is dropped); a CSV
    that is not UTF-8 is read as Windows-1252 (Excel's other CSV), where only comments hold letters.

    Raises:
        InvalidPromptError: a JSON file that is not UTF-8 (JSON is UTF-8 by definition).
    """
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if path.name.lower().endswith(".csv"):
            return data.decode("cp1252", errors="replace")
        raise InvalidPromptError(f"Prompt file {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at position "
                                 f"{exc.start}); save it as UTF-8.") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(text: str) -> Prompts:
    points: List[np.ndarray] = []
    signs: List[bool] = []
    rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row and not row[0].strip().startswith("#")]
    for number, row in enumerate(rows):
        try:
            xyz = _xyz([float(v) for v in row[:3]])
        except ValueError:
            # A header names its columns: none of r, a, s is a number. A row with a typo in one number ("3O")
            # is a click that cannot be read, not a header to skip.
            if number == 0 and not any(_is_number(v) for v in row[:3]):
                continue
            raise ValueError(f"row {number + 1} ({','.join(row)}) is not r,a,s[,positive]") from None
        points.append(xyz)
        signs.append(_parse_sign(row[3]) if len(row) > 3 and row[3].strip() else True)
    return _prompts(points, signs, None)


def _prompts(points: List[np.ndarray], signs: List[bool], box, scribbles: Sequence[Stroke] = (),
             lassos: Sequence[Stroke] = ()) -> Prompts:
    array = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    finite = (np.all(np.isfinite(array)) and (box is None or all(np.all(np.isfinite(c)) for c in box))
              and all(np.all(np.isfinite(s.points_ras)) for s in (*scribbles, *lassos)))
    if not finite:
        raise InvalidPromptError("Prompt coordinates must be finite numbers; fix the file.")
    return Prompts(array, np.asarray(signs, dtype=bool).reshape(-1), box, tuple(scribbles), tuple(lassos))
