"""The fast encoder attention equals the reference computation (zero-padded 14³ windows, reference rel-pos
broadcast) with random weights and non-zero rel-pos tables, per block and for a whole encoder."""

from __future__ import annotations

from typing import Tuple

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from SAMVolSegmentLib.model import ModelConfig, build_model
from SAMVolSegmentLib.model.image_encoder import (
    Block3D,
    get_rel_pos,
    padded_window_bias,
    rel_pos_bias,
    window_partition,
)


def _randomise(module: torch.nn.Module, seed: int, rel_pos_scale: float = 0.5) -> None:
    """Non-zero rel-pos tables and biases, so every term of the attention matters."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (rel_pos_scale if "rel_pos" in name else 0.2))


def _block(dim: int, heads: int, window: int, grid: Tuple[int, int, int], seed: int = 1,
           rel_pos_scale: float = 0.5) -> Block3D:
    block = Block3D(dim, heads, 4.0, window, grid)
    _randomise(block, seed, rel_pos_scale)
    return block.eval()


def _both(block: Block3D, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        block.attention_impl = "reference"
        expected = block(x)
        block.attention_impl = "fast"
        got = block(x)
    return got, expected


@pytest.mark.parametrize(
    "window,grid",
    [
        (14, (8, 8, 8)),  # the released windowed block: 512 real tokens in a 14³ window
        (14, (8, 6, 5)),  # a non-cubic real grid: kd ≥ w keys are real but read padding query slots
        (6, (6, 6, 6)),  # window exactly filled: no padding, no virtual key
        (4, (8, 8, 8)),  # several windows: the partitioned path
        (0, (8, 8, 8)),  # global block: SDPA with the bias as mask
    ],
)
def test_fast_block_equals_reference(window, grid):
    block = _block(32, 2, window, grid)
    x = torch.randn(1, *grid, 32)
    got, expected = _both(block, x)
    assert (expected - x).abs().mean() > 0.1  # the attention + MLP change the tokens
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


def test_fast_block_batch_and_heads_are_not_mixed_up():
    block = _block(32, 2, 14, (4, 4, 4), seed=3)
    x = torch.randn(2, 4, 4, 4, 32)
    got, expected = _both(block, x)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)
    with torch.inference_mode():
        single = block(x[1:2])
    torch.testing.assert_close(single, got[1:2], atol=2e-5, rtol=1e-5)


@settings(max_examples=12, deadline=None)
@given(
    d=st.integers(1, 5), h=st.integers(1, 5), w=st.integers(1, 5),
    window=st.integers(5, 9), scale=st.sampled_from([0.1, 1.0, 4.0]), seed=st.integers(0, 1000),
)
def test_virtual_key_weight_equals_explicit_sum(d, h, w, window, scale, seed):
    """log Σ_pad exp(bias) in closed form equals the explicit sum over the padded window, also for large
    biases (the log-space sum must not overflow or cancel)."""
    torch.manual_seed(seed)
    c, batch = 8, 2
    tables = tuple(torch.randn(2 * window - 1, c) * scale for _ in range(3))
    q = torch.randn(batch, d * h * w, c, dtype=torch.float64)
    q_pad = torch.randn(batch, c, dtype=torch.float64)
    bias_real, log_pad = padded_window_bias(q, q_pad, tuple(t.double() for t in tables), (d, h, w), window)

    # Explicit: build the padded window's queries, the full reference bias, and sum over padding keys.
    grid = q_pad[:, None, None, None, :].expand(batch, window, window, window, c).clone()
    grid[:, :d, :h, :w] = q.view(batch, d, h, w, c)
    full = rel_pos_bias(grid.view(batch, -1, c), *(t.double() for t in tables), (window,) * 3)
    full = full.view(batch, window, window, window, window, window, window)[:, :d, :h, :w]
    real_keys = torch.zeros(window, window, window, dtype=torch.bool)
    real_keys[:d, :h, :w] = True
    flat = full.reshape(batch, d * h * w, -1)
    expected_pad = torch.logsumexp(flat[..., ~real_keys.view(-1)], dim=-1)
    expected_real = flat[..., real_keys.view(-1)]
    torch.testing.assert_close(log_pad.double(), expected_pad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(bias_real.double(), expected_real, atol=1e-4, rtol=1e-5)


def test_fast_block_with_large_biases_stays_exact():
    block = _block(32, 2, 14, (8, 8, 8), seed=5, rel_pos_scale=3.0)
    got, expected = _both(block, torch.randn(1, 8, 8, 8, 32))
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_whole_encoder_fast_equals_reference():
    config = ModelConfig(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
                         encoder_global_attn_indexes=(1,), prompt_embed_dim=48, image_size=128)
    model = build_model(config).eval()
    _randomise(model.image_encoder, seed=7)
    image = torch.randn(1, 1, 128, 128, 128)
    with torch.inference_mode():
        model.set_attention_impl("reference")
        expected = model.encode_image(image)
        model.set_attention_impl("fast")
        got = model.encode_image(image)
    assert got.shape == (1, 48, 8, 8, 8) and got.abs().mean() > 0.1
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


def test_unknown_attention_impl_is_refused():
    model = build_model(ModelConfig(encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=2,
                                    encoder_global_attn_indexes=(0,), prompt_embed_dim=48, image_size=64))
    with pytest.raises(ValueError, match="attention_impl"):
        model.set_attention_impl("flash")


def test_padding_is_not_masked_in_the_reference():
    """Guards quirk 1: masking the padding keys (the 'obvious fix') changes a windowed block's output."""
    block = _block(32, 2, 14, (8, 8, 8), seed=2)
    x = torch.randn(1, 8, 8, 8, 32)
    with torch.inference_mode():
        windows, _ = window_partition(block.norm1(x), 14)
        attn = block.attn
        q, k, v = attn._qkv(windows)
        bias = rel_pos_bias(q, attn.rel_pos_d, attn.rel_pos_h, attn.rel_pos_w, (14, 14, 14))
        real = torch.zeros(14, 14, 14, dtype=torch.bool)
        real[:8, :8, :8] = True
        masked = bias.masked_fill(~real.view(1, 1, -1), float("-inf"))
        unmasked_out = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=bias[None])[0]
        masked_out = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=masked[None])[0]
        keep = real.view(-1)
    assert (unmasked_out[:, keep] - masked_out[:, keep]).abs().max() > 1e-2


