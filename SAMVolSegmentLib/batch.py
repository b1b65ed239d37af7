"""Segmentation from saved prompts: one case (``segment``), many cases (``segment_cases``), and ``run_batch``.

One code path for every caller: :func:`run_case` reads a case's prompts and image, runs an
:class:`~SAMVolSegmentLib.engine.session.InteractiveSession` (:func:`segment_volume`), writes the mask atomically and
optionally scores it; ``samvolseg segment`` (one case), ``samvolseg batch`` (a manifest) and the Python API
:func:`segment` all go through it. The Slicer Logic's ``segmentVolume`` checks its prompts with
:func:`check_prompt_arrays` and runs :func:`segment_volume` (local model) or its prompt sequence
:func:`run_prompts` in a server session (remote backend).

Execution modes of :func:`segment_cases`, which give identical masks (each case runs alone in one session
on the same model, so nothing depends on which process ran it):

* serial, in this process (``workers=1``);
* ``workers=N`` local processes (``spawn``, so no torch state is forked);
* ``scheduler=ADDRESS`` (or a ``distributed.Client``): an existing Dask distributed cluster.

In the last two each worker process loads the model once, on its first case, and keeps it in
:data:`_WORKER_MODELS`; a case never loads a model. Resumable: a case whose output exists is skipped
(outputs are only ever renamed into place when complete and read back, see :mod:`SAMVolSegmentLib.io_utils`;
an empty or unreadable file is redone), and a failing case (bad prompts, missing file...) is recorded, leaves
no output and never stops the others.

Manifest: CSV with a header row and the columns ``image,prompts,output`` (required) and ``label``,
``label_value`` (optional: score the mask against ``label == label_value``, or ``label > 0`` when the value
is empty) and ``auto`` (optional: a class name the model proposes first, prompt-free, see
:meth:`~SAMVolSegmentLib.engine.session.InteractiveSession.propose`; the row's prompts, which may then be empty,
correct that proposal). Relative paths are relative to the manifest's folder. ``image`` is a file or a DICOM series
folder; ``prompts`` is any format :func:`SAMVolSegmentLib.engine.prompts_io.read_prompts` reads.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import socket
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import (
    AuthenticationError,
    CheckpointError,
    InvalidImageError,
    InvalidPromptError,
    ModelNotAvailableError,
    ProtocolMismatchError,
    SAMVolSegmentError,
    ServerUnavailableError,
)

PathLike = Union[str, Path]
BoxRAS = Tuple[np.ndarray, np.ndarray]
#: ``on_event(kind, info)``: ``"ready"`` (volume resampled), ``"propose"``, ``"box"``, ``"lasso"``, ``"scribble"``
#: and ``"click"`` (one per prompt step).
EventCallback = Callable[[str, Dict[str, Any]], None]
ProgressCallback = Callable[[float, str], None]

MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
MANIFEST_REQUIRED = ("image", "prompts", "output")
MANIFEST_OPTIONAL = ("label", "label_value", "auto")
#: Errors that concern the model, not a case: every other case would fail the same way, so they stop a batch.
FATAL_ERRORS = (ModelNotAvailableError, CheckpointError, ServerUnavailableError, AuthenticationError,
                ProtocolMismatchError)
#: Times a local process pool is restarted after a worker died (killed, out of memory) before the cases still
#: pending are reported as failed; a case that kills its worker each time cannot loop forever.
MAX_POOL_RESTARTS = 2


class ManifestError(SAMVolSegmentError, ValueError):
    """A batch manifest cannot be used (missing columns, empty, duplicate outputs, bad values)."""


# ---------------------------------------------------------------- cases and results
@dataclass(frozen=True)
class BatchCase:
    """One case to segment. Paths are as given (absolute once read from a manifest).

    Attributes:
        image: image file or DICOM series folder.
        prompts: prompt file (``.mrk.json``, simple JSON or CSV; RAS mm).
        output: mask file to write (NIfTI/NRRD/MHA; the format follows the extension).
        label: optional reference label map on the image's grid, to score the mask (Dice).
        label_value: the label's target value (None: ``label > 0``).
        row: the manifest line (the header is line 1), 0 when the case does not come from a manifest.
        series: DICOM series UID when ``image`` is a folder holding several series.
        box_ras: a box ``(min_ras (3,), max_ras (3,))`` that replaces the prompt file's box (``segment --box``).
        auto: a class the model proposes first (prompt-free); ``prompts`` may then be "" (no corrections).
    """

    image: str
    prompts: str
    output: str
    label: Optional[str] = None
    label_value: Optional[int] = None
    row: int = 0
    series: Optional[str] = None
    box_ras: Optional[Tuple[Tuple[float, float, float], Tuple[float, float, float]]] = None
    auto: Optional[str] = None

    @property
    def name(self) -> str:
        """A short name for messages: the manifest row and the output's file name."""
        where = f"row {self.row} " if self.row else ""
        return f"{where}({Path(self.output).name})"


