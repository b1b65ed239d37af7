"""Training and fine-tuning on tiny models: learning happens, resume is exact, freezing holds, exports load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from SAMVolSegmentLib.engine.predictor import Predictor
from SAMVolSegmentLib.model import ModelConfig, build_model, load_model
from SAMVolSegmentLib.model.clicknet import ClickNet, ClickNetConfig
from SAMVolSegmentLib.model.clicknet2 import ClickNet2, ClickNet2Config
from SAMVolSegmentLib.tools.synthetic import synthetic_sample
from SAMVolSegmentLib.tools.training import (
    REPORT_CASES,
    episode_loss,
    export_model,
    initialise_from,
    learning_rate,
    locality_loss,
    simulate_click,
    train,
    training_box,
    training_seed,
)
from SAMVolSegmentLib.tools.training_data import SampleSource

TINY_CLICKNET = ClickNetConfig(image_size=32, stem_channels=(4, 8), context_channels=(8, 8), embed_dim=8,
                               decoder_channels=8)
TINY_CLICKNET2 = ClickNet2Config(image_size=32, encoder_channels=(4, 8, 8, 8), embed_dim=8,
                                 decoder_channels=(8, 8, 8), refine_channels=4)
BLOBS_ONLY = SampleSource([])


@pytest.mark.parametrize("make_model", [lambda: ClickNet(TINY_CLICKNET), lambda: ClickNet2(TINY_CLICKNET2)],
                         ids=["clicknet", "clicknet2"])
def test_episode_loss_falls_when_fitting_one_sample(make_model):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = make_model()
    image, label = synthetic_sample(rng, 32)
    x = torch.from_numpy(image)[None, None]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss, _ = episode_loss(model, x, label[None], clicks=2, rng=np.random.default_rng(1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_resume_continues_the_same_run(tmp_path):
    torch.manual_seed(0)
    model = ClickNet(TINY_CLICKNET)
    first = train(model, BLOBS_ONLY, tmp_path, minutes=0.02, seed=0, batch=1, clicks=2)
    assert first["steps"] > 0
    resumed_model = ClickNet(TINY_CLICKNET)
    # The budget is cumulative: the resumed run gets ~1 s beyond what the first one used (however slow it was).
    second = train(resumed_model, BLOBS_ONLY, tmp_path, minutes=first["minutes"] + 0.02, seed=0, batch=1, clicks=2,
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
    train(model, BLOBS_ONLY, tmp_path, minutes=0.03, seed=0, batch=1, clicks=2, trainable="decoder", lr=1e-3)
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


def test_only_the_gradient_clicks_carry_gradients():
    """RITM-style episodes: the loss of a no-gradient click does not reach the weights."""
    torch.manual_seed(0)
    model = ClickNet2(TINY_CLICKNET2)
    image, label = synthetic_sample(np.random.default_rng(0), 32)
    x = torch.from_numpy(image)[None, None]
    loss, dices = episode_loss(model, x, label[None], clicks=3, rng=np.random.default_rng(0), grad_clicks=(0,))
    assert len(dices) == 3 and loss.requires_grad
    loss.backward()
    assert model.coarse_head.weight.grad is not None


def test_simulated_clicks_start_inside_and_then_fix_the_largest_error():
    target = np.zeros((16, 16, 16), np.float32)
    target[2:10, 2:10, 2:10] = 1.0
    rng = np.random.default_rng(0)
    for _ in range(5):
        point, label = simulate_click(target, None, rng, 32)
        index = np.floor((point + 0.5) / 2).astype(int)
        assert label == 1 and target[tuple(index)] == 1
    leak = target > 0.5
    leak[10:16, 2:10, 2:10] = True  # a false-positive slab bigger than any missing part
    point, label = simulate_click(target, leak, rng, 32)
    assert label == 0 and 10 <= np.floor((point[0] + 0.5) / 2) < 16
    assert REPORT_CASES and len(set(REPORT_CASES)) == len(REPORT_CASES)


def test_training_boxes_full_and_challenge():
    """A full box holds the whole target; the challenge's box spans the target along the slice axis and, across
    it, the target's extent on the middle slice only (here a wedge: narrower there than at its base)."""
    target = np.zeros((32, 32, 32), np.uint8)
    for k in range(8, 24):  # a wedge along the last axis: the in-plane size shrinks with k
        half = (24 - k) // 2 + 1
        target[16 - half:16 + half, 10:20, k] = 1
    occupied = np.argwhere(target)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        full = training_box(target, rng, "full")
        assert np.all(full[0] <= occupied.min(0) - 0.5 + 1) and np.all(full[1] >= occupied.max(0) + 0.5 - 1)
        challenge = training_box(target, np.random.default_rng(seed), "challenge")
        assert np.all(challenge[1] > challenge[0])
    rng = np.random.default_rng(0)
    widths = [np.diff(training_box(target, rng, "challenge"), axis=0)[0, 0] for _ in range(50)]
    assert min(widths) < np.ptp(occupied[:, 0]) - 2  # some boxes are cut to the middle slice's extent


