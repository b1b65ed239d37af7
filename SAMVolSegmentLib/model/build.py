"""Building models and loading checkpoints safely.

Checkpoints are read with ``torch.load(weights_only=True)`` (a pickle carrying code is refused, never run),
accept the official format ``{"model_state_dict": ...}`` and bare state dicts, and load with ``strict=True``.
A checkpoint may name its model family (``"family"``); official SAM-Med3D files do not, and are
``sam_med3d``. Other families register themselves with :func:`register_family`.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import nn

from ..errors import CheckpointError
from .adapters import (
    READABLE_VERSIONS,
    AdapterConfig,
    inject_adapters,
    is_adapter_file,
    load_adapter_state_dict,
)
from .config import ModelConfig
from .families import FAMILIES
from .proposal_head import load_proposal_payload
from .registry import REGISTRY, resolve_model_path
from .sam3d import Sam3D

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}




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
    family = FAMILIES.get(family_name)
    if family is None:
        raise CheckpointError(f"Unknown model family {family_name!r}; known: {sorted(FAMILIES)}. Update SAMVolSegment.")
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
    (:func:`compose`).

    Args:
        source: registry name or file path (never downloads; see ``weights.download_model``).
        base: only with an adapter file: where its base model is, when not where the file says (a registry
            name or path); a file with another SHA-256 is still refused.
        device: "cpu", "cuda", ...
        precision: "fp32" (default) or "bf16"/"fp16" autocast for encoder and decoder (small numeric drift).
        attention_impl: "fast" (exact closed form) or "reference" (plain computation, for comparison).
    """
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


def compose(checkpoint: Mapping[str, Any], adapter_path: Path, base: Optional[Union[str, Path]],
            attention_impl: str) -> nn.Module:
    """Base model + the adapters of an adapter file (read by ``read_checkpoint``); see the module docstring.

    Raises:
        ModelNotAvailableError: the named registry base is not on this machine (says how to download it).
        CheckpointError: the base file is missing or not the one the adapters were trained on.
    """

    if int(checkpoint.get("version", 0)) not in READABLE_VERSIONS:
        raise CheckpointError(f"{adapter_path} is adapter format version {checkpoint.get('version')!r}; this "
                              f"SAMVolSegment reads versions {READABLE_VERSIONS}. Update SAMVolSegment.")
    base_name, base_sha = str(checkpoint["base_model"]), str(checkpoint["base_sha256"])
    how_to_get = (f"download it with `samvolseg models download {base_name}`" if base_name in REGISTRY
                  and REGISTRY[base_name].url else f"use {base_name} or pass load_model(..., base=PATH) for its copy")
    base_path = resolve_model_path(base if base is not None else base_name)
    if not base_path.is_file():
        raise CheckpointError(
            f"{adapter_path} holds adapters for the base model {base_name!r} (sha256 {base_sha[:16]}…), which "
            f"is not at {base_path}; pass base= the path of that file."
        )
    actual = file_sha256(base_path)
    if actual != base_sha:
        raise CheckpointError(
            f"{adapter_path} holds adapters for the base model {base_name!r} (sha256 {base_sha[:16]}…), but "
            f"{base_path} is a different file (sha256 {actual[:16]}…). Adapters only work on the exact base they "
            f"were trained on: {how_to_get}."
        )
    base_checkpoint = read_checkpoint(base_path)
    family = str(base_checkpoint.get("family", "sam_med3d"))
    if family != checkpoint.get("family"):
        raise CheckpointError(f"{adapter_path} holds {checkpoint.get('family')} adapters, but {base_path} is a "
                              f"{family} model; {how_to_get}.")
    model = model_from_checkpoint(base_checkpoint, f"{family}:{base_sha[:12]}", attention_impl)
    model.checkpoint_source, model.checkpoint_sha256 = base_name, base_sha
    # Version 1 files always hold adapters; from version 2 a file may hold only a proposal head.
    if checkpoint.get("adapter_config") is not None or int(checkpoint.get("version", 0)) == 1:
        try:
            stored = dict(checkpoint.get("adapter_config") or {})
            stored.setdefault("clicknet2_decoder_hidden", 0)  # files from before the decoder adapter have none
            config = AdapterConfig.from_dict(stored)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{adapter_path} has an unreadable adapter_config ({exc}); update "
                                  "SAMVolSegment.") from exc
        inject_adapters(model, config)
        load_adapter_state_dict(model, checkpoint["adapter_state_dict"])
    if checkpoint.get("proposal") is not None:
        load_proposal_payload(model, checkpoint["proposal"], adapter_path)
    model.model_id = f"{family}:{base_sha[:12]}+adapters:{file_sha256(adapter_path)[:12]}"
    return model.eval()