@dataclass
class CaseResult:
    """What happened to one case.

    Attributes:
        status: ``"done"`` (mask written), ``"skipped"`` (the output already existed) or ``"failed"``.
        error: one line naming the problem and the fix, when failed.
        error_type: the exception's class name, when failed.
        seconds: wall time of the case in its worker (model loading excluded).
        timings: seconds per stage: ``read_s`` (prompts + image), ``resample_s`` (to the model grid),
            ``encode_s``, ``decode_s``, ``paste_s`` (logits back onto the input grid), ``write_s``, ``score_s``.
        voxels: mask voxels (None unless done).
        dice: Dice against the manifest's label (None without one).
        worker: ``host:pid`` of the process that ran it.
        model_load_s: seconds spent loading the model for this case: > 0 only for a worker's first case.
        warnings: sentences about the input that did not stop the case (e.g. the image looks like a label map).
        cpu_s: CPU seconds of the worker process during the case, model loading excluded: every thread of the
            process counts, so what a worker runs beside the case (Dask's profiler...) shows here.
    """

    row: int
    image: str
    prompts: str
    output: str
    status: str
    error: Optional[str] = None
    error_type: Optional[str] = None
    seconds: float = 0.0
    timings: Dict[str, float] = field(default_factory=dict)
    voxels: Optional[int] = None
    dice: Optional[float] = None
    worker: str = ""
    model_load_s: float = 0.0
    warnings: List[str] = field(default_factory=list)
    cpu_s: float = 0.0

    @staticmethod
    def of(case: BatchCase, status: str, **kwargs: Any) -> CaseResult:
        return CaseResult(case.row, case.image, case.prompts, case.output, status, **kwargs)

    @property
    def name(self) -> str:
        return f"row {self.row} ({Path(self.output).name})" if self.row else Path(self.output).name

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- manifest
def read_manifest(path: PathLike) -> List[BatchCase]:
    """Read a batch manifest (see the module docstring); relative paths become absolute from its folder.

    Only the manifest itself is checked here; a missing image or prompt file fails its own case later, so one
    wrong row never stops the others.

    Raises:
        ManifestError: not found, no header/rows, missing columns, an empty required cell, a ``label_value``
            that is not an integer, an output without a mask extension, two rows with one output, or an output
            that is a row's input (:func:`check_batch_outputs`).
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"Manifest {path} not found; give a CSV with the columns {','.join(MANIFEST_REQUIRED)}.")
    base = path.resolve().parent
    data = path.read_bytes()
    try:  # UTF-8 with or without Excel's byte-order mark (it showed as an invisible character in the header)
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace")  # Excel's other CSV encoding
    # Line numbers are the file's (comments and blank lines included), so a message points at the right row.
    numbered = [(n, line) for n, line in enumerate(text.splitlines(keepends=True), start=1)
                if line.strip() and not line.lstrip().startswith("#")]
    parsed = list(csv.reader(line for _, line in numbered))
    header = [h.strip().lower() for h in (parsed[0] if parsed else [])]
    missing = [c for c in MANIFEST_REQUIRED if c not in header]
    if missing:
        raise ManifestError(f"Manifest {path} lacks the column(s) {', '.join(missing)} (header: "
                            f"{','.join(header) or 'none'}); the first row must name image,prompts,output"
                            "[,label,label_value].")
    cases: List[BatchCase] = []
    for (number, _), values in zip(numbered[1:], parsed[1:]):
        row = dict(zip(header, (v.strip() for v in values)))
        auto = row.get("auto") or None
        empty = [c for c in MANIFEST_REQUIRED if not row.get(c) and not (c == "prompts" and auto)]
        if empty:
            raise ManifestError(f"Manifest {path} row {number}: empty {', '.join(empty)}; fill it in (prompts may "
                                "stay empty when the row names an auto class) or delete the row.")
        output = str(_absolute(row["output"], base))
        if not output.lower().endswith(MASK_SUFFIXES):
            raise ManifestError(f"Manifest {path} row {number}: output {row['output']} needs one of the extensions "
                                f"{', '.join(MASK_SUFFIXES)}.")
        value = row.get("label_value") or None
        if value is not None:
            try:
                value = int(value)
            except ValueError:
                raise ManifestError(f"Manifest {path} row {number}: label_value {value!r} is not an integer; give "
                                    "the target's label value or leave it empty (label > 0).") from None
            if not row.get("label"):
                raise ManifestError(f"Manifest {path} row {number}: label_value without a label; add the label "
                                    "file or drop the value.")
        label = str(_absolute(row["label"], base)) if row.get("label") else None
        prompts = str(_absolute(row["prompts"], base)) if row.get("prompts") else ""
        cases.append(BatchCase(str(_absolute(row["image"], base)), prompts, output, label, value, number,
                               auto=auto))
    if not cases:
        raise ManifestError(f"Manifest {path} has no cases; add rows image,prompts,output below the header.")
    check_batch_outputs(cases, f"Manifest {path}")
    return cases


def _absolute(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def write_manifest(cases: Iterable[BatchCase], path: PathLike) -> Path:
    """Write cases as a manifest :func:`read_manifest` reads back (absolute paths), atomically."""
    from .io_utils import write_csv

    rows = [{"image": c.image, "prompts": c.prompts, "output": c.output, "label": c.label or "",
             "label_value": "" if c.label_value is None else c.label_value, "auto": c.auto or ""} for c in cases]
    return write_csv(rows, path, [*MANIFEST_REQUIRED, *MANIFEST_OPTIONAL], neutralise_formulas=False)


# ---------------------------------------------------------------- one case
def check_output_path(case: BatchCase) -> None:
    """Refuse, before any work, an output that is one of the case's inputs, an existing folder, lies under a
    file, has no mask extension, or spells it in upper case (:func:`~SAMVolSegmentLib.io_utils.check_output_file`).

    Raises:
        InvalidPromptError: the name does not end in one of :data:`MASK_SUFFIXES`.
        OutputPathError: see :func:`~SAMVolSegmentLib.io_utils.check_output_file`.
    """
    from .io_utils import check_output_file

    path = case.output
    if not str(path).lower().endswith(MASK_SUFFIXES):
        raise InvalidPromptError(f"Output {path} needs one of the extensions {', '.join(MASK_SUFFIXES)}.")
    check_output_file(path, inputs=[p for p in (case.image, case.prompts, case.label) if p], suffixes=MASK_SUFFIXES)


def check_batch_outputs(cases: Sequence[BatchCase], where: str = "The batch") -> None:
    """Refuse, before any case runs, two rows that write one file and an output that is any row's input.

    Paths are compared resolved (symbolic links, ``..``, ``//``) and, for files that exist, by identity (hard
    links), so ``out/x.nii.gz`` and ``out/sub/../x.nii.gz`` are one output, and a row cannot write over
    another row's image, prompt file or label (``--overwrite`` included), nor into a row's DICOM folder.

    Args:
        cases: the batch's cases.
        where: how messages name the batch (``"Manifest m.csv"``).
    Raises:
        ManifestError: the first such row; nothing has been read or written.
    """
    inputs: Dict[str, Tuple[BatchCase, str]] = {}
    identities: Dict[Tuple[int, int], Tuple[BatchCase, str]] = {}
    folders: List[Tuple[str, BatchCase]] = []
    for case in cases:
        for column, value in (("image", case.image), ("prompts", case.prompts), ("label", case.label)):
            if not value:
                continue
            resolved = os.path.realpath(value)
            inputs.setdefault(resolved, (case, column))
            identity = _file_identity(value)
            if identity is not None:
                identities.setdefault(identity, (case, column))
            if column == "image" and os.path.isdir(resolved):
                folders.append((resolved, case))
    outputs: Dict[str, BatchCase] = {}
    for case in cases:
        output = os.path.realpath(case.output)
        if output in outputs:
            first = outputs[output]
            raise ManifestError(f"{where} {_rows(first, case)} both write {output} (spelled {first.output} and "
                                f"{case.output}); give each case its own output.")
        outputs[output] = case
        identity = _file_identity(case.output)
        hit = inputs.get(output) or (identities.get(identity) if identity is not None else None)
        if hit is not None:
            owner, column = hit
            whose = "its own" if owner is case else f"the {_row_name(owner)}'s"
            raise ManifestError(f"{where} {_row_name(case)}: output {case.output} is {whose} {column} "
                                f"({getattr(owner, column)}); give the row another output so no input is "
                                "overwritten.")
        for folder, owner in folders:
            if output.startswith(folder + os.sep):
                raise ManifestError(f"{where} {_row_name(case)}: output {case.output} lies inside the DICOM folder "
                                    f"{owner.image} of {'this row' if owner is case else _row_name(owner)}; write "
                                    "masks outside image folders.")


def _file_identity(path: str) -> Optional[Tuple[int, int]]:
    """``(device, inode)`` of an existing file (hard links share it), or None."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return None
    return (status.st_dev, status.st_ino)


