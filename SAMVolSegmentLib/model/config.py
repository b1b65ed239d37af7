"""Model configuration as data: the released SAM-Med3D ``vit_b_ori`` and smaller variants of it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Mapping, Optional, Tuple, Type, TypeVar

import torch

ConfigT = TypeVar("ConfigT")


def config_to_dict(config: Any) -> Dict[str, Any]:
    """A config dataclass as plain data for checkpoints (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def config_from_dict(cls: Type[ConfigT], data: Mapping[str, Any]) -> ConfigT:
    """Rebuild a config dataclass; unknown keys are rejected so typos do not pass silently."""
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    return cls(**dict(data))


class ConfigSerialization:
    """``to_dict``/``from_dict`` for config dataclasses, so every family's checkpoint ``config`` looks alike."""

    def to_dict(self) -> Dict[str, Any]:
        """Plain data for a checkpoint's ``config`` entry (round-trips through ``from_dict``)."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """Rebuild from a checkpoint's ``config`` dict; unknown keys are rejected."""
        return config_from_dict(cls, data)


@dataclass(frozen=True)
class ModelConfig(ConfigSerialization):
    """SAM-Med3D architecture hyper-parameters (names follow the reference's build function).

    The decoder's two-way transformer is fixed by the reference (depth 2, 8 heads, MLP 2048). Only widths
    too narrow for 8 heads (tiny test models, e.g. ``prompt_embed_dim=24``) get fewer: ``decoder_num_heads``
    left as None resolves to the largest count ≤ 8 that divides the cross-attention width (prompt_embed_dim / 2).
    """

    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: Tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    prompt_embed_dim: int = 384
    image_size: int = 128
    patch_size: int = 16
    mlp_ratio: float = 4.0
    mask_in_chans: int = 16
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3
    decoder_num_heads: Optional[int] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_global_attn_indexes", tuple(int(i) for i in self.encoder_global_attn_indexes))
        if self.image_size % self.patch_size or self.image_size % 4:
            raise ValueError("image_size must be a multiple of patch_size and of 4")
        if self.prompt_embed_dim % 3 or self.prompt_embed_dim % 8:
            raise ValueError("prompt_embed_dim must be divisible by 3 (point PE) and by 8 (decoder upscaling)")
        if self.encoder_embed_dim % self.encoder_num_heads:
            raise ValueError("encoder_embed_dim must be divisible by encoder_num_heads")
        cross_width = self.prompt_embed_dim // 2
        heads = self.decoder_num_heads
        if heads is None:
            heads = max(h for h in range(1, 9) if cross_width % h == 0)
        if heads < 1 or cross_width % heads:
            raise ValueError(f"decoder_num_heads must divide prompt_embed_dim / 2 = {cross_width}")
        object.__setattr__(self, "decoder_num_heads", int(heads))

    @staticmethod
    def vit_b_ori() -> ModelConfig:
        """The released architecture of every official SAM-Med3D / SAM-Med3D-turbo checkpoint."""
        return ModelConfig()

    @property
    def embedding_size(self) -> int:
        """Edge of the image-embedding token grid (8 for 128 / 16)."""
        return self.image_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """Edge of the decoder's low-res logits (32 for a 128³ ROI)."""
        return self.image_size // 4

    @staticmethod
    def infer_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> ModelConfig:
        """The configuration of a SAM-Med3D state dict, read from tensor shapes (official files carry none)."""
        pos = state_dict["image_encoder.pos_embed"]
        embed_dim, grid = int(pos.shape[-1]), int(pos.shape[1])
        patch = int(state_dict["image_encoder.patch_embed.proj.weight"].shape[-1])
        depth = 1 + max(int(k.split(".")[2]) for k in state_dict if k.startswith("image_encoder.blocks."))
        head_dim = int(state_dict["image_encoder.blocks.0.attn.rel_pos_d"].shape[1])
        global_idx, window = [], 14
        for i in range(depth):
            length = int(state_dict[f"image_encoder.blocks.{i}.attn.rel_pos_d"].shape[0])
            if length == 2 * grid - 1:
                global_idx.append(i)
            else:
                window = (length + 1) // 2
        prompt_dim = 3 * int(state_dict["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"].shape[1])
        return ModelConfig(
            encoder_embed_dim=embed_dim,
            encoder_depth=depth,
            encoder_num_heads=embed_dim // head_dim,
            encoder_global_attn_indexes=tuple(global_idx),
            window_size=window,
            prompt_embed_dim=prompt_dim,
            image_size=grid * patch,
            patch_size=patch,
            mask_in_chans=int(state_dict["prompt_encoder.mask_downscaling.3.weight"].shape[0]),
            iou_head_hidden_dim=int(state_dict["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]),
            num_multimask_outputs=int(state_dict["mask_decoder.mask_tokens.weight"].shape[0]) - 1,
        )
