"""File input/output shared by the CLI, evaluation and batch jobs.

Writes are atomic: the data goes to a temporary file in the destination folder, then ``os.replace`` renames
it over the final name, so a crash or an error never leaves a half-written output under that name (and a
resumable job can trust any output that exists).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .errors import InvalidImageError

PathLike = Union[str, Path]

#: Tolerances for "label on the image's grid": headers written by different tools round differently.
_GRID_ATOL_MM = 1e-3
_DIRECTION_ATOL = 1e-4


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on error delete it.

    The temporary name keeps the final suffixes (``.nii.gz``, ``.png``...) because writers pick the format
    from the extension.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=str(path.parent))
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_image(image: sitk.Image, path: PathLike) -> Path:
    """Write a SimpleITK image atomically (format from the extension, compressed when it supports it)."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, tmp, True)
    return Path(path)


def write_json(data: Any, path: PathLike) -> Path:
    """Write ``data`` as indented JSON atomically (numpy scalars/arrays are converted)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    return Path(path)


def write_csv(rows: Iterable[Mapping[str, Any]], path: PathLike, fieldnames: Sequence[str]) -> Path:
    """Write dict rows as CSV with a header row, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fieldnames), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return Path(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_image_label(image_path: PathLike, label_path: PathLike) -> Tuple[sitk.Image, np.ndarray]:
    """Read an image and its label map, checked to share one voxel grid.

    Returns:
        The image, and the label as an integer numpy array (k, j, i) on the image's grid.
    Raises:
        InvalidImageError: a file is missing/unreadable, or the label's size, spacing, origin or direction
            differ from the image's (the message says which).
    """
    from .preprocessing import read_image

    image, label = read_image(image_path), read_image(label_path)
    if label.GetNumberOfComponentsPerPixel() != 1 or label.GetDimension() != image.GetDimension():
        raise InvalidImageError(f"Label {label_path} must be a scalar {image.GetDimension()}D label map.")
    checks = (
        ("size", image.GetSize(), label.GetSize(), 0.0),
        ("spacing", image.GetSpacing(), label.GetSpacing(), _GRID_ATOL_MM),
        ("origin", image.GetOrigin(), label.GetOrigin(), _GRID_ATOL_MM),
        ("direction", image.GetDirection(), label.GetDirection(), _DIRECTION_ATOL),
    )
    for what, expected, got, atol in checks:
        if not np.allclose(np.asarray(expected, float), np.asarray(got, float), rtol=0, atol=atol):
            raise InvalidImageError(
                f"Label {label_path} has {what} {tuple(round(float(v), 4) for v in got)} but image {image_path} "
                f"has {tuple(round(float(v), 4) for v in expected)}; resample the label onto the image's grid."
            )
    array = sitk.GetArrayFromImage(label)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise InvalidImageError(f"Label {label_path} holds non-integer values; give an integer label map.")
        array = array.astype(np.int64)
    return image, array
