"""Click-simulation evaluation: how good is a model after 1..N clicks, next to a classical baseline.

Protocol (deterministic: no randomness, so every run gives the same clicks and scores):

* all work is on the original voxel grid, array order (k, j, i), with its real (anisotropic) spacing;
* click 1: positive, at the target's interior point farthest (Euclidean, in mm) from its border;
* click n > 1: the *largest error component* — the 26-connected component with the most voxels among the
  missed foreground (``target & ~prediction``) and the false positives (``prediction & ~target``); voxels
  all have one volume, so this is also the largest by mm³ — gets the next click at its deepest point (max
  Euclidean distance in mm to the component's border), positive for a miss, negative for a false positive.
  Equally deep voxels: the one nearest their centroid (mm); equal components: the first in C order. Volume
  borders count as borders, so clicks never sit on the image's edge;
* a method whose prediction equals the target gets no further click; its scores carry over;
* the model gets each click as world RAS mm through :class:`~SAMVolSegmentLib.engine.session.InteractiveSession`
  (voxel index → RAS via the image's ``VolumeGeometry``), so the whole geometry chain is exercised;
* the baseline (:mod:`.baseline`) gets the *same* clicks as the model by default ("shared": both see
  identical prompts, the ones the model's errors produced), or its own clicks from its own errors ("own":
  the same protocol applied to the baseline; also the mode when no model is given).

Targets: ``label > 0`` (every labelled structure together — the rule the data README gives for BraTS) unless
a label value is given per case (manifest) or for all cases (``label_value``); :func:`expand_label_values`
(``--each-label``) makes every non-zero value its own target instead. Metrics (:mod:`.metrics`): Dice, and
HD95 in mm (95th percentile of the symmetric surface distances, computed with spacing-aware distance
transforms on the two masks' bounding box only, which keeps it to a few ms on the development cases); an
empty prediction scores Dice 0 and HD95 ``None``.

**Stroke protocols** (issue 24; ``protocol``): prompt 1 is drawn, the rest follow the same errors.

* ``"lasso"``: prompt 1 is a positive lasso around the target's largest axial cross-section
  (:func:`~.stroke_simulation.simulate_lasso`: the exact outline, ≤ 64 vertices; ``lasso_options`` gives a
  sloppier one: ``margin_voxels``, ``jitter_mm``, its seed drawn from the target's name unless given), then
  clicks as above (:func:`~.clicks.next_click`) — ``num_clicks`` prompts in all;
* ``"scribbles"``: prompt 1 is a positive scribble inside the target, every later prompt a scribble in the
  largest error component (:func:`~.stroke_simulation.simulate_scribble`,
  :func:`~.stroke_simulation.correction_scribble`: positive in a miss, negative in a false positive).

The model gets strokes through ``InteractiveSession.add_lasso`` / ``add_scribble``. Region growing gets what the
session makes of a stroke (:mod:`~SAMVolSegmentLib.engine.strokes`): the stroke's clicks
(``StrokePrompt.clicks_ras``, the same points the model is given) as seeds of its sign, and the drawn voxels (the
filled polygon, the stroke's voxels) set to its sign after growing, through later steps too — the session's hard
constraints. Seeding from every drawn voxel was not chosen: one growing per voxel (hundreds per stroke), and a
model and a baseline that are given different seeds would not compare like for like. Rows record the stroke's
anchor (a lasso's deepest cross-section voxel, a scribble's deepest point) as the prompt's position and its kind
in ``prompt``.

Click placement is :mod:`.clicks` (:func:`~.clicks.first_click`, :func:`~.clicks.next_click`). The CVPR 2025
challenge's protocol (box, then 5 clicks; DSC/NSD and their AUCs) lives in :mod:`.cvpr25` and shares the click
placement (with :data:`~.clicks.CVPR25_CLICKS`), this module's methods and its cases.
"""

from __future__ import annotations

import csv
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

# Click simulation lives in .clicks; deepest_point, the rules and index_to_ras are re-exported for the callers
# (tests, benchmarks, teach) that still import them from here.
from ..engine.clicks import CVPR25_CLICKS, SAMVOLSEG_CLICKS, ClickRule, deepest_point, first_click, next_click  # noqa: F401
from ..engine.geometry import IndexKJI, VolumeGeometry, box_centre
from ..engine.mask_update import MaskUpdate
from ..engine.metrics import dice, hd95  # dice and hd95 re-exported: callers import them from here
from ..engine.strokes import StrokePrompt, apply_drawn, lasso_prompt, scribble_prompt
from ..errors import InvalidImageError
from .baseline import BASELINE_NAME, RegionGrowing
from .stroke_simulation import correction_scribble, simulate_lasso, simulate_scribble

