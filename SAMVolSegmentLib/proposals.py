"""Prompt-free proposals (MaskSAM-style): a small head that reads the cached image embedding and proposes a
first mask of a named class, which the user then corrects with clicks like any other mask.

Flow (:func:`propose_logits`, used by :meth:`InteractiveSession.propose`):

1. Where to look. If the volume's model grid (1.5 mm) fits in one model ROI, that ROI is centred on the volume.
   Otherwise the whole volume is first resampled isotropically to fit one ROI (a coarse grid), encoded, and the
   head's answer there gives the centre of the structure's largest component; the model ROI is centred on it.
2. The head reads the ROI's embedding (computed once per ROI and cached, exactly as for clicks) and returns
   low-res logits (1, 1, L, L, L) on the ROI's low-res grid (tensor order R, A, S), the same thing a click
   returns. The session stores them as the ROI's mask prompt and adds one positive click at the proposal's
   deepest point, so corrective clicks refine the proposal the way the model refines its own last answer.

The head (:class:`ProposalHead`, ClickNet2 embeddings) has two parts: dilated depth-wise separable
convolutions on the coarse features (pooled to 16³, plus 3 coordinate channels so it can learn where in the ROI
a structure usually lies) give a coarse mask per class; layers on the 32³ and 64³ features (each with a 3×3×3
depth-wise convolution) sharpen it. About 10k parameters.

Corrections of a proposal are local (:func:`local_edit`): a click changes the proposal within a Gaussian reach
of 15 mm, or of the proposal's equivalent radius when that is larger (:func:`edit_sigma_low`), and always
changes the voxel it was placed on (a small bump where the decoder disagrees with the click).

Training (:func:`train_proposal_head`): the embeddings of the training cases' proposal ROIs (with the same ROI
rule, jittered) are computed once with the frozen model, then the head alone is trained on them (Dice + BCE),
which takes minutes on a CPU. The head is saved in the adapter file (:mod:`.model.adapters`), so one small file
holds everything a structure adds to its base model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from .errors import CheckpointError, InvalidPromptError
from .geometry import MODEL_SPACING_MM, ModelGrid, RoiWindow
from .model.clicknet import FastConv3d
from .model.clicknet2 import PointwiseConv3d
from .model.config import ConfigSerialization
from .preprocessing import ModelVolume, Volume, crop_roi, resample_to_model_grid, soft_label_to_model_grid

#: Model families whose embedding the head reads.
PROPOSAL_FAMILIES = ("clicknet2",)
#: Half-width (mm) of the random shift of training ROIs: the head must not depend on exact centring.
TRAIN_JITTER_MM = 12.0
#: A proposal's logits are scaled by this before they become the ROI's mask prompt: the head's logits are
#: calibrated for its own loss, the decoder's mask prompt is usually its own confident answer.
PROPOSAL_PROMPT_GAIN = 4.0
#: Least reach (Gaussian σ, mm) of a click's change to a proposal: a correction changes the proposal near
#: itself only (FocalClick-style local refinement), so one click cannot undo a good proposal elsewhere. A
#: proposal larger than a ball of this radius gets its own equivalent radius as the reach: a correction of a
#: 10 cm tumour has to move more than 15 mm of boundary.
PROPOSAL_EDIT_SIGMA_MM = 15.0
#: A correction always takes effect where it was placed: when the clicked low-res voxel's logit is short of
#: ±CLICK_LOGIT_MARGIN after the blend, a Gaussian bump of σ CLICK_BUMP_SIGMA_MM (mm) centred on the click makes
#: up the shortfall, so the user's click is never ignored and its neighbourhood follows the head's and the
#: decoder's ranking of voxels (near-boundary voxels flip first). Chosen on training cases (σ 2–5 mm, margin
#: 1–4 all within 0.001 of each other; +0.005 Dice after two corrections on hippocampus).
CLICK_BUMP_SIGMA_MM = 3.0
CLICK_LOGIT_MARGIN = 4.0

ProgressFn = Callable[[float, str], None]


@dataclass(frozen=True)
class ProposalConfig(ConfigSerialization):
    """``classes``: the names the head proposes (one output channel each); ``width``: channels of the context
    part (16³); ``middle_width``: of the 32³ part; ``fine_width``: hidden channels of the 64³ part."""

    classes: Tuple[str, ...] = ()
    width: int = 32
    middle_width: int = 16
    fine_width: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"A proposal head needs distinct class names, got {list(self.classes)}.")


def _coordinates(like: torch.Tensor) -> torch.Tensor:
    """(B, 3, D, H, W) voxel-centre coordinates in [-1, 1] along each axis of ``like``."""
    axes = [torch.linspace(-1.0, 1.0, n, dtype=like.dtype, device=like.device) for n in like.shape[2:]]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), 0)
    return grid[None].expand(like.shape[0], -1, -1, -1, -1)


class SeparableBlock(nn.Module):
    """Residual depth-wise separable 3×3×3 convolution: (B, C, D, H, W) → same shape.

    A depth-wise (optionally dilated) 3×3×3 convolution then a 1×1×1 channel mix: 27·C + C² weights instead of
    a dense convolution's 27·C², so the head sees the whole ROI with a few thousand parameters.
    """

    def __init__(self, channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.spatial = FastConv3d(channels, channels, 3, padding=dilation, dilation=dilation, groups=channels)
        self.mix = PointwiseConv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(self.mix(self.spatial(x)))


class ProposalHead(nn.Module):
    """ClickNet2 embedding (coarse (B, E, L/2³), fine (B, F, L³), images (B, 2, L³)) → class logits.

    ``forward`` returns (coarse logits (B, C, L/4, L/4, L/4), logits (B, C, L, L, L)); L = image_size / 2.
    The context part runs at L/4 (16³ for a 128³ ROI: 12 mm voxels), where four dilated separable blocks see
    the whole ROI; at L/2 (6 mm, with the coarse features) a per-voxel layer and a depth-wise 3×3×3
    convolution, and at L (3 mm, with the image features) a per-voxel layer, a residual depth-wise 3×3×3
    convolution (boundaries follow their 3 mm neighbours) and a per-voxel output add detail to the upsampled
    coarse logits. About 10k parameters at the default widths (2.5 % of the bundled model).
    """

    def __init__(self, config: ProposalConfig, coarse_channels: int, fine_channels: int, image_channels: int = 2):
        super().__init__()
        self.config = config
        w, m, f, classes = config.width, config.middle_width, config.fine_width, len(config.classes)
        # 3 coordinate channels: where in the ROI a structure usually lies.
        self.stem = nn.Sequential(PointwiseConv3d(coarse_channels + 3, w, 1), nn.ReLU(inplace=True))
        # Dilations 1, 2, 4, 4: a receptive field of 23 context voxels, the whole 16³ ROI.
        self.context = nn.Sequential(*(SeparableBlock(w, dilation) for dilation in (1, 2, 4, 4)))
        # The model's own inference layers (same state-dict keys as nn.Conv3d): PyTorch's generic 3D path is
        # several times slower on small 3D inputs (see FastConv3d).
        self.coarse_logits = PointwiseConv3d(w, classes, 1)
        self.middle = nn.Sequential(PointwiseConv3d(w + coarse_channels, m, 1), nn.ReLU(inplace=True),
                                    FastConv3d(m, m, 3, padding=1, groups=m), nn.ReLU(inplace=True),
                                    PointwiseConv3d(m, f, 1))  # linear: the 32³ term of the 64³ layer
        # The 64³ per-voxel layers work channels-last (B, D, H, W, C): see forward.
        self.fine_in = nn.Linear(fine_channels + image_channels, f)
        self.fine_spatial = FastConv3d(f, f, 3, padding=1, groups=f)  # boundaries follow the 3 mm neighbours
        self.fine_mix = nn.Linear(f, f)
        self.fine_out = nn.Linear(f, classes)
        nn.init.constant_(self.coarse_logits.bias, -2.0)  # start from "mostly background"

    def forward(self, embedding: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        coarse, fine, images = embedding
        pooled = F.avg_pool3d(coarse, 2)
        hidden = self.context(self.stem(torch.cat([pooled, _coordinates(pooled)], 1)))
        coarse_logits = self.coarse_logits(hidden)
        middle = self.middle(torch.cat([F.interpolate(hidden, size=coarse.shape[2:], mode="trilinear",
                                                      align_corners=False), coarse], 1))
        size = fine.shape[2:]
        # Channels-last from here: PyTorch's CPU trilinear upsampling vectorises over channels in that layout
        # (16 channels 32³ → 64³: ~8 ms on one thread against ~36 ms), and the per-voxel layers are matrix products.
        middle_up = F.interpolate(middle.contiguous(memory_format=torch.channels_last_3d), size=size,
                                  mode="trilinear", align_corners=False).permute(0, 2, 3, 4, 1)
        local = self.fine_in(torch.cat([fine.permute(0, 2, 3, 4, 1), images.permute(0, 2, 3, 4, 1)], -1))
        hidden64 = F.relu(local + middle_up)
        # The channels-last tensor seen as (B, C, D, H, W) is in channels_last_3d memory format, which oneDNN's
        # depth-wise convolution reads directly (2.5 ms against 6.6 ms + a copy for a contiguous input).
        spatial = self.fine_spatial(hidden64.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
        hidden64 = hidden64 + F.relu(self.fine_mix(spatial), inplace=not torch.is_grad_enabled())
        detail = self.fine_out(hidden64).permute(0, 4, 1, 2, 3)
        upsampled = F.interpolate(coarse_logits, size=size, mode="trilinear", align_corners=False)
        return coarse_logits, upsampled + detail


# ---------------------------------------------------------------- the model side
def attach_proposal_head(model: nn.Module, config: ProposalConfig) -> ProposalHead:
    """Give ``model`` a fresh :class:`ProposalHead` (``model.proposal_head``) and return it.

    Raises:
        CheckpointError: the model's family has no proposal support.
    """
    family = getattr(model, "family", "sam_med3d")
    if family not in PROPOSAL_FAMILIES:
        raise CheckpointError(f"Proposals read the embedding of the {', '.join(PROPOSAL_FAMILIES)} family; this "
                              f"model is {family}. Use the bundled default model (or another clicknet2 model).")
    head = ProposalHead(config, model.config.embed_dim, model.config.refine_channels)
    model.proposal_head = head.to(next(model.parameters()).device)
    return head


def proposal_classes(model: nn.Module) -> Tuple[str, ...]:
    """The class names ``model`` can propose (empty when it has no proposal head)."""
    head = getattr(model, "proposal_head", None)
    return tuple(head.config.classes) if head is not None else ()


def click_adapted_classes(model: nn.Module) -> Tuple[str, ...]:
    """The structures ``model``'s clicks from scratch are adapted to: its proposal classes when its decoder
    adapter runs on every click (a ``teach`` file of adapter scope "all"); empty when clicks from scratch are
    the base model's. Callers warn with it: such a file segments other structures differently."""
    return proposal_classes(model) if getattr(model, "decoder_adapter_on_every_click", False) else ()