def _row_name(case: BatchCase) -> str:
    return f"row {case.row}" if case.row else f"case {Path(case.output).name}"


def _rows(first: BatchCase, second: BatchCase) -> str:
    if first.row and second.row:
        return f"rows {first.row} and {second.row}"
    return f"{_row_name(first)} and {_row_name(second)}"


def read_case_prompts(case: BatchCase):
    """The case's :class:`~SAMVolSegmentLib.engine.prompts_io.Prompts`, with ``case.box_ras`` replacing the file's box.

    With ``case.auto`` the proposal is the starting point: the prompts (none when ``case.prompts`` is "")
    only correct it, so they need no positive point.

    Raises:
        InvalidPromptError: missing or malformed file, or neither a positive point nor a box (nor ``auto``).
    """
    from .engine.prompts_io import Prompts, read_prompts

    if case.prompts:
        # A box given with the case, or a proposal, starts the mask: the file may then hold only negatives.
        prompts = read_prompts(case.prompts, require_positive=case.box_ras is None and not case.auto)
    elif case.auto:
        prompts = Prompts(np.zeros((0, 3)), np.zeros(0, dtype=bool))
    else:
        raise InvalidPromptError(f"{case.name}: no prompt file; give one, or an auto class to propose.")
    if case.box_ras is None:
        return prompts
    corners = np.asarray(case.box_ras, dtype=np.float64).reshape(2, 3)
    return replace(prompts, box_ras=(corners.min(axis=0), corners.max(axis=0)))


def check_prompt_arrays(
    points_ras: Any,
    positive: Any,
    box_ras: Any = None,
    *,
    proposal: bool = False,
    positive_strokes: bool = False,
) -> Tuple[np.ndarray, np.ndarray, Optional[BoxRAS]]:
    """Prompts given as arrays (the Python API, the Slicer Logic), checked before any work.

    Args:
        points_ras: (N, 3) clicks in RAS mm (N may be 0).
        positive: N signs, each a bool or the number 0 or 1 (a string, 2 or -1 is refused, not guessed).
        box_ras: optional ``(min_ras (3,), max_ras (3,))``, corners in any order.
        proposal: a proposal starts the mask, so the prompts need no positive point (they only correct it).
        positive_strokes: a positive scribble or lasso comes with the points (it counts as a positive prompt).
    Returns:
        ``(points (N, 3) float64, signs (N,) bool, box or None)``, the box as ``(min corner, max corner)``.
    Raises:
        InvalidPromptError: points not (N, 3) finite numbers, a sign that is not 0/1/bool, a different number
            of points and signs, more than :data:`~SAMVolSegmentLib.engine.prompts_io.MAX_CLICKS` points, a box that is
            not two finite 3D corners, or no positive point and no box.
    """
    from .engine.prompts_io import MAX_CLICKS, check_prompts

    try:
        points = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3)
    except (TypeError, ValueError):
        raise InvalidPromptError("Give the points as an (N, 3) list of RAS coordinates in mm.") from None
    if not np.isfinite(points).all():
        raise InvalidPromptError("A point has a coordinate that is not a finite number (NaN or infinity).")
    raw = np.asarray(positive, dtype=object).reshape(-1)
    bad = [v for v in raw if not (isinstance(v, (bool, np.bool_)) or (
        isinstance(v, (int, float, np.integer, np.floating)) and v in (0, 1)))]
    if bad:
        raise InvalidPromptError(f"Each sign must be True/False or 1/0 (1 = positive), got {bad[0]!r}.")
    signs = np.array([bool(v) for v in raw], dtype=bool)
    if len(points) != len(signs):
        raise InvalidPromptError(f"Give one sign per point: {len(points)} points but {len(signs)} positive flags.")
    if len(points) > MAX_CLICKS:  # as a prompt file: refused before the work, not at click MAX_CLICKS + 1
        raise InvalidPromptError(f"{len(points)} points; a mask takes at most {MAX_CLICKS} clicks. Keep the points "
                                 "that matter (a box plus a few clicks usually suffice).")
    box = None
    if box_ras is not None:
        try:
            corners = np.asarray(box_ras, dtype=np.float64).reshape(2, 3)
        except (TypeError, ValueError):
            raise InvalidPromptError("Give the box as two RAS corners (min_ras, max_ras), 3 numbers each.") from None
        if not np.isfinite(corners).all():
            raise InvalidPromptError("A box corner has a coordinate that is not a finite number.")
        box = (corners.min(axis=0), corners.max(axis=0))
    if not proposal:
        check_prompts(signs, box is not None, where="The prompts", positive_strokes=positive_strokes)
    return points, signs, box


def run_prompts(
    session: Any,
    image: Any,
    points_ras: np.ndarray,
    positive: np.ndarray,
    box_ras: Optional[BoxRAS] = None,
    *,
    ijk_to_ras: Optional[np.ndarray] = None,
    timings: Optional[Dict[str, float]] = None,
    on_event: Optional[EventCallback] = None,
    propose: Optional[str] = None,
    scribbles: Sequence[Any] = (),
    lassos: Sequence[Any] = (),
) -> np.ndarray:
    """The prompt sequence of :func:`segment_volume` on any open
    :class:`~SAMVolSegmentLib.engine.session_protocol.SegmentationSession` (local or ``RemoteSession``).

    Sets the volume, waits for its preprocessing, makes the ``propose`` class's proposal (if any), applies the
    box (if any), the lassos, the scribbles, then the clicks, each kind in order. Arguments as
    :func:`segment_volume`. Returns the uint8 (k, j, i) mask on the input grid.
    """
    from .engine.prompts_io import as_strokes
    from .engine.strokes import STROKE_METHODS

    timings = {} if timings is None else timings
    start = time.perf_counter()
    session.set_volume(image, ijk_to_ras)
    session.wait_until_ready()
    timings["resample_s"] = time.perf_counter() - start
    if on_event is not None:
        shape = tuple(image.shape) if isinstance(image, np.ndarray) else tuple(image.GetSize())[::-1]
        on_event("ready", {"shape_kji": shape, "seconds": timings["resample_s"]})
    steps: List[Tuple[str, Callable[[], Any], Dict[str, Any]]] = []
    if propose is not None:
        steps.append(("propose", lambda: session.propose(propose), {"class": propose}))
    if box_ras is not None:
        lo, hi = np.asarray(box_ras[0], dtype=np.float64), np.asarray(box_ras[1], dtype=np.float64)
        steps.append(("box", lambda lo=lo, hi=hi: session.set_box(lo, hi), {"min_ras": lo, "max_ras": hi}))
    for kind, strokes in (("lasso", lassos), ("scribble", scribbles)):
        for stroke in as_strokes(strokes, kind):
            add = getattr(session, STROKE_METHODS[kind], None)
            if add is None:  # an optional member of the session protocol: refused before any step runs
                raise InvalidPromptError(f"This backend ({type(session).__name__}) takes no {kind}s; use clicks and "
                                         "a box, or a local model / an up-to-date server.")
            steps.append((kind, lambda add=add, st=stroke: add(st.points_ras, st.positive),
                          {"points_ras": stroke.points_ras, "positive": stroke.positive}))
    for point, sign in zip(np.asarray(points_ras, dtype=np.float64).reshape(-1, 3),
                           np.asarray(positive, dtype=bool).reshape(-1)):
        steps.append(("click", lambda p=point, s=sign: session.add_click(p, bool(s)),
                      {"point_ras": point, "positive": bool(sign)}))
    for kind, run, info in steps:
        run()
        for key in ("encode_s", "decode_s", "paste_s"):
            timings[key] = timings.get(key, 0.0) + session.last_timing.get(key, 0.0)
        if on_event is not None:
            on_event(kind, {**info, "timing": dict(session.last_timing)})
    return session.mask_array_kji()


