"""Adapter fine-tuning (3DSAM-adapter style): small residual modules trained on a frozen base model.

What is injected, per family (each adapter's last layer starts at zero, so an adapted model computes exactly
what its base does until it is trained):

* ``sam_med3d``: in every image-encoder block a spatial adapter (:class:`DepthwiseConvAdapter`:
  down-projection → 3D depth-wise convolution over the token grid → GELU → up-projection, arXiv 2306.13465),
  added in parallel to the block's MLP; in each two-way block of the mask decoder a token adapter
  (:class:`TokenMLPAdapter`, a bottleneck MLP on the prompt/output tokens) in parallel to its token MLP.
* ``clicknet2``: one :class:`CoarseFeatureAdapter` (1×1×1 convolution → ReLU → depth-wise 3×3×3 convolution)
  added to the coarse features the per-click decoder reads (computed once per ROI, in the cached embedding),
  and one more on the per-click decoder's 32³ features (``decoder_adapter``; ``clicknet2_decoder_hidden``,
  0 = none, which is what adapter files of version 1 hold), so the clicks' decoding can adapt too.

Adapter modules live in attributes named ``adapter`` or ``*_adapter`` (``image_encoder.blocks.0.adapter.down.weight``,
``decoder_adapter.mix.weight``, ...), which are ``None`` in an un-adapted model, so the base's state-dict names never change and official
checkpoints still load with ``strict=True``.

Adapter file (``torch.save`` of plain data and tensors, read with ``weights_only=True``)::

    {"format": "samvolseg-adapters", "version": 2, "family": ..., "base_model": registry name or path,
     "base_sha256": sha256 of the base file, "adapter_config": {...} or None, "adapter_state_dict": {...},
     "proposal": None or {"config": {...}, "state_dict": {...}}, "meta": {...}}

Version 2 added the optional prompt-free proposal head (:mod:`.proposal_head`) and allows a file
with a head but no adapters; version 1 files still load.

API: ``load_model(adapter_file)`` (:func:`~SAMVolSegmentLib.model.build.load_model`, :func:`~SAMVolSegmentLib.model.build.compose`) finds the base the file
names (a registry name through :mod:`SAMVolSegmentLib.model.registry`, else the stored path; ``base=`` overrides
where it is), checks its SHA-256, and returns base + adapters. A different base file is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from .config import ConfigSerialization

ADAPTER_FORMAT = "samvolseg-adapters"
ADAPTER_FORMAT_VERSION = 2
#: Versions this code reads.
READABLE_VERSIONS = (1, 2)
#: Families adapters can be injected into.
ADAPTER_FAMILIES = ("sam_med3d", "clicknet2")
#: When ClickNet2's decoder adapter runs: on every click, or only on clicks that correct a proposal.
DECODER_SCOPES = ("all", "corrections")


@dataclass(frozen=True)
class AdapterConfig(ConfigSerialization):
    """Adapter widths. ``encoder_bottleneck``: channels of the encoder's spatial adapters (capped at the
    encoder width; 64 for vit_b's 768, as in 3DSAM-adapter); ``decoder_hidden``: hidden width of the decoder's
    token adapters (capped at the token width); ``clicknet2_hidden``: ClickNet2 adapter channels (0 = the
    coarse feature width); ``clicknet2_coarse``: give ClickNet2 the coarse-feature adapter (False: only the
    decoder adapter, which then trains on cached embeddings); ``clicknet2_decoder_hidden``: channels of
    ClickNet2's decoder adapter (0 = none); ``clicknet2_decoder_scope``: when it runs, "all" clicks or only
    "corrections" of a proposal (``samvolseg teach``: clicks from scratch then stay exactly the base's)."""

    encoder_bottleneck: int = 64
    decoder_hidden: int = 32
    clicknet2_hidden: int = 0
    clicknet2_coarse: bool = True
    clicknet2_decoder_hidden: int = 8
    clicknet2_decoder_scope: str = "all"

    def __post_init__(self) -> None:
        if self.clicknet2_decoder_scope not in DECODER_SCOPES:
            raise ValueError(f"The adapter scope is {' or '.join(repr(s) for s in DECODER_SCOPES)}, not "
                             f"{self.clicknet2_decoder_scope!r}.")


class DepthwiseConvAdapter(nn.Module):
    """Spatial adapter for a ViT block: (B, D, H, W, C) tokens → (B, D, H, W, C) residual.

    Down-projection C → r, 3×3×3 depth-wise convolution over the (D, H, W) token grid (the 3D context a 2D
    pre-trained block lacks, at r·27 weights), GELU, up-projection r → C. The up-projection starts at zero.
    """

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.conv = nn.Conv3d(bottleneck, bottleneck, kernel_size=3, padding=1, groups=bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(x).permute(0, 4, 1, 2, 3)  # (B, r, D, H, W) for the convolution
        h = F.gelu(self.conv(h)).permute(0, 2, 3, 4, 1)
        return self.up(h)


class TokenMLPAdapter(nn.Module):
    """Bottleneck MLP on decoder tokens: (B, T, C) → (B, T, C) residual; the last layer starts at zero."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.gelu(self.down(x)))


class CoarseFeatureAdapter(nn.Module):
    """ClickNet2 adapter: (B, E, L, L, L) coarse features → (B, E, L, L, L) residual.

    A 1×1×1 convolution E → h mixes channels, ReLU, then a depth-wise 3×3×3 convolution h → E (groups = h,
    h divides E) adds local 3D context; that last convolution starts at zero.
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        if channels % hidden:
            raise ValueError(f"clicknet2_hidden ({hidden}) must divide the coarse feature width ({channels})")
        self.mix = nn.Conv3d(channels, hidden, kernel_size=1)
        self.spatial = nn.Conv3d(hidden, channels, kernel_size=3, padding=1, groups=hidden)
        nn.init.zeros_(self.spatial.weight)
        nn.init.zeros_(self.spatial.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(F.relu(self.mix(x)))


def is_adapter_parameter(name: str) -> bool:
    """Whether a parameter / state-dict name belongs to an injected adapter."""
    return any(part == "adapter" or part.endswith("_adapter") for part in name.split("."))


def has_adapters(model: nn.Module) -> bool:
    return getattr(model, "adapter_config", None) is not None


def inject_adapters(model: nn.Module, config: Optional[AdapterConfig] = None) -> nn.Module:
    """Add zero-initialised adapters to ``model`` in place (see the module docstring) and return it.

    The adapted model's outputs equal the base's exactly until the adapters are trained. The base the model
    was loaded from (``checkpoint_source`` / ``checkpoint_sha256``, set by ``load_model``) is remembered for
    :func:`save_adapters`.

    Raises:
        CheckpointError: the family has no adapters, or the model already has them.
    """
    config = config or AdapterConfig()
    family = getattr(model, "family", "")
    if has_adapters(model):
        raise CheckpointError("This model already has adapters; load the base model to inject new ones.")
    if family == "sam_med3d":
        encoder_dim = model.config.encoder_embed_dim
        for block in model.image_encoder.blocks:
            block.adapter = DepthwiseConvAdapter(encoder_dim, min(config.encoder_bottleneck, encoder_dim))
        token_dim = model.config.prompt_embed_dim
        for layer in model.mask_decoder.transformer.layers:
            layer.adapter = TokenMLPAdapter(token_dim, min(config.decoder_hidden, token_dim))
    elif family == "clicknet2":
        channels = model.config.embed_dim
        if config.clicknet2_coarse:
            model.adapter = CoarseFeatureAdapter(channels, config.clicknet2_hidden or channels)
        if config.clicknet2_decoder_hidden:
            model.decoder_adapter = CoarseFeatureAdapter(model.config.decoder_channels[0],
                                                         config.clicknet2_decoder_hidden)
    else:
        raise CheckpointError(
            f"Adapters exist for the {' and '.join(ADAPTER_FAMILIES)} families, not {family!r}; fine-tune this "
            "model with --trainable decoder or all instead."
        )
    device = next(model.parameters()).device
    model.to(device)
    model.adapter_config = config
    return model


def adapter_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Only the adapters' tensors, detached copies, under their full names."""
    return {k: v.detach().clone().cpu() for k, v in model.state_dict().items() if is_adapter_parameter(k)}


def load_adapter_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy adapter tensors into an adapted model; every adapter tensor must be present with its shape.

    Raises:
        CheckpointError: keys or shapes differ (the file was made for another architecture or adapter size).
    """
    expected = {k: v for k, v in model.state_dict().items() if is_adapter_parameter(k)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"The adapter tensors do not fit this model (missing {missing[:4]}, unexpected {unexpected[:4]}, "
            f"other shape {mismatched[:4]}); the adapter file was made for another base architecture."
        )
    model.load_state_dict(dict(state), strict=False)  # the base's tensors are untouched; adapters checked above


def save_adapters(model: nn.Module, path: Union[str, Path], meta: Optional[Mapping[str, Any]] = None) -> Path:
    """Write the adapter file of a model: its adapter tensors and proposal head (whichever it has) + the base's
    name and SHA-256.

    Raises:
        CheckpointError: the model has neither adapters nor a proposal head, or was not loaded from a file (no
            base to name).
    """
    from ..io_utils import atomic_path
    from .proposal_head import proposal_payload

    proposal = proposal_payload(model)
    if not has_adapters(model) and proposal is None:
        raise CheckpointError("This model has no adapters or proposal head to save; call inject_adapters(model) "
                              "(or attach_proposal_head) before training.")
    base_sha = getattr(model, "checkpoint_sha256", None)
    base_source = getattr(model, "checkpoint_source", None)
    if not base_sha or not base_source:
        raise CheckpointError(
            "The adapters' base model was not loaded from a file, so the adapter file could not name it; "
            "load the base with load_model(name or path) before inject_adapters."
        )
    payload = {
        "format": ADAPTER_FORMAT,
        "version": ADAPTER_FORMAT_VERSION,
        "family": model.family,
        "base_model": str(base_source),
        "base_sha256": str(base_sha),
        "adapter_config": model.adapter_config.to_dict() if has_adapters(model) else None,
        "adapter_state_dict": adapter_state_dict(model),
        "proposal": proposal,
    }
    if meta:
        payload["meta"] = {k: (float(v) if isinstance(v, (int, float)) else str(v)) for k, v in meta.items()}
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def is_adapter_file(checkpoint: Mapping[str, Any]) -> bool:
    return checkpoint.get("format") == ADAPTER_FORMAT