index_to_ras = VolumeGeometry.index_to_ras  # index_to_ras(geometry, index_kji): (3,) RAS of the voxel's centre

ProgressCallback = Callable[[float, str], None]
BASELINE_MODES = ("shared", "own")
#: Prompt protocols of :func:`simulate_case` (the CVPR 2025 challenge's box + clicks is :mod:`.cvpr25`).
PROTOCOLS = ("clicks", "lasso", "scribbles")


@dataclass(frozen=True)
class Case:
    """One evaluation target: an image, its label file, and which label value is the target.

    ``label_value`` None means every non-zero voxel (``label > 0``). ``name`` is the target's key in every
    result (CSV rows, ``summary.json``, plots), so cases of one evaluation have distinct names: several targets
    of one image are ``<image name>:<label value>`` (:func:`target_name`).
    """

    name: str
    image_path: Path
    label_path: Path
    label_value: Optional[int] = None


@dataclass
class ClickResult:
    """Scores of one method on one case after ``click`` clicks (one CSV row)."""

    case: str
    label: str  # "all" (label > 0) or the label value
    method: str
    click: int
    placed: bool  # False: the prediction was already perfect, no new prompt (scores carried over)
    positive: Optional[bool]
    r: Optional[float]  # the click (a stroke: its anchor voxel), RAS mm
    a: Optional[float]
    s: Optional[float]
    dice: float
    hd95_mm: Optional[float]
    latency_s: float  # wall time of the step (model: add_click / add_lasso / add_scribble; baseline: region growing)
    encode_s: Optional[float] = None  # model only: part of latency_s spent in the image encoder
    prompt: str = "click"  # "click", "lasso", "scribble"; "none" where no prompt was placed


@dataclass
class EvaluationResult:
    """All rows of an evaluation plus what produced them."""

    model: str
    num_clicks: int  # prompts per target (clicks, or a stroke and then clicks or strokes)
    baseline_clicks: str = "shared"
    rows: List[ClickResult] = field(default_factory=list)
    protocol: str = "clicks"
    lasso_options: Dict[str, Any] = field(default_factory=dict)  # the lasso protocol's sloppier lasso, if any

    @property
    def methods(self) -> List[str]:
        return sorted({row.method for row in self.rows}, key=lambda m: (m != "model", m))

    @property
    def cases(self) -> List[str]:
        return list(dict.fromkeys(f"{row.case}" for row in self.rows))

    def _values(self, method: str, attribute: str) -> Dict[int, List[float]]:
        by_click: Dict[int, List[float]] = {}
        for row in self.rows:
            value = getattr(row, attribute)
            if row.method == method and value is not None:
                by_click.setdefault(row.click, []).append(float(value))
        return dict(sorted(by_click.items()))

    def mean_dice(self, method: str) -> Dict[int, float]:
        """Mean Dice over cases per click count for one method."""
        return {k: float(np.mean(v)) for k, v in self._values(method, "dice").items()}

    def summary(self) -> Dict[str, Any]:
        """JSON-ready summary: per method and click count mean/median Dice and HD95, latencies (also per prompt
        kind: the first prompt with and without the encoder's share, later ones), per-case Dice."""
        per_method: Dict[str, Any] = {}
        for method in self.methods:
            dices, hds = self._values(method, "dice"), self._values(method, "hd95_mm")
            placed = [r for r in self.rows if r.method == method and r.placed]
            first = [r.latency_s for r in placed if r.click == 1]
            later = [r.latency_s for r in placed if r.click > 1]
            per_method[method] = {
                "mean_dice": {str(k): float(np.mean(v)) for k, v in dices.items()},
                "median_dice": {str(k): float(np.median(v)) for k, v in dices.items()},
                "mean_hd95_mm": {str(k): float(np.mean(v)) for k, v in hds.items()},
                "latency_first_click_s": _percentiles(first),
                "latency_later_clicks_s": _percentiles(later),
                "latency_by_prompt_s": _latency_by_prompt(placed),
            }
        per_case: Dict[str, Dict[str, Dict[str, float]]] = {}
        for row in self.rows:
            per_case.setdefault(row.case, {}).setdefault(row.method, {})[str(row.click)] = row.dice
        return {
            "model": self.model,
            "protocol": self.protocol,
            **({"lasso_options": self.lasso_options} if self.protocol == "lasso" else {}),
            "num_clicks": self.num_clicks,
            "baseline": BASELINE_NAME,
            "baseline_clicks": self.baseline_clicks,
            "cases": self.cases,
            "mean_dice": {m: v["mean_dice"] for m, v in per_method.items()},
            "methods": per_method,
            "per_case_dice": per_case,
        }


