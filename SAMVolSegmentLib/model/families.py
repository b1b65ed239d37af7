"""The model families a checkpoint can name (``"family"``), and how to rebuild each.

``sam_med3d`` (official SAM-Med3D checkpoints, which name no family) is registered here; the other families
(``clicknet``, ``clicknet2``) register themselves when their module is imported (``model/__init__.py`` imports
them). Kept apart from :mod:`.build` so that a family's module can register itself without importing the
loader (which imports the adapter and proposal-head formats, which import the families' layers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping

import torch
from torch import nn

from .config import ModelConfig
from .sam3d import Sam3D


@dataclass(frozen=True)
class ModelFamily:
    """How to rebuild a family's model: its config from a checkpoint, and the module from the config."""

    name: str
    config_from_checkpoint: Callable[[Mapping[str, Any], Mapping[str, torch.Tensor]], Any]
    build: Callable[[Any], nn.Module]


FAMILIES: Dict[str, ModelFamily] = {}


def register_family(name: str, config_from_checkpoint: Callable, build: Callable) -> None:
    """Register a model family. ``config_from_checkpoint(checkpoint_dict, state_dict) -> config`` and
    ``build(config) -> nn.Module`` (implementing ``encode_image``/``decode_prompts``, see docs/ARCHITECTURE.md)."""
    FAMILIES[name] = ModelFamily(name, config_from_checkpoint, build)


def _sam_config(checkpoint: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> ModelConfig:
    if isinstance(checkpoint.get("config"), Mapping):
        return ModelConfig.from_dict(checkpoint["config"])
    return ModelConfig.infer_from_state_dict(state_dict)


register_family("sam_med3d", _sam_config, Sam3D)
