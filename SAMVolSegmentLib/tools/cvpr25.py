"""The CVPR 2025 interactive 3D segmentation challenge's protocol and metrics, for our model and baseline.

Reference: ``CVPR25_iter_eval.py`` and ``get_boxes.py`` of github.com/JunMa11/CVPR-MedSegFMCompetition (the
"Foundation Models for Interactive 3D Biomedical Image Segmentation" challenge), read at its newest commit.
Our numbers are meant to stand beside published ones, so this module follows the script step by step and
lists every place where it cannot.

Matched (array order (k, j, i) = the challenge's (z, y, x); "z" is array axis 0 whatever the anatomy):

* **Box prompt** (``get_boxes.py``, ``mask3D_to_bbox``): z range = first and last slice holding the target;
  ``z_mid`` = the middle entry of the sorted list of occupied slices (``z_indices[len // 2]``); the in-plane
  box = the target's extent on that one slice only, widened on each side by ``int(s * W / 256)`` columns and
  ``int(s * H / 256)`` rows for a shift s drawn uniformly from 0..5, clipped to the image (:func:`challenge_box`).
* **Steps**: a box prediction, then 5 clicks, each placed in the errors of the method's own current
  prediction (``baseline_clicks="own"``); DSC and NSD after every step (6 values per target).
* **Click** (:data:`~.clicks.CVPR25_CLICKS` in :func:`~.clicks.next_click`): errors =
  ``prediction != target`` as one set; its largest 26-connected component (most voxels); the Euclidean
  distance transform of that component in *voxel* units with everything else (including outside the volume)
  as background; among the deepest voxels, ``np.random.RandomState(42).choice`` over them in C order (the
  script reseeds with 42 before every draw); positive where the target is foreground there, negative
  otherwise; the script's 2× max-pooling of padded crops above 60 M voxels is reproduced. No error: no
  click, scores carried over (the script reruns the model on unchanged prompts).
* **Metrics**: DSC = 2|A∩B| / (|A| + |B|); NSD at 2 mm, spacing-aware (:func:`~.metrics.nsd`), and set to 0
  when the step's DSC ≤ 0.2 (the script skips NSD there); ``DSC_AUC``/``NSD_AUC`` = trapezoid rule over the
  *click* steps only (the box step is left out), unit step, so they range 0..4 for 5 clicks
  (:func:`~.metrics.interaction_auc`); ``DSC_Final``/``NSD_Final`` = the last step's values. CSV columns
  carry the script's names (``DSC_1`` = box step ... ``DSC_6`` = click 5).

Where this implementation differs:

* **Box semantics.** Challenge models take the box as a prompt and may segment outside it. A model with a box
  input (``Predictor.accepts_box``: ClickNet2 v3) gets it that way from :meth:`~.session.InteractiveSession.set_box`
  (no clip, no centre click; ``box_mode`` then only decides whether the box stays in the model's input). For
  other models set_box has no box input to the network: it clips the segment to an
  axis-aligned RAS box and, with no click yet, places a positive click at the box's centre (which may miss
  a curved target). The voxel box becomes the RAS box of its outer faces (an oblique volume gets the RAS box
  around the tilted voxel box). ``box_mode="clip"`` (default) keeps the box in force for every step, as the
  challenge keeps its box in the model's input. Since the challenge's in-plane extent comes from one slice,
  part of the target can lie outside the box (``box_coverage`` in the results; on the 12 expert-labelled
  structures of our development cases 0.52 for the posterior hippocampus, 0.39 for the brain lesion,
  ≥ 0.95 for the other ten); clicks there change nothing, and Dice stays below ``2c / (1 + c)`` for
  coverage c. ``box_mode="initial"`` scores the
  box step with the clip, then lifts it (:meth:`~.session.InteractiveSession.clear_box`, counted in click
  1's latency) so clicks may act anywhere; but then the box's extent no longer constrains anything (the
  bundled model v1 on the spinal cord: 4,275 target voxels, 7,062 predicted inside the box, 117,635 once
  the clip is lifted).
* **Baseline.** Region growing has no box input; it gets the session's reading of the box (seed at the voxel
  nearest the box centre, clip to the box, same ``box_mode``). With ``baseline_clicks="shared"`` it gets the
  model's clicks instead of its own, which is not the challenge's protocol for it.
* **NSD area weights.** Same surface points (voxel corners with a mixed 2×2×2 neighbourhood) and distances as
  the challenge's ``SurfaceDice.py``; it weights each point by a marching-cubes area, we by its share of the
  voxel faces (:mod:`.metrics`): 0.005 apart on average and 0.017 at most on 30 development predictions.
* **Box shift draws.** The challenge drew each shift once, with ``np.random.seed(2025)`` in its file order,
  and ships the boxes; we draw s per target from a generator seeded by ``BOX_SEED`` and the target's name:
  same distribution, reproducible, not the same draws.
* **One target at a time.** The challenge segments all classes of an image in one multi-class prediction
  (classes cannot overlap), gates NSD on the image's *mean* DSC and averages over classes per image. We run
  each target on its own (``--each-label`` for every structure), gate per target, and report per-target
  means plus per-image means (mean over an image's targets, then over images) next to them.
* **Spacing order.** We pair each array axis with its own spacing (``spacing_kji``). If a challenge npz
  stores ``spacing`` in SimpleITK (x, y, z) order, as the MedSAM2 npz behind one of our cases do, its NSD
  pairs z with x.
* **Ties between equally large error components**: the first in C order (scipy labels); the script takes
  the lowest cc3d label, whose order we did not verify.
* **Cases without a box** (the challenge's vessel-like cases: DSC_1 = NSD_1 = 0, clicks from an empty
  prediction): not reproduced; every target gets a box. **Time**: wall time per session call, no 90 s per
  class limit.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..engine.clicks import CVPR25_CLICKS, next_click
from ..engine.geometry import VolumeGeometry, box_centre, box_corners, ordered_box
from ..engine.metrics import NSD_TOLERANCE_MM, dice, interaction_auc, nsd
from .evaluation import (
    BASELINE_MODES,
    Case,
    ProgressCallback,
    _BaselineMethod,
    _ModelMethod,
    for_each_case,
    prepared_target,
    resolve_model,
)

#: Refinement clicks after the box (``n_clicks = 5`` in the script).
NUM_CLICKS = 5
#: NSD is computed only above this DSC, else scored 0 (``if dsc > 0.2`` in the script).
NSD_MIN_DSC = 0.2
#: Box shift: s uniform in 0..BOX_SHIFT_MAX, in units of 1/BOX_SHIFT_REFERENCE of the slice's width/height.
BOX_SHIFT_MAX = 5
BOX_SHIFT_REFERENCE = 256
BOX_SEED = 2025
BOX_MODES = ("clip", "initial")
BASELINE_BOX_NOTE = ("region growing has no box input: it gets the session's reading of the box (positive seed "
                     "at the box centre, mask clipped to the box)")
STEPS_CSV, CASES_CSV, SUMMARY_JSON = "cvpr25_steps.csv", "cvpr25_cases.csv", "cvpr25_summary.json"


# ---------------------------------------------------------------- box prompt
@dataclass(frozen=True)
class ChallengeBox:
    """The challenge's 3D box prompt: voxel indices, inclusive, array order (k, j, i).

    ``k_min..k_max`` spans every slice holding the target; ``j``/``i`` bounds come from slice ``k_mid`` only.
    """

    k_min: int
    k_max: int
    k_mid: int
    j_min: int
    j_max: int
    i_min: int
    i_max: int

    def slices(self) -> Tuple[slice, slice, slice]:
        """Array slices (k, j, i) of the box."""
        return (slice(self.k_min, self.k_max + 1), slice(self.j_min, self.j_max + 1), slice(self.i_min, self.i_max + 1))

    def corners_ras(self, geometry: VolumeGeometry) -> Tuple[np.ndarray, np.ndarray]:
        """``(min_ras, max_ras)`` (3,) each: axis-aligned RAS box around the voxel box's outer faces.

        Outer faces (index ± 0.5) rather than voxel centres, so the boundary voxels' centres lie strictly
        inside and the session's clip keeps them.
        """
        lo = np.array([self.i_min, self.j_min, self.k_min], dtype=np.float64) - 0.5
        hi = np.array([self.i_max, self.j_max, self.k_max], dtype=np.float64) + 0.5
        return ordered_box(geometry.ijk_to_ras_points(box_corners(lo, hi)))

    def as_challenge_dict(self) -> Dict[str, int]:
        """The box under the challenge's key names (x = i, y = j, z = k)."""
        return {"z_min": self.k_min, "z_max": self.k_max, "z_mid": self.k_mid, "z_mid_x_min": self.i_min,
                "z_mid_y_min": self.j_min, "z_mid_x_max": self.i_max, "z_mid_y_max": self.j_max}