def _latency_by_prompt(placed: Sequence[ClickResult]) -> Dict[str, Dict[str, Dict[str, Optional[float]]]]:
    """{prompt kind: {"first", "first_without_encoder", "later": percentiles}} of placed rows: the first
    prompt encodes the image, so its time is also given without the encoder's share."""
    out: Dict[str, Dict[str, Dict[str, Optional[float]]]] = {}
    for kind in dict.fromkeys(r.prompt for r in placed):
        rows = [r for r in placed if r.prompt == kind]
        first = [r for r in rows if r.click == 1]
        out[kind] = {"first": _percentiles([r.latency_s for r in first]),
                     "first_without_encoder": _percentiles([r.latency_s - (r.encode_s or 0.0) for r in first]),
                     "later": _percentiles([r.latency_s for r in rows if r.click > 1])}
    return out


def _percentiles(values: Sequence[float]) -> Dict[str, Optional[float]]:
    if not values:
        return {"p50": None, "p95": None, "n": 0}
    return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)), "n": len(values)}


# ---------------------------------------------------------------- cases
def prepared_target(case: Case, label_value: Optional[int] = None):
    """What both click protocols start from: (image, binary uint8 target (k, j, i), the image's
    :class:`VolumeGeometry`, spacing (k, j, i) in mm, label name — "all" for ``label > 0`` or the value)."""
    image, target = load_target(case, label_value)
    value = case.label_value if label_value is None else label_value
    spacing_kji = tuple(float(v) for v in image.GetSpacing()[::-1])
    return image, target, VolumeGeometry.from_sitk(image), spacing_kji, "all" if value is None else str(value)


def load_target(case: Case, label_value: Optional[int] = None) -> Tuple[sitk.Image, np.ndarray]:
    """The image and the binary uint8 target (k, j, i) of a case (``label_value`` overrides the case's)."""
    from ..engine.preprocessing import read_image_label

    image, label = read_image_label(case.image_path, case.label_path)
    value = case.label_value if label_value is None else label_value
    target = label > 0 if value is None else label == value
    if not target.any():
        present = [int(v) for v in np.unique(label) if v != 0][:20]
        raise InvalidImageError(
            f"{case.name}: the label has no voxels with {'value > 0' if value is None else f'value {value}'}; "
            f"values present: {present or 'none'}. Pick one of them with --label."
        )
    return image, target.astype(np.uint8)


def target_name(case_name: str, label_value: Optional[int]) -> str:
    """The result key of one target of a case: ``<case name>:<label value>``, or the case name for ``label > 0``.

    :mod:`.cvpr25` groups targets per image by the part before the first ``:``.
    """
    return case_name if label_value is None else f"{case_name}:{int(label_value)}"