def class_index(model: nn.Module, class_name: str) -> int:
    """Output channel of ``class_name``.

    Raises:
        InvalidPromptError: the model does not know the class (the message lists the ones it knows).
    """
    classes = proposal_classes(model)
    if class_name not in classes:
        known = ", ".join(repr(c) for c in classes)
        raise InvalidPromptError(
            f"This model cannot propose {class_name!r}: " + (f"it knows {known}." if classes else
                                                             "it has no proposal head. Train one with "
                                                             "`samvolseg teach` and load that file as the model."))
    return classes.index(class_name)


def edit_sigma_low(low_voxel_mm: float, proposal_mm3: float) -> float:
    """Reach of a correction in low-res voxels (``low_voxel_mm`` each, :meth:`RoiWindow.lowres_spacing`) for a
    proposal of ``proposal_mm3`` (its volume in the image, mm³): the larger of :data:`PROPOSAL_EDIT_SIGMA_MM` and
    the radius of a ball of that volume."""
    radius_mm = (3.0 * max(proposal_mm3, 0.0) / (4.0 * np.pi)) ** (1.0 / 3.0)
    return max(PROPOSAL_EDIT_SIGMA_MM, radius_mm) / low_voxel_mm


def _gaussian_low(centre_low: np.ndarray, low: int, sigma_low: float, device: torch.device) -> torch.Tensor:
    """(1, 1, L, L, L) Gaussian of σ ``sigma_low`` low-res voxels centred on ``centre_low`` (low-res voxels (3,))."""
    axis = torch.arange(low, dtype=torch.float32, device=device)
    g = [torch.exp(-((axis - float(c)) ** 2) / (2 * sigma_low**2)) for c in centre_low]
    return (g[0][:, None, None] * g[1][None, :, None] * g[2][None, None, :])[None, None]


