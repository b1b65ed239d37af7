"""Training a proposal head and a decoder adapter on cached embeddings (what ``samvolseg teach`` runs).

The embeddings of the training cases' proposal ROIs (the ROI rule of
:func:`~SAMVolSegmentLib.engine.proposals.propose_logits`, jittered) are computed once with the frozen model
(:func:`build_samples`); then the head alone (:func:`train_proposal_head`, Dice + BCE), or the decoder adapter
on simulated correction episodes (:func:`train_decoder_adapter`), is trained on them: minutes on a CPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..engine.clicks import deepest_point_roi
from ..engine.geometry import MODEL_SPACING_MM, ModelGrid, RoiWindow
from ..engine.predictor import Predictor
from ..engine.preprocessing import (
    ModelVolume,
    Volume,
    crop_roi,
    resample_to_model_grid,
    soft_label_to_model_grid,
)
from ..engine.proposals import (
    PROPOSAL_PROMPT_GAIN,
    ProgressFn,
    coarse_grid,
    edit_sigma_low,
    keep_largest_component,
    local_edit,
    volume_centre_ras,
)
from ..model.adapters import AdapterConfig, inject_adapters, is_adapter_parameter
from ..model.proposal_head import ProposalConfig, attach_proposal_head
from .training import bce_dice_loss, simulate_click

#: Half-width (mm) of the random shift of training ROIs: the head must not depend on exact centring.
TRAIN_JITTER_MM = 12.0

@dataclass
class ProposalSample:
    """One training ROI: its cached embedding (float16 to halve memory) and low-res target (L, L, L)."""

    embedding: Tuple[torch.Tensor, ...]
    target: torch.Tensor


def training_rois(volume: Volume, model_volume: ModelVolume, label_kji: np.ndarray, size: int,
                  rng: np.random.Generator) -> List[Tuple[ModelVolume, RoiWindow]]:
    """The ROIs :func:`propose_logits` would look at for this volume, each shifted by a random offset
    (±:data:`TRAIN_JITTER_MM`): the model ROI, and for volumes larger than one ROI also the coarse one.
    For a large volume the model ROI is centred on the label (where a good coarse stage would centre it)."""
    spacing = model_volume.grid.spacing
    coarse = coarse_grid(volume, size, spacing)
    if coarse is None:
        centre = volume_centre_ras(volume)
        rois = []
    else:
        coarse_volume = resample_to_model_grid(volume, coarse)
        jitter = rng.uniform(-1, 1, 3) * TRAIN_JITTER_MM * coarse.spacing / spacing
        rois = [(coarse_volume, RoiWindow.centred_at(coarse, volume_centre_ras(volume) + jitter, size))]
        centre_ijk = np.argwhere(label_kji > 0).mean(axis=0)[::-1]
        centre = volume.geometry.ijk_to_ras_points(centre_ijk[None])[0]
    jitter = rng.uniform(-1, 1, 3) * TRAIN_JITTER_MM
    rois.append((model_volume, RoiWindow.centred_at(model_volume.grid, centre + jitter, size)))
    return rois


def lowres_target(label_kji: np.ndarray, volume: Volume, roi: RoiWindow, low: int) -> np.ndarray:
    """The binary label's fraction per low-res voxel of ``roi`` ((low,)*3 float32, tensor order R, A, S)."""
    affine = roi.lowres_affine_ras(low)
    grid = ModelGrid(tuple(float(v) for v in affine[:3, 3]), (low, low, low), float(affine[0, 0]))  # type: ignore[arg-type]
    return soft_label_to_model_grid(label_kji.astype(np.uint8), volume.geometry, grid).astype(np.float32)