def discover_cases(
    data: Union[str, Path], names: Optional[Sequence[str]] = None, label_value: Optional[int] = None
) -> List[Case]:
    """Cases from a folder of ``<case>/image.* + label.*`` folders, or a CSV manifest ``image,label[,label_value]``.

    Manifest paths are relative to the manifest's folder; a header row and ``#`` comments are skipped.
    ``label_value`` applies where the manifest gives none. A folder case is named after its folder; a manifest
    case after its image's folder and file, then ``[<label file>]`` when the manifest pairs that image with
    several label files, then ``:<value>`` when its row gives a label value — so each target keeps its own
    entry in the results (rows with label values 1, 3 and 4 of one CT are three targets).

    Raises:
        FileNotFoundError: no such folder or file, a malformed manifest row, two rows naming the same target,
            or ``names`` that match no case.
    """
    data = Path(data)
    cases: List[Case] = []
    if data.is_file():
        rows: List[Tuple[int, Path, Path, Optional[int], bool]] = []
        with data.open(newline="") as f:
            for line, row in enumerate(csv.reader(f), start=1):
                if not row or row[0].strip().startswith("#") or row[0].strip().lower() == "image":
                    continue
                if len(row) < 2:
                    raise FileNotFoundError(f"{data}:{line}: expected 'image,label[,label_value]', got {row}")
                given = len(row) > 2 and bool(row[2].strip())
                try:
                    value = int(row[2]) if given else label_value
                except ValueError:
                    raise FileNotFoundError(f"{data}:{line}: label value {row[2]!r} is not an integer") from None
                rows.append((line, (data.parent / row[0].strip()).resolve(), (data.parent / row[1].strip()).resolve(),
                             value, given))
        labels_per_image: Dict[Path, set] = {}
        for _, image, label, _, _ in rows:
            labels_per_image.setdefault(image, set()).add(label)
        first_line: Dict[str, int] = {}
        for line, image, label, value, given in rows:
            name = f"{image.parent.name}/{image.name}"
            if len(labels_per_image[image]) > 1:
                name += f"[{label.name}]"
            name = target_name(name, value if given else None)
            if name in first_line:
                raise FileNotFoundError(f"{data}:{line}: the same target as line {first_line[name]} ({name}); "
                                        "remove the duplicate row or give another label value.")
            first_line[name] = line
            cases.append(Case(name, image, label, value))
    elif data.is_dir():
        for folder in sorted(p for p in data.iterdir() if p.is_dir()):
            images, labels = sorted(folder.glob("image.*")), sorted(folder.glob("label.*"))
            if images and labels:
                cases.append(Case(folder.name, images[0], labels[0], label_value))
    else:
        raise FileNotFoundError(f"{data} does not exist: give a folder of case folders or a CSV manifest.")
    if names:
        wanted = list(dict.fromkeys(n.strip() for n in names if n.strip()))
        by_name = {c.name: c for c in cases}
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise FileNotFoundError(f"cases not found in {data}: {', '.join(missing)}; known: {', '.join(by_name)}")
        cases = [by_name[n] for n in wanted]
    if not cases:
        raise FileNotFoundError(f"no cases (image.* + label.* folders or manifest rows) found in {data}")
    return cases


def expand_label_values(cases: Sequence[Case], min_voxels: int = 1) -> List[Case]:
    """One case per non-zero label value present (``<name>:<value>``), for per-structure evaluation.

    Cases that already name a label value are kept as they are; values with fewer than ``min_voxels``
    voxels are skipped (a 1-voxel structure cannot take a meaningful click).
    """
    from ..engine.preprocessing import read_image_label

    expanded: List[Case] = []
    for case in cases:
        if case.label_value is not None:
            expanded.append(case)
            continue
        _, label = read_image_label(case.image_path, case.label_path)
        values, counts = np.unique(label[label != 0], return_counts=True)
        expanded.extend(Case(target_name(case.name, int(v)), case.image_path, case.label_path, int(v))
                        for v, n in zip(values, counts) if n >= min_voxels)
    return expanded


# ---------------------------------------------------------------- one case
StepOutput = Tuple[np.ndarray, float, Optional[float]]  # (mask (K, J, I) uint8, latency s, encoder s or None)


class _ModelMethod:
    """The model behind the public session API; clicks and boxes go in as RAS mm."""

    name = "model"

    def __init__(self, session, image: sitk.Image) -> None:
        self.session = session
        session.set_volume(image)
        session.wait_until_ready()

    def step(self, index_kji: IndexKJI, point_ras: np.ndarray, positive: bool) -> StepOutput:
        start = time.perf_counter()
        self.session.add_click(point_ras, positive)
        return self._output(time.perf_counter() - start)

    def stroke(self, prompt: Prompt) -> StepOutput:
        """A simulated lasso or scribble through the session's ``add_lasso`` / ``add_scribble``."""
        add = self.session.add_lasso if prompt.kind == "lasso" else self.session.add_scribble
        start = time.perf_counter()
        add(prompt.points_ras, prompt.positive)
        return self._output(time.perf_counter() - start)

    def box(self, min_ras: np.ndarray, max_ras: np.ndarray) -> StepOutput:
        """The session's box prompt: an input of a model that takes boxes (``Predictor.accepts_box``); for other
        models a clip of the segment and, with no click yet, a click at its centre."""
        start = time.perf_counter()
        self.session.set_box(min_ras, max_ras)
        return self._output(time.perf_counter() - start)

    def release_box(self) -> Tuple[np.ndarray, float]:
        """Lift the box (the session re-decodes the active ROI without it; a box model's box-only mask is kept):
        (mask, seconds taken)."""
        start = time.perf_counter()
        self.session.clear_box()
        latency = time.perf_counter() - start
        return self.session.mask_array_kji(), latency

    def _output(self, latency: float) -> StepOutput:
        return self.session.mask_array_kji(), latency, float(self.session.last_timing.get("encode_s", 0.0))


