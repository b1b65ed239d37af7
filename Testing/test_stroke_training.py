"""Scribble/lasso training episodes (issue 24): simulated on the low-res grid as the session gives strokes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from SAMVolSegmentLib.engine.session import SEED_MASK_LOGIT
from SAMVolSegmentLib.model.clicknet2 import ClickNet2, ClickNet2Config
from SAMVolSegmentLib.tools import stroke_training
from SAMVolSegmentLib.tools.stroke_training import correction_stroke, first_stroke, with_drawn
from SAMVolSegmentLib.tools.synthetic import synthetic_sample
from SAMVolSegmentLib.tools.training import episode_loss, train
from SAMVolSegmentLib.tools.training_data import SampleSource

TINY = ClickNet2Config(image_size=32, encoder_channels=(4, 8, 8, 8), embed_dim=8, decoder_channels=(8, 8, 8),
                       refine_channels=4, stroke_prompts=True)


def ellipsoid(low=32):
    r, a, s = np.mgrid[:low, :low, :low]
    return ((((r - 15) / 9.0) ** 2 + ((a - 17) / 6.0) ** 2 + ((s - 14) / 5.0) ** 2) <= 1).astype(np.float32)


def test_an_axial_lasso_draws_the_targets_cross_section_and_clicks_inside_it(monkeypatch):
    target = ellipsoid()
    monkeypatch.setattr(stroke_training, "LASSO_SHARE", 1.0)
    monkeypatch.setattr(stroke_training, "AXIAL_SHARE", 1.0)
    rng = np.random.default_rng(0)
    seen = 0
    for _ in range(20):
        stroke = first_stroke(target, rng, image_size=64)
        assert stroke is not None and stroke.positive
        slices = np.unique(np.argwhere(stroke.drawn_low)[:, 2])
        assert len(slices) == 1, "an axial lasso draws one S slice"
        section = target[:, :, slices[0]] > 0
        drawn = stroke.drawn_low[:, :, slices[0]]
        dice = 2 * (drawn & section).sum() / (drawn.sum() + section.sum())
        assert drawn.sum() <= 2 * section.sum() + 40  # at most one voxel out
        if section.sum() >= 40:  # exact, one voxel in or out, or jittered (a small end slice may erode to a few)
            assert dice > 0.7
        low = np.rint((stroke.points_roi + 0.5) * 32 / 64 - 0.5).astype(int)
        assert all(stroke.drawn_low[tuple(p)] for p in low), "the lasso's clicks lie in what it draws"
        seen += dice == 1.0
    assert seen > 0  # some lassos are drawn exactly


def test_correction_scribbles_lie_in_the_error_and_mark_the_mask_prompt():
    target = ellipsoid()
    prediction = np.zeros_like(target, dtype=bool)
    prediction[6:15] = target[6:15] > 0  # half of the target missed
    rng = np.random.default_rng(3)
    strokes = [correction_stroke(target, prediction, rng, image_size=64) for _ in range(10)]
    assert all(s is not None and s.positive for s in strokes)
    for stroke in strokes:
        assert np.all(target[stroke.drawn_low] > 0) and not np.any(prediction[stroke.drawn_low])
        logits = with_drawn(torch.full((32, 32, 32), -4.0), stroke)
        assert torch.all(logits[torch.from_numpy(stroke.drawn_low)] == SEED_MASK_LOGIT)
        assert torch.all(logits[~torch.from_numpy(stroke.drawn_low)] == -4.0)
    assert correction_stroke(target, target > 0, rng, image_size=64) is None


def test_stroke_episodes_train_and_need_a_model_that_declares_them(tmp_path):
    torch.manual_seed(0)
    model = ClickNet2(TINY)
    image, label = synthetic_sample(np.random.default_rng(0), 32)
    x = torch.from_numpy(np.stack([image, image]))[:, None]
    loss, dices = episode_loss(model, x, np.stack([label, label]), clicks=4, rng=np.random.default_rng(0),
                               stroke_fraction=1.0, local_weight=1.0)
    assert len(dices) == 4 and torch.isfinite(loss)
    loss.backward()
    assert train(ClickNet2(TINY), SampleSource([]), tmp_path / "run", minutes=5.0, max_steps=4, clicks=3,
                 stroke_fraction=1.0)["steps"] == 4
    kinds = [k for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines() for k in json.loads(line)["kinds"]]
    assert any("+lasso" in k or "+scribble" in k for k in kinds), kinds  # the log says which episodes drew
    with pytest.raises(ValueError, match="stroke prompts"):
        train(ClickNet2(ClickNet2Config(image_size=32)), SampleSource([]), tmp_path / "other", minutes=1.0,
              max_steps=1, stroke_fraction=0.5)