def segment_volume(
    model: Any,
    image: Any,
    points_ras: np.ndarray,
    positive: np.ndarray,
    box_ras: Optional[BoxRAS] = None,
    *,
    ijk_to_ras: Optional[np.ndarray] = None,
    timings: Optional[Dict[str, float]] = None,
    on_event: Optional[EventCallback] = None,
    propose: Optional[str] = None,
    scribbles: Sequence[Any] = (),
    lassos: Sequence[Any] = (),
) -> Tuple[np.ndarray, Any]:
    """Run one session: the proposal (if any), the box (if any), the lassos, the scribbles, then the clicks,
    each kind in order; the mask on the input grid.

    Args:
        model: a loaded model, a :class:`~SAMVolSegmentLib.engine.predictor.Predictor`, or a
            :class:`~SAMVolSegmentLib.remote.client.RemoteBackend` (a fresh session on its server).
        image: ``SimpleITK.Image`` (3D scalar) or a (k, j, i) numpy array with ``ijk_to_ras``.
        points_ras: (N, 3) clicks in RAS mm, applied in this order.
        positive: (N,) bool.
        box_ras: optional ``(min_ras (3,), max_ras (3,))``.
        ijk_to_ras: (4, 4) voxel (i, j, k) → RAS matrix, for an array image.
        timings: filled with ``resample_s``, ``encode_s``, ``decode_s``, ``paste_s`` (summed over steps).
        on_event: ``on_event(kind, info)`` after the volume is ready and after each proposal/box/lasso/scribble/
            click step.
        propose: a class the model proposes first (prompt-free; the model needs a proposal head).
        scribbles, lassos: :class:`~SAMVolSegmentLib.engine.prompts_io.Stroke` objects or
            ``(points_ras (N, 3), positive)`` pairs (see ``InteractiveSession.add_scribble``/``add_lasso``).
    Returns:
        The uint8 (k, j, i) mask (1 = segment) on the input image's voxel grid, and that grid's
        :class:`~SAMVolSegmentLib.engine.geometry.VolumeGeometry` (``to_sitk_image`` gives the mask file's header).
    Raises:
        InvalidImageError, InvalidPromptError: the session refused the image or a prompt.
    """
    # A remote backend (remote.RemoteBackend) opens a session on its server; anything else is a local model
    # (imported only then: a client-only install has no torch).
    open_session = getattr(model, "open_session", None)
    if open_session is None:
        from .engine.session import InteractiveSession

        open_session = lambda: InteractiveSession(model)  # noqa: E731
    with open_session() as session:
        mask_kji = run_prompts(session, image, points_ras, positive, box_ras, ijk_to_ras=ijk_to_ras,
                               timings=timings, on_event=on_event, propose=propose, scribbles=scribbles,
                               lassos=lassos)
        return mask_kji, session.geometry


@dataclass(frozen=True)
class DeferredModel:
    """A model that :func:`run_case` loads only once the case's inputs have been read and checked."""

    load: Callable[[], Any]


def run_case(case: BatchCase, model: Any, on_event: Optional[EventCallback] = None, score: bool = True) -> CaseResult:
    """Segment one case and write its mask: read prompts and image, run the session, write, score.

    Args:
        case: what to read and where to write.
        model: a loaded model / Predictor, or a :class:`DeferredModel`, loaded only once the case's inputs have
            been read and checked (a bad image or prompt file then costs no model loading).
        on_event: passed to :func:`segment_volume`.
        score: compute Dice when the case has a label.
    Returns:
        A ``"done"`` :class:`CaseResult` with per-stage timings.
    Raises:
        SAMVolSegmentError, FileNotFoundError: the case cannot be done; nothing is written (the label is read
            and checked before the model runs, and the mask is written last).
    """
    from .engine.image_checks import label_map_warning
    from .io_utils import write_image

    start, cpu_start = time.perf_counter(), time.process_time()
    timings: Dict[str, float] = {}
    check_output_path(case)
    prompts = read_case_prompts(case)  # prompts first: a wrong prompt file costs no image reading
    image = read_volume(case.image, case.series)
    found = [w for w in (label_map_warning(image),) if w]  # in the report; the session's warnings.warn too
    timings["read_s"] = time.perf_counter() - start
    target = None
    if score and case.label:  # before the model: a wrong label or label value fails the row and writes nothing
        scored_at = time.perf_counter()
        target = case_target(case)
        timings["score_s"] = time.perf_counter() - scored_at
    load_s = load_cpu_s = 0.0
    if isinstance(model, DeferredModel):
        loaded_at, load_cpu_at = time.perf_counter(), time.process_time()
        model = model.load()
        load_s, load_cpu_s = time.perf_counter() - loaded_at, time.process_time() - load_cpu_at
    mask_kji, geometry = segment_volume(model, image, prompts.points_ras, prompts.positive, prompts.box_ras,
                                        timings=timings, on_event=on_event, propose=case.auto,
                                        scribbles=prompts.scribbles, lassos=prompts.lassos)
    dice = None
    if target is not None:
        from .engine.metrics import dice as dice_of

        scored_at = time.perf_counter()
        dice = float(dice_of(mask_kji > 0, target > 0))
        timings["score_s"] += time.perf_counter() - scored_at
    written_at = time.perf_counter()
    write_image(geometry.to_sitk_image(mask_kji), case.output)  # the last step: a failed case leaves no mask
    timings["write_s"] = time.perf_counter() - written_at
    seconds = time.perf_counter() - start - load_s
    return CaseResult.of(case, "done", seconds=seconds, timings=timings, voxels=int(np.count_nonzero(mask_kji)),
                         dice=dice, worker=_worker_name(), model_load_s=load_s, warnings=found,
                         cpu_s=time.process_time() - cpu_start - load_cpu_s)