class _BaselineMethod:
    name = "baseline"

    def __init__(self, image: sitk.Image) -> None:
        self.grower = RegionGrowing(image)  # smoothing once per case, not per click
        self.geometry = VolumeGeometry.from_sitk(image)
        self.clicks: List[Tuple[IndexKJI, bool]] = []
        self.clip_kji: Optional[np.ndarray] = None
        self.drawn: List[StrokePrompt] = []

    def step(self, index_kji: IndexKJI, point_ras: np.ndarray, positive: bool) -> StepOutput:
        self.clicks.append((index_kji, positive))
        start = time.perf_counter()
        mask = self._segment()
        return mask, time.perf_counter() - start, None

    def stroke(self, prompt: Prompt) -> StepOutput:
        """What the session makes of a stroke: its clicks as seeds of its sign, its drawn voxels set to its sign
        (:mod:`~SAMVolSegmentLib.engine.strokes`; kept through later steps)."""
        start = time.perf_counter()
        make = lasso_prompt if prompt.kind == "lasso" else scribble_prompt
        stroke = make(self.geometry, prompt.points_ras, prompt.positive)
        self.drawn.append(stroke)
        self.clicks.extend((self.geometry.nearest_index_kji(p), prompt.positive) for p in stroke.clicks_ras)
        mask = self._segment()
        return mask, time.perf_counter() - start, None

    def _segment(self) -> np.ndarray:
        """Region growing from the clicks so far, the drawn voxels' signs applied, clipped to the box if any."""
        mask = self.grower.segment(self.clicks)
        if self.drawn:
            full = tuple((0, n) for n in self.geometry.shape_kji)
            mask = apply_drawn(MaskUpdate(full, mask), self.drawn).mask  # type: ignore[arg-type]
        if self.clip_kji is not None:
            mask &= self.clip_kji
        return mask

    def box(self, min_ras: np.ndarray, max_ras: np.ndarray) -> StepOutput:
        """Region growing has no box input: it gets what the session makes of a box — a positive seed at the
        voxel nearest the box's centre when there is no positive click yet, and the mask clipped to the box
        (voxel centres inside it) from then on."""
        full = tuple((0, n) for n in self.geometry.shape_kji)
        self.clip_kji = self.geometry.box_mask_kji(full, min_ras, max_ras).astype(np.uint8)  # type: ignore[arg-type]
        if not any(positive for _, positive in self.clicks):
            self.clicks.append((self.geometry.nearest_index_kji(box_centre((min_ras, max_ras))), True))
        start = time.perf_counter()
        mask = self._segment()
        return mask, time.perf_counter() - start, None

    def release_box(self) -> Tuple[np.ndarray, float]:
        """Stop clipping to the box; the box's seed click stays: (mask, seconds taken)."""
        self.clip_kji = None
        start = time.perf_counter()
        mask = self._segment()
        return mask, time.perf_counter() - start


@dataclass(frozen=True)
class Prompt:
    """One simulated prompt: a click, or a lasso / scribble.

    Attributes:
        kind: "click", "lasso" or "scribble".
        positive: its sign.
        index_kji: the click's voxel, or the stroke's anchor (rows record its centre as the prompt's position).
        points_ras: a stroke's (N, 3) points, world RAS mm; None for a click.
    """

    kind: str
    positive: bool
    index_kji: IndexKJI
    points_ras: Optional[np.ndarray] = None


