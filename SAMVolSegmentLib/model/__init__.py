"""Models behind the engine's two calls (encode a ROI once, decode per click).

``sam_med3d`` is the SAM-Med3D ``vit_b_ori`` architecture (official checkpoints load unchanged); other
families (the bundled default model) register through :func:`register_family`.
"""

from __future__ import annotations

import importlib

from .build import build_model, load_model, read_checkpoint
from .config import ModelConfig
from .families import register_family
from .sam3d import Sam3D

for _module in ("clicknet", "clicknet2"):  # optional families register themselves on import
    try:
        importlib.import_module(f"{__name__}.{_module}")
    except ImportError:
        pass

__all__ = ["ModelConfig", "Sam3D", "build_model", "load_model", "read_checkpoint", "register_family"]