def read_volume(path: PathLike, series: Optional[str] = None):
    """Read an image (file or DICOM series folder) and check it is one 3D scalar volume.

    Runs before any model is loaded, so a wrong image costs no model loading time.

    Raises:
        InvalidImageError: unreadable, or not a 3D scalar volume (the message says what to give instead).
    """
    from .engine.preprocessing import read_image

    image = read_image(path, series_uid=series)
    if image.GetDimension() != 3:
        raise InvalidImageError(f"{path} is a {image.GetDimension()}D image; give one 3D volume (for a 4D series, "
                                "extract one time point first; a single 2D slice cannot be segmented in 3D).")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidImageError(f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                                "(vector/RGB image); extract one channel or convert it to grey first.")
    return image


def score_mask(case: BatchCase, mask_kji: np.ndarray) -> float:
    """Dice of a (k, j, i) mask against the case's label (``== label_value``, or ``> 0``).

    Raises:
        InvalidImageError: the label is unreadable, off the image's grid, or has no target voxels.
    """
    from .engine.metrics import dice

    return float(dice(mask_kji > 0, case_target(case) > 0))


def case_target(case: BatchCase) -> np.ndarray:
    """The case's binary uint8 (k, j, i) target: its label ``== label_value`` (or ``> 0``).

    Raises:
        InvalidImageError: the label is unreadable, off the image's grid, or has no target voxels (the message
            lists the values present and names the manifest's ``label_value`` column).
    """
    from .tools.evaluation import Case, load_target

    assert case.label is not None
    try:
        _, target = load_target(Case(Path(case.output).name, Path(case.image), Path(case.label), case.label_value))
    except InvalidImageError as exc:
        # evaluate's message names its --label option; a manifest row sets the value in its label_value column.
        raise InvalidImageError(str(exc).replace("Pick one of them with --label.",
                                                 "Put one of them in the row's label_value column.")) from None
    return target


# ---------------------------------------------------------------- models, once per process
_WORKER_MODELS: Dict[Tuple[str, str], Any] = {}
_WORKER_LOCK = threading.Lock()


def worker_model(model: PathLike, device: str = "cpu", threads: Optional[int] = None) -> Any:
    """The model ``(model, device)`` of this process, loaded on first use and then kept.

    Batch workers (local processes, Dask workers) call this for each case, so the model is loaded once per
    worker process. ``threads`` limits the process's threads (:func:`limit_worker_threads`; None leaves them).

    Raises:
        ModelNotAvailableError, CheckpointError: the model cannot be loaded.
    """
    key = (str(model), str(device))
    with _WORKER_LOCK:  # a Dask worker with several threads must not load the same model twice
        limit_worker_threads(threads)
        if key not in _WORKER_MODELS:
            from .model import load_model

            _WORKER_MODELS[key] = load_model(str(model), device=device)
        return _WORKER_MODELS[key]


def limit_worker_threads(threads: Optional[int]) -> None:
    """Give this process ``threads`` threads for torch (intra-op; the model's encoder, its decoder keeps one:
    ``engine/threads.py``) and SimpleITK (its filters: reading, resampling); None leaves both. SimpleITK's default is every core, so two workers on two cores would each
    resample with two threads (oversubscription) unless limited like torch."""
    if threads is None:
        return
    import SimpleITK as sitk
    import torch

    from .engine.threads import ENV_THREADS

    os.environ[ENV_THREADS] = str(int(threads))  # the Predictors this worker makes: encoder N, decoder min(N, 2)

    if torch.get_num_threads() != threads:
        torch.set_num_threads(int(threads))
    if sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() != threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))


#: glibc ``mallopt`` parameters (malloc.h) and the values :func:`relax_malloc_trimming` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_TRIM_THRESHOLD_BYTES, _MMAP_THRESHOLD_BYTES = 256 * 1024 * 1024, 32 * 1024 * 1024
_MALLOC_RELAXED = False


def relax_malloc_trimming() -> bool:
    """Undo Dask's ``MALLOC_TRIM_THRESHOLD_=65536`` in this worker process (glibc only); True if applied.

    Dask's nanny starts workers with that variable to return freed memory to the OS at once. It also freezes
    glibc's mmap threshold, so every large tensor of the encoder is mapped, faulted in and unmapped again:
    measured on this project's 2-core VM, the default model's 128³ encode took 256 ms with the variable against
    130 ms without, and 152 ms after this call (trim threshold 256 MB, mmap threshold 32 MB, glibc's maximum).
    A process without the variable is left alone.
    """
    global _MALLOC_RELAXED
    if _MALLOC_RELAXED or not os.environ.get("MALLOC_TRIM_THRESHOLD_") or not sys.platform.startswith("linux"):
        return _MALLOC_RELAXED
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries: nothing to undo
        return False
    _MALLOC_RELAXED = bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)) and bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))
    return _MALLOC_RELAXED


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _run_case_safely(case: BatchCase, model: Any, device: str, threads: Optional[int], score: bool) -> CaseResult:
    """:func:`run_case` in a worker: the model from the process's cache; every error becomes a result.

    A result with a :data:`FATAL_ERRORS` type stops the batch (the model itself is unusable).
    """
    start = time.perf_counter()
    try:
        if isinstance(model, (str, Path)):
            limit_worker_threads(threads)  # before the case's reading and resampling, not only the model's work
            relax_malloc_trimming()
            name = model
            cached = (str(name), str(device)) in _WORKER_MODELS
            result = run_case(case, DeferredModel(lambda: worker_model(name, device, threads)), score=score)
            # Only the load that really happened counts (a cached lookup is not a model load).
            return result if not cached else replace(result, model_load_s=0.0)
        return run_case(case, model, score=score)
    except Exception as exc:  # any failure is this case's alone: recorded, and the batch goes on
        # One line per failure: the engine's messages already name the fix; others get their type and place.
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not isinstance(exc, SAMVolSegmentError):
            message = f"{type(exc).__name__}: {message}"
            if not isinstance(exc, (OSError, MemoryError)):
                message += f" ({_last_frame(exc)})"
        return CaseResult.of(case, "failed", error=message, error_type=type(exc).__name__,
                             seconds=time.perf_counter() - start, worker=_worker_name())