def next_prompt(protocol: str, n: int, target: np.ndarray, prediction: np.ndarray, geometry: VolumeGeometry,
                spacing_kji: Sequence[float], lasso_options: Optional[Dict[str, Any]] = None) -> Optional[Prompt]:
    """Prompt ``n`` (1-based) of a protocol given the driver's current prediction; None when it is exact
    (never for prompt 1). ``lasso_options``: keyword arguments of
    :func:`~.stroke_simulation.simulate_lasso` (``margin_voxels``, ``jitter_mm``, ``seed``). See the module's
    docstring for the protocols."""
    if protocol == "clicks" or (protocol == "lasso" and n > 1):
        click = first_click(target, spacing_kji) if n == 1 else next_click(target, prediction, spacing_kji)
        return None if click is None else Prompt("click", click[1], click[0])
    if protocol == "lasso":
        stroke = simulate_lasso(target, geometry, **(lasso_options or {}))
    elif protocol == "scribbles":
        stroke = (simulate_scribble(target, geometry, True) if n == 1
                  else correction_scribble(target, prediction, geometry))
    else:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return None if stroke is None else Prompt(stroke.kind, stroke.positive, stroke.anchor_kji, stroke.points_ras)


def _run_protocol(
    case_name: str, label: str, target: np.ndarray, geometry: VolumeGeometry, spacing_kji: Sequence[float],
    driver, followers: Sequence, num_clicks: int, on_click: Optional[Callable[[int], None]] = None,
    protocol: str = "clicks", lasso_options: Optional[Dict[str, Any]] = None,
) -> List[ClickResult]:
    """Prompts from the driver's errors; followers get the same prompts. Returns rows of all methods."""
    if lasso_options and "seed" not in lasso_options:  # a jittered lasso: its own draws per target, reproducible
        lasso_options = {**lasso_options, "seed": zlib.crc32(case_name.encode())}
    methods = [driver, *followers]
    rows: List[ClickResult] = []
    last: Dict[str, ClickResult] = {}
    prediction = np.zeros_like(target)
    for n in range(1, num_clicks + 1):
        prompt = next_prompt(protocol, n, target, prediction, geometry, spacing_kji, lasso_options)
        if prompt is None:  # the driver is perfect: no new prompt, every method keeps its scores
            for method in methods:
                rows.append(_carry_over(last[method.name], n))
                last[method.name] = rows[-1]
        else:
            point_ras = geometry.index_to_ras(prompt.index_kji)
            for method in methods:
                if prompt.kind == "click":
                    mask, latency, encode_s = method.step(prompt.index_kji, point_ras, prompt.positive)
                else:
                    mask, latency, encode_s = method.stroke(prompt)
                if method is driver:
                    prediction = mask
                rows.append(ClickResult(
                    case_name, label, method.name, n, True, prompt.positive, *(float(v) for v in point_ras),
                    dice(mask, target), hd95(mask, target, spacing_kji), latency, encode_s, prompt.kind,
                ))
                last[method.name] = rows[-1]
        if on_click is not None:
            on_click(n)
    return rows


def _carry_over(row: ClickResult, click: int) -> ClickResult:
    return ClickResult(row.case, row.label, row.method, click, False, None, None, None, None, row.dice,
                       row.hd95_mm, 0.0, None, "none")


