"""Training the bundled default model and fine-tuning any model on labelled cases.

Samples come from :mod:`SAMVolSegmentLib.tools.training_data` (real ROIs on the inference model grid, balanced by
source, augmented; label-map re-synthesis; synthetic blobs). Each episode encodes the ROI once and simulates
several clicks: the first at the target's deepest point (sometimes a random interior point), each next one at
the deepest point of the largest error region, with the previous logits fed back — the loop the session runs.
As in RITM, only two of the clicks carry gradients (the first, and one drawn from the rest); the others run
without autograd, which makes an episode about twice as cheap. The loss is BCE + soft Dice on the model's
low-res grid (+ the coarse logits and the IoU head for ClickNet2). Runs are bounded in wall-clock minutes,
checkpoint atomically, resume exactly, and export the weights file the package ships.

v3 additions (all off by default, so the v2 recipe is unchanged): box episodes for models with a box input
(the CVPR 2025 challenge's box — a 2D box on the middle slice + the z range — or a full 3D box, both jittered;
the first step then has the box and no click), corrective clicks drawn with the challenge's rule for a share of
the episodes, and a locality loss on correction steps that penalises voxels far from the new click which were
right before the click and got worse (:func:`locality_loss`). The ROI is normalised with the model's own rule
(:func:`~SAMVolSegmentLib.engine.preprocessing.model_normalization`).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.clicks import CVPR25_CLICKS, SAMVOLSEG_CLICKS, ClickRule
from ..engine.preprocessing import model_normalization, normalize_roi
from ..io_utils import atomic_path
from ..model.adapters import (
    has_adapters,
    inject_adapters,
    is_adapter_parameter,
    load_adapter_state_dict,
    save_adapters,
)
from .stroke_training import correction_stroke, first_stroke, with_drawn
from .training_data import SampleSource

#: Development cases of ../shared/data with expert labels: the report set, never trained on.
REPORT_CASES = ("ct_deeplesion_000001_lesion", "ct_ibsi_sts003_sarcoma", "ct_msd_spleen2_spleen",
                "mr_brats2013_pat0001_flair_glioma", "mr_ibsi_sts010_t1_sarcoma", "mr_msd_hippocampus_003",
                "mr_pyradiomics_brain1_lesion", "mr_sct_t2_spinalcord")
#: ROI edges (model voxels) drawn for ClickNet2 training, with their probabilities: mostly 96³ (2.4× cheaper
#: than 128³; the network is fully convolutional), some 128³ so the inference size is seen too.
TRAIN_ROI_SIZES = ((96, 0.8), (128, 0.2))
#: Box prompts of box episodes: the challenge's (2D box on the middle slice + z range) or a full 3D box.
BOX_KINDS = ("challenge", "full")
#: Locality loss: voxels farther than this many low-res voxels (+ half the target's equivalent radius) from the
#: new click count as "far".
LOCALITY_MIN_RADIUS_LOW = 4.0
#: Clocks a run's budget can count (:func:`train`'s ``clock``).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def low_res_target(label_roi: np.ndarray, low: int) -> np.ndarray:
    """Area-averaged (soft) target on the low-res grid."""
    factor = label_roi.shape[0] // low
    return label_roi.reshape(low, factor, low, factor, low, factor).mean(axis=(1, 3, 5)).astype(np.float32)


def simulate_click(target_low: np.ndarray, prediction_low: Optional[np.ndarray], rng: np.random.Generator,
                   image_size: int, rule: ClickRule = SAMVOLSEG_CLICKS) -> Tuple[np.ndarray, int]:
    """Next click in ROI voxel coordinates (R, A, S) and its label (1/0), from low-res masks.

    The evaluation's click placement (:func:`~SAMVolSegmentLib.engine.clicks.next_click`: the deepest point of the
    largest error component, on the low-res grid), with training's randomness on top: the first click is at the
    target's deepest point 70 % of the time and at a random target voxel otherwise, and every click moves by up
    to half a low-res voxel.
    """
    from ..engine.clicks import deepest_point, next_click

    low = target_low.shape[0]
    truth = target_low >= 0.5
    if not truth.any():
        truth = target_low > 0
    unit = (1.0, 1.0, 1.0)
    click = None if prediction_low is None else next_click(truth, prediction_low, unit, rule)
    if prediction_low is not None and click is None:  # perfect already: confirm the target
        click = (deepest_point(truth, unit), True)
    if click is None:
        index = deepest_point(truth, unit) if rng.random() < 0.7 else tuple(np.argwhere(truth)[rng.integers(truth.sum())])
        label = 1
    else:
        index, label = click[0], int(click[1])
    scale = image_size / low
    point = (np.asarray(index) + 0.5) * scale - 0.5 + rng.uniform(-scale / 2, scale / 2, 3)
    return point.astype(np.float32), int(label)


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: float) -> torch.Tensor:
    """BCE over every voxel (positives weighted by ``pos_weight``) + the batch mean of 1 − soft Dice, for
    (B, C, D, H, W) logits and a target of the same shape in [0, 1]: the loss of the click models' training
    and of the proposal head."""
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(pos_weight, device=logits.device))
    prob = torch.sigmoid(logits)
    inter = (prob * target).flatten(1).sum(1)
    soft_dice = (2 * inter + 1) / (prob.flatten(1).sum(1) + target.flatten(1).sum(1) + 1)
    return bce + (1 - soft_dice).mean()


def training_box(target_roi: np.ndarray, rng: np.random.Generator, kind: str) -> np.ndarray:
    """A jittered box prompt for a non-empty (S, S, S) binary target: (2, 3) float32, lower/upper corner in
    continuous ROI voxel indices (voxel v spans [v − 0.5, v + 0.5]), the format of
    :meth:`~SAMVolSegmentLib.model.clicknet2.ClickNet2.box_channel`.

    ``kind`` "full": the target's 3D bounding box; "challenge": the CVPR 2025 box
    (:func:`~SAMVolSegmentLib.tools.cvpr25.challenge_box`): the full extent along a slice axis (the last, S, 70 % of
    the time, as axial images map k to S; else a random axis) and, across it, the target's extent on the middle
    occupied slice only. Each face then moves out by 0–3 voxels (in by 1 voxel 10 % of the time).
    """
    occupied = [np.flatnonzero(target_roi.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    lo = np.array([o[0] for o in occupied], dtype=np.float64)
    hi = np.array([o[-1] for o in occupied], dtype=np.float64)
    if kind == "challenge":
        axis = 2 if rng.random() < 0.7 else int(rng.integers(3))
        middle = int(occupied[axis][len(occupied[axis]) // 2])
        plane = np.take(target_roi, middle, axis=axis)
        others = [a for a in range(3) if a != axis]
        for dim, a in enumerate(others):
            used = np.flatnonzero(plane.any(axis=1 - dim))
            lo[a], hi[a] = used[0], used[-1]
    elif kind != "full":
        raise ValueError(f"box kind must be one of {BOX_KINDS}, got {kind!r}")
    grow_lo = np.where(rng.random(3) < 0.1, -1, rng.integers(0, 4, 3))
    grow_hi = np.where(rng.random(3) < 0.1, -1, rng.integers(0, 4, 3))
    lo, hi = lo - 0.5 - grow_lo, hi + 0.5 + grow_hi
    hi = np.maximum(hi, lo + 1.0)
    return np.stack([lo, hi]).astype(np.float32)


def training_seed(target_low: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A seed mask prompt as the session gives a new ROI (its current mask there, ±``SEED_MASK_LOGIT``): an
    imperfect copy of the (L, L, L) soft target — at half resolution (the coarse context's 6 mm mask), dilated
    by 1–2 voxels or eroded by 1 — as float32 (L, L, L) logits."""
    from scipy import ndimage

    from ..engine.session import SEED_MASK_LOGIT

    mask = target_low >= 0.5
    kind = int(rng.integers(3))
    if kind == 0 and mask.shape[0] % 2 == 0:
        half = low_res_target(mask.astype(np.float32), mask.shape[0] // 2) >= 0.5
        mask = half.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    elif kind == 1:
        mask = ndimage.binary_dilation(mask, iterations=int(rng.integers(1, 3)))
    else:
        eroded = ndimage.binary_erosion(mask)
        mask = eroded if eroded.any() else mask
    return ((mask.astype(np.float32) * 2 - 1) * SEED_MASK_LOGIT).astype(np.float32)


def locality_loss(logits: torch.Tensor, previous_logits: torch.Tensor, target: torch.Tensor,
                  click_low: torch.Tensor) -> torch.Tensor:
    """Penalty of a correction step on what it undid far from its click.

    Over the voxels farther than ``LOCALITY_MIN_RADIUS_LOW`` + half the target's equivalent radius from the new
    click that the previous prediction had right, the amount by which the new probability moved away from the
    target, summed and divided by the target's size (flipping a target-sized region far away costs ~1).

    Args:
        logits, previous_logits: (B, 1, L, L, L) this step's and the previous step's logits.
        target: (B, 1, L, L, L) soft target in [0, 1].
        click_low: (B, 3) the new click on the low-res grid (continuous indices, tensor order).
    """
    low = logits.shape[-1]
    axis = torch.arange(low, dtype=torch.float32, device=logits.device)
    d2 = ((axis[None, :, None, None] - click_low[:, 0, None, None, None]) ** 2
          + (axis[None, None, :, None] - click_low[:, 1, None, None, None]) ** 2
          + (axis[None, None, None, :] - click_low[:, 2, None, None, None]) ** 2)[:, None]
    size = target.flatten(1).sum(1)
    radius = LOCALITY_MIN_RADIUS_LOW + 0.5 * (3 * size / (4 * np.pi)).pow(1 / 3)
    far = d2 > (radius ** 2)[:, None, None, None, None]
    correct = (previous_logits > 0) == (target >= 0.5)
    error_new = (target - torch.sigmoid(logits)).abs()
    error_prev = (target - torch.sigmoid(previous_logits)).abs()
    worse = torch.relu(error_new - error_prev) * (far & correct)
    return (worse.flatten(1).sum(1) / (size + 1.0)).mean()


def episode_loss(model, images: torch.Tensor, labels_roi: np.ndarray, clicks: int, rng: np.random.Generator,
                 pos_weight: float = 3.0, grad_clicks: Optional[Sequence[int]] = None,
                 boxes_roi: Optional[np.ndarray] = None, local_weight: float = 0.0,
                 click_rule: ClickRule = SAMVOLSEG_CLICKS,
                 seed_fraction: float = 0.0, stroke_fraction: float = 0.0,
                 stroke_log: Optional[List[List[str]]] = None) -> Tuple[torch.Tensor, List[float]]:
    """Encode once, simulate ``clicks`` clicks; returns the mean loss over the clicks that carry gradients and
    the Dice (low-res grid) after every click.

    Args:
        images: (B, 1, S, S, S) normalised ROIs.
        labels_roi: (B, S, S, S) binary targets.
        grad_clicks: 0-based click steps whose loss is back-propagated (default: all); the others run under
            ``torch.no_grad`` and only move the episode forward.
        boxes_roi: (B, 2, 3) box prompts (:func:`training_box`; a NaN row: no box) for a model with a box input,
            or None. An item with a box has no click at step 0 (the box alone), then corrective clicks.
        local_weight: weight of :func:`locality_loss` on the correction steps that carry gradients.
        click_rule: where corrective clicks go.
        seed_fraction: share of the items without a box whose first step starts from a seed mask prompt
            (:func:`training_seed`: what the session feeds an extension ROI or the ROI refining a coarse context
            mask) instead of an empty one.
        stroke_fraction: share of the other items that are stroke episodes: a lasso or positive scribble first,
            then a correction scribble instead of a click at half the later steps, each given as the session
            gives it (its clicks, and its voxels in the mask prompt; :mod:`.stroke_training`). A step's items may
            then add different numbers of clicks: the shorter ones are padded with ignored clicks (label −1).
        stroke_log: when given (one list per item), each stroke step appends its kind ("lasso", "scribble",
            "-scribble" for a negative one) to its item's list (the training log records them).
    """
    batch, image_size = images.shape[0], images.shape[-1]
    device = images.device
    embedding = model.encode_image(images)
    low = model.config.low_res_size * image_size // model.config.image_size
    targets_low = np.stack([low_res_target(label, low) for label in labels_roi])
    target_t = torch.from_numpy(targets_low)[:, None].to(device)
    has_coarse = getattr(model, "family", "") == "clicknet2"
    if has_coarse:
        coarse_size = low // 2
        target_coarse = torch.from_numpy(np.stack([low_res_target(label, coarse_size)
                                                   for label in labels_roi]))[:, None].to(device)
    previous = torch.zeros((batch, 1, low, low, low), device=device)
    seeded = np.zeros(batch, bool)
    if seed_fraction > 0:
        for b in range(batch):
            if (boxes_roi is None or np.isnan(boxes_roi[b]).any()) and rng.random() < seed_fraction:
                previous[b, 0] = torch.from_numpy(training_seed(targets_low[b], rng))
                seeded[b] = True
    points: List[List[np.ndarray]] = [[] for _ in range(batch)]
    labels: List[List[int]] = [[] for _ in range(batch)]
    predictions: List[Optional[np.ndarray]] = [None] * batch
    grad_steps = set(range(clicks) if grad_clicks is None else grad_clicks)
    total = torch.zeros(())
    dices = []
    truth = targets_low >= 0.5
    has_box = np.zeros(batch, bool) if boxes_roi is None else ~np.isnan(boxes_roi).reshape(batch, -1).any(1)
    box_kwargs = {} if boxes_roi is None else {"boxes_roi": torch.from_numpy(np.asarray(boxes_roi, np.float32)).to(device)}
    stroke_items = np.array([stroke_fraction > 0 and not has_box[b] and not seeded[b] and rng.random() < stroke_fraction
                             for b in range(batch)], dtype=bool)
    anchors = np.zeros((batch, 3), np.float32)  # per item, the first click of the step (the locality loss's)
    for step in range(clicks):
        step_points: List[List[np.ndarray]] = []
        step_labels: List[List[int]] = []
        previous_is_copy = False  # ``previous`` shares storage with the last step's logits (in the autograd graph)
        for b in range(batch):
            stroke = None
            if stroke_items[b] and (step == 0 or rng.random() < 0.5):
                stroke = (first_stroke(targets_low[b], rng, image_size) if step == 0 else
                          correction_stroke(targets_low[b], predictions[b], rng, image_size))
            if stroke is not None:
                if not previous_is_copy:
                    previous, previous_is_copy = previous.clone(), True
                previous[b, 0] = with_drawn(previous[b, 0], stroke)
                if stroke_log is not None:
                    stroke_log[b].append(stroke.kind if stroke.positive else f"-{stroke.kind}")
                step_points.append(list(stroke.points_roi))
                step_labels.append([int(stroke.positive)] * len(stroke.points_roi))
            elif step == 0 and has_box[b]:  # the box alone: a padding click (label -1) that the model ignores
                step_points.append([np.zeros(3, np.float32)])
                step_labels.append([-1])
            else:
                p, lab = simulate_click(targets_low[b], predictions[b], rng, image_size, click_rule)
                step_points.append([p])
                step_labels.append([lab])
        width = max(len(p) for p in step_points)
        for b in range(batch):
            anchors[b] = step_points[b][0]
            padding = width - len(step_points[b])
            points[b].extend(step_points[b] + [np.zeros(3, np.float32)] * padding)
            labels[b].extend(step_labels[b] + [-1] * padding)
        pts = torch.from_numpy(np.stack([np.stack(p) for p in points])).to(device)
        labs = torch.tensor(labels, dtype=torch.int64, device=device)
        with torch.set_grad_enabled(step in grad_steps and torch.is_grad_enabled()):
            if has_coarse:
                logits, iou, logits_coarse = model.decode_prompts(embedding, pts, labs, previous, return_coarse=True,
                                                                  **box_kwargs)
            else:
                logits, iou = model.decode_prompts(embedding, pts, labs, previous)
            hard = (logits.detach() > 0).cpu().numpy()[:, 0]
            inter = (hard & truth).reshape(batch, -1).sum(1)
            union = (hard | truth).reshape(batch, -1).sum(1)
            if step in grad_steps:
                loss = bce_dice_loss(logits, target_t, pos_weight)
                if has_coarse:
                    actual_iou = torch.from_numpy((inter / np.maximum(union, 1)).astype(np.float32))[:, None].to(device)
                    loss = loss + 0.5 * bce_dice_loss(logits_coarse, target_coarse, pos_weight) + \
                        F.mse_loss(iou.float(), actual_iou)
                if local_weight > 0 and step > 0:
                    click_low = (torch.from_numpy(anchors).to(device) + 0.5) * low / image_size - 0.5
                    loss = loss + local_weight * locality_loss(logits, previous, target_t, click_low)
                total = total + loss
        previous = logits.detach()
        predictions = list(hard)
        dices.append(float(np.mean(2 * inter / np.maximum(hard.reshape(batch, -1).sum(1)
                                                          + truth.reshape(batch, -1).sum(1), 1))))
    return total / max(len(grad_steps), 1), dices


def save_checkpoint(path: Path, model, optimizer, step: int, elapsed_s: float, rng_state: dict, best: float) -> None:
    # An adapted model's base is frozen and named by its file: only the adapters need saving to resume.
    state = {k: v for k, v in model.state_dict().items() if is_adapter_parameter(k)} if has_adapters(model) \
        else model.state_dict()
    payload = {
        "family": model.family,
        "config": model.config.to_dict(),
        "model_state_dict": state,
        "optimizer_state_dict": optimizer.state_dict(),
        "step": step,
        "elapsed_s": elapsed_s,
        "rng": rng_state,
        "best_train_dice": best,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def export_model(model, out_path: Path, meta: Optional[dict] = None) -> Path:
    """Write a weights-only checkpoint the package can ship (family + config + state dict); for a model with
    adapters, the small adapter file (:func:`~SAMVolSegmentLib.model.adapters.save_adapters`)."""
    if has_adapters(model):
        return save_adapters(model, out_path, meta)
    payload = {"family": model.family, "config": model.config.to_dict(),
               "model_state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    if meta:
        payload["meta"] = {k: (float(v) if isinstance(v, (int, float)) else str(v)) for k, v in meta.items()}
    with atomic_path(out_path) as tmp:
        torch.save(payload, tmp)
    return Path(out_path)


def initialise_from(model, path: Path) -> List[str]:
    """Load the weights of an export (e.g. the shipped v2 default) into ``model`` of the same family whose
    configuration may add inputs (``box_input``) or change the normalisation: every tensor of the file must
    exist in the model with the same shape; the model's extra parameters (the new inputs' zero-initialised
    weights) keep their initial values. Returns the names of those extra parameters.

    Raises:
        CheckpointError: another family, a tensor the model lacks, or a shape that differs.
    """
    from ..errors import CheckpointError
    from ..model import read_checkpoint

    checkpoint = read_checkpoint(path)
    if checkpoint.get("family") != getattr(model, "family", None):
        raise CheckpointError(f"{path} is a {checkpoint.get('family')!r} model; this run trains {model.family!r}.")
    state = checkpoint["model_state_dict"]
    own = model.state_dict()
    bad = [k for k, v in state.items() if k not in own or tuple(own[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointError(f"{path} does not fit this architecture ({', '.join(bad[:6])}); initialise from an "
                              "export of the same family and widths.")
    model.load_state_dict(state, strict=False)
    return sorted(set(own) - set(state))


def average_exports(paths: Sequence[Path], out_path: Path) -> Path:
    """Uniform average of the weights of several exports of one run (stochastic weight averaging over the tail
    of the learning-rate decay): the same family and configuration, floating-point tensors averaged, others
    taken from the last file. The result's ``meta`` lists what was averaged.

    Raises:
        CheckpointError: fewer than two files, or files of different families, configurations or keys.
    """
    from ..errors import CheckpointError
    from ..model import read_checkpoint

    if len(paths) < 2:
        raise CheckpointError("Give at least two exports to average.")
    checkpoints = [read_checkpoint(path) for path in paths]
    first = checkpoints[0]
    for path, checkpoint in zip(paths, checkpoints):
        same = (checkpoint.get("family") == first.get("family") and checkpoint.get("config") == first.get("config")
                and checkpoint["model_state_dict"].keys() == first["model_state_dict"].keys())
        if not same:
            raise CheckpointError(f"{path} is not an export of the same model as {paths[0]} (family, configuration "
                                  "and parameter names must match); average exports of one training run.")
    averaged = {}
    for key, last in checkpoints[-1]["model_state_dict"].items():
        if last.is_floating_point():
            averaged[key] = torch.stack([c["model_state_dict"][key].float() for c in checkpoints]).mean(0).to(last.dtype)
        else:
            averaged[key] = last.clone()
    metas = [c.get("meta", {}) for c in checkpoints]
    payload = {"family": first.get("family"), "config": first.get("config"), "model_state_dict": averaged,
               "meta": {"averaged_exports": float(len(paths)),
                        "steps": " ".join(str(int(float(m.get("step", -1)))) for m in metas),
                        "minutes": " ".join(f"{float(m.get('minutes', -1)):.1f}" for m in metas)}}
    with atomic_path(out_path) as tmp:
        torch.save(payload, tmp)
    return Path(out_path)


def learning_rate(elapsed_s: float, minutes: float, base_lr: float, decay_from_minute: Optional[float] = None,
                  final_fraction: float = 0.05) -> float:
    """Constant ``base_lr`` until ``decay_from_minute`` (default: half the budget), then a cosine decay to
    ``final_fraction * base_lr`` at ``minutes``. Scheduled on wall time because runs are bounded by it."""
    start_s = 60.0 * (minutes / 2 if decay_from_minute is None else decay_from_minute)
    end_s = 60.0 * minutes
    if elapsed_s <= start_s or end_s <= start_s:
        return base_lr
    progress = min(1.0, (elapsed_s - start_s) / (end_s - start_s))
    return base_lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + np.cos(np.pi * progress)))


def train(model, source: SampleSource, out_dir: Path, minutes: float, seed: int = 0, batch: int = 2,
          clicks: int = 5, lr: float = 2e-3, export: Optional[Path] = None, resume: bool = False,
          checkpoint_every_s: float = 300.0, trainable: str = "all", decay_from_minute: Optional[float] = None,
          roi_sizes: Optional[Sequence[Tuple[int, float]]] = None, augment: bool = True,
          device: str = "cpu", max_steps: Optional[int] = None, box_fraction: float = 0.0,
          local_weight: float = 0.0, cvpr_click_fraction: float = 0.0,
          keep_exports_from_minute: Optional[float] = None, seed_fraction: float = 0.0,
          stroke_fraction: float = 0.0, clock: str = "wall") -> dict:
    """Train until ``minutes`` of (cumulative) wall time; checkpoint + export every ``checkpoint_every_s``.

    Args:
        source: where samples come from (:class:`~SAMVolSegmentLib.tools.training_data.SampleSource`).
        clicks: simulated clicks per episode; the first and one random later click carry gradients.
        trainable: "all", or "decoder" (SAM-Med3D: prompt encoder + mask decoder; ClickNet: the per-click part),
            or "adapters" (only adapters; injected first if the model has none, :mod:`~SAMVolSegmentLib.model.adapters`;
            ``export`` then writes the small adapter file).
        roi_sizes: ((edge, probability), ...) ROI sizes to draw per step; default: the model's own size
            (ClickNet2: :data:`TRAIN_ROI_SIZES`).
        device: torch device for the model and the episodes (sampling and click simulation stay on the CPU).
        max_steps: also stop after this many (cumulative) steps (tests: a run that does not depend on speed).
        box_fraction: share of the samples that get a box prompt (models with ``accepts_box`` only), half the
            challenge's box and half a full 3D box (:func:`training_box`).
        local_weight: weight of the locality loss on correction steps (:func:`locality_loss`).
        cvpr_click_fraction: share of the episodes whose corrective clicks follow the challenge's rule.
        seed_fraction: share of the episodes without a box that start from a seed mask prompt (:func:`training_seed`).
        stroke_fraction: share of the other episodes that are scribble/lasso episodes (:func:`episode_loss`); the
            model must declare ``stroke_prompts`` (the session then puts strokes in its mask prompt too).
        clock: what ``minutes``, the schedule and the log's ``t`` count: "wall" time, or "cpu" time of this process
            (a run sharing a busy machine, or paused, then gets the compute its budget names, not fewer steps).
        keep_exports_from_minute: from this (cumulative) minute on, every checkpoint also keeps a copy of the
            export as ``<export stem>_m<minute>.pt`` beside it (the files a tail weight average needs).
    The ROI is normalised with the model's rule (:func:`~SAMVolSegmentLib.engine.preprocessing.model_normalization`).
    The learning rate follows :func:`learning_rate` (constant, then cosine decay over the rest of the budget).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    if trainable == "adapters" and not has_adapters(model):
        inject_adapters(model)
    elif has_adapters(model) and trainable != "adapters":
        # Its checkpoints and export hold only the adapters: base weights trained here would be lost.
        raise ValueError(f"This model has adapters, so only trainable='adapters' can be saved; to fine-tune "
                         f"'{trainable}' load the base model ({model.checkpoint_source}) instead.")
    model.to(device)
    frozen_prefixes = () if trainable == "all" else ("image_encoder", "stem", "down", "up", "enc", "refine_image")
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter_parameter(name) if trainable == "adapters" else not name.startswith(frozen_prefixes))
        if p.requires_grad:
            params.append(p)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    step, elapsed, best = 0, 0.0, 0.0
    rng = np.random.default_rng(seed)
    random.seed(seed)
    torch.manual_seed(seed)
    if resume and ckpt_path.is_file():
        state = torch.load(str(ckpt_path), map_location=device, weights_only=False)  # our own file: has RNG state
        if has_adapters(model):
            load_adapter_state_dict(model, state["model_state_dict"])
        else:
            model.load_state_dict(state["model_state_dict"])
        optimizer.load_state_dict(state["optimizer_state_dict"])
        step, elapsed, best = state["step"], state["elapsed_s"], state["best_train_dice"]
        rng.bit_generator.state = state["rng"]["numpy"]
        torch.set_rng_state(state["rng"]["torch"].cpu())
        _truncate_log(out_dir / "log.jsonl", step)
    if roi_sizes is None:
        roi_sizes = TRAIN_ROI_SIZES if getattr(model, "family", "") == "clicknet2" else ((model.config.image_size, 1.0),)
    sizes = [size for size, _ in roi_sizes]
    size_p = np.array([p for _, p in roi_sizes], dtype=np.float64)
    normalization = model_normalization(model)
    if box_fraction > 0 and not getattr(model, "accepts_box", False):
        raise ValueError("box_fraction > 0 needs a model with a box input (ClickNet2Config(box_input=True))")
    if stroke_fraction > 0 and not getattr(model, "takes_drawn_mask", False):
        raise ValueError("stroke_fraction > 0 needs a model that declares stroke prompts "
                         "(ClickNet2Config(stroke_prompts=True)): the session must give it strokes as trained")
    log = (out_dir / "log.jsonl").open("a")
    bar = _progress(minutes, elapsed)
    model.train()
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    now = CLOCKS[clock]
    start, last_ckpt = now() - elapsed, now()
    window: List[float] = []
    while now() - start < minutes * 60 and (max_steps is None or step < max_steps):
        size = sizes[int(rng.choice(len(sizes), p=size_p / size_p.sum()))]
        images, labels_roi, kinds, boxes = [], [], [], []
        for _ in range(batch):
            raw, label, inside, kind = source.draw_with_inside(rng, size, augment=augment)
            images.append(normalize_roi(raw, normalization, inside))
            labels_roi.append(label)
            box = np.full((2, 3), np.nan, np.float32)
            if box_fraction > 0 and label.any() and rng.random() < box_fraction:
                box_kind = BOX_KINDS[int(rng.integers(len(BOX_KINDS)))]
                box = training_box(label, rng, box_kind)
                kind = f"{kind}+box_{box_kind}"
            boxes.append(box)
            kinds.append(kind)
        x = torch.from_numpy(np.stack(images))[:, None].to(device)
        episode_kwargs = {"local_weight": local_weight, "seed_fraction": seed_fraction}
        stroke_log: List[List[str]] = [[] for _ in range(batch)]
        if stroke_fraction > 0:
            episode_kwargs["stroke_fraction"] = stroke_fraction
            episode_kwargs["stroke_log"] = stroke_log
        if box_fraction > 0:
            episode_kwargs["boxes_roi"] = np.stack(boxes)
        if cvpr_click_fraction > 0 and rng.random() < cvpr_click_fraction:
            episode_kwargs["click_rule"] = CVPR25_CLICKS
        current_lr = learning_rate(now() - start, minutes, lr, decay_from_minute)
        for group in optimizer.param_groups:
            group["lr"] = current_lr
        grad_clicks = (0, int(rng.integers(1, clicks))) if clicks > 1 else (0,)
        loss, dices = episode_loss(model, x, np.stack(labels_roi), clicks, rng, grad_clicks=grad_clicks,
                                   **episode_kwargs)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()
        step += 1
        window.append(dices[-1])
        window = window[-100:]
        log.write(json.dumps({"step": step, "t": round(now() - start, 1), "loss": loss.item(),
                              "lr": current_lr, "size": size,
                              "kinds": [kind + "".join(f"+{s}" for s in log) for kind, log in zip(kinds, stroke_log)],
                              "dice_per_click": [round(d, 4) for d in dices]}) + "\n")
        log.flush()
        if bar is not None:
            bar.set_postfix(step=step, loss=f"{loss.item():.3f}", dice=f"{np.mean(window):.3f}", refresh=False)
            bar.update(max(0, int(now() - start) - bar.n))  # redraws at most every 10 s
        if now() - last_ckpt > checkpoint_every_s:
            best = _checkpoint(model, optimizer, ckpt_path, export, step, now() - start, rng, window, best,
                               keep_exports_from_minute)
            last_ckpt = now()
    best = _checkpoint(model, optimizer, ckpt_path, export, step, now() - start, rng, window, best, keep_exports_from_minute)
    log.close()
    if bar is not None:
        bar.close()
    return {"steps": step, "minutes": (now() - start) / 60, "train_dice_last100": float(np.mean(window or [0]))}


def _truncate_log(path: Path, step: int) -> None:
    """Drop the log lines of steps after the checkpoint a run resumes from (a stopped run logs a few steps past
    its last checkpoint; the resumed run logs them again). Atomic; a missing log is left alone."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    keep = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    if len(keep) != len(lines):
        with atomic_path(path) as tmp:
            Path(tmp).write_text("".join(line + "\n" for line in keep))


def _progress(minutes: float, elapsed: float):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=int(minutes * 60), initial=int(elapsed), unit="s", desc="training", mininterval=10)


def _checkpoint(model, optimizer, ckpt_path, export, step, elapsed, rng, window, best,
                keep_exports_from_minute: Optional[float] = None) -> float:
    rng_state = {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}
    save_checkpoint(ckpt_path, model, optimizer, step, elapsed, rng_state, best)
    score = float(np.mean(window)) if window else 0.0
    if export is not None:  # the package always holds the latest model; training Dice is logged beside it
        meta = {"step": step, "train_dice_last100": score, "minutes": elapsed / 60}
        export_model(model, export, meta)
        if keep_exports_from_minute is not None and elapsed / 60 >= keep_exports_from_minute:
            export = Path(export)
            export_model(model, export.with_name(f"{export.stem}_m{elapsed / 60:.0f}{export.suffix}"), meta)
    return max(best, score)
