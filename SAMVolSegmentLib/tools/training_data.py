"""Training samples for the default model: real cases, balanced by source, augmented, and re-synthesised.

Three kinds of sample, all returned as a raw (un-normalised) ROI in model-grid order (R, A, S), its binary
target and the mask of its voxels inside the image, then normalised with the model's inference rule
(:func:`~SAMVolSegmentLib.engine.preprocessing.normalize_roi`):

* **real**: a ROI of a real case on the 1.5 mm model grid, centred (with jitter) on the target's deepest
  point or a random target voxel, as the session centres a ROI on the first click; flips, axis permutations,
  zoom, gamma and noise;
* **label-map synthesis** (SynthSeg-like, contrast-agnostic): the same real ROI's anatomy, re-painted — the
  case's labelled structures and intensity clusters of its image become classes, each gets a random mean and
  texture, then blur, bias field and noise. The shapes are real, the contrast is not, so the model learns to
  follow edges and regions rather than one scanner's intensities;
* **synthetic blobs** (:mod:`SAMVolSegmentLib.tools.synthetic`): deformed ellipsoids with distractors.

Real targets are drawn balanced: first a source group (sarcoma CT, sarcoma MR, hippocampus, lesions, spinal
cord, each multi-organ case), then a case of the group, then a target of the case, so 45 hippocampus crops do
not drown four lesions and one case with 41 structures does not drown everything. A share of the draws
(``large_fraction``, v3) picks uniformly among the large targets instead (≥ :data:`LARGE_TARGET_VOXELS_MODEL`
voxels: the multi-organ cases' big organs), and a share of the synthetic blobs is large (up to beyond one ROI).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..engine.geometry import RoiWindow
from ..engine.preprocessing import (
    ModelVolume,
    crop_roi_with_inside,
    load_volume,
    read_image_label,
    resample_label_to_model_grid,
    resample_to_model_grid,
)
from ..errors import SAMVolSegmentError
from .synthetic import smooth_noise, synthetic_raw_sample

MIN_TARGET_VOXELS_MODEL = 20  # targets smaller than this on the 1.5 mm grid (~70 mm³) are skipped
#: Targets at least this large on the 1.5 mm grid (~100 cm³: liver, lungs, spleen, kidneys, big muscles) form
#: the pool of ``SampleSource(large_fraction=...)``.
LARGE_TARGET_VOXELS_MODEL = 30_000
#: Licence strings (from each case's meta.json) whose data may not train the shipped weights.
NON_COMMERCIAL_MARKERS = ("NC-", "non-commercial", "NON-COMMERCIAL")


@dataclass
class Case:
    """One case on the model grid: image, its label map (all values) and the targets drawn from it."""

    name: str
    group: str
    licence: str
    volume: ModelVolume
    labels_model: np.ndarray  # uint8/uint16 label map, (R, A, S)
    targets: List[Tuple[str, Tuple[int, ...]]] = field(default_factory=list)  # (name, label values)
    _centres: Dict[Tuple[int, ...], Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def centres(self, values: Tuple[int, ...]) -> Tuple[np.ndarray, np.ndarray]:
        """(deepest voxel (3,), all voxels (N, 3)) of the target made of ``values``, model grid; cached."""
        if values not in self._centres:
            target = np.isin(self.labels_model, values)
            distance = ndimage.distance_transform_edt(np.pad(target, 1))[1:-1, 1:-1, 1:-1]
            deepest = np.array(np.unravel_index(int(np.argmax(distance)), target.shape))
            self._centres[values] = (deepest, np.argwhere(target))
        return self._centres[values]


def case_group(name: str, meta: Dict[str, object]) -> str:
    """Source group used for balanced sampling: modality + structure with case ids removed
    (``ct_ibsi_sts003_sarcoma`` → ``ct_ibsi_sts_sarcoma``); lesions of any source form one group and every
    multi-organ case is its own group; PET cases of any source form one group."""
    if "totalseg" in name:
        return name
    if name.startswith("pet_"):
        return "pet"
    if name.endswith("_lesion"):
        return "lesion"
    if "spinalcord" in name:
        return "spinalcord"
    return re.sub(r"\d+", "", name.split("_t1")[0]).rstrip("_")


def is_non_commercial(licence: str) -> bool:
    return any(marker.lower() in licence.lower() for marker in NON_COMMERCIAL_MARKERS)


def load_cases(data_dirs: Sequence[Path], include: Optional[Sequence[str]] = None,
               exclude: Sequence[str] = (), allow_non_commercial: bool = False) -> List[Case]:
    """Every case folder (``<case>/image.* + label.*``) of ``data_dirs`` on the model grid; an entry of
    ``data_dirs`` may also be one case folder.

    Args:
        include: if given, only these case names (e.g. the two TotalSegmentator cases of ../shared/data).
        exclude: case names to leave out.
        allow_non_commercial: keep cases whose meta.json licence is non-commercial (their weights inherit it).
    Each label value is a target, and for a case with several values their union is one too.
    """
    cases: List[Case] = []
    for data_dir in data_dirs:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise FileNotFoundError(f"training data folder {data_dir} does not exist: give a folder of case folders "
                                    "(each with image.* and label.*) or one case folder")
        is_case = any(data_dir.glob("image.*"))
        for folder in [data_dir] if is_case else sorted(p for p in data_dir.iterdir() if p.is_dir()):
            if folder.name in exclude or (include is not None and folder.name not in include):
                continue
            images, labels = sorted(folder.glob("image.*")), sorted(folder.glob("label.*"))
            if not images or not labels:
                continue
            meta_path = folder / "meta.json"
            meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
            licence = str(meta.get("license", "unknown"))
            if is_non_commercial(licence) and not allow_non_commercial:
                continue
            # The label must lie on the image's grid (size, spacing, origin, direction), as evaluate and teach
            # require: a label of another size failed deep in the sampling, one shifted 26 mm trained silently.
            image, label_array = read_image_label(images[0], labels[0])
            volume = load_volume(image)
            model_volume = resample_to_model_grid(volume)
            label_kji = label_array.astype(np.uint16)
            values = [int(v) for v in np.unique(label_kji) if v != 0]
            labels_model = np.zeros(model_volume.array_model.shape, dtype=np.uint16)
            case = Case(folder.name, case_group(folder.name, meta), licence, model_volume, labels_model)
            for v in values:
                mask = resample_label_to_model_grid((label_kji == v).astype(np.uint8), volume.geometry,
                                                    model_volume.grid)
                labels_model[mask > 0] = v
                if int(mask.sum()) >= MIN_TARGET_VOXELS_MODEL:
                    case.targets.append((f"{folder.name}:{v}", (v,)))
            if len(values) > 1 and len(case.targets) > 0:
                case.targets.append((f"{folder.name}:all", tuple(values)))
            if case.targets:
                cases.append(case)
    return cases


class TrainingDataError(SAMVolSegmentError, ValueError):
    """Training was given no usable case."""


def require_cases(cases: Sequence[Case], data_dirs: Sequence[Path]) -> None:
    """Refuse to train on no case (``--data`` empty, or every case skipped).

    Raises:
        TrainingDataError: names what a case folder needs.
    """
    if not cases:
        raise TrainingDataError(
            f"No training case in {', '.join(str(d) for d in data_dirs)}: give folders of case folders, each with "
            f"image.* and label.* on the same grid and a target of at least {MIN_TARGET_VOXELS_MODEL} voxels of "
            "1.5 mm (cases whose meta.json licence is non-commercial need --allow-non-commercial).")


class SampleSource:
    """Draws training ROIs; see the module docstring for the mix.

    Args:
        cases: from :func:`load_cases`.
        size: ROI edge in model voxels (training may use a smaller ROI than inference: the model is fully
            convolutional).
        synthesis_fraction / blob_fraction: shares of label-map synthesis and synthetic blobs; the rest real.
        large_fraction: share of the real draws taken uniformly among the targets of at least
            :data:`LARGE_TARGET_VOXELS_MODEL` voxels (``large_targets``; 0 when there are none).
        large_blob_fraction: share of the synthetic blobs drawn large (radius 60–120 mm).
    """

    def __init__(self, cases: List[Case], synthesis_fraction: float = 0.3, blob_fraction: float = 0.2,
                 large_fraction: float = 0.0, large_blob_fraction: float = 0.0) -> None:
        self.cases = cases
        self.synthesis_fraction = synthesis_fraction
        self.blob_fraction = blob_fraction if cases else 1.0
        self.large_blob_fraction = large_blob_fraction
        self.groups: Dict[str, List[Case]] = {}
        for case in cases:
            self.groups.setdefault(case.group, []).append(case)
        self.group_names = sorted(self.groups)
        self.large_targets: List[Tuple[Case, Tuple[int, ...]]] = []
        if large_fraction > 0:
            for case in cases:
                counts = np.bincount(case.labels_model.ravel())
                self.large_targets.extend((case, values) for _, values in case.targets
                                          if int(counts[list(values)].sum()) >= LARGE_TARGET_VOXELS_MODEL)
        self.large_fraction = large_fraction if self.large_targets else 0.0

    def pick_target(self, rng: np.random.Generator) -> Tuple[Case, Tuple[int, ...]]:
        """A real target: with probability ``large_fraction`` one of the large targets uniformly; otherwise
        balanced: a group uniformly, then a case of it, then a target of the case."""
        if self.large_fraction > 0 and rng.random() < self.large_fraction:
            return self.large_targets[int(rng.integers(len(self.large_targets)))]
        group = self.groups[self.group_names[int(rng.integers(len(self.group_names)))]]
        case = group[int(rng.integers(len(group)))]
        _, values = case.targets[int(rng.integers(len(case.targets)))]
        return case, values

    def draw(self, rng: np.random.Generator, size: int, augment: bool = True) -> Tuple[np.ndarray, np.ndarray, str]:
        """(raw ROI float32 (size³), target uint8 (size³), kind) — the ROI is not normalised yet."""
        raw, target, _, kind = self.draw_with_inside(rng, size, augment)
        return raw, target, kind

    def draw_with_inside(self, rng: np.random.Generator, size: int,
                         augment: bool = True) -> Tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        """(raw ROI float32 (size³), target uint8 (size³), inside bool (size³): voxels inside the image, kind)."""
        u = rng.random()
        if u < self.blob_fraction:
            large = self.large_blob_fraction > 0 and rng.random() < self.large_blob_fraction
            image, label = synthetic_raw_sample(rng, size, large=large)
            return image, label, np.ones(image.shape, bool), "blob_large" if large else "blob"
        case, values = self.pick_target(rng)
        raw, labels, inside = real_roi_with_inside(case, values, rng, size)
        target = np.isin(labels, values).astype(np.uint8)
        if u < self.blob_fraction + self.synthesis_fraction:
            raw = synthesise_from_labels(raw, labels, rng, inside)
            kind = "synthesis"
        else:
            kind = "real"
        if augment:
            raw, target, inside = augment_roi_with_inside(raw, target, inside, rng)
        return raw, target, inside, kind


def real_roi(case: Case, values: Tuple[int, ...], rng: np.random.Generator,
             size: int) -> Tuple[np.ndarray, np.ndarray]:
    """A raw size³ ROI of ``case`` and its label map (values as in the case), centred near the target: on its
    deepest point (half the time) or a random voxel of it, with a jitter of up to 8 voxels."""
    raw, labels, _ = real_roi_with_inside(case, values, rng, size)
    return raw, labels


def real_roi_with_inside(case: Case, values: Tuple[int, ...], rng: np.random.Generator,
                         size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`real_roi` and the bool mask of the ROI voxels inside the image."""
    deepest, points = case.centres(values)
    centre = deepest if rng.random() < 0.5 else points[rng.integers(len(points))]
    centre = centre + rng.integers(-8, 9, 3)
    roi = RoiWindow(tuple(int(c) - size // 2 for c in centre), size, case.volume.grid.origin_ras,
                    case.volume.grid.spacing)
    raw, inside = crop_roi_with_inside(case.volume, roi)
    labels, _ = crop_roi_with_inside(ModelVolume(case.labels_model, case.volume.grid), roi)
    return raw, np.rint(labels).astype(np.uint16), inside


def synthesise_from_labels(raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                           inside: Optional[np.ndarray] = None) -> np.ndarray:
    """Re-paint a ROI: classes = its labelled structures + 3–7 intensity clusters of the (smoothed) image;
    every class gets a random mean and texture; then blur, bias field and noise. Voxels outside the image
    (``inside`` False; default: the zero padding, ``raw == 0``) stay 0, as they are at inference."""
    inside = raw != 0 if inside is None else inside
    smooth = ndimage.gaussian_filter(raw, 1.0)
    n_clusters = int(rng.integers(3, 8))
    values = smooth[inside]
    classes = np.zeros(raw.shape, dtype=np.int32)
    if values.size:
        edges = np.quantile(values, np.sort(rng.uniform(0.02, 0.98, n_clusters - 1)))
        classes = np.searchsorted(edges, smooth).astype(np.int32) + 1
    for k, v in enumerate(np.unique(labels[labels > 0])):
        classes[labels == v] = n_clusters + 1 + k
    n_classes = int(classes.max()) + 1
    means = rng.uniform(20, 1000, n_classes).astype(np.float32)
    stds = (means * rng.uniform(0.0, 0.15, n_classes)).astype(np.float32)
    size = raw.shape[0]
    texture = smooth_noise(rng, size, int(rng.integers(6, 20)))
    image = means[classes] + stds[classes] * texture
    sigma = rng.uniform(0, 1.2)
    if sigma > 0.3:
        image = ndimage.gaussian_filter(image, sigma)
    image = image * (1 + 0.25 * smooth_noise(rng, size, 3))
    image = image + rng.uniform(0, 0.08) * float(means.mean()) * rng.standard_normal(image.shape).astype(np.float32)
    image = np.maximum(image, 1.0)  # positive inside the image, so the z-normalisation sees it all
    image[~inside] = 0
    return image.astype(np.float32)


def augment_roi(raw: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Flips, axis permutations, zoom (0.8–1.25, about the centre), gamma and noise, applied to image and target
    together (the clicks are simulated from the target afterwards, so they stay consistent); the intensity
    changes act on the raw ROI because the z-normalisation would undo a plain scale or shift. The image's
    inside is where ``raw != 0`` (:func:`augment_roi_with_inside` takes it explicitly)."""
    raw, target, _ = augment_roi_with_inside(raw, target, None, rng)
    return raw, target


def augment_roi_with_inside(raw: np.ndarray, target: np.ndarray, inside: Optional[np.ndarray],
                            rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`augment_roi` with the bool mask of the voxels inside the image moved along (None: ``raw != 0``
    after the geometric changes, the v2 rule)."""
    explicit = inside is not None
    if rng.random() < 0.3:
        order = rng.permutation(3)
        raw, target = raw.transpose(order), target.transpose(order)
        inside = inside.transpose(order) if explicit else None
    for axis in range(3):
        if rng.random() < 0.5:
            raw, target = np.flip(raw, axis), np.flip(target, axis)
            inside = np.flip(inside, axis) if explicit else None
    if rng.random() < 0.3:
        zoom = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
        if explicit:
            raw, stacked = _zoom(raw, np.stack([target, inside]).astype(np.uint8), zoom)
            target, inside = stacked[0], stacked[1].astype(bool)
        else:
            raw, target = _zoom(raw, target, zoom)
    if not explicit:
        inside = raw != 0
    lo, hi = (float(raw[inside].min()), float(raw[inside].max())) if inside.any() else (0.0, 0.0)
    if hi > lo and rng.random() < 0.5:
        unit = np.clip((raw - lo) / (hi - lo), 0, 1)
        raw = np.where(inside, lo + (hi - lo) * unit ** rng.uniform(0.7, 1.5), 0)
    if rng.random() < 0.5:
        raw = raw + rng.uniform(0, 0.1) * float(raw.std()) * rng.standard_normal(raw.shape) * inside
    return (np.ascontiguousarray(raw, dtype=np.float32), np.ascontiguousarray(target, dtype=np.uint8),
            np.ascontiguousarray(inside, dtype=bool))


def _zoom(raw: np.ndarray, target: np.ndarray, scale: float) -> Tuple[np.ndarray, np.ndarray]:
    """Scale content by ``scale`` about the ROI centre, keeping the ROI size (trilinear image, soft targets).

    ``target``: (size³) or (C, size³) binary maps, each resampled and thresholded at 0.5."""
    size = raw.shape[0]
    theta = torch.zeros((1, 3, 4))
    theta[0, :, :3] = torch.eye(3) / scale
    grid = F.affine_grid(theta, [1, 1, size, size, size], align_corners=False)
    maps = target.reshape((-1,) + raw.shape).astype(np.float32)
    stacked = torch.from_numpy(np.concatenate([raw[None], maps]))[None]
    out = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0].numpy()
    return out[0], (out[1:] > 0.5).astype(np.uint8).reshape(target.shape)
