"""Checks of an input image that warn rather than refuse (numpy only: the remote client runs them too).

:func:`label_map_warning` spots a label map given where the CT/MR image belongs (a segmentation file picked by
mistake): it holds only a few integer values, where a scanner's image holds hundreds or thousands. Segmenting
one is allowed (a mask can be a sensible input), so every surface warns and goes on: the sessions
(``InteractiveSession`` and ``RemoteSession``) emit a :class:`~SAMVolSegmentLib.errors.LabelMapWarning` from
``set_volume``, ``samvolseg segment`` prints a ``warning:`` line on stderr, batch reports list it per case,
and the Slicer module can show the returned sentence in its status line.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Tuple

import numpy as np

from ..errors import LabelMapWarning

#: At most this many distinct values (all integers, none negative) make an image look like a label map. Label
#: maps with a hundred structures exist (TotalSegmentator: 117); MR images have far more values.
MAX_LABEL_VALUES = 128
#: Voxels looked at: a regular subsample of a large volume (a few ms), enough to see a scanner's noise.
SAMPLE_VOXELS = 1 << 20


def label_map_warning(image: Any) -> Optional[str]:
    """A one-sentence warning if ``image`` looks like a label map rather than a CT/MR image, else None.

    A label map here: integer values only, none negative, at most :data:`MAX_LABEL_VALUES` distinct values in
    a regular subsample. A CT has negative values (air), and an MR image has many more values; a coarsely
    quantised CT (3D Slicer's TinyPatient sample: 104 values) is therefore not mistaken for one.

    Args:
        image: a (k, j, i) numpy array, or a ``SimpleITK.Image`` (read without copying its voxels).
    Returns:
        e.g. "The image holds only 3 integer values (0, 1, 2): it looks like a label map (segmentation), not a
        CT/MR image; check that you gave the image file, not the label." None for an ordinary image, an empty
        one or a constant one (the engine refuses those with its own message).
    """
    array = _voxels(image)
    if array is None or array.size == 0 or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        return None
    step = max(1, int(np.ceil(array.size / SAMPLE_VOXELS)))
    sample = np.asarray(array).reshape(-1)[::step]
    if np.issubdtype(sample.dtype, np.floating) and not (
            np.isfinite(sample).all() and np.array_equal(sample, np.round(sample))):
        return None
    if sample.min() < 0:  # label values are never negative; CT has air at about -1000 (even a coarse CT)
        return None
    values = np.unique(sample)
    if len(values) == 1:  # a small structure's label map may show only its background in the subsample
        low, high = array.min(), array.max()
        if low == high or not float(high).is_integer() or not float(low).is_integer():
            return None
        values = np.array([low, high])
    if len(values) > MAX_LABEL_VALUES:
        return None
    shown = ", ".join(f"{v:g}" for v in values[:6].astype(np.float64)) + (", ..." if len(values) > 6 else "")
    return (f"The image holds only {len(values)} integer values ({shown}): it looks like a label map "
            "(segmentation), not a CT/MR image; check that you gave the image file, not the label.")


def warn_about_image(image: Any, stacklevel: int = 3) -> Tuple[str, ...]:
    """Run the checks of this module on a new volume: each finding is emitted as a
    :class:`~SAMVolSegmentLib.errors.LabelMapWarning` (``stacklevel`` 3: the caller of ``set_volume``) and
    returned, for sessions to keep as ``image_warnings``."""
    found = tuple(w for w in (label_map_warning(image),) if w)
    for message in found:
        warnings.warn(message, LabelMapWarning, stacklevel=stacklevel)
    return found


def _voxels(image: Any) -> Optional[np.ndarray]:
    """The (k, j, i) voxels of an array or a scalar SimpleITK image (a view, no copy), else None."""
    if hasattr(image, "GetDimension") and hasattr(image, "GetNumberOfComponentsPerPixel"):
        if image.GetNumberOfComponentsPerPixel() != 1:
            return None
        import SimpleITK as sitk

        return sitk.GetArrayViewFromImage(image)
    try:
        return np.asarray(image)
    except (TypeError, ValueError):
        return None
