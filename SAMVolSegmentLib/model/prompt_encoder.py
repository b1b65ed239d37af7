"""SAM-Med3D's prompt encoder: points → sparse tokens, previous low-res logits → dense embedding.

Points are ROI voxel indices in tensor order (dim0, dim1, dim2) = (R, A, S). Reference quirks kept: the
Fourier encoding is ``[sin, cos, sin]`` and the dense grid PE stacks (dim1, dim0, dim2) — the trained weights
expect both.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from .common import LayerNorm3d


class PositionEmbeddingRandom3D(nn.Module):
    """Random Fourier features of normalised 3D coordinates (3 × num_pos_feats Gaussian, persistent buffer)."""

    def __init__(self, num_pos_feats: int, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((3, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 3) coordinates in [0, 1] → (..., 3·num_pos_feats)."""
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords), torch.sin(coords)], dim=-1)

    def forward(self, size: Tuple[int, int, int]) -> torch.Tensor:
        """Dense PE of an (x, y, z) grid → (C, x, y, z), stacking (dim1, dim0, dim2) as the reference."""
        x, y, z = size
        grid = torch.ones((x, y, z), device=self.positional_encoding_gaussian_matrix.device)
        y_embed = (grid.cumsum(dim=0) - 0.5) / y
        x_embed = (grid.cumsum(dim=1) - 0.5) / x
        z_embed = (grid.cumsum(dim=2) - 0.5) / z
        pe = self._pe_encoding(torch.stack([x_embed, y_embed, z_embed], dim=-1))
        return pe.permute(3, 0, 1, 2)

    def forward_with_coords(self, coords: torch.Tensor, image_size: Tuple[int, int, int]) -> torch.Tensor:
        """(B, N, 3) voxel coordinates → (B, N, C), each axis divided by the image size."""
        scale = torch.tensor(image_size, dtype=torch.float32, device=coords.device)
        return self._pe_encoding(coords.float() / scale)


class PromptEncoder3D(nn.Module):
    def __init__(self, embed_dim: int, image_embedding_size: Tuple[int, int, int],
                 input_image_size: Tuple[int, int, int], mask_in_chans: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = image_embedding_size
        self.input_image_size = input_image_size
        self.pe_layer = PositionEmbeddingRandom3D(embed_dim // 3)
        self.point_embeddings = nn.ModuleList([nn.Embedding(1, embed_dim) for _ in range(2)])  # 0 neg, 1 pos
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv3d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv3d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans),
            nn.GELU(),
            nn.Conv3d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """(1, C, e, e, e) positional encoding of the image-embedding grid."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # voxel centre
        if pad:  # the reference appends one "not a point" token when no box is given
            points = torch.cat([points, torch.zeros((points.shape[0], 1, 3), device=points.device)], dim=1)
            labels = torch.cat([labels, -torch.ones((labels.shape[0], 1), device=labels.device, dtype=labels.dtype)], 1)
        embedding = self.pe_layer.forward_with_coords(points, self.input_image_size)
        embedding = torch.where((labels == -1)[..., None], torch.zeros_like(embedding), embedding)
        embedding = embedding + (labels == -1)[..., None] * self.not_a_point_embed.weight
        embedding = embedding + (labels == 0)[..., None] * self.point_embeddings[0].weight
        embedding = embedding + (labels == 1)[..., None] * self.point_embeddings[1].weight
        return embedding

    def forward(self, points: Optional[Tuple[torch.Tensor, torch.Tensor]], boxes: Optional[torch.Tensor],
                masks: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sparse (B, N+1, C) point tokens and dense (B, C, e, e, e) mask embedding."""
        if boxes is not None:
            raise NotImplementedError("SAM-Med3D was trained without box prompts; use a box as a region instead")
        if points is not None:
            batch = points[0].shape[0]
        elif masks is not None:
            batch = masks.shape[0]
        else:
            batch = 1
        device = self.no_mask_embed.weight.device
        sparse = torch.empty((batch, 0, self.embed_dim), device=device)
        if points is not None:
            sparse = torch.cat([sparse, self._embed_points(points[0], points[1], pad=True)], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(batch, -1, *self.image_embedding_size)
        return sparse, dense