def test_seeded_episodes_start_from_an_imperfect_copy_of_the_target():
    """Seeds as the session gives them (±1 logits): close to the target, not equal to it in general."""
    target = np.zeros((16, 16, 16), np.float32)
    target[3:11, 4:12, 2:13] = 1.0
    rng = np.random.default_rng(0)
    for _ in range(6):
        seed = training_seed(target, rng)
        assert set(np.unique(seed)) <= {-1.0, 1.0}
        mask = seed > 0
        assert 0.4 < 2 * (mask & (target > 0)).sum() / (mask.sum() + (target > 0).sum()) <= 1.0
    torch.manual_seed(0)
    model = ClickNet2(TINY_CLICKNET2)
    image, label = synthetic_sample(np.random.default_rng(0), 32)
    x = torch.from_numpy(image)[None, None]
    loss, dices = episode_loss(model, x, label[None], clicks=2, rng=np.random.default_rng(0), seed_fraction=1.0)
    assert len(dices) == 2 and torch.isfinite(loss)


def test_locality_loss_counts_only_far_voxels_that_got_worse():
    target = torch.zeros(1, 1, 16, 16, 16)
    target[..., 2:6, 2:6, 2:6] = 1
    previous = torch.where(target > 0, 5.0, -5.0)  # right everywhere
    click = torch.tensor([[3.0, 3.0, 3.0]])
    assert float(locality_loss(previous, previous, target, click)) == 0.0
    near, far = previous.clone(), previous.clone()
    near[..., 6, 3, 3] = 5.0  # a change next to the click
    far[..., 14, 14, 14] = 5.0  # the same change far away
    assert float(locality_loss(near, previous, target, click)) == 0.0
    assert float(locality_loss(far, previous, target, click)) > 0.0


def test_v3_options_train_a_box_model_and_resume(tmp_path):
    """Box episodes, the challenge's click rule, the locality loss and the robust normalisation run end to end;
    initialise_from loads a no-box export into a box model and refuses another architecture."""
    from SAMVolSegmentLib.errors import CheckpointError

    config = {**TINY_CLICKNET2.to_dict(), "box_input": True, "normalization": "robust_zscore_inside"}
    torch.manual_seed(0)
    base = export_model(ClickNet2(TINY_CLICKNET2), tmp_path / "base.pt")
    model = ClickNet2(ClickNet2Config.from_dict(config))
    assert initialise_from(model, base) == ["box_decoder.weight", "box_outside_gain", "box_refine.weight"]
    with pytest.raises(CheckpointError):
        initialise_from(ClickNet2(ClickNet2Config(image_size=32)), base)
    kwargs = dict(minutes=5.0, seed=0, batch=2, clicks=3, box_fraction=1.0, local_weight=1.0, cvpr_click_fraction=1.0)
    first = train(model, BLOBS_ONLY, tmp_path / "run", max_steps=2, export=tmp_path / "run" / "export.pt",
                  keep_exports_from_minute=0.0, **kwargs)
    assert first["steps"] == 2
    assert (tmp_path / "run" / "export_m0.pt").is_file()  # the kept copy for a tail average
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all("+box_" in kind for row in log for kind in row["kinds"])
    with (tmp_path / "run" / "log.jsonl").open("a") as f:  # a step logged after the last checkpoint
        f.write(json.dumps({"step": 3, "loss": 0.0}) + "\n")
    resumed = train(ClickNet2(ClickNet2Config.from_dict(config)), BLOBS_ONLY, tmp_path / "run", max_steps=3,
                    resume=True, **kwargs)
    assert resumed["steps"] == 3
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # the stale step 3 was dropped on resume, then logged again
    with pytest.raises(ValueError, match="box input"):
        train(ClickNet2(TINY_CLICKNET2), BLOBS_ONLY, tmp_path / "other", max_steps=1, **kwargs)


