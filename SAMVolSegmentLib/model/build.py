"""Building models and loading checkpoints safely.

Checkpoints are read with ``torch.load(weights_only=True)`` (a pickle carrying code is refused, never run),
accept the official format ``{"model_state_dict": ...}`` and bare state dicts, and load with ``strict=True``.
A checkpoint may name its model family (``"family"``); official SAM-Med3D files do not, and are
``sam_med3d``. Other families register themselves with :func:`register_family`.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Union

import torch
from torch import nn

from ..errors import CheckpointError
from .adapters import compose, is_adapter_file
from .config import ModelConfig
from .sam3d import Sam3D

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ModelFamily:
    """How to rebuild a family's model: its config from a checkpoint, and the module from the config."""

    name: str
    config_from_checkpoint: Callable[[Mapping[str, Any], Mapping[str, torch.Tensor]], Any]
    build: Callable[[Any], nn.Module]


_FAMILIES: Dict[str, ModelFamily] = {}


def register_family(name: str, config_from_checkpoint: Callable, build: Callable) -> None:
    """Register a model family. ``config_from_checkpoint(checkpoint_dict, state_dict) -> config`` and
    ``build(config) -> nn.Module`` (implementing ``encode_image``/``decode_prompts``, see docs/ARCHITECTURE.md)."""
    _FAMILIES[name] = ModelFamily(name, config_from_checkpoint, build)


def _sam_config(checkpoint: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> ModelConfig:
    if isinstance(checkpoint.get("config"), Mapping):
        return ModelConfig.from_dict(checkpoint["config"])
    return ModelConfig.infer_from_state_dict(state_dict)


register_family("sam_med3d", _sam_config, Sam3D)


def build_model(config: Optional[ModelConfig] = None, attention_impl: str = "fast") -> Sam3D:
    """A SAM-Med3D model with random weights (default: the released ``vit_b_ori`` architecture)."""
    model = Sam3D(config or ModelConfig.vit_b_ori())
    model.set_attention_impl(attention_impl)
    return model


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """Load a checkpoint file safely (tensors only) and normalise it to ``{"model_state_dict": ..., ...}``.

    An adapter file (:mod:`.adapters`) is returned as it is (``{"format": "samvolseg-adapters", ...}``).

    Raises:
        CheckpointError: missing, truncated/corrupt, unsafe (pickled code) or not a model checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} not found; give the path of a .pth/.pt file or a registered model name.")
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} contains Python objects other than tensors and was refused as unsafe (it was not executed). "
            "Use a checkpoint that holds only weights, e.g. re-save its 'model_state_dict' with torch.save."
        ) from exc
    except Exception as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (corrupt or truncated: {reason}); "
            "download or copy it again."
        ) from exc
    if isinstance(raw, Mapping) and isinstance(raw.get("model_state_dict"), Mapping):
        checkpoint = dict(raw)
    elif isinstance(raw, Mapping) and is_adapter_file(raw) and isinstance(raw.get("adapter_state_dict"), Mapping):
        checkpoint = dict(raw)  # adapters only: load_model composes them with their base
    elif isinstance(raw, Mapping) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        checkpoint = {"model_state_dict": raw}
    else:
        raise CheckpointError(
            f"{path} is not a model checkpoint: expected a state dict or {{'model_state_dict': ...}}."
        )
    return checkpoint


def model_from_checkpoint(checkpoint: Mapping[str, Any], model_id: str, attention_impl: str = "fast") -> nn.Module:
    """Rebuild and strictly load the model a checkpoint describes."""
    family_name = str(checkpoint.get("family", "sam_med3d"))
    family = _FAMILIES.get(family_name)
    if family is None:
        raise CheckpointError(f"Unknown model family {family_name!r}; known: {sorted(_FAMILIES)}. Update SAMVolSegment.")
    state_dict = checkpoint["model_state_dict"]
    try:
        config = family.config_from_checkpoint(checkpoint, state_dict)
        model = family.build(config)
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"Cannot work out the {family_name} architecture of this checkpoint: {exc}") from exc
    _load_strict(model, state_dict)
    if hasattr(model, "set_attention_impl"):
        model.set_attention_impl(attention_impl)
    model.model_id = model_id
    return model.eval()


def _load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        def head(items):
            return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")

        parts = [f"missing keys: {head(missing)}" if missing else "",
                 f"unexpected keys: {head(unexpected)}" if unexpected else "",
                 f"shape mismatches: {head(mismatched)}" if mismatched else ""]
        raise CheckpointError(
            "The checkpoint does not match the model architecture (" + "; ".join(p for p in parts if p)
            + "). Use a SAM-Med3D (vit_b_ori) checkpoint or one saved by SAMVolSegment."
        )
    model.load_state_dict(state_dict, strict=True)


def load_model(
    source: Union[str, Path],
    device: Union[str, torch.device] = "cpu",
    precision: str = "fp32",
    attention_impl: str = "fast",
    base: Optional[Union[str, Path]] = None,
) -> nn.Module:
    """Load a model by registry name (``"default"``, ``"sam-med3d-turbo"``) or checkpoint path.

    An adapter file (``samvolseg finetune MODEL --trainable adapters``) loads as its base model + the adapters:
    the base is the registry name or path the file names, checked against the SHA-256 the file records
    (:func:`.adapters.compose`).

    Args:
        source: registry name or file path (never downloads; see ``weights.download_model``).
        base: only with an adapter file: where its base model is, when not where the file says (a registry
            name or path); a file with another SHA-256 is still refused.
        device: "cpu", "cuda", ...
        precision: "fp32" (default) or "bf16"/"fp16" autocast for encoder and decoder (small numeric drift).
        attention_impl: "fast" (exact closed form) or "reference" (plain computation, for comparison).
    """
    from .registry import REGISTRY, resolve_model_path

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    path = resolve_model_path(source)
    checkpoint = read_checkpoint(path)
    if is_adapter_file(checkpoint):
        model = compose(checkpoint, path, base, attention_impl)
    elif base is not None:
        raise CheckpointError(f"{path} is a complete model, not an adapter file; load it without base=.")
    else:
        family = str(checkpoint.get("family", "sam_med3d"))
        digest = file_sha256(path)
        model = model_from_checkpoint(checkpoint, f"{family}:{digest[:12]}", attention_impl)
        # What adapters trained on this model name as their base: a registry name as given, else the
        # absolute path (the adapter file may be loaded from another folder).
        model.checkpoint_source = str(source) if str(source) in REGISTRY else str(path.resolve())
        model.checkpoint_sha256 = digest
    model.autocast_dtype = PRECISIONS[precision]
    return model.to(device)
