"""Adapter fine-tuning: identity at initialisation, only adapters train, small adapter files that compose with
exactly their base and refuse any other."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SAMVolSegmentLib.errors import CheckpointError, ModelNotAvailableError
from SAMVolSegmentLib.model import load_model
from SAMVolSegmentLib.model.adapters import (
    ADAPTER_FORMAT,
    inject_adapters,
    is_adapter_parameter,
    save_adapters,
)
from SAMVolSegmentLib.model.clicknet2 import ClickNet2, ClickNet2Config
from SAMVolSegmentLib.tools.training import export_model, train
from SAMVolSegmentLib.tools.training_data import SampleSource

TINY_CLICKNET2 = ClickNet2Config(image_size=32, encoder_channels=(4, 8, 8, 8), embed_dim=8,
                                 decoder_channels=(8, 8, 8), refine_channels=4)
BLOBS_ONLY = SampleSource([])


def _sam_logits(model, ref) -> torch.Tensor:
    """Low-res logits (1, 1, 32, 32, 32) after the fixture's three clicks, previous logits fed back."""
    with torch.inference_mode():
        embedding = model.encode_image(torch.from_numpy(ref["image"])[None, None])
        previous = torch.zeros(1, 1, 32, 32, 32)
        for k in (1, 2, 3):
            previous, _ = model.decode_prompts(embedding, torch.from_numpy(ref["points"][:, :k]),
                                               torch.from_numpy(ref["labels"][:, :k]), previous)
    return previous


def _clicknet2_logits(model) -> torch.Tensor:
    """(1, 1, 16, 16, 16) logits of a fixed random ROI and two clicks."""
    generator = torch.Generator().manual_seed(3)
    image = torch.randn(1, 1, 32, 32, 32, generator=generator)
    with torch.inference_mode():
        embedding = model.encode_image(image)
        logits, _ = model.decode_prompts(embedding, torch.tensor([[[16.0, 15.0, 14.0], [6.0, 8.0, 9.0]]]),
                                         torch.tensor([[1, 0]]), torch.zeros(1, 1, 16, 16, 16))
    return logits


def _snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_sam_adapters_at_initialisation_reproduce_the_base_exactly(fixtures_dir):
    ref = np.load(fixtures_dir / "small_sam_med3d_reference.npz")
    model = load_model(fixtures_dir / "small_sam_med3d.pth")
    base_logits = _sam_logits(model, ref)
    inject_adapters(model)
    names = [k for k in model.state_dict() if is_adapter_parameter(k)]
    assert any(k.startswith("image_encoder.blocks.3.adapter.conv") for k in names)  # every encoder block
    assert any(k.startswith("mask_decoder.transformer.layers.1.adapter.") for k in names)
    adapted = _sam_logits(model, ref)
    assert torch.equal(adapted, base_logits)
    np.testing.assert_allclose(adapted.numpy(), ref["click3_low_res_logits"], atol=1e-4)


def test_sam_adapter_finetune_trains_only_adapters_and_the_file_composes(fixtures_dir, tmp_path):
    ref = np.load(fixtures_dir / "small_sam_med3d_reference.npz")
    base_file = fixtures_dir / "small_sam_med3d.pth"
    torch.manual_seed(0)
    model = load_model(base_file)
    base_logits = _sam_logits(model, ref)
    base_state = _snapshot(model)
    adapter_file = tmp_path / "finetuned.pt"
    result = train(model, BLOBS_ONLY, tmp_path, minutes=10, seed=0, batch=1, clicks=2, lr=1e-2,
                   trainable="adapters", export=adapter_file, max_steps=2)
    assert result["steps"] == 2
    state = model.state_dict()
    assert set(base_state) == {k for k in state if not is_adapter_parameter(k)}
    for key, value in base_state.items():
        assert torch.equal(state[key], value), key  # the base is bit-identical
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert all(is_adapter_parameter(n) for n, p in model.named_parameters() if p.requires_grad)
    assert trained / total <= 0.05
    assert adapter_file.stat().st_size <= 0.1 * base_file.stat().st_size
    print(f"adapters: {trained:,} of {total:,} parameters ({100 * trained / total:.1f} %), file "
          f"{adapter_file.stat().st_size:,} B vs base {base_file.stat().st_size:,} B")

    tuned = _sam_logits(model.eval(), ref)
    assert (tuned - base_logits).abs().max() > 1e-3  # the fine-tuning did change the outputs
    payload = torch.load(str(adapter_file), weights_only=True)
    assert payload["format"] == ADAPTER_FORMAT and payload["base_model"] == str(base_file.resolve())
    assert all(is_adapter_parameter(k) for k in payload["adapter_state_dict"])
    composed = load_model(adapter_file)
    assert torch.equal(_sam_logits(composed, ref), tuned)
    assert composed.model_id != load_model(base_file).model_id  # an embedding cache must not mix them


