"""Sample data shipped with the package (licences in each sample's ``README.md``).

``ct_msd_spleen2_spleen``: an abdominal CT crop with its manual spleen label (Medical Segmentation Decathlon
Task09 spleen_2, CC BY-SA 4.0), used by ``samvolseg demo`` and the tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

DEMO_SAMPLE = "ct_msd_spleen2_spleen"


def _package_dir() -> Path:
    try:
        from importlib.resources import files  # Python 3.9+
    except ImportError:  # pragma: no cover - very old interpreters
        return Path(__file__).resolve().parent
    root = files(__name__)
    # A normal (unzipped) install gives a real folder; SimpleITK needs real files, so zips are not supported.
    path = Path(str(root))
    return path if path.is_dir() else Path(__file__).resolve().parent


def list_samples() -> List[str]:
    """Names of the shipped samples (folders holding ``image.nii.gz`` and ``label.nii.gz``)."""
    root = _package_dir()
    return sorted(p.name for p in root.iterdir() if (p / "image.nii.gz").is_file() and (p / "label.nii.gz").is_file())


def sample_dir(name: str = DEMO_SAMPLE) -> Path:
    """Folder of a shipped sample with ``image.nii.gz``, ``label.nii.gz`` and ``README.md``.

    Raises:
        FileNotFoundError: the sample is not installed (names the ones that are).
    """
    path = _package_dir() / name
    if not ((path / "image.nii.gz").is_file() and (path / "label.nii.gz").is_file()):
        raise FileNotFoundError(
            f"Sample {name!r} is not installed at {path} (installed: {list_samples() or 'none'}); reinstall "
            "SAMVolSegment from a full source tree or wheel."
        )
    return path
