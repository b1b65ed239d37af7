"""The prompt-free proposal head (MaskSAM-style) and its place in a model file.

:class:`ProposalHead` reads a ClickNet2 embedding (the one the predictor caches per ROI) and returns low-res
logits per named class: dilated depth-wise separable convolutions on the coarse features (pooled to 16³, plus
3 coordinate channels so it can learn where in the ROI a structure usually lies) give a coarse mask per class;
layers on the 32³ and 64³ features (each with a 3×3×3 depth-wise convolution) sharpen it. About 10k parameters.

A head is stored inside an adapter file (:mod:`.adapters`; :func:`proposal_payload`,
:func:`load_proposal_payload`), so one small file holds everything a structure adds to its base model. How a
proposal is made from it is the engine's (:mod:`SAMVolSegmentLib.engine.proposals`); how it is trained, the
tools' (:mod:`SAMVolSegmentLib.tools.proposal_training`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, InvalidPromptError
from .clicknet import FastConv3d
from .clicknet2 import PointwiseConv3d
from .config import ConfigSerialization

#: Model families whose embedding the head reads.
PROPOSAL_FAMILIES = ("clicknet2",)

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