def test_a_different_base_is_refused_naming_the_expected_one(fixtures_dir, tmp_path):
    model = inject_adapters(load_model(fixtures_dir / "small_sam_med3d.pth"))
    adapter_file = save_adapters(model, tmp_path / "adapters.pt")
    other = {k: v.clone() for k, v in model.state_dict().items() if not is_adapter_parameter(k)}
    other["image_encoder.pos_embed"] += 0.01
    torch.save({"model_state_dict": other}, str(tmp_path / "other.pth"))
    with pytest.raises(CheckpointError, match="small_sam_med3d.pth.*different file"):
        load_model(adapter_file, base=tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not an adapter file"):
        load_model(tmp_path / "other.pth", base=fixtures_dir / "small_sam_med3d.pth")


def test_a_registry_base_is_resolved_by_name_and_a_missing_one_says_how_to_get_it(fixtures_dir, tmp_path,
                                                                                 monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("SAMVOLSEGMENT_MODEL_DIR", str(cache))
    (cache / "sam_med3d_turbo.pth").symlink_to(fixtures_dir / "small_sam_med3d.pth")  # stands in for turbo
    model = inject_adapters(load_model("sam-med3d-turbo"))
    with torch.no_grad():
        model.image_encoder.blocks[0].adapter.up.bias.fill_(0.1)
    adapter_file = save_adapters(model, tmp_path / "adapters.pt")
    assert torch.load(str(adapter_file), weights_only=True)["base_model"] == "sam-med3d-turbo"
    composed = load_model(adapter_file)
    assert torch.equal(composed.image_encoder.blocks[0].adapter.up.bias, model.image_encoder.blocks[0].adapter.up.bias)
    (cache / "sam_med3d_turbo.pth").unlink()
    with pytest.raises(ModelNotAvailableError, match="samvolseg models download sam-med3d-turbo"):
        load_model(adapter_file)


def test_clicknet2_adapter_is_identity_at_init_trains_alone_and_composes(tmp_path):
    torch.manual_seed(0)
    base_file = export_model(ClickNet2(TINY_CLICKNET2), tmp_path / "base.pt")
    model = load_model(base_file)
    base_logits = _clicknet2_logits(model)
    base_state = _snapshot(model)
    inject_adapters(model)
    assert torch.equal(_clicknet2_logits(model), base_logits)

    adapter_file = tmp_path / "run" / "adapters.pt"
    first = train(model, BLOBS_ONLY, tmp_path / "run", minutes=10, seed=0, batch=1, clicks=2, lr=5e-2,
                  trainable="adapters", export=adapter_file, roi_sizes=((32, 1.0),), max_steps=2)
    for key, value in base_state.items():
        assert torch.equal(model.state_dict()[key], value), key
    tuned = _clicknet2_logits(model.eval())
    assert (tuned - base_logits).abs().max() > 1e-4
    assert torch.equal(_clicknet2_logits(load_model(adapter_file)), tuned)

    # Resuming: the run's checkpoint holds only the adapters, and a fresh base continues from them.
    resumed = load_model(base_file)
    second = train(resumed, BLOBS_ONLY, tmp_path / "run", minutes=10, seed=0, batch=1, clicks=2, lr=5e-2,
                   trainable="adapters", export=adapter_file, resume=True, roi_sizes=((32, 1.0),), max_steps=4)
    assert (first["steps"], second["steps"]) == (2, 4)
    checkpoint = torch.load(str(tmp_path / "run" / "checkpoint.pt"), weights_only=False)
    assert checkpoint["model_state_dict"] and all(is_adapter_parameter(k) for k in checkpoint["model_state_dict"])

    other_file = export_model(ClickNet2(TINY_CLICKNET2), tmp_path / "other.pt")  # another random init
    with pytest.raises(CheckpointError, match="different file"):
        load_model(adapter_file, base=other_file)


def test_families_without_adapters_are_refused_with_the_alternative():
    from SAMVolSegmentLib.model.clicknet import ClickNet, ClickNetConfig

    with pytest.raises(CheckpointError, match="--trainable decoder"):
        inject_adapters(ClickNet(ClickNetConfig(image_size=32, stem_channels=(4, 8), context_channels=(8, 8),
                                                embed_dim=8, decoder_channels=8)))


def test_training_base_weights_of_an_adapted_model_is_refused(tmp_path):
    """Its exports hold only adapters, so base weights trained with trainable='decoder' would be lost."""
    base_file = export_model(ClickNet2(TINY_CLICKNET2), tmp_path / "base.pt")
    model = inject_adapters(load_model(base_file))
    with pytest.raises(ValueError, match="load the base model"):
        train(model, BLOBS_ONLY, tmp_path / "run", minutes=0.01, trainable="decoder", roi_sizes=((32, 1.0),))
