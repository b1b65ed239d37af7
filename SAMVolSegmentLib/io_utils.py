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
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .errors import OutputPathError

PathLike = Union[str, Path]

#: Tolerances for "label on the image's grid": headers written by different tools round differently.


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on error delete it.

    The temporary name keeps the final suffixes (``.nii.gz``, ``.png``...) because writers pick the format
    from the extension.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = _temporary_affixes(path)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=str(path.parent))
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


def _temporary_affixes(path: Path) -> Tuple[str, str]:
    """Prefix and suffix of :func:`atomic_path`'s temporary names for ``path`` (hidden, ``.tmp`` + suffixes)."""
    return f".{path.name}.", f".tmp{''.join(path.suffixes)}"


def remove_stale_temporaries(path: PathLike) -> int:
    """Delete temporaries that an :func:`atomic_path` write of ``path`` left when its process was killed.

    Call it only when no other writer of ``path`` is running (a batch does, before its cases start).
    Returns the number of files removed.
    """
    path = Path(path)
    prefix, suffix = _temporary_affixes(path)
    if not path.parent.is_dir():
        return 0
    stale = [p for p in path.parent.iterdir()
             if p.name.startswith(prefix) and p.name.endswith(suffix) and p.is_file()]
    for leftover in stale:
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
    return len(stale)


def check_output_file(
    path: PathLike, inputs: Sequence[PathLike] = (), suffixes: Sequence[str] = ()
) -> Path:
    """Refuse, before any work, an output file that cannot or must not be written.

    Args:
        path: the output file.
        inputs: files the job reads; the output may not be one of them (resolved: links and ``..`` count).
        suffixes: accepted lower-case extensions (e.g. ``.nii.gz``); an upper-case spelling is refused because
            ITK picks its writer (and reader) from the extension, case-sensitively.
    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    Raises:
        OutputPathError: the output is an input, an existing folder or special file (FIFO, device, socket), lies
            under a file, sits in a folder that cannot be written, or spells a known extension in upper case.
    """
    path = Path(path)
    name = path.name
    if suffixes and not name.endswith(tuple(suffixes)) and name.lower().endswith(tuple(suffixes)):
        raise OutputPathError(f"Output {path}: write the extension in lower case ({', '.join(suffixes)}); image "
                              "readers and writers recognise only that spelling.")
    resolved = path.resolve()
    for source in inputs:
        source = Path(source)
        same = source.resolve() == resolved or (path.exists() and source.exists() and _same_file(source, path))
        if same:
            raise OutputPathError(f"Output {path} is the input image {source}; give another output name so the input "
                                  "is not overwritten.")
    if path.is_dir():
        raise OutputPathError(f"Output {path} is a folder; give a file name (e.g. {path / 'mask.nii.gz'}).")
    kind = _special_file_kind(path)
    if kind is not None:  # the atomic rename would replace the FIFO or device node with a regular file
        raise OutputPathError(f"Output {path} is {kind}, not a regular file; give a file name to write the output "
                              "to.")
    parent = resolved.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"Output {path} cannot be written: {parent} is a file, not a folder; choose another "
                              "output folder.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"Output {path}: cannot write into {parent} (permission denied); choose a folder "
                              "you can write to.")
    return path


def check_output_folder(path: PathLike) -> Path:
    """Refuse, before any work, an output folder that cannot be created or written.

    Raises:
        OutputPathError: the path is a file, lies under a file, or its nearest existing folder is not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"Output folder {path} is a file; give a folder (it is created if missing).")
    existing = path.resolve()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"Output folder {path} cannot be created: {existing} is a file, not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"Output folder {path}: cannot write into {existing} (permission denied); choose a "
                              "folder you can write to.")
    return path


def _special_file_kind(path: Path) -> Optional[str]:
    """``"a FIFO"``, ``"a device"``, ``"a socket"`` for an existing special file (links followed), else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def write_image(image: sitk.Image, path: PathLike) -> Path:
    """Write a SimpleITK image atomically (format from the extension, compressed when it supports it).

    The temporary file is read back and compared with ``image`` before it is renamed into place: ITK's writers
    do not report every failed write (on a full disk they leave a 0-byte or truncated file and return), and a
    resumable job trusts any output that exists.

    Raises:
        OutputPathError: the file could not be written completely (full disk, quota...); nothing is left under
            ``path`` (an earlier file there is kept as it was).
    """
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, tmp, True)
        _check_written_image(image, tmp, Path(path))
    return Path(path)


def _check_written_image(image: sitk.Image, written: str, path: Path) -> None:
    """Raise :class:`OutputPathError` unless ``written`` reads back as ``image`` (same grid and voxels)."""
    try:
        if os.path.getsize(written) == 0:
            raise RuntimeError("0 bytes written")
        back = sitk.ReadImage(written)
        # Size and voxels, not the header's floats (NIfTI stores them in float32: a far origin is rounded).
        same = (back.GetSize() == image.GetSize()
                and np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image)))
    except (RuntimeError, OSError):
        same = False
    if not same:
        raise OutputPathError(f"Output {path} could not be written completely ({_free_space(path.parent)}); free "
                              "some disk space or choose another output folder, then run again.")


def _free_space(folder: Path) -> str:
    """``"disk full: 12 kB free in DIR"`` or ``"N MB free in DIR"`` for an error message."""
    try:
        free = shutil.disk_usage(str(folder)).free
    except OSError:
        return "the disk may be full"
    amount = f"{free / 1e6:.1f} MB" if free >= 1e6 else f"{free / 1e3:.0f} kB"
    return f"{'disk full: ' if free < 1e6 else ''}{amount} free in {folder}"


def is_complete_image(path: PathLike) -> bool:
    """Whether ``path`` is a non-empty image file whose header reads (what a resumed job may skip).

    Outputs written by :func:`write_image` are always complete; this catches files left by other writers
    (e.g. a 0-byte mask from an earlier version that missed a full disk) so that they are redone, not skipped.
    """
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return False
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return True
    except (RuntimeError, OSError):
        return False


def write_json(data: Any, path: PathLike) -> Path:
    """Write ``data`` as indented JSON atomically (numpy scalars/arrays are converted)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    return Path(path)


#: First characters that make a spreadsheet read a cell as a formula (OWASP's CSV injection list).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def write_csv(rows: Iterable[Mapping[str, Any]], path: PathLike, fieldnames: Sequence[str],
              neutralise_formulas: bool = True) -> Path:
    """Write dict rows as CSV with a header row, atomically.

    Args:
        neutralise_formulas: text cells (not numbers) starting with ``= + - @``, a tab or a carriage return get
            a leading ``'``, so a spreadsheet shows them as text instead of running them (a case folder named
            ``=HYPERLINK(...)``). False for files this package reads back (a batch manifest).
    """
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fieldnames), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _neutralised(v) for k, v in row.items()} if neutralise_formulas else row)
    return Path(path)


def _neutralised(value: Any) -> Any:
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_PREFIXES) else value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