def _last_frame(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f"at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "no traceback"


# ---------------------------------------------------------------- many cases
def segment_cases(
    manifest: Union[PathLike, Sequence[BatchCase]],
    model: Any = "default",
    *,
    device: str = "cpu",
    workers: int = 1,
    scheduler: Any = None,
    threads: Optional[int] = None,
    overwrite: bool = False,
    score: bool = True,
) -> Iterator[CaseResult]:
    """Segment many cases; yields one :class:`CaseResult` per case as each finishes (skipped ones first).

    Args:
        manifest: a manifest CSV path, or :class:`BatchCase` objects.
        model: registry name or checkpoint path (loaded once per process); in serial mode also a loaded model
            or a :class:`~SAMVolSegmentLib.remote.client.RemoteBackend` (each case in a fresh server session).
        device: torch device of every worker.
        workers: local worker processes (1 = serial in this process).
        scheduler: a Dask scheduler address (``tcp://host:8786``) or a ``distributed.Client``; overrides
            ``workers``.
        threads: torch threads per worker process (None: leave torch's default; for equal total threads on a
            machine with C cores give C // workers).
        overwrite: redo cases whose output exists (default: skip them; that is how a batch resumes).
        score: Dice against the manifest's labels.
    Raises:
        ManifestError: the manifest is unusable, two cases write one file or a case would write over an input
            (before any case runs, ``overwrite`` or not).
        ModelNotAvailableError, CheckpointError: the model cannot be loaded (the batch stops).
    """
    from .io_utils import is_complete_image, remove_stale_temporaries

    if isinstance(manifest, (str, Path)):
        cases = read_manifest(manifest)
    else:
        cases = list(manifest)
        check_batch_outputs(cases)
    if workers < 1:
        raise ManifestError(f"workers must be at least 1, got {workers}.")
    if hasattr(model, "open_session") and (scheduler is not None or workers > 1):  # before any file is touched
        raise ManifestError("With a remote server, run the batch serially (no workers or scheduler): the server runs "
                            "one model worker, so parallel clients only queue there.")
    todo = []
    for case in cases:
        if not overwrite and is_complete_image(case.output):  # an empty or unreadable file is redone
            yield CaseResult.of(case, "skipped")
        else:
            remove_stale_temporaries(case.output)  # a killed earlier run's half-written mask; nothing runs yet
            todo.append(case)
    if not todo:
        return
    if scheduler is not None:
        if not isinstance(model, (str, Path)):
            raise ManifestError("With a Dask scheduler, give the model by registry name or checkpoint path: each "
                                "worker loads it once.")
        results: Iterable[CaseResult] = _run_dask(todo, scheduler, str(model), device, threads, score)
    elif workers > 1:
        if not isinstance(model, (str, Path)):
            raise ManifestError("With workers > 1, give the model by registry name or checkpoint path: each worker "
                                "process loads it once.")
        results = _run_processes(todo, workers, str(model), device, threads, score)
    else:
        results = (_run_case_safely(case, model, device, threads, score) for case in todo)
    try:
        for result in results:
            if result.error_type in {e.__name__ for e in FATAL_ERRORS}:
                error_class = next(e for e in FATAL_ERRORS if e.__name__ == result.error_type)
                raise error_class(result.error or "the model cannot be loaded")
            yield result
    finally:  # stopped or failed: the workers stop now, not when the garbage collector finds this generator
        close = getattr(results, "close", None)
        if close is not None:
            close()


def _run_processes(cases: List[BatchCase], workers: int, model: str, device: str, threads: Optional[int],
                   score: bool) -> Iterator[CaseResult]:
    """Cases on a pool of ``spawn`` processes; a pool whose worker died is restarted for the pending cases.

    Stopping (an exception in the caller, e.g. Ctrl-C or :class:`~SAMVolSegmentLib.errors.StopRequested`, or
    closing this generator) terminates the workers at once instead of waiting for their cases, then removes
    the temporaries they were writing. The workers ignore Ctrl-C and SIGHUP (the batch decides; a Ctrl-C to the
    process group printed a traceback per worker) and, on Linux, die with the batch even when it is killed.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    pending = list(cases)
    restarts = 0
    while pending:
        finished: List[BatchCase] = []
        broken = False
        pool = None
        try:
            with _stop_signals_blocked():  # spawned workers start with them blocked (no window before their set-up)
                # spawn: a forked child would inherit torch's thread pools and locks mid-state.
                pool = ProcessPoolExecutor(max_workers=min(workers, len(pending)),
                                           mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_init_worker_process, initargs=(os.getpid(),))
                futures = {pool.submit(_run_case_safely, case, model, device, threads, score): case
                           for case in pending}
            # A Ctrl-C that came while the signals were blocked is raised here, inside the try.
            for future in as_completed(futures):
                try:
                    result = future.result()
                except BrokenProcessPool:
                    broken = True
                    break
                finished.append(futures[future])
                yield result
        except BaseException:  # a stop (Ctrl-C, SIGTERM, the caller closed us): no case is waited for
            if pool is not None:
                _terminate_pool(pool)
            from .io_utils import remove_stale_temporaries

            for case in pending:
                remove_stale_temporaries(case.output)
            raise
        assert pool is not None
        pool.shutdown(wait=not broken, cancel_futures=True)
        done = {id(c) for c in finished}
        pending = [c for c in pending if id(c) not in done]
        if not broken:
            return
        restarts += 1
        if restarts > MAX_POOL_RESTARTS:
            for case in pending:
                yield CaseResult.of(case, "failed", error_type="WorkerDied", worker="",
                                    error=f"a worker process died {restarts} times (killed, or out of memory) while "
                                          "this case was pending; rerun the batch to finish it (or run it alone "
                                          "with samvolseg segment to see whether it is the cause).")
            return


def quiet_input_warnings() -> None:
    """Silence :class:`~SAMVolSegmentLib.errors.LabelMapWarning` in this process: a batch worker's or the CLI's
    results carry them (``CaseResult.warnings``), so the session's Python warning would only repeat them."""
    import warnings

    from .errors import LabelMapWarning

    warnings.filterwarnings("ignore", category=LabelMapWarning)


#: Signals a batch's worker processes leave to the batch (it stops them); SIGTERM keeps its default (death).
_WORKER_IGNORED_SIGNALS = ("SIGINT", "SIGHUP")


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Block Ctrl-C and SIGHUP in this thread while worker processes are spawned (they inherit the mask, so
    they cannot be interrupted before :func:`_init_worker_process` ignores them); a signal that arrives
    meanwhile is delivered to this process once unblocked. Does nothing where signal masks do not exist."""
    import signal

    numbers = {getattr(signal, name) for name in _WORKER_IGNORED_SIGNALS if hasattr(signal, name)}
    if not hasattr(signal, "pthread_sigmask") or not numbers:
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, numbers)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _init_worker_process(parent_pid: int) -> None:
    """Set up a batch worker process: Ctrl-C and SIGHUP ignored, (Linux) SIGTERM when the batch dies, and the
    label-map warning left to the case results (:func:`quiet_input_warnings`)."""
    import signal

    for name in _WORKER_IGNORED_SIGNALS:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the batch died before the line above: nobody waits for this worker
        os._exit(1)
    quiet_input_warnings()


def _terminate_pool(pool: Any) -> None:
    """Stop a ``ProcessPoolExecutor`` now: cancel its queued cases and terminate its workers (not waited for by
    ``shutdown``, which lets running cases finish)."""
    workers = getattr(pool, "_processes", None)  # {pid: Process} in Python 3.9-3.13 (no public way before 3.14)
    processes = list(workers.values()) if isinstance(workers, dict) else []
    for process in processes:
        with contextlib.suppress(Exception):
            process.terminate()
    deadline = time.monotonic() + 5.0
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(1.0)
    pool.shutdown(wait=True, cancel_futures=True)


#: Dask settings for clusters that run batch cases (:func:`local_cluster` sets them; for a cluster of your own,
#: put them in its Dask configuration, README "Batch"; without them the batch pauses the profiler itself while
#: its cases run, :func:`_profiler_paused`). The worker's statistical profiler samples the task thread's stack
#: every 10 ms: in one run of ``benchmarks/batch_throughput.py`` (2-core VM, 180 cases per set-up) a case cost
#: 8.7 % more CPU in a Dask worker than in a plain worker process with it, 2.7 % more with it paused by the
#: batch and 3.6 % less with it disabled here. Dask's other extra, the nanny's ``MALLOC_TRIM_THRESHOLD_``, is
#: best kept: :func:`relax_malloc_trimming` then sets glibc's thresholds, and workers without the variable
#: (glibc's own dynamic thresholds) took ~17 % more CPU per case in an earlier run. A slower event-loop tick and
#: system monitor saved ~1 % of CPU but made a batch's wall time ~25 % longer. A case returns a small
#: :class:`CaseResult` (the worker writes its mask), so nothing large goes through the scheduler.
DASK_BATCH_CONFIG: Dict[str, Any] = {"distributed.worker.profile.enabled": False}


@contextlib.contextmanager
def local_cluster(workers: int = 2, threads: int = 1, **kwargs: Any) -> Iterator[Any]:
    """A Dask ``LocalCluster`` of ``workers`` processes × ``threads`` task threads set up for batch cases
    (:data:`DASK_BATCH_CONFIG`); give its ``scheduler_address`` (or a ``Client`` on it) to :func:`segment_cases`.

    Dask's nannies run in this process and copy their worker environment into ``os.environ`` (Dask's
    ``pre-spawn-environ``: ``OMP_NUM_THREADS=1`` and more); it is restored when the cluster closes. ``kwargs`` go
    to ``LocalCluster`` (e.g. ``memory_limit``).

    Raises:
        SAMVolSegmentError: Dask distributed is not installed.
    """
    try:
        import dask
        from distributed import LocalCluster
    except ImportError:
        raise SAMVolSegmentError("A local Dask cluster needs Dask distributed: pip install 'samvolsegment[batch]' "
                                 "(or dask[distributed]).") from None
    saved = dict(os.environ)
    try:
        with dask.config.set(DASK_BATCH_CONFIG):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                                   **{"dashboard_address": None, **kwargs})
        with cluster:
            yield cluster
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _set_worker_profiling(enabled: bool, dask_worker: Any = None) -> bool:
    """Run on a Dask worker (``Client.run``): stop or restart its statistical profiler; True if it was running
    (stopping) or was restarted. A worker without one (``profile.enabled: False``) is left alone."""
    callbacks = getattr(dask_worker, "periodic_callbacks", {})
    changed = False
    for name in ("profile", "profile-cycle"):
        callback = callbacks.get(name)
        if callback is None or callback.is_running() == enabled:
            continue
        if enabled:
            callback.start()
        else:
            callback.stop()
        changed = True
    return changed


@contextlib.contextmanager
def _profiler_paused(client: Any) -> Iterator[None]:
    """Stop the statistical profiler of the cluster's workers while the batch runs, and restart it on those
    where it ran (see :data:`DASK_BATCH_CONFIG`); a cluster that refuses ``Client.run`` is left as it is."""
    paused: List[str] = []
    try:
        paused = [address for address, stopped in client.run(_set_worker_profiling, False).items() if stopped]
    except Exception:  # a cluster that runs no functions (a security policy): the batch is only slower
        pass
    try:
        yield
    finally:
        if paused:
            with contextlib.suppress(Exception):  # workers gone meanwhile, a closed connection: nothing to restart
                client.run(_set_worker_profiling, True, workers=paused)


def _run_dask(cases: List[BatchCase], scheduler: Any, model: str, device: str, threads: Optional[int],
              score: bool) -> Iterator[CaseResult]:
    """Cases as Dask tasks; a task whose worker died is rescheduled by Dask, then reported as failed.

    The workers' profiler is paused while the cases run (:func:`_profiler_paused`); each worker writes its masks
    and returns a small :class:`CaseResult`."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise SAMVolSegmentError("A Dask scheduler needs Dask distributed: pip install 'samvolsegment[batch]' "
                                 "(or dask[distributed]).") from None
    own_client = not isinstance(scheduler, Client)
    try:
        client = Client(scheduler, timeout="20s") if own_client else scheduler
    except (OSError, TimeoutError) as exc:
        raise ServerUnavailableError(f"Cannot reach the Dask scheduler {scheduler} ({exc}); check the address "
                                     "(tcp://host:8786) and that the scheduler runs.") from None
    try:
        with _profiler_paused(client):
            yield from _dask_results(client, as_completed, cases, model, device, threads, score)
    finally:
        if own_client:
            client.close()