@pytest.mark.parametrize("trainable", ["decoder", "all"])
def test_finetune_the_official_format_fixture_through_the_cli(fixtures_dir, shared_data_dir, tmp_path, trainable):
    """`samvolseg finetune` on the small official-format SAM-Med3D checkpoint: the run exports a file that loads
    as the same family, the frozen part is bit-identical, the trained part changed."""
    from SAMVolSegmentLib.cli.main import main

    base = load_model(fixtures_dir / "small_sam_med3d.pth")
    out = tmp_path / "run"
    code = main(["finetune", str(fixtures_dir / "small_sam_med3d.pth"), "--data",
                 str(shared_data_dir / "mr_msd_hippocampus_003"), "--out", str(out), "--minutes", "0.05",
                 "--trainable", trainable, "--lr", "1e-3"])
    assert code == 0
    tuned = load_model(out / "finetuned.pt")
    assert type(tuned) is type(base) and tuned.config == base.config
    before, after = base.state_dict(), tuned.state_dict()
    encoder_same = all(torch.equal(before[k], after[k]) for k in before if k.startswith("image_encoder"))
    decoder_changed = any(not torch.equal(before[k], after[k]) for k in before if k.startswith("mask_decoder"))
    assert decoder_changed
    assert encoder_same == (trainable == "decoder")


def test_average_of_exports_is_the_mean_of_their_weights_and_loads(tmp_path):
    """`samvolseg average`: the uniform average of a run's exports, loadable; other models are refused."""
    from SAMVolSegmentLib.cli.main import main
    from SAMVolSegmentLib.errors import CheckpointError
    from SAMVolSegmentLib.tools.training import average_exports

    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        paths.append(export_model(ClickNet2(TINY_CLICKNET2), tmp_path / f"e{seed}.pt", {"step": seed, "minutes": seed}))
    assert main(["average", *map(str, paths), "--output", str(tmp_path / "avg.pt")]) == 0
    averaged = load_model(tmp_path / "avg.pt")
    singles = [load_model(p).state_dict() for p in paths]
    for key, value in averaged.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, sum(s[key] for s in singles) / 3)
    other = export_model(ClickNet(TINY_CLICKNET), tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="same model"):
        average_exports([paths[0], other], tmp_path / "bad.pt")


def test_the_cpu_clock_counts_compute_not_waiting(tmp_path, monkeypatch):
    """clock="cpu": time the process spends not computing (here a 0.4 s sleep per sample) is not training time."""
    import time

    source = SampleSource([])
    draw = source.draw_with_inside

    def slow_draw(*args, **kwargs):
        time.sleep(0.4)
        return draw(*args, **kwargs)

    monkeypatch.setattr(source, "draw_with_inside", slow_draw)
    started = time.perf_counter()
    train(ClickNet2(TINY_CLICKNET2), source, tmp_path / "run", minutes=5.0, max_steps=2, clicks=2, clock="cpu")
    wall = time.perf_counter() - started
    t = [json.loads(line)["t"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert wall > 1.6 and t[-1] < wall - 1.2  # 4 samples slept 1.6 s in all
    with pytest.raises(ValueError, match="clock"):
        train(ClickNet2(TINY_CLICKNET2), source, tmp_path / "other", minutes=1.0, max_steps=1, clock="gpu")
