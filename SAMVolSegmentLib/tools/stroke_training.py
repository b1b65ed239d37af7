"""Scribble and lasso prompts in training episodes (issue 24).

The session gives a model a scribble or lasso as clicks plus, for a model declaring ``stroke_prompts``, the
drawn voxels in its mask prompt (``InteractiveSession._with_drawn``). Training simulates the same thing on an
episode's low-res grid, with the evaluation's simulators (:mod:`.stroke_simulation`) and the engine's own stroke
code (:mod:`SAMVolSegmentLib.engine.strokes`) on a grid whose world coordinates are its (permuted) voxel indices
times the low-res voxel's millimetres, so the model sees in training what it gets at inference.

Coordinates: ``_low`` indices of the (L, L, L) low-res grid in tensor order (R, A, S); ``_roi`` ROI voxel
indices (S grid, tensor order) as the decoder takes clicks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..engine.geometry import MODEL_SPACING_MM, VolumeGeometry
from ..engine.session import SEED_MASK_LOGIT
from ..engine.strokes import lasso_prompt, scribble_prompt
from ..errors import InvalidPromptError
from .stroke_simulation import SimulatedStroke, correction_scribble, simulate_lasso, simulate_scribble

#: Of the first strokes of a stroke episode, this share are lassos (the rest positive scribbles).
LASSO_SHARE = 0.6
#: A lasso's slice axis is the ROI's S axis (axial views) this often, else a random axis.
AXIAL_SHARE = 0.7
#: The low-res grid's voxel (mm): half the ROI's resolution on the model grid, whatever the ROI's size.
LOW_RES_MM = 2 * MODEL_SPACING_MM


@dataclass(frozen=True)
class LowResStroke:
    """A simulated stroke as the decoder gets it: ``points_roi`` (n, 3) float32 clicks (ROI voxel indices), their
    sign ``positive``, ``drawn_low`` (L, L, L) bool: the low-res voxels it draws, and its ``kind`` ("lasso" or
    "scribble")."""

    points_roi: np.ndarray
    positive: bool
    drawn_low: np.ndarray
    kind: str = "scribble"


def _permuted(axis: int, low: int):
    """The grid of ``np.moveaxis(x, axis, 0)`` of an (L, L, L) tensor-order array at ``LOW_RES_MM`` (world
    point = voxel (i, j, k) × LOW_RES_MM, so strokes get the millimetres they have at inference), and the map of
    world points back to tensor-order indices."""
    geometry = VolumeGeometry.from_matrix(np.diag([LOW_RES_MM, LOW_RES_MM, LOW_RES_MM, 1.0]), (low, low, low))
    others = [a for a in range(3) if a != axis]

    def to_tensor_order(points_ras: np.ndarray) -> np.ndarray:
        points_ijk = points_ras / LOW_RES_MM
        out = np.empty_like(points_ijk)
        out[:, axis], out[:, others[0]], out[:, others[1]] = points_ijk[:, 2], points_ijk[:, 1], points_ijk[:, 0]
        return out

    return geometry, to_tensor_order


def _on_low_grid(stroke: Optional[SimulatedStroke], axis: int, low: int, image_size: int) -> Optional[LowResStroke]:
    if stroke is None:
        return None
    geometry, to_tensor_order = _permuted(axis, low)
    make = lasso_prompt if stroke.kind == "lasso" else scribble_prompt
    try:
        prompt = make(geometry, stroke.points_ras, stroke.positive)
    except InvalidPromptError:  # a sliver the engine would refuse too: the episode takes a click instead
        return None
    drawn = np.zeros((low, low, low), dtype=bool)
    drawn[tuple(slice(lo, hi) for lo, hi in prompt.bbox_kji)] = prompt.voxels_kji
    points_low = to_tensor_order(prompt.clicks_ras)
    points_roi = (points_low + 0.5) * image_size / low - 0.5
    return LowResStroke(points_roi.astype(np.float32), bool(stroke.positive), np.moveaxis(drawn, 0, axis), stroke.kind)


def first_stroke(target_low: np.ndarray, rng: np.random.Generator, image_size: int) -> Optional[LowResStroke]:
    """The first prompt of a stroke episode: a lasso (on the largest cross-section 70 % of the time, else a random
    occupied slice; drawn exactly, one voxel out or in, with ±0.3-voxel jitter half the time) or a positive
    scribble inside the target, on an axial slice or (30 %) another axis. None when none can be drawn."""
    truth = target_low >= 0.5
    if not truth.any():
        return None
    low = truth.shape[0]
    axis = 2 if rng.random() < AXIAL_SHARE else int(rng.integers(3))
    region = np.moveaxis(truth, axis, 0)
    geometry, _ = _permuted(axis, low)
    try:
        if rng.random() < LASSO_SHARE:
            occupied = np.flatnonzero(region.any(axis=(1, 2)))
            slice_k = None if rng.random() < 0.7 else int(rng.choice(occupied))
            stroke = simulate_lasso(region, geometry, slice_k=slice_k, margin_voxels=int(rng.choice([-1, 0, 0, 1])),
                                    jitter_mm=0.3 if rng.random() < 0.5 else 0.0, seed=int(rng.integers(1 << 31)))
        else:
            stroke = simulate_scribble(region, geometry, positive=True)
    except InvalidPromptError:
        return None
    return _on_low_grid(stroke, axis, low, image_size)


def correction_stroke(target_low: np.ndarray, prediction_low: np.ndarray, rng: np.random.Generator,
                      image_size: int) -> Optional[LowResStroke]:
    """A scribble in the prediction's largest error component (positive in a miss, negative in a false
    positive), on an axial slice or (30 %) another axis; None when the prediction is right or no stroke fits."""
    low = target_low.shape[0]
    axis = 2 if rng.random() < AXIAL_SHARE else int(rng.integers(3))
    geometry, _ = _permuted(axis, low)
    try:
        stroke = correction_scribble(np.moveaxis(target_low >= 0.5, axis, 0),
                                     np.moveaxis(np.asarray(prediction_low, bool), axis, 0), geometry)
    except InvalidPromptError:
        return None
    return _on_low_grid(stroke, axis, low, image_size)


def with_drawn(logits_low: torch.Tensor, stroke: LowResStroke) -> torch.Tensor:
    """(L, L, L) mask-prompt logits with the stroke's voxels at least ``SEED_MASK_LOGIT`` confident of its sign
    (what the session does on the ROI's low-res grid)."""
    drawn = torch.from_numpy(stroke.drawn_low).to(logits_low.device)
    if stroke.positive:
        return torch.where(drawn, logits_low.clamp_min(SEED_MASK_LOGIT), logits_low)
    return torch.where(drawn, logits_low.clamp_max(-SEED_MASK_LOGIT), logits_low)