def local_edit(previous: torch.Tensor, predicted: torch.Tensor, point_roi: np.ndarray, positive: bool,
               roi_size: int, sigma_low: float, low_voxel_mm: float) -> torch.Tensor:
    """(1, 1, L, L, L) logits: ``predicted`` near ``point_roi`` (ROI voxels (3,), tensor order R, A, S),
    ``previous`` far from it, blended with a Gaussian weight of ``sigma_low`` low-res voxels; then the click
    takes effect where it was placed: a bump of σ :data:`CLICK_BUMP_SIGMA_MM` (``low_voxel_mm``: the low-res
    voxel size) raises (``positive``) or lowers the logits just enough that the clicked low-res voxel reaches
    ±:data:`CLICK_LOGIT_MARGIN`. Nothing is bumped where the blend already agrees with the click."""
    low = predicted.shape[-1]
    # ROI voxel p sits at low-res coordinate (p + 0.5) * L / S - 0.5 (align_corners=False, as the upsampling).
    centre = (np.asarray(point_roi, dtype=np.float64) + 0.5) * low / roi_size - 0.5
    weight = _gaussian_low(centre, low, sigma_low, predicted.device)
    blended = weight * predicted + (1 - weight) * previous.to(predicted.dtype)
    index = np.clip(np.rint(centre), 0, low - 1)
    value = float(blended[(0, 0, *(int(v) for v in index))].detach())
    shortfall = max(0.0, CLICK_LOGIT_MARGIN - value) if positive else min(0.0, -CLICK_LOGIT_MARGIN - value)
    if shortfall == 0.0:
        return blended
    bump = _gaussian_low(centre, low, CLICK_BUMP_SIGMA_MM / low_voxel_mm, predicted.device)
    return blended + shortfall * bump


