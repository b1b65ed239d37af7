"""ClickNet2: the bundled default model (v2). Encode a ROI once, decode each click cheaply at 64³ (3 mm).

What v1 (``clicknet``) lacked, measured on its card: a 32³ output (6 mm voxels) capped thin structures, the
per-click decoder saw no high-resolution image information (edges were not followed), and its convolutions
reached only ~2 cm from a click. v2 keeps the same two calls (the predictor caches what ``encode_image``
returns) and adds:

* ``encode_image``: (B, 1, 128, 128, 128) normalised ROI, tensor order (R, A, S) →
  a tuple ``(coarse, fine)``: ``coarse`` (B, embed_dim, 32, 32, 32) from a 4-level U-Net (receptive field of
  several centimetres) and ``fine`` (B, fine_dim + 1, 64, 64, 64): the first-stage features plus the image
  itself average-pooled to 64³ (the last channel), cached with the embedding so every click can follow edges.
* ``decode_prompts``: per click, "click features" that any classical method would use, computed at 64³:
  Gaussian heatmaps of the clicks, the image's similarity to the intensity at each positive/negative click,
  and the connected regions of similar intensity that contain a positive click (what region growing returns,
  given to the network as a starting point so it can learn to fix the leaks instead of rediscovering
  connectivity). A small click-conditioned U-Net at 32³ → 16³ → 8³ gives each click a reach across the ROI;
  a light refinement at 64³ adds the fine features. Output: (B, 1, 64, 64, 64) logits and a predicted IoU
  (a trained head, (B, 1)).

Clicks use the engine's convention: ROI voxel indices (S = 128 grid) in tensor order (R, A, S).

v3 options, declared in the config (saved with the weights; files without them are v1/v2 models and keep their
behaviour bit for bit):

* ``normalization``: the intensity rule the ROI is normalised with before ``encode_image``
  (:func:`SAMVolSegmentLib.engine.preprocessing.normalize_roi`; default the reference's z-score over voxels > 0);
* ``box_input``: ``decode_prompts`` takes ``boxes_roi``, rasterised as a soft box mask at 64³ (and pooled to
  32³), fed next to the click features through zero-initialised weights — a model fine-tuned from v2 starts
  exactly at v2's outputs.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from .clicknet import FastConv3d, norm_conv
from .config import ConfigSerialization
from .families import register_family

#: Half-widths (in z-normalised intensity units) below which a voxel counts as "similar" to a positive click
#: for the two grown-region channels: a tight one that rarely leaks and a loose one that rarely stops short.
GROWN_REGION_HALF_WIDTHS = (0.35, 0.9)


@dataclass(frozen=True)
class ClickNet2Config(ConfigSerialization):
    image_size: int = 128
    encoder_channels: Tuple[int, ...] = (8, 16, 32, 48)  # at 64³, 32³, 16³, 8³
    embed_dim: int = 24  # coarse features at 32³
    decoder_channels: Tuple[int, ...] = (24, 32, 48)  # click-conditioned U-Net at 32³, 16³, 8³
    refine_channels: int = 8  # per-click refinement at 64³
    click_sigma_fine: float = 1.5  # heatmap width in 64³ voxels (4.5 mm)
    click_sigma_coarse: float = 1.5  # heatmap width in 32³ voxels (9 mm)
    similarity_width: float = 0.5  # Gaussian width of the intensity-similarity maps (z units)
    #: Intensity normalisation of the ROI (``preprocessing.NORMALIZATIONS``); v1/v2 files carry none: the reference.
    normalization: str = "zscore_positive"
    #: ``decode_prompts`` takes a box prompt (``boxes_roi``) as an input channel (v3 on).
    box_input: bool = False
    #: Trained with scribbles and lassos whose voxels enter the mask prompt (no weights of its own): the session
    #: then gives a stroke's drawn voxels to the mask prompt as well as its clicks.
    stroke_prompts: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_channels", tuple(self.encoder_channels))
        object.__setattr__(self, "decoder_channels", tuple(self.decoder_channels))

    @property
    def low_res_size(self) -> int:
        """Size of the returned logits (64 for a 128³ ROI: 3 mm voxels on the 1.5 mm model grid)."""
        return self.image_size // 2


class PointwiseConv3d(nn.Conv3d):
    """A 1×1×1 ``nn.Conv3d`` (same parameters, state-dict keys and result) that runs as a matrix product per
    batch item when autograd is off.

    Why: PyTorch's CPU backend sends 1×1×1 3D convolutions through its generic ``slow_conv3d`` path; at 64³ the
    matrix product is about 3× faster for one ROI. With autograd (training) the convolution is kept.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return super().forward(x)
        weight = self.weight.reshape(self.out_channels, self.in_channels)
        flat = x.reshape(x.shape[0], self.in_channels, -1)
        if self.bias is None:
            items = [torch.mm(weight, item) for item in flat]
        else:
            items = [torch.addmm(self.bias[:, None], weight, item) for item in flat]
        out = items[0][None] if len(items) == 1 else torch.stack(items)  # one ROI at inference: no copy
        return out.reshape(x.shape[0], self.out_channels, *x.shape[2:])


