"""The local engine session the Slicer Logic uses by default (``backend.py`` swaps in a remote one).

Runs on the Logic's worker thread: importing torch and loading weights take seconds. No Slicer imports.
"""

from __future__ import annotations

from typing import Callable, Optional


def localSession(source: str, device: str, download: bool, progress: Optional[Callable[[float, str], None]]):
    """An ``InteractiveSession`` on model ``source`` (registry name or checkpoint path) and ``device``.

    ``device="auto"`` picks CUDA when available. With ``download`` a registered model that is not on disk is
    downloaded first (with progress); without it, such a model raises ``ModelNotAvailableError``.
    """
    import torch

    from SAMVolSegmentLib import InteractiveSession, load_model, weights

    resolved = device
    if device == "auto":
        resolved = "cuda" if torch.cuda.is_available() else "cpu"
    if download and str(source) in weights.REGISTRY and not weights.REGISTRY[str(source)].bundled:
        weights.download_model(str(source), progress=progress)
    return InteractiveSession(load_model(source, device=resolved), progress=progress)