def _dask_results(client: Any, as_completed: Callable, cases: List[BatchCase], model: str, device: str,
                  threads: Optional[int], score: bool) -> Iterator[CaseResult]:
    """The cases' results from ``client`` as they finish; a case Dask could not run is a failed result."""
    futures = {client.submit(_run_case_safely, case, model, device, threads, score, pure=False): case
               for case in cases}
    for future in as_completed(futures):
        case = futures[future]
        try:
            yield future.result()
        except Exception as exc:  # KilledWorker, lost connection...: this case only; the others go on
            yield CaseResult.of(case, "failed", error_type=type(exc).__name__,
                                error=f"Dask could not run the case ({type(exc).__name__}: "
                                      f"{str(exc).splitlines()[0] if str(exc) else ''}); rerun the batch to "
                                      "finish it.")


# ---------------------------------------------------------------- report
def run_batch(
    manifest: PathLike,
    report: Optional[PathLike] = None,
    *,
    progress: Optional[ProgressCallback] = None,
    on_result: Optional[Callable[[CaseResult], None]] = None,
    **options: Any,
) -> Dict[str, Any]:
    """:func:`segment_cases` with a JSON report rewritten (atomically) after every case; returns the summary.

    The report holds the summary and one entry per case (status, error, seconds, stage timings, Dice...). A
    case skipped because an earlier run wrote it keeps that run's entry, marked ``"skipped"``.

    Args:
        manifest: the manifest CSV.
        report: report path (default ``<manifest without .csv>.report.json`` beside the manifest).
        progress: ``progress(fraction, message)`` after each case.
        on_result: called with each result (e.g. to print failures).
        options: passed to :func:`segment_cases` (model, device, workers, scheduler, threads, overwrite).
    """
    from .io_utils import write_json

    manifest = Path(manifest)
    cases = read_manifest(manifest)
    report_path = Path(report) if report is not None else manifest.with_name(manifest.stem + ".report.json")
    previous = _previous_entries(report_path)
    entries: Dict[int, Dict[str, Any]] = {}
    start = time.perf_counter()
    mode = ("dask " + str(options["scheduler"])) if options.get("scheduler") is not None else (
        f"{options.get('workers', 1)} local processes" if options.get("workers", 1) > 1 else "serial")
    summary: Dict[str, Any] = {}

    def write() -> None:
        summary.update(summarise(entries.values(), len(cases), time.perf_counter() - start))
        summary.update(manifest=str(manifest), mode=mode, model=str(options.get("model", "default")))
        ordered = [entries[c.row] for c in cases if c.row in entries]
        write_json({"summary": summary, "cases": ordered}, report_path)

    results = segment_cases(cases, **options)
    with contextlib.closing(results):  # a Ctrl-C or stop signal stops the workers before it propagates
        for result in results:
            entry = result.to_json()
            if result.status == "skipped" and result.output in previous:
                entry = {**previous[result.output], "status": "skipped"}
            entries[result.row] = entry
            write()
            if on_result is not None:
                on_result(result)
            if progress is not None:
                progress(len(entries) / len(cases), f"{result.name} {result.status}")
    write()
    summary["report"] = str(report_path)
    return summary


