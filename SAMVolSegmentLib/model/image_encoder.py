"""SAM-Med3D's 3D ViT image encoder, with an exact fast path for its zero-padded attention windows.

Tensors inside the encoder are channels-last token grids (B, D, H, W, C) where (D, H, W) follow the input's
(dim0, dim1, dim2) = (R, A, S). Reference quirks kept on purpose (trained weights depend on them):

* windowed blocks pad the 8³ token grid with zeros to one 14³ window *after* ``norm1`` and attend over all
  2,744 tokens without a mask, so padding tokens carry the qkv bias;
* the decomposed relative-position bias is broadcast the reference's way (:func:`rel_pos_bias`), not the
  textbook way.

``attention_impl="reference"`` computes exactly that; ``"fast"`` gives the same numbers with only the real
queries, the real keys, and one virtual key that stands for all padding keys at once (its weight has a
closed form), through ``scaled_dot_product_attention``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm3d, MLPBlock

ATTENTION_IMPLS = ("fast", "reference")


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position table gathered to (q_size, k_size, C), interpolated if its length differs."""
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_rel_dist,
                                mode="linear")
        rel_pos = resized.reshape(-1, max_rel_dist).permute(1, 0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


def rel_pos_bias(
    q: torch.Tensor, rel_pos_d: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: Tuple[int, int, int]
) -> torch.Tensor:
    """The reference's relative-position bias, (B', N, N) for queries q (B', N, C) on an S³ grid.

    The reference adds ``rel_d[:, :, :, :, None, None]``, ``rel_h[:, :, :, None, :, None]`` and
    ``rel_w[:, :, :, None, None, :]`` to the attention viewed as (B', qd, qh, qw, kd, kh, kw); with equal axis
    lengths this broadcasts as ``bias[qd,qh,qw; kd,kh,kw] = rd[qd,qh,qw,kw] + rh[qd,qh,kd,kw] + rw[qd,qh,kh,kw]``.
    """
    d, h, w = size
    Rd, Rh, Rw = get_rel_pos(d, d, rel_pos_d), get_rel_pos(h, h, rel_pos_h), get_rel_pos(w, w, rel_pos_w)
    batch, _, dim = q.shape
    r_q = q.reshape(batch, d, h, w, dim)
    rel_d = torch.einsum("bdhwc,dkc->bdhwk", r_q, Rd)
    rel_h = torch.einsum("bdhwc,hkc->bdhwk", r_q, Rh)
    rel_w = torch.einsum("bdhwc,wkc->bdhwk", r_q, Rw)
    bias = rel_d[:, :, :, :, None, None] + rel_h[:, :, :, None, :, None] + rel_w[:, :, :, None, None, :]
    return bias.reshape(batch, d * h * w, d * h * w)


class Attention(nn.Module):
    """Multi-head attention with the decomposed 3D relative-position bias.

    Args:
        input_size: token grid the rel-pos tables are sized for (the window size for windowed blocks).
    """

    def __init__(self, dim: int, num_heads: int, input_size: Tuple[int, int, int], qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        head_dim = dim // num_heads
        self.rel_pos_d = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[2] - 1, head_dim))

    def _qkv(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, D, H, W, C) → q, k, v each (B·heads, N, head_dim)."""
        batch, d, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(batch, d * h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, batch * self.num_heads, d * h * w, -1).unbind(0)
        return q, k, v

    def _merge(self, out: torch.Tensor, batch: int, size: Tuple[int, int, int]) -> torch.Tensor:
        d, h, w = size
        out = out.view(batch, self.num_heads, d, h, w, -1).permute(0, 2, 3, 4, 1, 5).reshape(batch, d, h, w, -1)
        return self.proj(out)

    def forward(self, x: torch.Tensor, impl: str = "fast") -> torch.Tensor:
        """Full attention over the (B, D, H, W, C) grid (D = H = W)."""
        batch, d, h, w, _ = x.shape
        q, k, v = self._qkv(x)
        bias = rel_pos_bias(q, self.rel_pos_d, self.rel_pos_h, self.rel_pos_w, (d, h, w))
        if impl == "reference":
            attn = ((q * self.scale) @ k.transpose(-2, -1) + bias).softmax(dim=-1)
            out = attn @ v
        else:
            out = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=bias[None].to(q.dtype))[0]
        return self._merge(out, batch, (d, h, w))

    def forward_padded_window(self, x: torch.Tensor, window: int) -> torch.Tensor:
        """Exactly what zero-padding the (B, D, H, W, C) grid to one ``window``³ window, attending over it
        unmasked and cropping back gives — computed on the real tokens only.

        Every padding token has q = b_q, k = b_k, v = b_v (the qkv bias), so all padding keys of a real query
        share the logit scale·q·b_k and differ only in their rel-pos bias: they become ONE virtual key
        (b_k, b_v) whose additive mask entry is log Σ_pad exp(bias) (:func:`padded_window_bias`). Only the
        real queries are computed, since the reference crops the others away.
        """
        batch, d, h, w, _ = x.shape
        if (d, h, w) == (window,) * 3:  # nothing is padded
            return self.forward(x, "fast")
        q, k, v = self._qkv(x)  # (B', N, c), B' = batch·heads in batch-major order
        bq, bk, bv = self.qkv.bias.view(3, self.num_heads, -1).unbind(0)  # (heads, c)
        tables = (self.rel_pos_d, self.rel_pos_h, self.rel_pos_w)
        bias_real, log_pad = padded_window_bias(q, bq.repeat(batch, 1), tables, (d, h, w), window)
        attn_mask = torch.cat([bias_real, log_pad[..., None]], dim=-1).to(q.dtype)
        k_ext = torch.cat([k, bk.repeat(batch, 1)[:, None, :].to(k.dtype)], dim=1)
        v_ext = torch.cat([v, bv.repeat(batch, 1)[:, None, :].to(v.dtype)], dim=1)
        out = F.scaled_dot_product_attention(q[None], k_ext[None], v_ext[None], attn_mask=attn_mask[None])[0]
        return self._merge(out, batch, (d, h, w))


def padded_window_bias(
    q: torch.Tensor, q_pad: torch.Tensor, tables: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    size: Tuple[int, int, int], window: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The reference rel-pos bias of real queries in a zero-padded ``window``³ window, in closed form.

    Args:
        q: (B', d·h·w, c) queries of the real tokens, a (d, h, w) grid at the window's low corner.
        q_pad: (B', c) the query every padding token has (the q part of the qkv bias).
        tables: rel_pos_d/h/w, each (2·window − 1, c).
    Returns:
        bias_real (B', N, N) float32: the bias between real queries and real keys, and
        log_pad (B', N) float32: log Σ_{padding keys} exp(bias) for each real query.

    With the reference broadcast (:func:`rel_pos_bias`), bias[k] = rd[kw] + rh[kd, kw] + rw[kh, kw], where rh
    and rw read the query at slot (qd, qh, kd) resp. (qd, qh, kh) — padding slots when kd ≥ w or kh ≥ w. So
    Σ over keys factorises per kw: Σ_kw e^{rd[kw]} · A[kw] · B[kw] with A = Σ_kd e^{rh}, B = Σ_kh e^{rw}.
    Padded keys are those with kw ≥ w, or kw < w and (kd ≥ d or kh ≥ h); the latter splits into disjoint
    parts A_pad·B_all + A_real·B_pad. Every part is a sum of positive terms, so the whole weight is one
    log-space sum, without the cancellation of "all minus real".
    """
    d, h, w = size
    s = window
    c = q.shape[-1]
    Rd = get_rel_pos(s, s, tables[0])[:d]  # (d, s, c): query index, key index
    Rh = get_rel_pos(s, s, tables[1])[:h]
    Rw = get_rel_pos(s, s, tables[2])  # indexed by the query *slot* along w (0..s-1)
    q_grid = q.reshape(-1, d, h, w, c)
    pad_q = q_pad.to(q.dtype)[:, None, None, None, :].expand(-1, d, h, s - w, c)
    q_slots = torch.cat([q_grid, pad_q], dim=3)  # (B', d, h, s, c): real for slot < w, padding beyond
    rd = torch.einsum("bxyzc,xkc->bxyzk", q_grid, Rd).float()  # (B', d, h, w, s[kw])
    rh = torch.einsum("bxytc,ykc->bxytk", q_slots, Rh).float()  # (B', d, h, s[kd], s[kw])
    rw = torch.einsum("bxytc,tkc->bxytk", q_slots, Rw).float()  # (B', d, h, s[kh], s[kw])
    bias_real = (
        rd[:, :, :, :, None, None, :w] + rh[:, :, :, None, :d, None, :w] + rw[:, :, :, None, None, :h, :w]
    ).reshape(-1, d * h * w, d * h * w)
    a_real, a_pad = torch.logsumexp(rh[:, :, :, :d], dim=3), torch.logsumexp(rh[:, :, :, d:], dim=3)
    b_real, b_pad = torch.logsumexp(rw[:, :, :, :h], dim=3), torch.logsumexp(rw[:, :, :, h:], dim=3)
    a_all, b_all = torch.logaddexp(a_real, a_pad), torch.logaddexp(b_real, b_pad)  # (B', d, h, s[kw])
    partly_real = torch.logaddexp(a_pad + b_all, a_real + b_pad)[..., :w]  # kw < w: kd or kh padded
    all_pad = (a_all + b_all)[..., w:]  # kw ≥ w: every (kd, kh)
    per_kw = rd + torch.cat([partly_real, all_pad], dim=-1)[:, :, :, None, :]
    log_pad = torch.logsumexp(per_kw, dim=-1)  # (B', d, h, w)
    return bias_real, log_pad.reshape(-1, d * h * w)


