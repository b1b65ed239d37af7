"""Training and fine-tuning on tiny models: learning happens, resume is exact, freezing holds, exports load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from SAMVolSegmentLib.model import ModelConfig, build_model, load_model
from SAMVolSegmentLib.model.clicknet import ClickNet, ClickNetConfig
from SAMVolSegmentLib.predictor import Predictor
from SAMVolSegmentLib.synthetic import synthetic_sample
from SAMVolSegmentLib.training import (
    HELD_OUT_CASES,
    augment_roi,
    episode_loss,
    export_model,
    learning_rate,
    load_targets,
    low_res_target,
    roi_sample,
    train,
)

TINY_CLICKNET = ClickNetConfig(image_size=32, stem_channels=(4, 8), context_channels=(8, 8), embed_dim=8,
                               decoder_channels=8)


def test_episode_loss_falls_when_fitting_one_sample():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = ClickNet(TINY_CLICKNET)
    image, label = synthetic_sample(rng, 32)
    x = torch.from_numpy(image)[None, None]
    target = low_res_target(label, 8)[None]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss, _ = episode_loss(model, x, target, clicks=2, rng=np.random.default_rng(1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_resume_continues_the_same_run(tmp_path):
    torch.manual_seed(0)
    model = ClickNet(TINY_CLICKNET)
    first = train(model, [], tmp_path, minutes=0.02, seed=0, batch=1, clicks=2)
    assert first["steps"] > 0
    resumed_model = ClickNet(TINY_CLICKNET)
    # The budget is cumulative: the resumed run gets ~1 s beyond what the first one used (however slow it was).
    second = train(resumed_model, [], tmp_path, minutes=first["minutes"] + 0.02, seed=0, batch=1, clicks=2,
                   resume=True)
    assert second["steps"] > first["steps"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))  # no step repeated or skipped across the resume


def test_finetune_decoder_only_keeps_the_image_encoder(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
                                    encoder_global_attn_indexes=(1,), prompt_embed_dim=48, image_size=32))
    encoder_before = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in model.mask_decoder.state_dict().items()}
    train(model, [], tmp_path, minutes=0.03, seed=0, batch=1, clicks=2, trainable="decoder", lr=1e-3)
    for k, v in model.image_encoder.state_dict().items():
        assert torch.equal(v, encoder_before[k]), k
    assert any(not torch.equal(v, decoder_before[k]) for k, v in model.mask_decoder.state_dict().items())


def test_export_loads_by_path_and_predicts(tmp_path):
    torch.manual_seed(0)
    model = ClickNet(TINY_CLICKNET)
    path = export_model(model, tmp_path / "exported.pt", {"step": 3})
    loaded = load_model(path)
    assert isinstance(loaded, ClickNet) and loaded.config == TINY_CLICKNET
    assert loaded.model_id.startswith("clicknet:")
    predictor = Predictor(loaded)
    embedding = predictor.embed(np.zeros((32, 32, 32), np.float32), ("vol", 0))
    prediction = predictor.predict(embedding, np.array([[16.0, 16.0, 16.0]]), np.array([True]))
    assert prediction.low_res_logits.shape == (1, 1, 8, 8, 8)
    assert prediction.low_res_logits[0, 0, 4, 4, 4] > prediction.low_res_logits[0, 0, 0, 0, 0]


def test_learning_rate_is_constant_then_decays_to_the_floor():
    assert learning_rate(0, 90, 1e-3) == learning_rate(45 * 60, 90, 1e-3) == 1e-3
    middle = learning_rate(67.5 * 60, 90, 1e-3)
    assert 1e-3 > middle > learning_rate(80 * 60, 90, 1e-3) > learning_rate(90 * 60, 90, 1e-3)
    assert learning_rate(100 * 60, 90, 1e-3) == pytest.approx(5e-5)
    assert learning_rate(55 * 60, 95, 1e-3, decay_from_minute=50) < 1e-3 == learning_rate(49 * 60, 95, 1e-3, 50)


def test_real_training_rois_are_the_inference_rois(shared_data_dir):
    from SAMVolSegmentLib.preprocessing import extract_roi

    keep = "mr_msd_hippocampus_003"
    others = [p.name for p in shared_data_dir.iterdir() if p.is_dir() and p.name != keep]
    targets = load_targets(shared_data_dir, exclude=others)
    assert sorted(t.name for t in targets) == [f"{keep}:1", f"{keep}:2", f"{keep}:all"]
    assert all(name in [p.name for p in shared_data_dir.iterdir()] for name in HELD_OUT_CASES)
    target = targets[0]
    image, label = roi_sample(target, np.random.default_rng(0))
    assert image.shape == label.shape == (128, 128, 128) and label[64, 64, 64] == 1  # centred on the target
    centre_model = np.argwhere(target.label_model)[np.random.default_rng(0).integers(int(target.label_model.sum()))]
    centre_ras = target.volume.grid.origin_ras + centre_model * target.volume.grid.spacing
    expected, _ = extract_roi(target.volume, centre_ras)
    np.testing.assert_array_equal(image, expected)


def test_augmentation_moves_image_and_label_together():
    rng = np.random.default_rng(0)
    raw = np.zeros((16, 16, 16), np.float32)
    raw[2:6, 3:8, 9:14] = 100.0
    label = (raw > 0).astype(np.uint8)
    flipped_any = False
    for _ in range(8):
        image, mask = augment_roi(raw, label, rng)
        assert image.shape == raw.shape and mask.dtype == np.uint8 and int(mask.sum()) == int(label.sum())
        assert image[mask > 0].mean() > image[mask == 0].mean() + 50  # the bright block is still the label
        flipped_any |= not np.array_equal(mask, label)
    assert flipped_any
