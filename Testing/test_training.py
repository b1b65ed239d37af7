"""Training and fine-tuning on tiny models: learning happens, resume is exact, freezing holds, exports load."""

from __future__ import annotations

import json

import numpy as np
import torch

from SAMVolSegmentLib.model import ModelConfig, build_model, load_model
from SAMVolSegmentLib.model.clicknet import ClickNet, ClickNetConfig
from SAMVolSegmentLib.predictor import Predictor
from SAMVolSegmentLib.synthetic import synthetic_sample
from SAMVolSegmentLib.training import episode_loss, export_model, low_res_target, train

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
    second = train(resumed_model, [], tmp_path, minutes=0.04, seed=0, batch=1, clicks=2, resume=True)
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
