"""Model registry: the bundled default model, official checkpoints downloaded on request, local files.

Nothing here touches the network unless :func:`download_model` is called explicitly (through
:func:`.download.download_file`: checked size and SHA-256, atomic rename).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

from ..download import ProgressCallback, cache_root, download_file, is_complete
from ..errors import DownloadError, ModelNotAvailableError

PACKAGE_WEIGHTS = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class ModelSpec:
    """One registered model: where its file comes from and what it is.

    ``url`` is None for bundled files; ``sha256`` is None where no checksum is published (then only
    ``size_bytes`` is checked after a download).
    """

    name: str
    description: str
    family: str
    url: Optional[str]
    filename: str
    size_bytes: Optional[int]
    sha256: Optional[str]
    licence: str
    bundled: bool = False


REGISTRY: Dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="default",
            description="ClickNet2, trained by SAMVolSegment on CPU, shipped in the package (docs/MODEL_CARD.md)",
            family="clicknet2",
            url=None,
            filename="samvolseg_default.pt",
            size_bytes=None,
            sha256=None,
            licence="Apache-2.0 code; weights trained on CC BY / CC BY-SA / Apache data (docs/MODEL_CARD.md)",
            bundled=True,
        ),
        ModelSpec(
            name="clicknet-v1",
            description="The previous default (ClickNet, 32³ output, 46 min of training); kept for comparison",
            family="clicknet",
            url=None,
            filename="samvolseg_clicknet_v1.pt",
            size_bytes=None,
            sha256=None,
            licence="Apache-2.0",
            bundled=True,
        ),
        ModelSpec(
            name="sam-med3d-turbo",
            description="Official SAM-Med3D-turbo (uni-medical, vit_b_ori, 100.5 M parameters)",
            family="sam_med3d",
            url="https://huggingface.co/blueyo0/SAM-Med3D/resolve/main/sam_med3d_turbo.pth",
            filename="sam_med3d_turbo.pth",
            size_bytes=402_038_464,
            sha256=None,  # not published by the authors
            licence="Apache-2.0",
        ),
    )
}


def list_models() -> List[ModelSpec]:
    """Every registered model, in registry order."""
    return list(REGISTRY.values())


def cache_dir() -> Path:
    """``$SAMVOLSEGMENT_MODEL_DIR``, else ``models/`` in :func:`.download.cache_root` (``$SAMVOLSEG_CACHE``,
    ``$XDG_CACHE_HOME/samvolsegment`` or ``~/.cache/samvolsegment``)."""
    explicit = os.environ.get("SAMVOLSEGMENT_MODEL_DIR")
    if explicit:
        return Path(explicit).expanduser()
    return cache_root() / "models"


def spec_path(spec: ModelSpec) -> Path:
    """Where a registered model's file lives (package folder if bundled, else the cache dir); may not exist."""
    return PACKAGE_WEIGHTS / spec.filename if spec.bundled else cache_dir() / spec.filename


def resolve_model_path(source: Union[str, Path]) -> Path:
    """The file for a registry name or a path. Never downloads.

    Raises:
        ModelNotAvailableError: a registered model that is not on this machine (says how to get it).
    """
    name = str(source)
    spec = REGISTRY.get(name)
    if spec is None:
        return Path(source).expanduser()
    path = spec_path(spec)
    if path.is_file():
        return path
    if spec.bundled:
        raise ModelNotAvailableError(
            f"The bundled model file {path} is missing from this installation; reinstall SAMVolSegment or "
            "train it with `samvolseg train`."
        )
    raise ModelNotAvailableError(
        f"Model {name!r} is not downloaded yet. Run `samvolseg models download {name}`, or place "
        f"{spec.filename} ({spec.size_bytes:,} bytes, from {spec.url}) in {path.parent} "
        "(set SAMVOLSEGMENT_MODEL_DIR to use another folder)."
    )


def download_model(name: str, progress: Optional[ProgressCallback] = None, timeout: float = 30.0) -> Path:
    """Download a registered model into the cache dir and return its path (no-op if already there).

    Streams to a temporary file next to the target, checks the size (and sha256 when published) and renames
    atomically, so an interrupted or wrong download never leaves a file that looks complete.

    Args:
        progress: ``callback(fraction in [0, 1], message)`` called per received block.
    Raises:
        ModelNotAvailableError: unknown name, offline, or the file received is not the expected one.
    """
    spec = REGISTRY.get(name)
    if spec is None or spec.url is None:
        downloadable = sorted(n for n, s in REGISTRY.items() if s.url)
        raise ModelNotAvailableError(f"{name!r} is not a downloadable model; choose one of {downloadable}.")
    target = spec_path(spec)
    if is_complete(target, None, spec.size_bytes):  # size only: hashing 400 MB on every call would be slow
        return target
    try:
        return download_file(spec.url, target, sha256=spec.sha256, size_bytes=spec.size_bytes, what=spec.name,
                             progress=progress, timeout=timeout)
    except DownloadError as exc:
        if exc.unreachable:
            raise ModelNotAvailableError(
                f"Cannot download {name}: {exc}. If this machine is offline, download {spec.filename} from "
                f"{spec.url} elsewhere and copy it to {target}."
            ) from None
        raise ModelNotAvailableError(f"{exc} Try again, or place {spec.filename} in {target.parent} by hand.") from None
