"""ClickNet: the small CNN family behind the bundled default model (trains on 2 CPU cores in about an hour).

Same split as SAM-Med3D, so the predictor and session treat both alike:

* ``encode_image``: (B, 1, 128, 128, 128) normalised ROI → (B, C, 32, 32, 32) features, once per ROI. Strided
  stems bring the ROI to 32³ quickly; a small U-Net-like path down to 8³ gives each feature a receptive field
  of several centimetres.
* ``decode_prompts``: features + Gaussian heatmaps of the positive and negative clicks + the previous low-res
  logits → a few light convolutions → (B, 1, 32, 32, 32) logits, per click.

Clicks use the engine's convention: ROI voxel indices in tensor order (R, A, S).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigSerialization
from .families import register_family


@dataclass(frozen=True)
class ClickNetConfig(ConfigSerialization):
    image_size: int = 128
    stem_channels: Tuple[int, ...] = (8, 16)
    context_channels: Tuple[int, ...] = (24, 32)
    embed_dim: int = 16
    decoder_channels: int = 16
    click_sigma: float = 1.5  # heatmap width in low-res voxels (1.5 × 6 mm = 9 mm)
    # Two extra decoder inputs: cosine similarity of every feature vector to the clicked features (+, −).
    # The decoder's convolutions only reach ~20 mm from a click; the similarity maps reach the whole ROI.
    prototype_similarity: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "stem_channels", tuple(self.stem_channels))
        object.__setattr__(self, "context_channels", tuple(self.context_channels))

    @property
    def low_res_size(self) -> int:
        return self.image_size // 4


#: oneDNN convolutions callable directly (every x86-64 and arm64 CPU build of PyTorch ≥ 1.8 has them).
_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch, "mkldnn_convolution")


class FastConv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters, same state-dict keys, same result up to float rounding) that calls oneDNN
    directly at inference.

    Why: PyTorch 2.x picks its CPU backend for a 3D convolution with a heuristic written for 2D inputs (it
    multiplies batch × channels × the first two spatial sizes and compares with 20480), so every 3D convolution
    on a small or few-channel input (16 channels at 32³, 32 channels at 16³, everything at 8³) runs on the
    generic ``slow_conv3d`` path: 32 → 32 channels at 16³ takes ~11 ms on one thread there against ~2.5 ms in
    oneDNN, 16 → 8 at 32³ ~50 ms against ~6 ms (``benchmarks/default_model_speed.py`` measures the model).
    With autograd (training) the standard path is kept; where oneDNN is unavailable, too.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or not _ONEDNN or x.device.type != "cpu" or x.dtype != torch.float32:
            return super().forward(x)
        return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                        self.groups)


def norm_conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """3×3×3 convolution (no bias) → GroupNorm → ReLU: the encoder block of both ClickNet families."""
    return nn.Sequential(
        FastConv3d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.GroupNorm(min(4, cout), cout),
        nn.ReLU(inplace=True),
    )


class ClickNet(nn.Module):
    family = "clicknet"

    def __init__(self, config: ClickNetConfig) -> None:
        super().__init__()
        self.config = config
        self.model_id = "clicknet:random"
        s1, s2 = config.stem_channels
        c1, c2 = config.context_channels
        self.stem = nn.Sequential(norm_conv(1, s1, stride=2), norm_conv(s1, s2, stride=2), norm_conv(s2, s2))  # → 32³
        self.down1 = nn.Sequential(norm_conv(s2, c1, stride=2), norm_conv(c1, c1))  # → 16³
        self.down2 = nn.Sequential(norm_conv(c1, c2, stride=2), norm_conv(c2, c2, dilation=2))  # → 8³
        self.up1 = norm_conv(c2 + c1, c1)
        self.up2 = norm_conv(c1 + s2, config.embed_dim)
        d = config.decoder_channels
        # Per-click cost budget (≤ ~25 ms on 2 CPU threads): mix the inputs with a 1×1×1 conv, then two thin
        # 3×3×3 convs (one dilated) for spatial context.
        self.decoder = nn.Sequential(
            nn.Conv3d(self.decoder_inputs(config), d, 1),
            nn.ReLU(inplace=True),
            FastConv3d(d, d // 2, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv3d(d // 2, d // 2, 3, padding=2, dilation=2),
            nn.ReLU(inplace=True),
            nn.Conv3d(d // 2, 1, 1),
        )
        # A click prior: logits start as a blob around positive clicks (minus negative ones) over a negative
        # background, so training begins from a sensible answer instead of collapsing to background.
        self.click_gain = nn.Parameter(torch.tensor(6.0))
        nn.init.constant_(self.decoder[-1].bias, -3.0)

    @staticmethod
    def decoder_inputs(config: ClickNetConfig) -> int:
        """Channels into the decoder: features, +/− heatmaps, previous mask, then the optional similarities
        (last, so a model trained without them warm-starts with zero weights for them)."""
        return config.embed_dim + 3 + (2 if config.prototype_similarity else 0)

    def encode_image(self, image_roi: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S, S) → (B, embed_dim, S/4, S/4, S/4)."""
        x32 = self.stem(image_roi)
        x16 = self.down1(x32)
        x8 = self.down2(x16)
        u16 = self.up1(torch.cat([F.interpolate(x8, size=x16.shape[2:], mode="trilinear", align_corners=False), x16], 1))
        return self.up2(torch.cat([F.interpolate(u16, size=x32.shape[2:], mode="trilinear", align_corners=False), x32], 1))

    def click_heatmaps(self, points_roi: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) ROI voxel indices and (B, N) labels → (B, 2, L, L, L) max-Gaussian maps (+, −)."""
        low = self.config.low_res_size
        batch = labels.shape[0]
        device = points_roi.device
        maps = torch.zeros((batch, 2, low, low, low), device=device)
        if points_roi.shape[1] == 0:
            return maps
        axis = torch.arange(low, device=device, dtype=torch.float32)
        centres = (points_roi.float() + 0.5) * low / self.config.image_size - 0.5  # low-res voxel coordinates
        sigma2 = 2 * self.config.click_sigma**2
        for b in range(batch):
            for n in range(points_roi.shape[1]):
                label = int(labels[b, n])
                if label not in (0, 1):
                    continue
                c = centres[b, n]
                g = (torch.exp(-((axis - c[0]) ** 2) / sigma2)[:, None, None]
                     * torch.exp(-((axis - c[1]) ** 2) / sigma2)[None, :, None]
                     * torch.exp(-((axis - c[2]) ** 2) / sigma2)[None, None, :])
                channel = 0 if label == 1 else 1
                maps[b, channel] = torch.maximum(maps[b, channel], g)
        return maps

    @staticmethod
    def prototype_similarity(embedding: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
        """(B, C, L, L, L) features and (B, 2, L, L, L) heatmaps → (B, 2, L, L, L) cosine similarity of each
        feature vector to the heatmap-weighted mean feature of the positive (channel 0) and negative (1) clicks;
        zero where a kind of click is absent."""
        features = F.normalize(embedding, dim=1)
        weights = heat / heat.flatten(2).sum(-1).clamp_min(1e-6)[..., None, None, None]
        prototypes = F.normalize(torch.einsum("bcxyz,bkxyz->bkc", features, weights), dim=-1)
        return torch.einsum("bcxyz,bkc->bkxyz", features, prototypes)

    def decode_prompts(self, embedding: torch.Tensor, points_roi: torch.Tensor, labels: torch.Tensor,
                       mask_logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Features + click heatmaps + previous logits → (B, 1, L, L, L) logits and a confidence (B, 1).

        The confidence is the mean certainty max(p, 1 − p) inside the predicted region, not a trained IoU head.
        """
        heat = self.click_heatmaps(points_roi, labels)
        prev = torch.tanh(mask_logits.float() / 4)
        inputs = [embedding, heat, prev]
        if self.config.prototype_similarity:
            inputs.append(self.prototype_similarity(embedding, heat))
        logits = self.decoder(torch.cat(inputs, dim=1)) + self.click_gain * (heat[:, :1] - heat[:, 1:])
        prob = torch.sigmoid(logits)
        certainty = torch.maximum(prob, 1 - prob).flatten(1).mean(dim=1, keepdim=True)
        return logits, certainty


def _config_from_checkpoint(checkpoint: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> ClickNetConfig:
    return ClickNetConfig.from_dict(checkpoint.get("config") or {})


register_family("clicknet", _config_from_checkpoint, ClickNet)
