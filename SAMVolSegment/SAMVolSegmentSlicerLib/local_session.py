"""The local engine the Slicer Logic uses by default (``backend.py`` swaps in a remote one for sessions).

Runs on the Logic's worker thread: importing torch and loading weights take seconds. No Slicer imports.
``localModel`` loads a model; ``localSession`` wraps one in an ``InteractiveSession``. The Logic keeps the
model it loaded (:class:`KeptModel`) and gives it to both its interactive sessions and ``segmentVolume`` (the
batch path), so a model is loaded once per Logic, not once per session or per volume.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Tuple

Progress = Optional[Callable[[float, str], None]]


def slicerThreads(environ: Any = None, cpus: Optional[int] = None) -> str:
    """The model's CPU threads in Slicer, as ``"ENCODER,DECODER"``: ``$SAMVOLSEG_THREADS`` when set (the user's
    choice wins), else every CPU but one (up to 8 for the encoder, 2 for the per-click decoder), so Slicer's GUI
    thread keeps a core while the model runs (``SAMVolSegmentLib/engine/threads.py`` has the measurements)."""
    from SAMVolSegmentLib.engine.threads import ENV_THREADS, ThreadPolicy, available_cpus

    environ = os.environ if environ is None else environ
    if str(environ.get(ENV_THREADS, "")).strip():
        return str(ThreadPolicy.parse(environ[ENV_THREADS]))
    cpus = available_cpus() if cpus is None else int(cpus)
    spare = max(1, cpus - 1)
    return str(ThreadPolicy(encoder=min(spare, 8), decoder=min(spare, 2)))


def resolveDevice(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when available, else ``"cpu"``; any other name as given."""
    if device != "auto":
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def localModel(source: str, device: str, download: bool, progress: Progress) -> Any:
    """The model ``source`` (registry name or checkpoint path) loaded on ``device`` (:func:`resolveDevice`).

    With ``download`` a registered model that is not on disk is downloaded first (with progress); without it,
    such a model raises ``ModelNotAvailableError``.
    """
    from SAMVolSegmentLib import load_model
    from SAMVolSegmentLib.model import registry

    resolved = resolveDevice(device)
    if download and str(source) in registry.REGISTRY and not registry.REGISTRY[str(source)].bundled:
        registry.download_model(str(source), progress=progress)
    return load_model(source, device=resolved)


def localSession(source: str, device: str, download: bool, progress: Progress, model: Any = None):
    """An ``InteractiveSession`` on ``model`` (already loaded by :func:`localModel`), else on ``source``/``device``
    loaded now."""
    from SAMVolSegmentLib import InteractiveSession

    if model is None:
        model = localModel(source, device, download, progress)
    return InteractiveSession(model, progress=progress, threads=slicerThreads())


class KeptModel:
    """The local model a Logic loaded, kept for its sessions and ``segmentVolume``: one at a time, keyed by
    (source, resolved device), so ``"auto"`` and ``"cpu"`` on a machine without CUDA share a model."""

    def __init__(self) -> None:
        self._kept: Optional[Tuple[Tuple[str, str], Any]] = None

    def get(self, factory: Callable[..., Any], source: str, device: str, download: bool, progress: Progress) -> Any:
        """On the worker: the kept model, or ``factory(source, device, download, progress)`` loaded now."""
        key = (str(source), resolveDevice(device))
        if self._kept is None or self._kept[0] != key:
            self._kept = None  # the previous model goes before the next one loads
            self._kept = (key, factory(source, device, download, progress))
        return self._kept[1]

    def clear(self) -> None:
        self._kept = None
