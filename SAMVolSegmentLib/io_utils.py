"""Atomic file output: nothing half-written is ever left under the final name."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

import SimpleITK as sitk

PathLike = Union[str, Path]


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
