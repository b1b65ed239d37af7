"""Public labelled sample cases for ``samvolseg demo --sample NAME``: pinned URLs, SHA-256, a local cache.

Each sample is an image and its segmentation, downloaded once into ``samples/<name>/`` of
:func:`.download.cache_root` (``$SAMVOLSEG_CACHE``, else ``~/.cache/samvolsegment``) through
:func:`.download.download_file` (size-independent SHA-256 check, atomic rename), then turned into an ordinary
case: ``label.nii.gz`` on the image's grid with one value per segment and ``labels.json`` naming them. A second
call finds everything in the cache and does not touch the network.

Only files whose SHA-256 is published by their source are registered; the hashes below are copied from that
source, never computed here. 3D Slicer's SampleData module (``Modules/Scripted/SampleData/SampleData.py`` of
github.com/Slicer/Slicer, read at commit 583e9b37d50e) downloads its data from
``https://github.com/Slicer/SlicerTestingData/releases/download/SHA256/<sha256>``: the URL itself is the hash,
and Slicer checks the same ``SHA256:<hash>`` after the download. Its one sample that comes with a segmentation
is ``TinyPatient`` (a CT and ``TinyPatient_Structures.seg.nrrd``), registered here as ``tinypatient``.

A Slicer segmentation file (``.seg.nrrd``) is a NRRD label map with its segments described in the header
(``Segment<N>_Name``, ``_LabelValue``, ``_Layer``): one 3D layer, or several layers stored as the first axis
(overlapping segments sit in different layers). :func:`segmentation_to_label_map` reads either form, maps it
onto the image's grid (nearest neighbour: a segmentation may be cropped to its segments' extent) and paints
the segments from the largest to the smallest, so a small structure inside a large one keeps its voxels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..download import ProgressCallback, cache_root, download_file
from ..errors import DownloadError, InvalidImageError, UnknownSampleError

SLICER_TESTING_DATA = "https://github.com/Slicer/SlicerTestingData/releases/download/SHA256/"
SLICER_SAMPLE_DATA_SOURCE = ("3D Slicer SampleData (Modules/Scripted/SampleData/SampleData.py, github.com/Slicer/"
                             "Slicer @ 583e9b37d50e; URL and SHA-256 as published there)")
LABEL_FILE, LABELS_JSON = "label.nii.gz", "labels.json"
OFFLINE_HINT = "run with network, or use the phantom demo (samvolseg demo) or your own case (--image/--label)"


@dataclass(frozen=True)
class SampleFile:
    """One downloadable file: where it comes from, its published SHA-256, and its name in the cache."""

    filename: str
    url: str
    sha256: str


@dataclass(frozen=True)
class Sample:
    """A registered labelled case.

    Attributes:
        name: the ``--sample`` name.
        description: what the image shows.
        image: the image file (any format SimpleITK reads).
        segmentation: its segmentation (a Slicer ``.seg.nrrd``, or a label map on the image's grid).
        default_target: the segment the demo clicks by default (matched case-insensitively, a prefix will do).
        source: where the URL and SHA-256 are published.
        licence: the data's terms as its source states them.
    """

    name: str
    description: str
    image: SampleFile
    segmentation: SampleFile
    default_target: str
    source: str
    licence: str

    @property
    def files(self) -> Tuple[SampleFile, SampleFile]:
        return self.image, self.segmentation


@dataclass(frozen=True)
class PreparedSample:
    """A sample in the cache as an evaluation case.

    Attributes:
        image_path: the downloaded image.
        label_path: ``label.nii.gz``: the segmentation as a label map on the image's grid.
        segments: segment name → its value in ``label_path``.
    """

    sample: Sample
    image_path: Path
    label_path: Path
    segments: Dict[str, int]

    def target_value(self, target: Optional[str] = None) -> Tuple[str, int]:
        """``(segment name, label value)`` of ``target`` (default: the sample's default target).

        Raises:
            UnknownSampleError: no segment is called so (or starts so); the message lists the segments.
        """
        wanted = (target or self.sample.default_target).lower()
        exact = [name for name in self.segments if name.lower() == wanted]
        matches = exact or [name for name in self.segments if name.lower().startswith(wanted)]
        if len(matches) != 1:
            what = "matches several segments" if matches else "is not a segment"
            raise UnknownSampleError(f"--target {target or self.sample.default_target!r} {what} of sample "
                                     f"{self.sample.name}; its segments: {', '.join(self.segments)}.")
        return matches[0], self.segments[matches[0]]


def _slicer_file(filename: str, sha256: str) -> SampleFile:
    return SampleFile(filename, SLICER_TESTING_DATA + sha256, sha256)


SAMPLES: Dict[str, Sample] = {
    sample.name: sample
    for sample in (
        Sample(
            name="tinypatient",
            description="3D Slicer's TinyPatient: a small CT with its structure segmentation (body contour and "
                        "a tumour), the data of Slicer's own segmentation tests",
            image=_slicer_file("TinyPatient_CT.nrrd",
                               "c0743772587e2dd4c97d4e894f5486f7a9a202049c8575e032114c0a5c935c3b"),
            segmentation=_slicer_file("TinyPatient_Structures.seg.nrrd",
                                      "3243b62bde36b1db1cdbfe204785bd4bc1fbb772558d5f8cac964cda8385d470"),
            default_target="tumor",
            source=SLICER_SAMPLE_DATA_SOURCE,
            licence="not stated by Slicer for this test case (Slicer's SampleData); check before reusing it",
        ),
    )
}


def list_samples() -> List[Sample]:
    """Every registered sample, in registry order."""
    return list(SAMPLES.values())


def get_sample(name: str) -> Sample:
    """The registered sample called ``name``.

    Raises:
        UnknownSampleError: not registered (the message lists the names).
    """
    sample = SAMPLES.get(name.lower())
    if sample is None:
        raise UnknownSampleError(f"No sample called {name!r}; choose one of {', '.join(SAMPLES)} "
                                 "(samvolseg demo --list-samples).")
    return sample


def sample_dir(sample: Sample) -> Path:
    """The sample's cache folder: ``samples/<name>`` in :func:`.download.cache_root`."""
    return cache_root() / "samples" / sample.name


def is_cached(sample: Sample) -> bool:
    """True when the sample's files and its prepared label map are in the cache (no checksum is recomputed)."""
    folder = sample_dir(sample)
    return all((folder / f.filename).is_file() for f in sample.files) and (folder / LABELS_JSON).is_file()


def fetch_sample(name: str, progress: Optional[ProgressCallback] = None, timeout: float = 30.0) -> PreparedSample:
    """Download a sample into the cache (or find it there) and prepare its label map.

    Args:
        progress: ``progress(fraction in [0, 1], message)`` over the downloads.
    Raises:
        UnknownSampleError: no such sample.
        DownloadError: offline (one line: ``cannot reach <host> (...): run with network, or ...``), or a file
            that is not the published one (nothing is kept).
        InvalidImageError: the files cannot be read as an image and a segmentation on it.
    """
    sample = get_sample(name)
    folder = sample_dir(sample)
    paths = []
    for index, item in enumerate(sample.files):
        def file_progress(fraction: float, message: str, index: int = index) -> None:
            if progress is not None:
                progress((index + fraction) / len(sample.files), message)

        try:
            paths.append(download_file(item.url, folder / item.filename, sha256=item.sha256, what=item.filename,
                                       progress=file_progress, timeout=timeout))
        except DownloadError as exc:
            if exc.unreachable:
                raise DownloadError(f"{exc}: {OFFLINE_HINT}.", exc.host, True) from None
            raise
    if progress is not None:
        progress(1.0, "downloaded")
    image_path, segmentation_path = paths
    return PreparedSample(sample, image_path, folder / LABEL_FILE, _prepared_label(folder, image_path,
                                                                                   segmentation_path))


def _prepared_label(folder: Path, image_path: Path, segmentation_path: Path) -> Dict[str, int]:
    """The segment → value map of ``label.nii.gz``, converting the segmentation first if not done yet."""
    from ..engine.preprocessing import read_image
    from ..io_utils import write_image, write_json

    names = folder / LABELS_JSON
    if names.is_file() and (folder / LABEL_FILE).is_file():
        return {name: int(value) for value, name in json.loads(names.read_text()).items()}
    label, segments = segmentation_to_label_map(segmentation_path, read_image(image_path))
    write_image(label, folder / LABEL_FILE)
    write_json({str(value): name for name, value in segments.items()}, names)  # last: it marks "prepared"
    return segments


def segmentation_to_label_map(path: Path, reference):
    """A Slicer ``.seg.nrrd`` (or any label map) as a uint8 label map on ``reference``'s grid.

    Args:
        path: the segmentation file: one 3D layer or several layers (a vector image), segments named in the
            header by ``Segment<N>_Name`` / ``_LabelValue`` (default 1) / ``_Layer`` (default: N when there
            are as many layers as segments, else 0). A file without segment fields counts each non-zero value
            as a segment named after it.
        reference: the ``SimpleITK.Image`` whose grid the label map takes (the image the segmentation belongs to).
    Returns:
        ``(label image (uint8, on reference's grid), {segment name: value 1..N in header order})``; segments
        are painted from the largest to the smallest, so where two overlap the smaller one shows.
    Raises:
        InvalidImageError: unreadable, not 3D, more than 255 segments, or a segment with no voxel on the grid.
    """
    import numpy as np
    import SimpleITK as sitk

    from ..engine.preprocessing import read_image

    segmentation = read_image(path)
    layers = segmentation.GetNumberOfComponentsPerPixel()
    if segmentation.GetDimension() != 3:
        raise InvalidImageError(f"Segmentation {path} is {segmentation.GetDimension()}D; expected a 3D label map.")
    keys = set(segmentation.GetMetaDataKeys())
    described = []  # (name, layer, value)
    count = 0
    while f"Segment{count}_Name" in keys or f"Segment{count}_LabelValue" in keys:
        count += 1
    for n in range(count):
        def field(suffix: str, default: str, n: int = n) -> str:
            key = f"Segment{n}_{suffix}"
            return segmentation.GetMetaData(key).strip() if key in keys else default

        layer_default = str(n) if layers == count and layers > 1 else "0"
        described.append((field("Name", f"Segment_{n}"), int(field("Layer", layer_default)),
                          int(field("LabelValue", "1"))))
    # Nearest neighbour onto the reference grid: the file may be cropped to its segments or use another grid.
    resampled = sitk.Resample(segmentation, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    array = sitk.GetArrayFromImage(resampled)
    if layers == 1:
        array = array[..., None]
    if not described:  # a plain label map: each value is a segment
        described = [(str(int(v)), 0, int(v)) for v in np.unique(array) if v != 0]
    if len(described) > 255:
        raise InvalidImageError(f"Segmentation {path} has {len(described)} segments; at most 255 fit a label map.")
    masks = []
    for name, layer, value in described:
        if not 0 <= layer < array.shape[-1]:
            raise InvalidImageError(f"Segment {name!r} of {path} names layer {layer}; the file has {layers}.")
        mask = array[..., layer] == value
        if not mask.any():
            raise InvalidImageError(f"Segment {name!r} of {path} has no voxel on the image's grid; is this "
                                    "segmentation for another image?")
        masks.append(mask)
    label = np.zeros(array.shape[:3], np.uint8)
    for index in sorted(range(len(masks)), key=lambda i: -int(masks[i].sum())):
        label[masks[index]] = index + 1
    image = sitk.GetImageFromArray(label)
    image.CopyInformation(reference)
    names: Dict[str, int] = {}
    for index, (name, _, _) in enumerate(described):
        unique, copy = name, 2
        while unique in names:  # two segments may share a name; each keeps its own entry
            unique, copy = f"{name} ({copy})", copy + 1
        names[unique] = index + 1
    return image, names
