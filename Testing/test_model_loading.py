"""Checkpoint loading: official and bare formats, registry, and every bad-file path as a clear CheckpointError."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from pathlib import Path

import pytest
import torch

from SAMVolSegmentLib.errors import CheckpointError
from SAMVolSegmentLib.model import ModelConfig, build_model, families, load_model, register_family
from SAMVolSegmentLib.model.build import file_sha256
from SAMVolSegmentLib.model.registry import REGISTRY

TINY = ModelConfig(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
                   prompt_embed_dim=48, image_size=64)


@pytest.fixture()
def tiny_state():
    torch.manual_seed(0)
    return build_model(TINY).state_dict()


def test_official_format_with_and_without_config(tmp_path, tiny_state):
    for name, payload in [("with_config.pth", {"model_state_dict": tiny_state, "config": TINY.to_dict()}),
                          ("official.pth", {"model_state_dict": tiny_state}),
                          ("bare.pth", tiny_state)]:
        path = tmp_path / name
        torch.save(payload, path)
        model = load_model(path)
        assert model.config == TINY
        assert model.model_id.startswith("sam_med3d:") and len(model.model_id) == len("sam_med3d:") + 12
        for key, value in model.state_dict().items():
            assert torch.equal(value, tiny_state[key])


def test_missing_file_names_the_fix(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.pth")


def test_truncated_checkpoint_is_refused(tmp_path, tiny_state):
    path = tmp_path / "model.pth"
    torch.save({"model_state_dict": tiny_state}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(path)


def test_garbage_file_is_refused(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError):
        load_model(path)


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(_Payload.marker),))


def test_pickle_with_code_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "executed"
    _Payload.marker = str(marker)
    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {"x": torch.zeros(1)}, "payload": _Payload()}, path, pickle_protocol=2)
    with pytest.raises(CheckpointError, match="unsafe"):
        load_model(path)
    assert not marker.exists()
    # plain pickle too
    path.write_bytes(pickle.dumps(_Payload(), protocol=2))
    with pytest.raises(CheckpointError):
        load_model(path)
    assert not marker.exists()


def test_wrong_architecture_lists_keys(tmp_path, tiny_state):
    state = dict(tiny_state)
    state.pop("mask_decoder.iou_token.weight")
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "wrong.pth"
    torch.save({"model_state_dict": state, "config": TINY.to_dict()}, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    assert "mask_decoder.iou_token.weight" in str(info.value) and "extra.weight" in str(info.value)


def test_shape_mismatch_is_reported(tmp_path, tiny_state):
    other = ModelConfig(**{**TINY.to_dict(), "encoder_embed_dim": 64})
    path = tmp_path / "mismatch.pth"
    torch.save({"model_state_dict": tiny_state, "config": other.to_dict()}, path)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_model(path)


def test_not_a_checkpoint_structure(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not a model checkpoint"):
        load_model(path)


def test_unknown_family(tmp_path, tiny_state):
    path = tmp_path / "family.pth"
    torch.save({"model_state_dict": tiny_state, "family": "no_such_family"}, path)
    with pytest.raises(CheckpointError, match="Unknown model family"):
        load_model(path)


def test_registry_name_loads_a_cached_file(tmp_path, monkeypatch, tiny_state):
    monkeypatch.setenv("SAMVOLSEGMENT_MODEL_DIR", str(tmp_path))
    torch.save({"model_state_dict": tiny_state}, tmp_path / REGISTRY["sam-med3d-turbo"].filename)
    assert load_model("sam-med3d-turbo").config == TINY


def test_model_id_is_family_and_file_hash(tmp_path, tiny_state):
    path = tmp_path / "m.pth"
    torch.save({"model_state_dict": tiny_state}, path)
    model = load_model(path)
    assert model.model_id == "sam_med3d:" + hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert file_sha256(path)[:12] == model.model_id.split(":")[1]
    assert build_model(TINY).model_id == "sam_med3d:random"
    assert not model.training


def test_precision_and_device(tmp_path, tiny_state):
    path = tmp_path / "m.pth"
    torch.save({"model_state_dict": tiny_state}, path)
    assert load_model(path, precision="fp32").autocast_dtype is None
    model = load_model(path, device=torch.device("cpu"), precision="bf16", attention_impl="reference")
    assert model.autocast_dtype == torch.bfloat16
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert {b.attention_impl for b in model.image_encoder.blocks} == {"reference"}
    with pytest.raises(ValueError, match="precision"):
        load_model(path, precision="int8")


def test_tiny_config_from_the_brief_runs_end_to_end():
    """prompt_embed_dim=24 is too narrow for 8 decoder heads; the config picks fewer, the model runs."""
    config = ModelConfig(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
                         window_size=14, prompt_embed_dim=24, image_size=64, patch_size=16)
    assert config.low_res_size == 16 and config.decoder_num_heads == 6
    assert ModelConfig.vit_b_ori().decoder_num_heads == 8
    model = build_model(config).eval()
    with torch.inference_mode():
        embedding = model.encode_image(torch.randn(1, 1, 64, 64, 64))
        assert embedding.shape == (1, 24, 4, 4, 4)
        logits, iou = model.decode_prompts(embedding, torch.zeros(1, 0, 3), torch.zeros(1, 0, dtype=torch.int64),
                                           torch.zeros(1, 1, 16, 16, 16))  # mask-only prompt
        assert logits.shape == (1, 1, 16, 16, 16) and iou.shape == (1, 1)
        logits2, _ = model.decode_prompts(embedding, torch.tensor([[[10.0, 20.0, 30.0]]]), torch.ones(1, 1).long(),
                                          logits)
        assert not torch.equal(logits, logits2)
    assert model.mask_decoder.output_hypernetworks_mlps[0].layers[-1].bias.shape == (3,)
    with pytest.raises(NotImplementedError):  # no half-working 2D-style forward()
        model(torch.zeros(1, 1, 64, 64, 64))


def test_config_round_trip_and_fixture_dict():
    fixture_config = {"encoder_embed_dim": 96, "encoder_depth": 4, "encoder_num_heads": 4,
                      "encoder_global_attn_indexes": [1, 3], "prompt_embed_dim": 96, "image_size": 128,
                      "patch_size": 16, "window_size": 14}
    config = ModelConfig.from_dict(fixture_config)
    assert config.encoder_global_attn_indexes == (1, 3) and config.low_res_size == 32
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert ModelConfig.infer_from_state_dict(build_model(config).state_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**fixture_config, "encoder_dept": 3})
    with pytest.raises(ValueError):
        ModelConfig(encoder_embed_dim=30, encoder_num_heads=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.encoder_depth = 2


def test_checkpoint_family_selects_the_registered_builder(tmp_path, tiny_state, monkeypatch):
    # Keep the test family local: setitem removes the key again at teardown (register_family overwrites it).
    monkeypatch.setitem(families.FAMILIES, "sam_med3d_test_alias", None)
    built = []

    def build(config):
        built.append(config)
        return build_model(config)

    register_family("sam_med3d_test_alias", lambda ckpt, sd: ModelConfig.from_dict(ckpt["config"]), build)
    path = tmp_path / "fam.pth"
    torch.save({"model_state_dict": tiny_state, "config": TINY.to_dict(), "family": "sam_med3d_test_alias"}, path)
    model = load_model(path)
    assert built == [TINY]
    assert model.model_id.startswith("sam_med3d_test_alias:")


def test_state_dict_of_another_model_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError, match="architecture"):
        load_model(path)