def simulate_case(
    session, case: Case, num_clicks: int, with_baseline: bool = True, baseline_clicks: str = "shared",
    label_value: Optional[int] = None, progress: Optional[ProgressCallback] = None, protocol: str = "clicks",
    lasso_options: Optional[Dict[str, Any]] = None,
) -> List[ClickResult]:
    """Run a prompt protocol (clicks by default) on one case.

    Args:
        session: an ``InteractiveSession`` (its volume is replaced), or None for the baseline alone.
        case: the case; ``label_value`` overrides its target label value.
        num_clicks: prompts per method (≥ 1).
        with_baseline: also run the region-growing baseline.
        baseline_clicks: "shared" (the model's prompts) or "own" (prompts from the baseline's own errors).
        progress: ``progress(fraction_of_this_case, message)``.
        protocol: one of :data:`PROTOCOLS` (see the module's docstring).
        lasso_options: a sloppier simulated lasso (:func:`next_prompt`); None: the exact outline.
    Returns:
        One :class:`ClickResult` per method and click count, in click order.
    """
    if num_clicks < 1:
        raise ValueError("num_clicks must be at least 1")
    if baseline_clicks not in BASELINE_MODES:
        raise ValueError(f"baseline_clicks must be one of {BASELINE_MODES}, got {baseline_clicks!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if session is None and not with_baseline:
        raise ValueError("nothing to evaluate: give a session or keep the baseline")
    image, target, geometry, spacing_kji, label = prepared_target(case, label_value)
    runs: List[Tuple[Any, List[Any]]] = []
    if session is not None:
        model = _ModelMethod(session, image)
        shared = with_baseline and baseline_clicks == "shared"
        runs.append((model, [_BaselineMethod(image)] if shared else []))
    if with_baseline and (session is None or baseline_clicks == "own"):
        runs.append((_BaselineMethod(image), []))
    rows: List[ClickResult] = []
    for run_index, (driver, followers) in enumerate(runs):
        def on_click(n: int, run_index: int = run_index, name: str = driver.name) -> None:
            if progress is not None:
                progress((run_index + n / num_clicks) / len(runs), f"{case.name}: {name} prompt {n}")

        rows.extend(_run_protocol(case.name, label, target, geometry, spacing_kji, driver, followers,
                                  num_clicks, on_click, protocol, lasso_options))
    rows.sort(key=lambda r: (r.click, r.method != "model"))
    return rows


# ---------------------------------------------------------------- many cases
def resolve_model(model_source: Any, device: str = "cpu") -> Tuple[Any, str]:
    """``(model or None, name)`` from a registry name / checkpoint path (loaded), a loaded model, or None."""
    if model_source is None:
        return None, "none"
    if isinstance(model_source, (str, Path)):
        from ..model import load_model

        return load_model(model_source, device=device), str(model_source)
    return model_source, str(getattr(model_source, "model_id", type(model_source).__name__))


def evaluate_cases(
    cases: Sequence[Case],
    model_source: Any = "default",
    num_clicks: int = 10,
    label_value: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
    with_baseline: bool = True,
    baseline_clicks: str = "shared",
    device: str = "cpu",
    model_name: Optional[str] = None,
    session_options: Optional[Dict[str, Any]] = None,
    protocol: str = "clicks",
    lasso_options: Optional[Dict[str, Any]] = None,
) -> EvaluationResult:
    """Evaluate a model and the baseline on labelled cases with simulated clicks (or strokes: ``protocol``).

    Args:
        cases: from :func:`discover_cases` (or built directly).
        model_source: a registry name or checkpoint path (loaded with ``load_model``), an already loaded
            ``nn.Module`` or ``Predictor``, or None to evaluate the baseline alone (with its own clicks).
        num_clicks: clicks per case and method.
        label_value: target label value for every case (overrides the cases'); None keeps the cases' own
            (default ``label > 0``).
        progress: ``progress(fraction, message)`` over all cases.
        baseline_clicks: "shared" or "own", see :func:`simulate_case`.
        model_name: name recorded in the results (default: the source's name or ``model_id``).
        session_options: keyword arguments of every :class:`~SAMVolSegmentLib.engine.session.InteractiveSession`
            (e.g. ``{"coarse_context": True}``).
        protocol: "clicks" (default), "lasso" or "scribbles" (:data:`PROTOCOLS`).
        lasso_options: ``margin_voxels`` / ``jitter_mm`` (/ ``seed``) of the simulated lasso; None: exact.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    model, name = resolve_model(model_source, device)
    result = EvaluationResult(model=model_name or name, num_clicks=num_clicks,
                              baseline_clicks=baseline_clicks if model is not None else "own", protocol=protocol,
                              lasso_options=dict(lasso_options or {}))
    for rows in for_each_case(cases, model, progress, lambda session, case, case_progress: simulate_case(
            session, case, num_clicks, with_baseline if session is not None else True,
            baseline_clicks if session is not None else "own", label_value, case_progress, protocol, lasso_options),
            session_options):
        result.rows.extend(rows)
    return result


def for_each_case(cases: Sequence[Case], model: Any, progress: Optional[ProgressCallback],
                  run_one: Callable[[Any, Case, ProgressCallback], Any],
                  session_options: Optional[Dict[str, Any]] = None) -> Iterator[Any]:
    """Yield ``run_one(session, case, case_progress)`` for every case — a fresh
    :class:`~SAMVolSegmentLib.engine.session.InteractiveSession` per case (with ``session_options``), or None when
    ``model`` is None (baseline only) — with ``progress(fraction, message)`` over all cases; the loop both click
    protocols share."""
    total = max(len(cases), 1)
    for index, case in enumerate(cases):
        def case_progress(fraction: float, message: str, index: int = index) -> None:
            if progress is not None:
                progress((index + fraction) / total, message)

        case_progress(0.0, f"{case.name}: loading")
        if model is None:
            yield run_one(None, case, case_progress)
        else:
            from ..engine.session import InteractiveSession

            with InteractiveSession(model, **(session_options or {})) as session:
                yield run_one(session, case, case_progress)
    if progress is not None:
        progress(1.0, "done")


# ---------------------------------------------------------------- writers
CSV_NAME, JSON_NAME, PNG_NAME = "clicks.csv", "summary.json", "dice_vs_clicks.png"


def output_names(protocol: str = "clicks") -> Tuple[str, str, str]:
    """(CSV, JSON, PNG) file names of a protocol's results: the click protocol's :data:`CSV_NAME` ... ; the
    stroke protocols' ``<protocol>.csv``, ``<protocol>_summary.json``, ``dice_vs_prompts_<protocol>.png``, so all
    protocols can share one output folder."""
    if protocol == "clicks":
        return CSV_NAME, JSON_NAME, PNG_NAME
    return f"{protocol}.csv", f"{protocol}_summary.json", f"dice_vs_prompts_{protocol}.png"


def write_results(result: EvaluationResult, out_dir: Union[str, Path], plot: bool = True) -> Dict[str, Path]:
    """Write the CSV (one row per case × method × prompt), the JSON summary and the Dice-vs-prompts plot, named
    by :func:`output_names` (``clicks.csv``, ``summary.json``, ``dice_vs_clicks.png`` for the click protocol).

    Every file is written atomically. The plot needs matplotlib (skipped with a note in the JSON otherwise).
    """
    from ..io_utils import write_csv, write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_name, json_name, png_name = output_names(result.protocol)
    fields = list(ClickResult.__dataclass_fields__)
    paths = {"csv": write_csv((asdict(r) for r in result.rows), out_dir / csv_name, fields)}
    summary = result.summary()
    if plot and result.rows:
        try:
            paths["png"] = plot_dice_vs_clicks(result, out_dir / png_name)
        except ImportError:
            summary["plot"] = "skipped: matplotlib is not installed (pip install matplotlib)"
    paths["json"] = write_json(summary, out_dir / json_name)
    return paths


#: x-axis label of each protocol's plot.
PROMPT_AXIS = {"clicks": "clicks", "lasso": "prompts (1: lasso, then clicks)", "scribbles": "scribbles"}


#: Up to this many targets, each thin per-target line is labelled with the target's name at its end.
PLOT_LABELLED_TARGETS = 10


def plot_dice_vs_clicks(result: EvaluationResult, path: Union[str, Path]) -> Path:
    """Mean Dice per click (prompt) count per method (thick, with markers), each target as a thin line behind it
    (named at its end when there are at most :data:`PLOT_LABELLED_TARGETS` targets)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot
    import matplotlib.pyplot as plt

    from ..io_utils import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    colours = {"model": "tab:blue", "baseline": "tab:orange"}
    per_case = result.summary()["per_case_dice"]
    for method in result.methods:
        colour = colours.get(method)
        for name, curves in per_case.items():
            curve = curves.get(method, {})
            if not curve:
                continue
            clicks, dices = [int(k) for k in curve], list(curve.values())
            line, = ax.plot(clicks, dices, color=colour, alpha=0.25, linewidth=0.8)
            if len(per_case) <= PLOT_LABELLED_TARGETS:
                ax.annotate(name, (clicks[-1], dices[-1]), xytext=(3, 0), textcoords="offset points", fontsize=6,
                            color=line.get_color(), alpha=0.7, va="center", annotation_clip=False)
        mean = result.mean_dice(method)
        label = f"model ({result.model})" if method == "model" else f"baseline ({BASELINE_NAME})"
        ax.plot(list(mean), list(mean.values()), color=colour, linewidth=2.5, marker="o", label=label)
    ax.set_xlabel(PROMPT_AXIS.get(result.protocol, "prompts"))
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.set_xticks(range(1, result.num_clicks + 1))
    if len(per_case) <= PLOT_LABELLED_TARGETS:
        ax.set_xlim(0.7, result.num_clicks + 1.3)  # room right of the last click for the targets' names
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    targets = f"{len(per_case)} target" + ("" if len(per_case) == 1 else "s")
    what = "clicks" if result.protocol == "clicks" else f"prompts, {result.protocol}"
    ax.set_title(f"Dice vs {what} ({targets}: mean thick, each target thin)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
