"""The SAM-Med3D model: reference submodules plus the engine's two-call interface (encode once, decode per click)."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from .config import ModelConfig
from .image_encoder import ImageEncoderViT3D
from .mask_decoder import MaskDecoder3D
from .prompt_encoder import PromptEncoder3D


class Sam3D(nn.Module):
    """``image_encoder`` / ``prompt_encoder`` / ``mask_decoder`` with the reference names, so official state
    dicts load with ``strict=True``. The reference's 2D-style ``forward`` is deliberately absent."""

    family = "sam_med3d"

    def __init__(self, config: ModelConfig, attention_impl: str = "fast") -> None:
        super().__init__()
        self.config = config
        self.model_id = "sam_med3d:random"
        e = config.embedding_size
        self.image_encoder = ImageEncoderViT3D(
            img_size=config.image_size, patch_size=config.patch_size, embed_dim=config.encoder_embed_dim,
            depth=config.encoder_depth, num_heads=config.encoder_num_heads, mlp_ratio=config.mlp_ratio,
            out_chans=config.prompt_embed_dim, window_size=config.window_size,
            global_attn_indexes=config.encoder_global_attn_indexes, attention_impl=attention_impl,
        )
        self.prompt_encoder = PromptEncoder3D(
            embed_dim=config.prompt_embed_dim, image_embedding_size=(e, e, e),
            input_image_size=(config.image_size,) * 3, mask_in_chans=config.mask_in_chans,
        )
        self.mask_decoder = MaskDecoder3D(
            transformer_dim=config.prompt_embed_dim, num_multimask_outputs=config.num_multimask_outputs,
            iou_head_hidden_dim=config.iou_head_hidden_dim, num_heads=config.decoder_num_heads,
        )

    def set_attention_impl(self, impl: str) -> None:
        """"fast" (default) or "reference" (the plain padded computation, for comparison)."""
        self.image_encoder.set_attention_impl(impl)

    def encode_image(self, image_roi: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S, S) normalised ROI, (R, A, S) order → (B, C, S/16, S/16, S/16) embedding."""
        return self.image_encoder(image_roi)

    def decode_prompts(self, embedding: torch.Tensor, points_roi: torch.Tensor, labels: torch.Tensor,
                       mask_logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One step of the reference interactive loop.

        Args:
            embedding: from :meth:`encode_image`.
            points_roi: (B, N, 3) ROI voxel indices (R, A, S); N may be 0 (mask prompt only).
            labels: (B, N) int64, 1 positive / 0 negative.
            mask_logits: (B, 1, L, L, L) previous low-res logits (zeros at the first click).
        Returns:
            low-res logits (B, 1, L, L, L) and predicted IoU (B, 1).
        """
        sparse, dense = self.prompt_encoder(points=[points_roi.float(), labels], boxes=None, masks=mask_logits)
        return self.mask_decoder(
            image_embeddings=embedding, image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
        )