def box_shift(name: str, seed: int = BOX_SEED) -> int:
    """The shift s in 0..BOX_SHIFT_MAX for one target, drawn from a generator seeded by ``seed`` and ``name``."""
    return int(np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))]).integers(0, BOX_SHIFT_MAX + 1))


def challenge_box(target: np.ndarray, shift: int = 0) -> ChallengeBox:
    """The challenge's box prompt for a non-empty binary target (K, J, I), widened by ``shift`` (0..5).

    ``shift`` is in 1/256ths of the slice: ``int(shift * J / 256)`` rows and ``int(shift * I / 256)`` columns on
    each side, clipped to the image; the z range is never widened.
    """
    target = np.asarray(target).astype(bool)
    if target.ndim != 3 or not target.any():
        raise ValueError("challenge_box needs a non-empty 3D target (K, J, I)")
    slices_k = np.flatnonzero(target.any(axis=(1, 2)))  # sorted occupied slices = np.unique of the z indices
    k_mid = int(slices_k[len(slices_k) // 2])
    rows_j, cols_i = np.nonzero(target[k_mid])
    _, size_j, size_i = target.shape
    shift_j = int(shift * size_j / BOX_SHIFT_REFERENCE)
    shift_i = int(shift * size_i / BOX_SHIFT_REFERENCE)
    return ChallengeBox(
        k_min=int(slices_k[0]), k_max=int(slices_k[-1]), k_mid=k_mid,
        j_min=max(0, int(rows_j.min()) - shift_j), j_max=min(size_j - 1, int(rows_j.max()) + shift_j),
        i_min=max(0, int(cols_i.min()) - shift_i), i_max=min(size_i - 1, int(cols_i.max()) + shift_i),
    )


# ---------------------------------------------------------------- results
@dataclass
class StepResult:
    """Scores of one method on one target after one step (one row of ``cvpr25_steps.csv``)."""

    case: str
    label: str  # "all" (label > 0) or the label value
    method: str
    step: int  # 0 = box, 1..5 = clicks (the challenge's DSC_1 is step 0)
    prompt: str  # "box", "+", "-", or "none" (no error left: no click, scores carried over)
    r: Optional[float]  # the click in RAS mm (box: its centre)
    a: Optional[float]
    s: Optional[float]
    dsc: float
    nsd: float
    latency_s: float
    encode_s: Optional[float] = None


@dataclass
class CaseResult:
    """The challenge's per-target figures for one method (one row of ``cvpr25_cases.csv``)."""

    case: str
    label: str
    method: str
    dsc: List[float]  # per step, box first
    nsd: List[float]
    dsc_auc: float
    nsd_auc: float
    dsc_final: float
    nsd_final: float
    box: ChallengeBox
    box_coverage: float  # share of the target's voxels inside the box
    box_centre_in_target: bool  # the session's centre click lands on the target
    total_latency_s: float

    def as_row(self) -> Dict[str, Any]:
        """Flat CSV row with the challenge's column names."""
        row: Dict[str, Any] = {"case": self.case, "label": self.label, "method": self.method,
                               "DSC_AUC": self.dsc_auc, "NSD_AUC": self.nsd_auc,
                               "DSC_Final": self.dsc_final, "NSD_Final": self.nsd_final}
        row.update({f"DSC_{n + 1}": v for n, v in enumerate(self.dsc)})
        row.update({f"NSD_{n + 1}": v for n, v in enumerate(self.nsd)})
        row.update({f"box_{k}": v for k, v in self.box.as_challenge_dict().items()})
        row.update({"box_coverage": self.box_coverage, "box_centre_in_target": self.box_centre_in_target,
                    "TotalRunningTime": self.total_latency_s})
        return row


@dataclass
class Cvpr25Result:
    """All steps and per-target figures of a CVPR25-protocol evaluation."""

    model: str
    num_clicks: int = NUM_CLICKS
    baseline_clicks: str = "own"
    box_mode: str = "clip"
    steps: List[StepResult] = field(default_factory=list)
    cases: List[CaseResult] = field(default_factory=list)

    @property
    def methods(self) -> List[str]:
        return sorted({c.method for c in self.cases}, key=lambda m: (m != "model", m))

    def _of(self, method: str) -> List[CaseResult]:
        return [c for c in self.cases if c.method == method]

    def means(self, method: str) -> Dict[str, Any]:
        """Mean over targets: per-step DSC/NSD lists, the AUCs and final values, and the target count."""
        rows = self._of(method)
        return {
            "targets": len(rows),
            "DSC": np.mean([r.dsc for r in rows], axis=0).tolist() if rows else [],
            "NSD": np.mean([r.nsd for r in rows], axis=0).tolist() if rows else [],
            **{key: float(np.mean([getattr(r, attr) for r in rows])) if rows else None
               for key, attr in _HEADLINE.items()},
        }

    def per_image_means(self, method: str) -> Dict[str, Any]:
        """The challenge's averaging: mean over each image's targets (``<case>:<value>``), then over images."""
        by_image: Dict[str, List[CaseResult]] = {}
        for row in self._of(method):
            by_image.setdefault(row.case.split(":")[0], []).append(row)
        out: Dict[str, Any] = {"images": len(by_image)}
        for key, attr in _HEADLINE.items():
            values = [np.mean([getattr(r, attr) for r in rows]) for rows in by_image.values()]
            out[key] = float(np.mean(values)) if values else None
        return out

    def summary(self) -> Dict[str, Any]:
        """JSON-ready summary: protocol settings, per-method means (per target and per image), per-target rows."""
        return {
            "protocol": "cvpr25",
            "reference": "CVPR25_iter_eval.py, github.com/JunMa11/CVPR-MedSegFMCompetition",
            "model": self.model,
            "num_clicks": self.num_clicks,
            "nsd_tolerance_mm": NSD_TOLERANCE_MM,
            "nsd_min_dsc": NSD_MIN_DSC,
            "auc": f"trapezoid over the {self.num_clicks} click steps, unit spacing (0..{self.num_clicks - 1})",
            "box_mode": self.box_mode,
            "baseline_clicks": self.baseline_clicks,
            "baseline_box": BASELINE_BOX_NOTE,
            "steps": ["box"] + [f"click {n}" for n in range(1, self.num_clicks + 1)],
            "mean": {m: self.means(m) for m in self.methods},
            "per_image_mean": {m: self.per_image_means(m) for m in self.methods},
            "per_case": [c.as_row() for c in self.cases],
        }


_HEADLINE = {"DSC_AUC": "dsc_auc", "NSD_AUC": "nsd_auc", "DSC_Final": "dsc_final", "NSD_Final": "nsd_final"}


# ---------------------------------------------------------------- one target
def _scores(mask: np.ndarray, target: np.ndarray, spacing_kji: Sequence[float]) -> Tuple[float, float]:
    """(DSC, NSD at 2 mm), NSD 0 at DSC ≤ 0.2 as in the challenge."""
    score = dice(mask, target)
    return score, (nsd(mask, target, spacing_kji, NSD_TOLERANCE_MM) if score > NSD_MIN_DSC else 0.0)


def _run(
    case_name: str, label: str, target: np.ndarray, geometry: VolumeGeometry, spacing_kji: Sequence[float],
    box: ChallengeBox, driver, followers: Sequence, num_clicks: int, box_mode: str,
    on_step: Optional[Callable[[int], None]] = None,
) -> List[StepResult]:
    """Box, then clicks from the driver's errors (followers get the same prompts). Rows of all methods."""
    methods = [driver, *followers]
    min_ras, max_ras = box.corners_ras(geometry)
    centre_ras = box_centre((min_ras, max_ras))
    rows: List[StepResult] = []
    last: Dict[str, StepResult] = {}
    prediction = np.zeros_like(target)
    for method in methods:
        mask, latency, encode_s = method.box(min_ras, max_ras)
        if method is driver:
            prediction = mask
        rows.append(StepResult(case_name, label, method.name, 0, "box", *(float(v) for v in centre_ras),
                               *_scores(mask, target, spacing_kji), latency, encode_s))
        last[method.name] = rows[-1]
    if on_step is not None:
        on_step(0)
    for n in range(1, num_clicks + 1):
        # As in the script, the click comes from the last *scored* prediction; lifting the box's clip
        # ("initial") happens after that, as part of the first click's step.
        click = next_click(target, prediction, spacing_kji, CVPR25_CLICKS)
        release = box_mode == "initial" and n == 1
        if click is None and not release:
            for method in methods:
                old = last[method.name]
                rows.append(StepResult(old.case, old.label, old.method, n, "none", None, None, None,
                                       old.dsc, old.nsd, 0.0, None))
                last[method.name] = rows[-1]
        else:
            for method in methods:
                released, extra_s = method.release_box() if release else (None, 0.0)
                if click is None:  # exact after the box: only the clip is lifted
                    mask, latency, encode_s = released, 0.0, None
                    prompt, point = "none", (None, None, None)
                else:
                    index_kji, positive = click
                    point_ras = geometry.index_to_ras(index_kji)
                    mask, latency, encode_s = method.step(index_kji, point_ras, positive)
                    prompt, point = ("+" if positive else "-"), tuple(float(v) for v in point_ras)
                if method is driver:
                    prediction = mask
                rows.append(StepResult(case_name, label, method.name, n, prompt, *point,
                                       *_scores(mask, target, spacing_kji), latency + extra_s, encode_s))
                last[method.name] = rows[-1]
        if on_step is not None:
            on_step(n)
    return rows


def _case_results(rows: Sequence[StepResult], box: ChallengeBox, target: np.ndarray, num_clicks: int,
                  centre_in_target: bool) -> List[CaseResult]:
    coverage = float(target[box.slices()].sum()) / float(target.sum())
    out: List[CaseResult] = []
    for method in dict.fromkeys(r.method for r in rows):
        steps = sorted((r for r in rows if r.method == method), key=lambda r: r.step)
        dscs, nsds = [r.dsc for r in steps], [r.nsd for r in steps]
        first = steps[0]
        out.append(CaseResult(
            first.case, first.label, method, dscs, nsds,
            interaction_auc(dscs, num_clicks), interaction_auc(nsds, num_clicks), dscs[-1], nsds[-1],
            box, coverage, centre_in_target, float(sum(r.latency_s for r in steps)),
        ))
    return out


def run_case(
    session, case: Case, with_baseline: bool = True, baseline_clicks: str = "own",
    label_value: Optional[int] = None, num_clicks: int = NUM_CLICKS, box_mode: str = "clip",
    box_seed: int = BOX_SEED, progress: Optional[ProgressCallback] = None,
) -> Tuple[List[StepResult], List[CaseResult]]:
    """The challenge's protocol on one target: box, then ``num_clicks`` clicks; DSC and NSD per step.

    Args:
        session: an ``InteractiveSession`` (its volume is replaced), or None for the baseline alone.
        case: the target; ``label_value`` overrides its label value.
        with_baseline: also run the region-growing baseline.
        baseline_clicks: "own" (the challenge's protocol: clicks from the baseline's own errors) or "shared"
            (the model's box and clicks).
        num_clicks: clicks after the box (the challenge: 5; the AUCs need ≥ 2).
        box_mode: "clip" (the box's clip stays for every step) or "initial" (lifted before the first
            click), see the module docstring.
        box_seed: seed of the box-shift draw (with the target's name).
        progress: ``progress(fraction_of_this_target, message)``.
    Returns:
        ``(steps, per-target results)``: steps in step order (model before baseline), one result per method.
    """
    if num_clicks < 2:
        raise ValueError("num_clicks must be at least 2: the challenge's AUC integrates over the click steps")
    if baseline_clicks not in BASELINE_MODES:
        raise ValueError(f"baseline_clicks must be one of {BASELINE_MODES}, got {baseline_clicks!r}")
    if box_mode not in BOX_MODES:
        raise ValueError(f"box_mode must be one of {BOX_MODES}, got {box_mode!r}")
    if session is None and not with_baseline:
        raise ValueError("nothing to evaluate: give a session or keep the baseline")
    image, target, geometry, spacing_kji, label = prepared_target(case, label_value)
    box = challenge_box(target, box_shift(f"{case.name}|{label}", box_seed))
    # The box lies inside the volume, so its centre's nearest voxel needs no clamping to be the session's seed.
    centre_in_target = bool(target[geometry.nearest_index_kji(box_centre(box.corners_ras(geometry)))])
    runs: List[Tuple[Any, List[Any]]] = []
    if session is not None:
        follow = with_baseline and baseline_clicks == "shared"
        runs.append((_ModelMethod(session, image), [_BaselineMethod(image)] if follow else []))
    if with_baseline and (session is None or baseline_clicks == "own"):
        runs.append((_BaselineMethod(image), []))
    steps: List[StepResult] = []
    for run_index, (driver, followers) in enumerate(runs):
        def on_step(n: int, run_index: int = run_index, name: str = driver.name) -> None:
            if progress is not None:
                what = "box" if n == 0 else f"click {n}"
                progress((run_index + (n + 1) / (num_clicks + 1)) / len(runs), f"{case.name}: {name} {what}")

        steps.extend(_run(case.name, label, target, geometry, spacing_kji, box, driver, followers,
                          num_clicks, box_mode, on_step))
    steps.sort(key=lambda r: (r.step, r.method != "model"))
    return steps, _case_results(steps, box, target, num_clicks, centre_in_target)


# ---------------------------------------------------------------- many targets
def evaluate_cvpr25(
    cases: Sequence[Case],
    model_source: Any = "default",
    label_value: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
    with_baseline: bool = True,
    baseline_clicks: str = "own",
    device: str = "cpu",
    model_name: Optional[str] = None,
    num_clicks: int = NUM_CLICKS,
    box_mode: str = "clip",
    session_options: Optional[Dict[str, Any]] = None,
) -> Cvpr25Result:
    """The challenge's protocol on every case; see :func:`run_case` for the arguments.

    ``model_source``: a registry name or checkpoint path, a loaded model or ``Predictor``, or None for the
    baseline alone. ``session_options``: keyword arguments of every session (e.g. ``{"coarse_context": True}``).
    """
    model, name = resolve_model(model_source, device)
    result = Cvpr25Result(model=model_name or name, num_clicks=num_clicks, box_mode=box_mode,
                          baseline_clicks=baseline_clicks if model is not None else "own")
    for steps, per_case in for_each_case(cases, model, progress, lambda session, case, case_progress: run_case(
            session, case, with_baseline if session is not None else True,
            baseline_clicks if session is not None else "own", label_value, num_clicks, box_mode,
            progress=case_progress), session_options):
        result.steps.extend(steps)
        result.cases.extend(per_case)
    return result


# ---------------------------------------------------------------- output
def write_cvpr25_results(result: Cvpr25Result, out_dir: Union[str, Path]) -> Dict[str, Path]:
    """Write ``cvpr25_steps.csv``, ``cvpr25_cases.csv`` (the challenge's column names) and
    ``cvpr25_summary.json``, each atomically."""
    from ..io_utils import write_csv, write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    case_rows = [c.as_row() for c in result.cases]
    case_fields = list(case_rows[0]) if case_rows else ["case", "label", "method"]
    return {
        "steps_csv": write_csv((asdict(r) for r in result.steps), out_dir / STEPS_CSV, list(StepResult.__dataclass_fields__)),
        "cases_csv": write_csv(case_rows, out_dir / CASES_CSV, case_fields),
        "json": write_json(result.summary(), out_dir / SUMMARY_JSON),
    }


def format_table(result: Cvpr25Result) -> str:
    """Printable table: mean DSC and NSD per step, AUCs and final values per method, and the notes."""
    steps = ["box"] + [str(n) for n in range(1, result.num_clicks + 1)]
    lines = [f"CVPR25 protocol (box, then {result.num_clicks} clicks at the largest error's deepest point; NSD at "
             f"{NSD_TOLERANCE_MM:g} mm; AUC over the click steps, 0..{result.num_clicks - 1}; box_mode "
             f"{result.box_mode})",
             f"{'method':<9} {'':<4} " + " ".join(f"{s:>6}" for s in steps) + f" {'AUC':>7} {'final':>6}"]
    for method in result.methods:
        means = result.means(method)
        for metric in ("DSC", "NSD"):
            head = f"{method:<9}" if metric == "DSC" else " " * 9
            lines.append(f"{head} {metric:<4} " + " ".join(f"{v:6.3f}" for v in means[metric])
                         + f" {means[metric + '_AUC']:7.3f} {means[metric + '_Final']:6.3f}")
        per_image = result.per_image_means(method)
        if per_image["images"] != means["targets"]:
            lines.append(f"{'':<9} per image ({per_image['images']} images, the challenge's averaging): "
                         + "  ".join(f"{k} {per_image[k]:.3f}" for k in _HEADLINE))
    lines.append(f"{len(result.cases) // max(len(result.methods), 1)} target(s); clicks: model from its own "
                 f"errors, baseline from {'its own' if result.baseline_clicks == 'own' else 'the model’s'}")
    if "baseline" in result.methods:
        lines.append(f"baseline: {BASELINE_BOX_NOTE}")
    return "\n".join(lines)