# ---------------------------------------------------------------- where to look
def coarse_grid(volume: Volume, size: int, spacing_mm: float) -> Optional[ModelGrid]:
    """An isotropic grid covering the whole volume inside one ``size``³ ROI, or None when the model grid
    (``spacing_mm``) already fits."""
    fine = ModelGrid.covering(volume.geometry, spacing_mm)
    if max(fine.shape_model) <= size:
        return None
    low, high = volume.geometry.bounds_ras()
    spacing = float(np.max(high - low)) / (size - 2) + 1e-6  # covering() may add a voxel: keep one spare
    return ModelGrid.covering(volume.geometry, max(spacing, spacing_mm))


def volume_centre_ras(volume: Volume) -> np.ndarray:
    low, high = volume.geometry.bounds_ras()
    return (low + high) / 2


def _largest_component(logits: torch.Tensor) -> Tuple[Optional[np.ndarray], np.ndarray]:
    """(bool mask of the largest foreground component of (L, L, L) logits or None if empty, foreground)."""
    foreground = (logits > 0).cpu().numpy()
    components, count = ndimage.label(foreground)
    if count == 0:
        return None, foreground
    return components == int(np.argmax(np.bincount(components.ravel())[1:])) + 1, foreground


def largest_component_centre_ras(logits: torch.Tensor, roi: RoiWindow) -> Optional[np.ndarray]:
    """RAS centre of the largest foreground component of (L, L, L) low-res logits, or None if empty."""
    largest, _ = _largest_component(logits)
    if largest is None:
        return None
    affine = roi.lowres_affine_ras(largest.shape[0])
    return affine[:3, :3] @ np.argwhere(largest).mean(axis=0) + affine[:3, 3]


def keep_largest_component(logits: torch.Tensor) -> torch.Tensor:
    """(L, L, L) logits with every foreground voxel outside the largest component pushed below zero."""
    largest, foreground = _largest_component(logits)
    if largest is None:
        return logits
    drop = torch.from_numpy(foreground & ~largest).to(logits.device)
    return torch.where(drop, -logits.abs(), logits)