class Block3D(nn.Module):
    """Pre-norm transformer block; ``window_size`` 0 = global attention."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window_size: int,
                 input_size: Tuple[int, int, int], attention_impl: str = "fast") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, input_size if window_size == 0 else (window_size,) * 3)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)
        self.window_size = window_size
        self.attention_impl = attention_impl
        # Optional spatial adapter (:mod:`.adapters`), None unless injected: a plain attribute then, so the
        # state-dict names of official checkpoints are unchanged.
        self.adapter: Optional[nn.Module] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            x = self._windowed(x)
        else:
            x = self.attn(x, self.attention_impl)
        x = shortcut + x
        h = self.norm2(x)
        out = x + self.mlp(h)
        if self.adapter is not None:  # parallel to the MLP, on the same normalised tokens
            out = out + self.adapter(h)
        return out

    def _windowed(self, x: torch.Tensor) -> torch.Tensor:
        batch, d, h, w, channels = x.shape
        ws = self.window_size
        if self.attention_impl == "fast" and max(d, h, w) <= ws:
            return self.attn.forward_padded_window(x, ws)
        windows, padded = window_partition(x, ws)
        out = self.attn(windows, "reference" if self.attention_impl == "reference" else "fast")
        return window_unpartition(out, ws, padded, (d, h, w))


def window_partition(x: torch.Tensor, ws: int) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
    """Zero-pad (B, D, H, W, C) to multiples of ``ws`` and split into (B·nW, ws, ws, ws, C) windows."""
    batch, d, h, w, c = x.shape
    pad_d, pad_h, pad_w = ((ws - n % ws) % ws for n in (d, h, w))
    if pad_d or pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h, 0, pad_d))
    dp, hp, wp = d + pad_d, h + pad_h, w + pad_w
    x = x.view(batch, dp // ws, ws, hp // ws, ws, wp // ws, ws, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).contiguous().view(-1, ws, ws, ws, c), (dp, hp, wp)


def window_unpartition(windows: torch.Tensor, ws: int, padded: Tuple[int, int, int],
                       size: Tuple[int, int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`, cropping the padding."""
    dp, hp, wp = padded
    d, h, w = size
    batch = windows.shape[0] // ((dp // ws) * (hp // ws) * (wp // ws))
    x = windows.view(batch, dp // ws, hp // ws, wp // ws, ws, ws, ws, -1)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).contiguous().view(batch, dp, hp, wp, -1)
    return x[:, :d, :h, :w, :].contiguous()


class PatchEmbed3D(nn.Module):
    """Non-overlapping 3D patches → channels-last tokens (B, D, H, W, C)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 4, 1)


class ImageEncoderViT3D(nn.Module):
    """(B, 1, S, S, S) normalised ROI → (B, out_chans, S/16, S/16, S/16) embedding."""

    def __init__(self, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float, out_chans: int, window_size: int, global_attn_indexes: Tuple[int, ...],
                 attention_impl: str = "fast", in_chans: int = 1) -> None:
        super().__init__()
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed3D(patch_size, in_chans, embed_dim)
        self.pos_embed: Optional[nn.Parameter] = nn.Parameter(torch.zeros(1, grid, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block3D(embed_dim, num_heads, mlp_ratio, window_size if i not in global_attn_indexes else 0,
                    (grid, grid, grid), attention_impl)
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv3d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm3d(out_chans),
            nn.Conv3d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(out_chans),
        )

    def set_attention_impl(self, impl: str) -> None:
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
        for block in self.blocks:
            block.attention_impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 4, 1, 2, 3))