def _pool2(x: torch.Tensor) -> torch.Tensor:
    """2× average pooling of (B, C, D, H, W) with even sizes, as three strided pairwise sums: the same result as
    ``F.avg_pool3d(x, 2)``, several times faster on the CPU than it or a reshape-mean."""
    x = x[..., 0::2] + x[..., 1::2]
    x = x[..., 0::2, :] + x[..., 1::2, :]
    return (x[:, :, 0::2] + x[:, :, 1::2]) * 0.125


def _plain_conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(FastConv3d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation),
                         nn.ReLU(inplace=True))


def _nearest(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[2:], mode="nearest")


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[2:], mode="trilinear", align_corners=False)


#: Half-width, in standard deviations, of the window in which a click's Gaussian heatmap is written.
HEATMAP_REACH_SIGMAS = 6.0
#: Image channels at the end of the cached fine features: the image at 64³ and its 3³ box-smoothed copy.
FINE_IMAGE_CHANNELS = 2
#: Channels of the per-click feature maps computed by :meth:`ClickNet2.click_features`.
CLICK_FEATURES = ("heat_positive", "heat_negative", "similar_positive", "similar_negative",
                  "grown_tight", "grown_loose")


class ClickNet2(nn.Module):
    family = "clicknet2"

    def __init__(self, config: ClickNet2Config) -> None:
        super().__init__()
        self.config = config
        self.model_id = "clicknet2:random"
        c0, c1, c2, c3 = config.encoder_channels
        d0, d1, d2 = config.decoder_channels
        r = config.refine_channels
        self.enc64 = nn.Sequential(norm_conv(1, c0, stride=2), norm_conv(c0, c0))
        self.enc32 = nn.Sequential(norm_conv(c0, c1, stride=2), norm_conv(c1, c1))
        self.enc16 = nn.Sequential(norm_conv(c1, c2, stride=2), norm_conv(c2, c2))
        self.enc8 = nn.Sequential(norm_conv(c2, c3, stride=2), norm_conv(c3, c3, dilation=2))
        self.enc_up16 = norm_conv(c3 + c2, c2)
        self.enc_up32 = norm_conv(c2 + c1, config.embed_dim)

        n_click = len(CLICK_FEATURES)
        # Part of the 64³ refinement's first (linear) layer that depends only on the image: computed once per
        # ROI in encode_image and cached, so a click pays only for its own inputs.
        self.refine_image = PointwiseConv3d(c0 + FINE_IMAGE_CHANNELS, r, 1)
        # Coarse, click-conditioned U-Net (32³ → 8³ → 32³) on the cached features, the click features pooled
        # to 32³ and the previous mask. Additive skips and nearest upsampling keep every convolution's input at
        # a channel count oneDNN runs fast (24/32/48), and no normalisation layers: per click they cost more
        # than the convolutions at these sizes.
        self.dec_in = nn.Sequential(PointwiseConv3d(config.embed_dim + n_click + 1, d0, 1), nn.ReLU(inplace=True))
        self.dec_down16 = _plain_conv(d0, d1, stride=2)
        self.dec_down8 = nn.Sequential(_plain_conv(d1, d2, stride=2), _plain_conv(d2, d2, dilation=2))
        self.dec_skip16 = PointwiseConv3d(d2, d1, 1)
        self.dec_up16 = _plain_conv(d1, d1)
        self.dec_skip32 = PointwiseConv3d(d1, d0, 1)
        self.dec_up32 = _plain_conv(d0, d0)
        self.coarse_head = PointwiseConv3d(d0, 1, 1)
        # Refinement at 64³: a per-voxel MLP (1×1×1 convolutions) of the cached fine features (edges, the
        # image), the click features, the previous mask and the upsampled coarse logits; it moves the coarse
        # boundary onto the image's edges. 3×3×3 convolutions at 64³ would cost tens of ms per click on a CPU.
        self.refine_clicks = PointwiseConv3d(n_click + 2, r, 1, bias=False)
        self.refine = nn.Sequential(
            nn.ReLU(inplace=True),
            PointwiseConv3d(r, r, 1),
            nn.ReLU(inplace=True),
            PointwiseConv3d(r, 1, 1),
        )
        nn.init.zeros_(self.refine[-1].weight)
        nn.init.zeros_(self.refine[-1].bias)
        self.iou_head = nn.Sequential(nn.Linear(2 * d0 + 1, 16), nn.ReLU(inplace=True), nn.Linear(16, 1))
        # A click prior (positive minus negative heatmap): training starts from a blob around the clicks over
        # a negative background instead of collapsing to background.
        self.click_gain = nn.Parameter(torch.tensor(4.0))
        nn.init.constant_(self.coarse_head.bias, -3.0)
        if config.box_input:
            # The box channel enters where the click features do (the 32³ decoder input and the 64³ refinement),
            # plus a learned penalty outside the box; all zero-initialised, so loading v2's weights reproduces v2.
            self.box_decoder = PointwiseConv3d(1, d0, 1, bias=False)
            self.box_refine = PointwiseConv3d(1, r, 1, bias=False)
            self.box_outside_gain = nn.Parameter(torch.tensor(0.0))
            nn.init.zeros_(self.box_decoder.weight)
            nn.init.zeros_(self.box_refine.weight)
        # Optional residual adapter on the coarse features (:mod:`.adapters`), None unless injected (a plain
        # attribute then: state-dict names unchanged).
        self.adapter: Optional[nn.Module] = None
        # Optional residual adapter on the click-conditioned decoder's 32³ features, likewise.
        self.decoder_adapter: Optional[nn.Module] = None
        self.adapter_config: Optional[Any] = None  # set by inject_adapters
        #: Inference only: id(images) → (weak reference to the embedding's images, its last _ClickState).
        self._click_cache: Dict[int, Tuple[Any, _ClickState]] = {}

    # ------------------------------------------------------------------ image side (once per ROI)
    def encode_image(self, image_roi: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 1, S, S, S) normalised ROI → the embedding cached per ROI, a tuple of

        * coarse (B, embed_dim, S/4, S/4, S/4): U-Net features;
        * fine (B, refine_channels, S/2, S/2, S/2): the image-only part of the refinement's first layer;
        * images (B, 2, S/2, S/2, S/2): the image average-pooled to S/2 and that image smoothed with a 3³ box
          (the click features read them).
        """
        x64 = self.enc64(image_roi)
        x32 = self.enc32(x64)
        x16 = self.enc16(x32)
        x8 = self.enc8(x16)
        u16 = self.enc_up16(torch.cat([_up(x8, x16), x16], 1))
        coarse = self.enc_up32(torch.cat([_up(u16, x32), x32], 1))
        if self.adapter is not None:  # in the cached embedding, so a click pays nothing for it
            coarse = coarse + self.adapter(coarse)
        image_low = F.avg_pool3d(image_roi, 2)
        smooth_low = F.avg_pool3d(image_low, 3, stride=1, padding=1, count_include_pad=False)
        images = torch.cat([image_low, smooth_low], 1)
        fine = self.refine_image(torch.cat([x64, images], 1))
        return coarse, fine, images

    @property
    def decoder_adapter_on_every_click(self) -> bool:
        """A decoder adapter runs on clicks from scratch too (scope "all"), not only on corrections of a proposal:
        clicks then differ from the base model's on every structure."""
        return self.decoder_adapter is not None and getattr(self.adapter_config, "clicknet2_decoder_scope",
                                                            "all") == "all"

    # ------------------------------------------------------------------ click side (per click)
    @staticmethod
    def heatmaps(points_roi: torch.Tensor, labels: torch.Tensor, size: int, image_size: int,
                 sigma: float) -> torch.Tensor:
        """(B, N, 3) ROI voxel indices (S grid) and (B, N) labels → (B, 2, size³) max-Gaussian maps (+, −);
        labels other than 0/1 (padding) are ignored."""
        batch, n = labels.shape
        device = points_roi.device
        maps = torch.zeros((batch, 2, size, size, size), device=device)
        if n == 0:
            return maps
        axis = torch.arange(size, device=device, dtype=torch.float32)
        centres = (points_roi.float() + 0.5) * size / image_size - 0.5
        g = torch.exp(-((axis[None, None, None, :] - centres[..., None]) ** 2) / (2 * sigma**2))  # (B, N, 3, size)
        # Each blob is written within ±HEATMAP_REACH_SIGMAS σ of its click only: beyond, it is below 2e-8 (and
        # a click's cost no longer grows with the grid).
        reach = HEATMAP_REACH_SIGMAS * sigma
        lows = torch.clamp(torch.floor(centres - reach), 0, size).long().tolist()
        highs = torch.clamp(torch.ceil(centres + reach) + 1, 0, size).long().tolist()
        for b in range(batch):
            for k in range(n):
                label = int(labels[b, k])
                if label not in (0, 1):
                    continue
                (i0, j0, k0), (i1, j1, k1) = lows[b][k], highs[b][k]
                if i1 <= i0 or j1 <= j0 or k1 <= k0:
                    continue
                blob = (g[b, k, 0, i0:i1][:, None, None] * g[b, k, 1, j0:j1][None, :, None]
                        * g[b, k, 2, k0:k1][None, None, :])
                window = maps[b, 0 if label == 1 else 1, i0:i1, j0:j1, k0:k1]
                torch.maximum(window, blob, out=window)
        return maps

    @property
    def accepts_box(self) -> bool:
        """True when ``decode_prompts`` reads a box prompt (the engine then passes the box instead of its centre
        click)."""
        return bool(self.config.box_input)

    @property
    def takes_drawn_mask(self) -> bool:
        """True when a scribble's or lasso's voxels belong in the mask prompt (``config.stroke_prompts``)."""
        return bool(self.config.stroke_prompts)

    @staticmethod
    def box_channel(boxes_roi: torch.Tensor, size: int, image_size: int) -> torch.Tensor:
        """(B, 2, 3) boxes → (B, 1, size³) share of each grid voxel covered by the box (0 for a NaN row: no box).

        Args:
            boxes_roi: per item, the box's lower and upper corner as continuous ROI voxel indices (S grid,
                tensor order (R, A, S)); ROI voxel v spans [v − 0.5, v + 0.5], so a box holding voxels a..b is
                (a − 0.5, b + 0.5). A row with NaN marks an item without a box.
            size: edge of the output grid; image_size: S, the ROI edge the boxes refer to.
        """
        boxes = boxes_roi.float()
        batch = boxes.shape[0]
        scale = image_size / size
        edges = torch.arange(size + 1, device=boxes.device, dtype=torch.float32) * scale - 0.5  # (size + 1,)
        lo, hi = torch.nan_to_num(boxes[:, 0], nan=0.0), torch.nan_to_num(boxes[:, 1], nan=-1.0)
        cover = (torch.minimum(edges[1:], hi[..., None]) - torch.maximum(edges[:-1], lo[..., None])).clamp_min(0)
        cover = cover / scale  # (B, 3, size): share of each grid cell along each axis
        out = cover[:, 0, :, None, None] * cover[:, 1, None, :, None] * cover[:, 2, None, None, :]
        has_box = ~torch.isnan(boxes).any(-1).any(-1)
        return (out * has_box[:, None, None, None].to(out.dtype)).reshape(batch, 1, size, size, size)

    def click_features(self, images: torch.Tensor, points_roi: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, 2, L, L, L) image and smoothed image at the low-res grid + clicks → (B, 6, L, L, L) maps named in CLICK_FEATURES.

        * heatmaps of the positive / negative clicks;
        * intensity similarity exp(−(I − I_click)² / 2w²), max over the positive (negative) clicks, where
          I_click is the 3³-smoothed image at the click;
        * the connected components of {|I − I_click| < h} that contain a positive click, for the two half
          widths of ``GROWN_REGION_HALF_WIDTHS`` (6-connectivity).
        """
        return self._click_features(images, self._click_states(images, points_roi, labels, None))

    def _click_states(self, images: torch.Tensor, points_roi: torch.Tensor, labels: torch.Tensor,
                      coarse_size: Optional[int]) -> List[_ClickState]:
        """Per batch item, the order-independent summary of its clicks (:class:`_ClickState`); in inference on a
        batch of one, the previous decode's summary on the same embedding is extended by the new clicks only, so
        a click costs the same at click 100 as at click 10 (max and min are exact: the same numbers as from
        scratch)."""
        low = images.shape[-1]
        image_size = 2 * low  # the ROI size (training may use smaller ROIs than config.image_size)
        cacheable = not self.training and not torch.is_grad_enabled() and images.shape[0] == 1
        states = []
        for b in range(images.shape[0]):
            previous = self._cached_click_state(images, points_roi[b], labels[b]) if cacheable else None
            states.append(_ClickState.extend(previous, images[b], points_roi[b], labels[b], self.config, image_size,
                                             coarse_size))
        if cacheable:
            # Keyed by the embedding's images tensor, checked by identity (a weak reference: a freed tensor's
            # address may be reused by another ROI's); a few ROIs of one session take turns.
            cache = {k: v for k, v in self._click_cache.items() if v[0]() is not None}
            cache[id(images)] = (weakref.ref(images), states[0])
            while len(cache) > CLICK_CACHE_ROIS:
                cache.pop(next(iter(cache)))
            self._click_cache = cache
        return states

    def _cached_click_state(self, images: torch.Tensor, points: torch.Tensor, labels: torch.Tensor
                            ) -> Optional[_ClickState]:
        entry = self._click_cache.get(id(images))
        if entry is None or entry[0]() is not images:
            return None
        state = entry[1]
        n = state.points.shape[0]
        if n > points.shape[0] or not (torch.equal(state.points, points[:n]) and torch.equal(state.labels, labels[:n])):
            return None
        return state

    def _click_features(self, images: torch.Tensor, states: List[_ClickState]) -> torch.Tensor:
        config = self.config
        low = images.shape[-1]
        out = torch.zeros((images.shape[0], len(CLICK_FEATURES), low, low, low), device=images.device)
        for b, state in enumerate(states):
            out[b, :2] = state.heat_fine
            for slot in (0, 1):
                if state.best_distance[slot] is not None:
                    out[b, 2 + slot] = torch.exp(-state.best_distance[slot] ** 2 / (2 * config.similarity_width**2))
            if state.seeds:
                distance_np = state.best_distance[0].detach().cpu().numpy()
                for channel, half_width in zip((4, 5), GROWN_REGION_HALF_WIDTHS):
                    out[b, channel] = torch.from_numpy(_grown_region(distance_np < half_width, state.seeds))
        return out

    def decode_prompts(self, embedding: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], points_roi: torch.Tensor,
                       labels: torch.Tensor, mask_logits: torch.Tensor, return_coarse: bool = False,
                       corrections: bool = False, boxes_roi: Optional[torch.Tensor] = None):
        """Cached embedding + clicks + previous low-res logits → (B, 1, L, L, L) logits and IoU (B, 1).

        Args:
            embedding: what :meth:`encode_image` returned.
            points_roi: (B, N, 3) ROI voxel indices (S grid), tensor order (R, A, S).
            labels: (B, N) 1 positive, 0 negative, anything else ignored.
            mask_logits: (B, 1, L, L, L) previous logits (zeros at the first click); L = S / 2.
            return_coarse: also return the (B, 1, S/4, S/4, S/4) coarse logits (training's auxiliary loss).
            corrections: the clicks correct a proposal (:mod:`SAMVolSegmentLib.engine.proposals`); a decoder adapter
                whose scope is "corrections" runs only then.
            boxes_roi: (B, 2, 3) box prompts (:meth:`box_channel`; NaN rows: no box), only for a model with
                ``config.box_input``; None: no box.
        """
        coarse, fine, images = embedding
        if boxes_roi is not None and not self.config.box_input:
            raise ValueError("this ClickNet2 has no box input (config.box_input is False); give the box as a clip")
        states = self._click_states(images, points_roi, labels, coarse.shape[-1])
        clicks = self._click_features(images, states)
        prev = torch.tanh(mask_logits.float() / 4)
        pooled = _pool2(torch.cat([clicks, prev], 1))
        # The coarse heatmaps are wider (9 mm) than pooled fine ones: made at 32³ with the click state.
        pooled[:, :2] = torch.stack([state.heat_coarse for state in states])
        box64 = box32 = None
        if boxes_roi is not None:
            low = fine.shape[-1]
            box64 = self.box_channel(boxes_roi.to(fine.device), low, 2 * low)
            box32 = _pool2(box64)
        if box32 is None:
            x32 = self.dec_in(torch.cat([coarse, pooled], 1))
        else:
            x32 = torch.relu(self.dec_in[0](torch.cat([coarse, pooled], 1)) + self.box_decoder(box32))
        x16 = self.dec_down16(x32)
        x8 = self.dec_down8(x16)
        y16 = self.dec_up16(_nearest(self.dec_skip16(x8), x16) + x16)
        up32_input = _nearest(self.dec_skip32(y16), x32) + x32
        if not torch.is_grad_enabled():
            # oneDNN runs this 24-channel 3×3×3 convolution at 32³ (the largest per click) ~1.6× faster on
            # channels-last input, conversion included; what reads y32 below accepts either layout.
            up32_input = up32_input.contiguous(memory_format=torch.channels_last_3d)
        y32 = self.dec_up32(up32_input)
        adapter = self.decoder_adapter  # per click: structure-specific decoding (adapters.py)
        if adapter is not None and (corrections or self.decoder_adapter_on_every_click):
            y32 = y32 + adapter(y32)
        logits32 = self.coarse_head(y32) + self.click_gain * (pooled[:, :1] - pooled[:, 1:2])
        if box32 is not None:
            has_box = (~torch.isnan(boxes_roi).flatten(1).any(1)).to(box32.dtype)[:, None, None, None, None]
            logits32 = logits32 - self.box_outside_gain * has_box * (1 - box32)
        up_logits = _up(logits32, fine)
        refine_in = fine + self.refine_clicks(torch.cat([clicks, prev, up_logits / 4], 1))
        if box64 is not None:
            refine_in = refine_in + self.box_refine(box64)
        logits = up_logits + self.refine(refine_in)
        weights = torch.sigmoid(logits32).flatten(2)  # (B, 1, N)
        features = y32.flatten(2)  # (B, C, N)
        # Weighted sums as matrix products: an elementwise product + sum over 32³ costs ~10× more on a CPU.
        inside = torch.bmm(features, weights.transpose(1, 2))[..., 0] / weights.sum(-1).clamp_min(1e-3)
        iou = torch.sigmoid(self.iou_head(torch.cat([inside, features.mean(-1), weights.mean(-1)], 1)))
        if return_coarse:
            return logits, iou, logits32
        return logits, iou


#: ROIs whose last click state is kept for the next decode (a session decodes its active ROI and up to
#: ``MAX_EXTENSIONS_PER_CLICK`` neighbours per click).
CLICK_CACHE_ROIS = 4


@dataclass(frozen=True)
class _ClickState:
    """What the click features of one item need from its clicks, all of it independent of their order.

    Attributes:
        points: (N, 3) and ``labels`` (N,): the clicks summarised (tensor copies).
        heat_fine: (2, L, L, L) max-Gaussian heatmaps (+, −) on the click-feature grid.
        heat_coarse: (2, C, C, C) the same at the decoder's coarse grid (None when not asked for).
        best_distance: per sign, min over its clicks of |image − smoothed image at the click| (L³), or None.
        seeds: low-res (i, j, k) of the positive clicks.
    """

    points: torch.Tensor
    labels: torch.Tensor
    heat_fine: torch.Tensor
    heat_coarse: Optional[torch.Tensor]
    best_distance: Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]
    seeds: Tuple[Tuple[int, int, int], ...]

    @staticmethod
    def extend(previous: Optional[_ClickState], images: torch.Tensor, points: torch.Tensor, labels: torch.Tensor,
               config: ClickNet2Config, image_size: int, coarse_size: Optional[int]) -> _ClickState:
        """The state of ``points``/``labels`` ((N, 3), (N,)) on one item's ``images`` (2, L, L, L); ``previous``
        (the state of their first n clicks, or None) is extended by the rest."""
        low = images.shape[-1]
        start = 0 if previous is None else previous.points.shape[0]
        new_points, new_labels = points[None, start:], labels[None, start:]
        heat_fine = ClickNet2.heatmaps(new_points, new_labels, low, image_size, config.click_sigma_fine)[0]
        heat_coarse = None
        if coarse_size is not None:
            heat_coarse = ClickNet2.heatmaps(new_points, new_labels, coarse_size, 4 * coarse_size,
                                             config.click_sigma_coarse)[0]
        best: List[Optional[torch.Tensor]] = [None, None]
        seeds: List[Tuple[int, int, int]] = []
        if previous is not None:
            heat_fine = torch.maximum(heat_fine, previous.heat_fine)
            if heat_coarse is not None and previous.heat_coarse is not None:
                heat_coarse = torch.maximum(heat_coarse, previous.heat_coarse)
            elif heat_coarse is not None:
                heat_coarse = ClickNet2.heatmaps(points[None], labels[None], coarse_size, 4 * coarse_size,
                                                 config.click_sigma_coarse)[0]
            best = list(previous.best_distance)
            seeds = list(previous.seeds)
        image, smooth = images[0], images[1]
        index = torch.clamp(torch.round((new_points[0].float() + 0.5) * low / image_size - 0.5), 0, low - 1).long()
        values: Tuple[list, list] = ([], [])  # smoothed intensity at the new positive / negative clicks
        for k in range(new_labels.shape[1]):
            label = int(new_labels[0, k])
            if label not in (0, 1):
                continue
            i, j, m = (int(v) for v in index[k])
            values[0 if label == 1 else 1].append(smooth[i, j, m])
            if label == 1:
                seeds.append((i, j, m))
        for slot in (0, 1):
            if values[slot]:
                distance = _nearest_value_distance(image, values[slot])
                best[slot] = distance if best[slot] is None else torch.minimum(best[slot], distance)
        return _ClickState(points.detach().clone(), labels.detach().clone(), heat_fine, heat_coarse,
                           (best[0], best[1]), tuple(seeds))


#: Up to this many click values, the nearest-value distance is a running minimum (~0.1 ms per value on 64³ on
#: one core); beyond, a binary search (~9 ms for 64³ whatever the count). Measured on this project's 2-core VM:
#: the crossover is near 90 values, so 64 keeps the cheaper path for every click count up to there.
RUNNING_MINIMUM_MAX_VALUES = 64


def _nearest_value_distance(image: torch.Tensor, values: list) -> torch.Tensor:
    """min_k |image − values[k]| for every voxel. Up to :data:`RUNNING_MINIMUM_MAX_VALUES` values as a running
    minimum; beyond, as the distance to the nearest of the sorted values found by binary search (the same numbers
    at a cost that no longer grows with the number of clicks)."""
    if len(values) <= RUNNING_MINIMUM_MAX_VALUES:
        best = (image - values[0]).abs()
        for value in values[1:]:
            torch.minimum(best, (image - value).abs(), out=best)
        return best
    ordered = torch.sort(torch.stack(values).to(image.dtype))[0]
    flat = image.reshape(-1)
    position = torch.searchsorted(ordered, flat)
    below = ordered[torch.clamp(position - 1, min=0)]
    above = ordered[torch.clamp(position, max=len(ordered) - 1)]
    return torch.minimum((flat - below).abs(), (flat - above).abs()).reshape(image.shape)


def _grown_region(similar: np.ndarray, seeds) -> np.ndarray:
    """(L, L, L) bool → float32 mask of the 6-connected components of ``similar`` holding any seed (i, j, k)."""
    components, _ = ndimage.label(similar)
    keep = {int(components[s]) for s in seeds} - {0}
    if not keep:
        return np.zeros(similar.shape, dtype=np.float32)
    lookup = np.zeros(int(components.max()) + 1, dtype=np.float32)
    lookup[sorted(keep)] = 1.0
    return lookup[components]  # a table lookup: several times faster than np.isin on 64³


def _config_from_checkpoint(checkpoint: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> ClickNet2Config:
    return ClickNet2Config.from_dict(checkpoint.get("config") or {})



register_family("clicknet2", _config_from_checkpoint, ClickNet2)