def test_textbook_rel_pos_would_differ():
    """Guards quirk 4: the textbook decomposed bias is clearly different from the reference broadcast."""
    torch.manual_seed(0)
    q = torch.randn(2, 8 * 8 * 8, 16)
    tables = [torch.randn(15, 16) for _ in range(3)]
    ours = rel_pos_bias(q, *tables, (8, 8, 8)).view(2, 8, 8, 8, 8, 8, 8)
    r_q = q.view(2, 8, 8, 8, 16)
    rd, rh, rw = (torch.einsum(eq, r_q, get_rel_pos(8, 8, t)) for eq, t in
                  zip(("bdhwc,dkc->bdhwk", "bdhwc,hkc->bdhwk", "bdhwc,wkc->bdhwk"), tables))
    textbook = rd[..., :, None, None] + rh[..., None, :, None] + rw[..., None, None, :]
    assert (ours - textbook).abs().max() > 1.0
    # ... and it is exactly the Addendum formula: bias[qd,qh,qw; kd,kh,kw] = rd[.., kw] + rh[qd,qh,kd, kw] + rw[qd,qh,kh, kw]
    qd, qh, qw, kd, kh, kw = 3, 5, 1, 6, 2, 4
    formula = rd[:, qd, qh, qw, kw] + rh[:, qd, qh, kd, kw] + rw[:, qd, qh, kh, kw]
    torch.testing.assert_close(ours[:, qd, qh, qw, kd, kh, kw], formula)