def build_samples(model: nn.Module, cases: Sequence[Tuple[Volume, np.ndarray]], repeats: int,
                  rng: np.random.Generator, progress: Optional[ProgressFn] = None) -> List[ProposalSample]:
    """Embeddings and targets of ``repeats`` jittered proposal ROIs per case (label_kji: binary (k, j, i))."""
    predictor = Predictor(model, cache_bytes=0)
    size, low = predictor.image_size, predictor.low_res_size
    samples: List[ProposalSample] = []
    for index, (volume, label_kji) in enumerate(cases):
        model_volume = resample_to_model_grid(volume)
        for _ in range(repeats):
            for grid_volume, roi in training_rois(volume, model_volume, label_kji, size, rng):
                embedding = predictor.embed(crop_roi(grid_volume, roi, normalization=predictor.normalization))
                target = lowres_target(label_kji, volume, roi, low)
                samples.append(ProposalSample(tuple(t.to(torch.float16) for t in embedding),
                                              torch.from_numpy(target)[None, None]))
        if progress is not None:
            progress((index + 1) / len(cases), f"embedded case {index + 1}/{len(cases)}")
    return samples


def proposal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice + BCE of (B, 1, L, L, L) logits against a soft target in [0, 1]."""
    probability = torch.sigmoid(logits)
    dims = (1, 2, 3, 4)
    intersection = (probability * target).sum(dims)
    dice = 1 - (2 * intersection + 1) / (probability.sum(dims) + target.sum(dims) + 1)
    return dice.mean() + F.binary_cross_entropy_with_logits(logits, target)


def train_proposal_head(model: nn.Module, samples: Sequence[ProposalSample], class_name: str, *,
                        minutes: float, max_steps: Optional[int] = None, seed: int = 0, lr: float = 1e-2,
                        progress: Optional[ProgressFn] = None) -> Dict[str, float]:
    """Attach a one-class head to ``model`` and train it on ``samples`` for ``minutes`` (the model is frozen),
    or for ``max_steps`` steps when given and reached first (reproducible whatever the machine's speed).

    Flips are not used: left and right structures differ in position and users name them. Returns
    ``{"steps", "minutes", "train_loss_last50"}``.
    """
    if not samples:
        raise ValueError("No training samples: give at least one labelled case.")
    torch.manual_seed(seed)
    head = attach_proposal_head(model, ProposalConfig(classes=(class_name,)))
    rng = np.random.default_rng(seed)
    head.train()

    def loss_of(sample: ProposalSample) -> torch.Tensor:
        coarse_logits, logits = head(tuple(t.float() for t in sample.embedding))
        coarse_target = F.adaptive_avg_pool3d(sample.target, coarse_logits.shape[2:])
        return proposal_loss(logits, sample.target) + 0.5 * proposal_loss(coarse_logits, coarse_target)

    logs = _train_loop(list(head.parameters()), samples, loss_of, minutes, max_steps, lr, rng, "proposal head",
                       progress)
    head.eval()
    return logs



def adapter_episode(model: nn.Module, sample: ProposalSample, rng: np.random.Generator, clicks: int,
                    from_proposal: bool, channel: int = 0) -> torch.Tensor:
    """Loss of one simulated episode on a cached embedding, what a user of a taught structure does.

    ``from_proposal``: the head's proposal (largest component) is the mask prompt with its deepest-point
    click, then ``clicks`` corrections at the largest error, each a :func:`local_edit` of the last mask (from
    an empty mask when the head proposes nothing). Otherwise ``clicks`` clicks from an empty mask, placed as
    the evaluation places them: the structure clicked from scratch.

    The loss (BCE + Dice against the soft low-res target) is the mean over the clicks; only modules with
    gradients enabled (the decoder adapter) learn.
    """
    embedding = tuple(t.float() for t in sample.embedding)
    target = sample.target
    target_low = target[0, 0].numpy()
    size, low = model.config.image_size, target.shape[-1]
    voxel_mm = MODEL_SPACING_MM * size / low  # of the low-res grid
    sigma_low = 1.0  # set from the proposal below; unused without one
    points: List[np.ndarray] = []
    labels: List[int] = []
    previous = torch.zeros_like(target)
    prediction: Optional[np.ndarray] = None
    if from_proposal:
        with torch.no_grad():
            proposal = keep_largest_component(model.proposal_head(embedding)[1][0, channel])
        deepest = deepest_point_roi((proposal > 0).numpy(), size)
        if deepest is not None:
            points.append(deepest.astype(np.float32))
            labels.append(1)
            previous = proposal[None, None] * PROPOSAL_PROMPT_GAIN
            prediction = (proposal > 0).numpy()
            sigma_low = edit_sigma_low(voxel_mm, float(prediction.sum()) * voxel_mm**3)
    local = bool(points)
    total = torch.zeros(())
    for _ in range(clicks):
        point, label = simulate_click(target_low, prediction, rng, size)
        points.append(point)
        labels.append(label)
        logits, _ = model.decode_prompts(embedding, torch.from_numpy(np.stack(points))[None],
                                         torch.tensor([labels], dtype=torch.int64), previous, corrections=local)
        if local:
            logits = local_edit(previous, logits, point, bool(label), size, sigma_low, voxel_mm)
        total = total + bce_dice_loss(logits, target, 3.0)
        previous = logits.detach()
        prediction = (previous[0, 0] > 0).numpy()
    return total / clicks


#: Channels of the decoder adapter ``samvolseg teach`` trains (1,272 parameters on the bundled model; capped
#: at a divisor of the decoder's width on other ClickNet2 models).
TEACH_ADAPTER_HIDDEN = 24


def train_decoder_adapter(model: nn.Module, samples: Sequence[ProposalSample], *, minutes: float,
                          max_steps: Optional[int] = None, seed: int = 0, lr: float = 2e-3, clicks: int = 3,
                          scope: str = "all", progress: Optional[ProgressFn] = None) -> Dict[str, float]:
    """Inject a decoder adapter (:mod:`.model.adapters`) and train it on cached embeddings with
    :func:`adapter_episode` (the model must have its head); the base and the head stay frozen.

    ``scope`` "all": the adapter runs on every click and trains on episodes from scratch and from a proposal
    (half each): the taught structure is segmented better whichever way the user starts. "corrections": it
    runs only on clicks that correct a proposal and trains on those alone, so clicks from scratch stay exactly
    the base model's (for a structure file also used on other structures). Returns ``{"steps", "minutes",
    "train_loss_last50"}``."""
    hidden = math.gcd(TEACH_ADAPTER_HIDDEN, model.config.decoder_channels[0])
    # The config checks the scope (ValueError) before anything touches the model.
    inject_adapters(model, AdapterConfig(clicknet2_coarse=False, clicknet2_decoder_hidden=hidden,
                                         clicknet2_decoder_scope=scope))
    params = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(is_adapter_parameter(name))
        if parameter.requires_grad:
            params.append(parameter)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model.train()

    def loss_of(sample: ProposalSample) -> torch.Tensor:
        from_proposal = scope == "corrections" or bool(rng.random() < 0.5)
        return adapter_episode(model, sample, rng, clicks, from_proposal)

    logs = _train_loop(params, samples, loss_of, minutes, max_steps, lr, rng, "decoder adapter", progress)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return logs


def _train_loop(params: List[torch.Tensor], samples: Sequence[ProposalSample],
                loss_of: Callable[[ProposalSample], torch.Tensor], minutes: float, max_steps: Optional[int],
                lr: float, rng: np.random.Generator, what: str,
                progress: Optional[ProgressFn]) -> Dict[str, float]:
    """AdamW on random samples for ``minutes`` (or ``max_steps`` steps if reached first) with a cosine decay
    of ``lr`` to 5 % over the budget: over the steps when ``max_steps`` is given, else over the time."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    losses: List[float] = []
    start, step, budget = time.perf_counter(), 0, minutes * 60.0

    def done_fraction() -> float:
        if max_steps:
            return min(1.0, step / max_steps)
        return min(1.0, (time.perf_counter() - start) / budget) if budget > 0 else 1.0

    while time.perf_counter() - start < budget and (max_steps is None or step < max_steps):
        loss = loss_of(samples[int(rng.integers(len(samples)))])
        fraction = done_fraction()
        for group in optimizer.param_groups:
            group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * fraction)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        step += 1
        if progress is not None and step % 20 == 0:
            progress(fraction, f"{what} step {step}, loss {np.mean(losses[-50:]):.3f}")
    return {"steps": float(step), "minutes": (time.perf_counter() - start) / 60.0,
            "train_loss_last50": float(np.mean(losses[-50:])) if losses else float("nan")}


