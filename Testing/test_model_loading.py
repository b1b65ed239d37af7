"""Checkpoint loading: official and bare formats, registry, and every bad-file path as a clear CheckpointError."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from SAMVolSegmentLib.errors import CheckpointError, ModelNotAvailableError
from SAMVolSegmentLib.model import ModelConfig, build_model, load_model
from SAMVolSegmentLib.weights import REGISTRY, cache_dir, resolve_model_path

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
    path.write_bytes(pickle.dumps(_Payload()))
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


def test_registry_never_downloads_and_says_how(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMVOLSEGMENT_MODEL_DIR", str(tmp_path))
    assert cache_dir() == tmp_path
    with pytest.raises(ModelNotAvailableError, match="samvolseg models download sam-med3d-turbo"):
        resolve_model_path("sam-med3d-turbo")
    assert REGISTRY["sam-med3d-turbo"].size_bytes == 402_038_464
    assert list(tmp_path.iterdir()) == []


def test_registry_finds_a_cached_file(tmp_path, monkeypatch, tiny_state):
    monkeypatch.setenv("SAMVOLSEGMENT_MODEL_DIR", str(tmp_path))
    torch.save({"model_state_dict": tiny_state}, tmp_path / REGISTRY["sam-med3d-turbo"].filename)
    assert load_model("sam-med3d-turbo").config == TINY
