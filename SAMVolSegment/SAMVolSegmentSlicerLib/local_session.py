"""The local engine the Slicer Logic uses by default (``backend.py`` swaps in a remote one for sessions).

Runs on the Logic's worker thread: importing torch and loading weights take seconds. No Slicer imports.
``localModel`` loads a model; ``localSession`` wraps one in an ``InteractiveSession``. The Logic keeps the
model it loaded (:class:`KeptModel`) and gives it to both its interactive sessions and ``segmentVolume`` (the
batch path), so a model is loaded once per Logic, not once per session or per volume.
"""

from __future__ import annotations

import os
from typing import Any, Callable, List, Optional, Tuple

Progress = Optional[Callable[[float, str], None]]


#: The *CPU threads* setting that lets the module choose (:func:`slicerThreads`).
AUTOMATIC_THREADS = "auto"


def slicerThreads(environ: Any = None, cpus: Optional[int] = None, choice: str = AUTOMATIC_THREADS) -> str:
    """The model's CPU threads in Slicer, as ``"ENCODER,DECODER"``: the *CPU threads* setting ``choice`` when it is
    a number N (encoder N, decoder up to 2), else ``$SAMVOLSEG_THREADS`` when set, else every CPU but one (up to 8
    for the encoder, 2 for the per-click decoder), so Slicer's GUI thread keeps a core while the model runs
    (``SAMVolSegmentLib/engine/threads.py`` has the measurements).

    Raises:
        ValueError: ``choice`` or ``$SAMVOLSEG_THREADS`` is not N or ENCODER,DECODER.
    """
    from SAMVolSegmentLib.engine.threads import ENV_THREADS, ThreadPolicy, available_cpus

    if str(choice).strip() and str(choice).strip() != AUTOMATIC_THREADS:
        return str(ThreadPolicy.parse(str(choice)))
    environ = os.environ if environ is None else environ
    if str(environ.get(ENV_THREADS, "")).strip():
        return str(ThreadPolicy.parse(environ[ENV_THREADS]))
    cpus = available_cpus() if cpus is None else int(cpus)
    spare = max(1, cpus - 1)
    return str(ThreadPolicy(encoder=min(spare, 8), decoder=min(spare, 2)))


def threadChoices(cpus: Optional[int] = None) -> List[Tuple[str, str]]:
    """The *CPU threads* setting's entries ``(value, label)``: Automatic (what :func:`slicerThreads` picks now),
    then 1 … the CPUs this process may use (at most 16)."""
    from SAMVolSegmentLib.engine.threads import ThreadPolicy, available_cpus

    def label(policy: ThreadPolicy) -> str:
        return f"{policy.encoder} thread{'s' if policy.encoder > 1 else ''}, {policy.decoder} per click"

    cpus = available_cpus() if cpus is None else int(cpus)
    try:
        automatic = f"Automatic ({label(ThreadPolicy.parse(slicerThreads(cpus=cpus)))})"
    except ValueError:  # a malformed $SAMVOLSEG_THREADS: the panel still opens; a session names the problem
        automatic = "Automatic"
    choices = [(AUTOMATIC_THREADS, automatic)]
    choices += [(str(n), label(ThreadPolicy.parse(str(n)))) for n in range(1, min(max(1, cpus), 16) + 1)]
    return choices


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


def localSession(source: str, device: str, download: bool, progress: Progress, model: Any = None,
                 threads: str = AUTOMATIC_THREADS):
    """An ``InteractiveSession`` on ``model`` (already loaded by :func:`localModel`), else on ``source``/``device``
    loaded now; its CPU threads from the *CPU threads* setting ``threads`` (:func:`slicerThreads`)."""
    from SAMVolSegmentLib import InteractiveSession

    if model is None:
        model = localModel(source, device, download, progress)
    return InteractiveSession(model, progress=progress, threads=slicerThreads(choice=threads))


def localPredictor(model: Any, threads: str = AUTOMATIC_THREADS) -> Any:
    """``model`` behind a ``Predictor`` with the *CPU threads* setting's threads, for ``segmentVolume`` (the batch
    path makes its session on it, so it runs with the threads the interactive sessions use)."""
    from SAMVolSegmentLib.engine.predictor import Predictor

    return Predictor(model, threads=slicerThreads(choice=threads))


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