def propose_logits(
    predictor, volume: Volume, model_volume: ModelVolume, class_name: str,
    progress: Optional[ProgressFn] = None,
) -> Tuple[RoiWindow, torch.Tensor, Dict[str, float]]:
    """The proposal for one class: (model ROI, its (1, 1, L, L, L) logits, timings).

    ``predictor``: a :class:`~SAMVolSegmentLib.predictor.Predictor` whose model has a proposal head; its
    embedding cache is used for both the coarse and the model ROI. Timings: ``encode_s`` (encoder runs, 0 on
    cache hits), ``propose_s`` (the head and the component analysis).

    Raises:
        InvalidPromptError: unknown class, or nothing of the class found in the volume.
    """
    model = predictor.model
    channel = class_index(model, class_name)
    size, spacing = predictor.image_size, model_volume.grid.spacing
    timings = {"encode_s": 0.0, "propose_s": 0.0}

    def head_logits(roi: RoiWindow, grid_volume: ModelVolume) -> torch.Tensor:
        # The key of clicks too: a correction in the proposal's ROI reuses this embedding.
        key = roi.embedding_key(volume.fingerprint)
        embedding = predictor.cached_embedding(key)
        if embedding is None:
            if progress is not None:
                progress(0.0, "Encoding the region (once per region)")
            embedding = predictor.embed(crop_roi(grid_volume, roi, normalization=predictor.normalization), key)
            timings["encode_s"] += predictor.last_encode_s
        start = time.perf_counter()
        with torch.inference_mode():
            logits = model.proposal_head(embedding)[1][:, channel:channel + 1].float()
        timings["propose_s"] += time.perf_counter() - start
        return logits

    centre = volume_centre_ras(volume)
    coarse = coarse_grid(volume, size, spacing)
    if coarse is not None:  # find the structure on the whole volume first, then look closely
        coarse_volume = resample_to_model_grid(volume, coarse)
        coarse_roi = RoiWindow.centred_at(coarse, centre, size)
        found = largest_component_centre_ras(head_logits(coarse_roi, coarse_volume)[0, 0], coarse_roi)
        if found is None:
            raise InvalidPromptError(f"No {class_name} was found in this volume; place a click on it instead.")
        centre = found
    roi = RoiWindow.centred_at(model_volume.grid, centre, size)
    logits = head_logits(roi, model_volume)
    start = time.perf_counter()
    logits = keep_largest_component(logits[0, 0])[None, None]
    timings["propose_s"] += time.perf_counter() - start
    if not bool((logits > 0).any()):
        raise InvalidPromptError(f"No {class_name} was found in this volume; place a click on it instead.")
    return roi, logits, timings


# ---------------------------------------------------------------- training
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
    from .predictor import Predictor

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
    from .clicks import deepest_point_roi
    from .training import bce_dice_loss, simulate_click

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
    from .model.adapters import AdapterConfig, inject_adapters, is_adapter_parameter

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


# ---------------------------------------------------------------- file format (inside the adapter file)
def proposal_payload(model: nn.Module) -> Optional[Dict[str, object]]:
    """What the adapter file stores for the model's head (None without one)."""
    head = getattr(model, "proposal_head", None)
    if head is None:
        return None
    return {"config": head.config.to_dict(),
            "state_dict": {k: v.detach().clone().cpu() for k, v in head.state_dict().items()}}


def load_proposal_payload(model: nn.Module, payload: Dict[str, object], source: Union[str, Path]) -> None:
    """Attach the head stored in an adapter file.

    Raises:
        CheckpointError: unreadable config or tensors that do not fit the model.
    """
    state = payload.get("state_dict", {}) if isinstance(payload, dict) else {}
    # Earlier head layouts: dense context convolutions (2026-11), no 64³ spatial layer (2026-12-01).
    if "context.0.weight" in state or ("fine_out.weight" in state and "fine_spatial.weight" not in state):
        raise CheckpointError(f"{source}: its proposal head has an older layout, which this SAMVolSegment no "
                              "longer reads. Train it again: rerun `samvolseg teach` into a new --output folder.")
    try:
        config = ProposalConfig.from_dict(payload["config"])  # type: ignore[arg-type]
        head = attach_proposal_head(model, config)
        head.load_state_dict(payload["state_dict"])  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{source}: the proposal head cannot be read ({exc}); the file was made for "
                              "another model or a newer SAMVolSegment.") from exc
    head.eval()
