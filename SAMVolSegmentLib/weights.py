"""Model registry: the bundled default model, official checkpoints downloaded on request, local files.

Nothing here touches the network unless :func:`download_model` is called explicitly.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

from .errors import ModelNotAvailableError

ProgressCallback = Callable[[float, str], None]
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
    """``$SAMVOLSEGMENT_MODEL_DIR``, else ``$XDG_CACHE_HOME/samvolsegment/models`` (default ``~/.cache``)."""
    explicit = os.environ.get("SAMVOLSEGMENT_MODEL_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "samvolsegment" / "models"


def spec_path(spec: ModelSpec) -> Path:
    """Where a registered model's file lives (package folder if bundled, else the cache dir); may not exist."""
    return PACKAGE_WEIGHTS / spec.filename if spec.bundled else cache_dir() / spec.filename


_spec_path = spec_path  # older private name, still used by callers


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
    if target.is_file() and (spec.size_bytes is None or target.stat().st_size == spec.size_bytes):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".part", dir=str(target.parent))
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(spec.url, timeout=timeout) as response:
            _stream(response, out, spec, progress)
        os.replace(str(tmp), str(target))
    except (urllib.error.URLError, OSError) as exc:
        raise ModelNotAvailableError(
            f"Cannot download {name} from {spec.url} ({exc}). If this machine is offline, download "
            f"{spec.filename} elsewhere and copy it to {target}."
        ) from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def _stream(response, out, spec: ModelSpec, progress: Optional[ProgressCallback]) -> None:
    """Copy the HTTP body to ``out`` in blocks, checking size and checksum."""
    announced = response.headers.get("Content-Length")
    if announced is not None and spec.size_bytes is not None and int(announced) != spec.size_bytes:
        # refuse before transferring hundreds of MB of the wrong file
        raise ModelNotAvailableError(
            f"The server offers {int(announced):,} bytes for {spec.name}, expected {spec.size_bytes:,}; "
            f"the file at {spec.url} has changed. Update SAMVolSegment or place the file manually."
        )
    total = spec.size_bytes or int(announced or 0)
    digest = hashlib.sha256()
    done = 0
    while True:
        block = response.read(1 << 20)
        if not block:
            break
        out.write(block)
        digest.update(block)
        done += len(block)
        if progress is not None:
            progress(min(done / total, 1.0) if total else 0.0, f"{spec.name}: {done / 2**20:.0f} MB")
    if spec.size_bytes is not None and done != spec.size_bytes:
        raise ModelNotAvailableError(
            f"Download of {spec.name} is incomplete or wrong ({done:,} of {spec.size_bytes:,} bytes); try again."
        )
    if spec.sha256 is not None and digest.hexdigest() != spec.sha256:
        raise ModelNotAvailableError(f"Download of {spec.name} has the wrong sha256 checksum; try again.")