def _previous_entries(path: Path) -> Dict[str, Dict[str, Any]]:
    """Entries of finished cases in an earlier report, by output path (unreadable report: none)."""
    try:
        data = json.loads(path.read_text())
        return {e["output"]: e for e in data.get("cases", []) if e.get("status") in ("done", "skipped")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def summarise(entries: Iterable[Dict[str, Any]], total: int, wall_s: float) -> Dict[str, Any]:
    """Counts per status, wall time, throughput of the cases run now, mean stage timings and Dice."""
    entries = list(entries)
    counts = {s: sum(1 for e in entries if e["status"] == s) for s in ("done", "skipped", "failed")}
    done_now = [e for e in entries if e["status"] == "done"]
    stages: Dict[str, float] = {}
    for e in done_now:
        for key, value in e.get("timings", {}).items():
            stages[key] = stages.get(key, 0.0) + value / len(done_now)
    dices = [e["dice"] for e in entries if e.get("dice") is not None and e["status"] in ("done", "skipped")]
    return {
        "cases": total, **counts, "wall_s": wall_s,
        "cases_per_minute": (60.0 * len(done_now) / wall_s) if done_now and wall_s > 0 else None,
        "mean_stage_s": stages, "mean_dice": float(np.mean(dices)) if dices else None,
        "failed_rows": [e["row"] for e in entries if e["status"] == "failed"],
    }


def summary_line(summary: Dict[str, Any]) -> str:
    """``batch: 10 cases: 7 done, 2 skipped, 1 failed in 42.1 s (10.0 cases/min); report X``."""
    rate = summary.get("cases_per_minute")
    line = (f"batch: {summary['cases']} cases: {summary['done']} done, {summary['skipped']} skipped (already "
            f"written), {summary['failed']} failed in {summary['wall_s']:.1f} s")
    if rate:
        line += f" ({rate:.1f} cases/min)"
    if summary.get("mean_dice") is not None:
        line += f"; mean Dice {summary['mean_dice']:.3f}"
    if summary.get("failed_rows"):
        line += f"; failed rows {', '.join(str(r) for r in summary['failed_rows'][:20])}"
    return line + (f"; report {summary['report']}" if summary.get("report") else "")


# ---------------------------------------------------------------- Python API
def segment(
    image: Any,
    points_ras: Sequence[Sequence[float]],
    positive: Sequence[bool],
    box_ras: Optional[Tuple[Sequence[float], Sequence[float]]] = None,
    model: Any = "default",
    *,
    device: str = "cpu",
    ijk_to_ras: Optional[np.ndarray] = None,
    series: Optional[str] = None,
    auto: Optional[str] = None,
    scribbles: Sequence[Any] = (),
    lassos: Sequence[Any] = (),
) -> Any:
    """Segment one structure from prompts; the mask on the input geometry.

    Args:
        image: ``SimpleITK.Image``; a path to an image file or a DICOM series folder; or a (k, j, i) numpy
            array with ``ijk_to_ras`` (e.g. Slicer's ``arrayFromVolume`` and the volume's IJK→world matrix).
        points_ras: (N, 3) clicks in RAS mm (world), applied in this order.
        positive: (N,) bools (or 1/0), True = on the structure.
        box_ras: optional ``(min_ras (3,), max_ras (3,))`` box (corners in any order).
        model: registry name or checkpoint path (loaded once per process and kept), a loaded model, or a
            :class:`~SAMVolSegmentLib.engine.predictor.Predictor`.
        device: torch device when ``model`` is a name or path.
        ijk_to_ras: (4, 4) voxel (i, j, k) → RAS matrix, for an array image.
        series: DICOM series UID when a folder holds several series.
        auto: a class the model proposes first, prompt-free (a model made by ``samvolseg teach``); the points
            and box, which may then be empty, correct the proposal.
        scribbles: freehand strokes, each ``(points_ras (N, 3), positive)``: the voxels a stroke passes keep its
            sign (``InteractiveSession.add_scribble``).
        lassos: closed contours on one plane, each ``(points_ras (N ≥ 3, 3), positive)``: the enclosed polygon
            is the prompt (``InteractiveSession.add_lasso``). Applied after the box, before scribbles and clicks.
    Returns:
        A uint8 ``SimpleITK.Image`` (1 = structure) with the image's geometry, or for an array image a uint8
        (k, j, i) array.
    Raises:
        InvalidPromptError: the prompts are malformed (:func:`check_prompt_arrays`), or no positive point and
            no box.
        InvalidImageError: the image cannot be read or segmented.
    """
    from .engine.prompts_io import as_strokes

    scribbles, lassos = as_strokes(scribbles, "scribble"), as_strokes(lassos, "lasso")
    points, signs, box = check_prompt_arrays(points_ras, positive, box_ras, proposal=auto is not None,
                                             positive_strokes=any(s.positive for s in (*scribbles, *lassos)))
    if isinstance(image, (str, Path)):
        image = read_volume(image, series)
    if isinstance(model, (str, Path)):
        model = worker_model(model, device)  # kept: a loop over many volumes loads it once
    mask_kji, geometry = segment_volume(model, image, points, signs, box, ijk_to_ras=ijk_to_ras, propose=auto,
                                        scribbles=scribbles, lassos=lassos)
    return mask_kji if isinstance(image, np.ndarray) else geometry.to_sitk_image(mask_kji)
