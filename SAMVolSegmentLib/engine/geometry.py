"""Coordinate conventions, in one place.

Spaces (see docs/ARCHITECTURE.md): world ``_ras`` / ``_lps`` millimetres; original voxel indices ``_ijk``
(SimpleITK index order) and ``_kji`` (numpy array order); the *model grid* ``_model`` (1.5 mm isotropic,
axes along R, A, S, tensor order (dim0, dim1, dim2) = (R, A, S) — the order the reference's torchio pipeline
gives after ``ToCanonical``); and ``_roi``, voxel indices inside one cubic window of the model grid.
Continuous voxel coordinates put voxel centres at integers. Points are (N, 3) float64 arrays.

Boxes, also in one place here: an index box is half-open ``((lo0, hi0), (lo1, hi1), (lo2, hi2))`` in the space
of its suffix (``BBoxKJI``: original voxels, array order); a world box ``BoxRAS`` is ``(min_ras, max_ras)``,
two (3,) corners with min ≤ max on every axis, closed (voxel centres on a face are inside).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InvalidImageError

BBoxKJI = Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]
BoxRAS = Tuple[np.ndarray, np.ndarray]
IndexKJI = Tuple[int, int, int]

MODEL_SPACING_MM = 1.5
#: Direction columns whose length differs from 1 by more than this are refused (DICOM direction cosines
#: written with 6 decimals stay well within it; the header of the mask changes by at most this much).
DIRECTION_UNIT_TOLERANCE = 1e-4
_LPS_RAS = np.diag([-1.0, -1.0, 1.0])


def lps_to_ras(points: Sequence) -> np.ndarray:
    """LPS ↔ RAS for a point (3,) or points (N, 3), in mm: negate x and y (the map is its own inverse).

    Returns a float64 array of the input's shape, e.g. for a SimpleITK physical point (a tuple).
    """
    return np.asarray(points, dtype=np.float64) * np.array([-1.0, -1.0, 1.0])


ras_to_lps = lps_to_ras


def model_order_to_kji(array: np.ndarray) -> np.ndarray:
    """An array in model tensor order (R, A, S) as the (k, j, i) array of the grid's
    :meth:`ModelGrid.as_volume_geometry` (a view; the map is its own inverse)."""
    return np.asarray(array).transpose(2, 1, 0)


kji_to_model_order = model_order_to_kji


# ---------------------------------------------------------------- boxes
def ordered_box(points: Sequence) -> BoxRAS:
    """``(min, max)``, (3,) float64 each: the axis-aligned box around points (N, 3) — two opposite corners in
    any order, or all corners of a tilted box mapped into this space."""
    array = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return array.min(axis=0), array.max(axis=0)


def box_corners(low: Sequence[float], high: Sequence[float]) -> np.ndarray:
    """(8, 3) float64: the corners of the axis-aligned box [low, high] (any space)."""
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    return np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])


def box_centre(box: BoxRAS) -> np.ndarray:
    """(3,) float64 centre of a ``(min, max)`` box."""
    return (np.asarray(box[0], dtype=np.float64) + np.asarray(box[1], dtype=np.float64)) / 2


def bbox_shape(bbox: BBoxKJI) -> Tuple[int, ...]:
    """Voxels per axis of a half-open index box (negative for a reversed range)."""
    return tuple(int(hi) - int(lo) for lo, hi in bbox)


def bbox_is_empty(bbox: BBoxKJI) -> bool:
    """True when a half-open index box holds no voxel (some axis has ``hi <= lo``)."""
    return any(int(hi) <= int(lo) for lo, hi in bbox)


def bbox_slices(bbox: BBoxKJI) -> Tuple[slice, ...]:
    """Numpy slices selecting a half-open index box of an array in the box's axis order."""
    return tuple(slice(int(lo), int(hi)) for lo, hi in bbox)


def clip_bbox(bbox: BBoxKJI, shape: Sequence[int]) -> BBoxKJI:
    """The part of a half-open index box inside an array of ``shape``; an axis it misses becomes an empty
    ``(c, c)`` range at the nearer edge."""
    clipped = []
    for (lo, hi), n in zip(bbox, shape):
        low = min(max(int(lo), 0), int(n))
        clipped.append((low, max(min(int(hi), int(n)), low)))
    return tuple(clipped)  # type: ignore[return-value]


def mask_bbox(mask: np.ndarray, pad: Union[int, Sequence[int]] = 0) -> Optional[BBoxKJI]:
    """Half-open index box of a mask's non-zero voxels grown by ``pad`` voxels (one number, or one per axis)
    and clipped to the array (in the mask's axis order), or None when the mask is empty."""
    nonzero = np.nonzero(mask)
    if not nonzero[0].size:
        return None
    pads = np.broadcast_to(np.asarray(pad, dtype=int), (len(nonzero),))
    box = tuple((int(axis.min()) - int(p), int(axis.max()) + 1 + int(p)) for axis, p in zip(nonzero, pads))
    return clip_bbox(box, np.shape(mask))  # type: ignore[arg-type]


def bbox_around(index: Sequence[int], radius: Sequence[int], shape: Sequence[int]) -> BBoxKJI:
    """Half-open index box of the voxels at most ``radius`` (per axis) from ``index``, clipped to ``shape``."""
    box = tuple((int(c) - int(r), int(c) + int(r) + 1) for c, r in zip(index, radius))
    return clip_bbox(box, shape)  # type: ignore[arg-type]


def union_bbox(a: BBoxKJI, b: BBoxKJI) -> BBoxKJI:
    """Smallest half-open index box containing both ``a`` and ``b`` (an empty box is ignored)."""
    if bbox_is_empty(a):
        return b
    if bbox_is_empty(b):
        return a
    return tuple((min(la, lb), max(ha, hb)) for (la, ha), (lb, hb) in zip(a, b))  # type: ignore[return-value]


def overlap_slices(a: BBoxKJI, b: BBoxKJI) -> Optional[Tuple[Tuple[slice, ...], Tuple[slice, ...]]]:
    """Where two half-open boxes overlap, as slices into an array of box ``a`` and into one of box ``b``; None
    when they do not overlap."""
    common = [(max(la, lb), min(ha, hb)) for (la, ha), (lb, hb) in zip(a, b)]
    if any(lo >= hi for lo, hi in common):
        return None
    return (tuple(slice(lo - la, hi - la) for (lo, hi), (la, _) in zip(common, a)),
            tuple(slice(lo - lb, hi - lb) for (lo, hi), (lb, _) in zip(common, b)))


def index_in_shape(index: Sequence[int], shape: Sequence[int]) -> bool:
    """True when an integer voxel index lies inside an array of ``shape`` (same axis order)."""
    return all(0 <= int(v) < int(n) for v, n in zip(index, shape))


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return points @ matrix[:3, :3].T + matrix[:3, 3]


@dataclass(frozen=True)
class VolumeGeometry:
    """Voxel grid of an original volume.

    Attributes:
        shape_kji: array shape (K, J, I).
        ijk_to_ras: 4×4 affine from continuous voxel index (i, j, k) to RAS mm (may be oblique, any handedness).
    """

    shape_kji: Tuple[int, int, int]
    ijk_to_ras: np.ndarray

    def __post_init__(self) -> None:
        matrix = np.asarray(self.ijk_to_ras, dtype=np.float64)
        if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
            raise InvalidImageError("The voxel-to-world matrix must be a finite 4×4 matrix; check the image header.")
        spacing = np.linalg.norm(matrix[:3, :3], axis=0)
        if np.any(spacing <= 0) or abs(np.linalg.det(matrix[:3, :3])) < 1e-12 * float(np.prod(spacing) or 1):
            raise InvalidImageError(
                f"Voxel spacing {spacing.round(4).tolist()} mm or direction is degenerate; fix the image header "
                "(spacing must be positive and the direction matrix invertible)."
            )
        shape = tuple(int(v) for v in self.shape_kji)
        if len(shape) != 3 or min(shape) < 0:
            raise InvalidImageError(f"Grid shape {shape} is not 3D; give a 3D volume.")
        object.__setattr__(self, "ijk_to_ras", matrix)
        object.__setattr__(self, "shape_kji", shape)

    @staticmethod
    def from_matrix(ijk_to_ras: np.ndarray, shape_kji: Sequence[int]) -> VolumeGeometry:
        return VolumeGeometry(tuple(shape_kji), np.asarray(ijk_to_ras, dtype=np.float64))  # type: ignore[arg-type]

    @staticmethod
    def from_sitk(image) -> VolumeGeometry:
        """Geometry of a 3D ``SimpleITK.Image`` (LPS origin/spacing/direction → RAS affine)."""
        spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
        if spacing.shape != (3,):
            raise InvalidImageError(f"Expected a 3D image, got {image.GetDimension()}D; give a 3D volume.")
        if np.any(~np.isfinite(spacing)) or np.any(spacing <= 0):
            raise InvalidImageError(f"Voxel spacing {spacing.tolist()} is not positive; fix the image header.")
        direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
        # The affine keeps only direction × spacing: a column of length 2 would come back as spacing × 2 and
        # a unit direction, so the mask's header would differ from the image's. ITK expects unit columns.
        lengths = np.linalg.norm(direction, axis=0)
        if np.any(np.abs(lengths - 1.0) > DIRECTION_UNIT_TOLERANCE):
            raise InvalidImageError(
                f"The image's direction matrix has columns of length {np.round(lengths, 6).tolist()} instead of 1; "
                "fix the header (direction columns are unit vectors; scale belongs in the spacing)."
            )
        ijk_to_lps = np.eye(4)
        ijk_to_lps[:3, :3] = direction * spacing
        ijk_to_lps[:3, 3] = image.GetOrigin()
        ijk_to_ras = np.eye(4)
        ijk_to_ras[:3] = _LPS_RAS @ ijk_to_lps[:3]
        return VolumeGeometry(tuple(image.GetSize()[::-1]), ijk_to_ras)  # type: ignore[arg-type]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size (i, j, k) in mm."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def ras_to_ijk_matrix(self) -> np.ndarray:
        return np.linalg.inv(self.ijk_to_ras)

    def ras_to_ijk(self, points_ras: np.ndarray) -> np.ndarray:
        """(N, 3) RAS mm → continuous (i, j, k)."""
        return _apply(self.ras_to_ijk_matrix, points_ras)

    def ijk_to_ras_points(self, points_ijk: np.ndarray) -> np.ndarray:
        """(N, 3) continuous (i, j, k) → RAS mm."""
        return _apply(self.ijk_to_ras, points_ijk)

    def index_to_ras(self, index_kji: Sequence[int]) -> np.ndarray:
        """(3,) RAS mm of the centre of voxel (k, j, i) (array order, e.g. a simulated click)."""
        return self.ijk_to_ras_points(np.asarray(index_kji, dtype=np.float64)[::-1])[0]

    def nearest_index_kji(self, point_ras: Sequence[float]) -> IndexKJI:
        """The voxel (k, j, i) whose centre is nearest a RAS point, clamped into the volume."""
        ijk = np.rint(self.ras_to_ijk(np.asarray(point_ras, dtype=np.float64))[0])
        ijk = np.clip(ijk, 0, np.array(self.shape_kji[::-1]) - 1)
        return tuple(int(v) for v in ijk[::-1])  # type: ignore[return-value]

    def contains_ras(self, points_ras: np.ndarray, margin_voxels: float = 0.5) -> np.ndarray:
        """(N,) bool: the point lies within the extreme voxel centres ± ``margin_voxels`` (default: the
        volume's outer faces)."""
        ijk = self.ras_to_ijk(points_ras)
        upper = np.array(self.shape_kji[::-1], dtype=np.float64) - 1.0 + margin_voxels
        return np.all((ijk >= -margin_voxels) & (ijk <= upper), axis=1)

    def bounds_ras(self) -> Tuple[np.ndarray, np.ndarray]:
        """``(min_ras, max_ras)``: axis-aligned RAS box of the extreme voxel centres (oblique volumes: of
        their 8 corners)."""
        return ordered_box(self.corners_ras())

    def corners_ras(self) -> np.ndarray:
        """(8, 3) RAS of the extreme voxel centres."""
        return self.ijk_to_ras_points(box_corners((0, 0, 0), np.array(self.shape_kji[::-1]) - 1))

    def sitk_header(self) -> Tuple[Tuple[float, ...], Tuple[float, ...], Tuple[float, ...]]:
        """``(origin_lps, spacing, direction)`` of this grid as SimpleITK expects them (LPS world, row-major
        3×3 direction with unit columns)."""
        ijk_to_lps = _LPS_RAS @ self.ijk_to_ras[:3]
        spacing = self.spacing
        direction = ijk_to_lps[:, :3] / spacing
        # ITK's SVD of the direction fails on subnormal entries (NaN indices): flush them; the change is < 1e-12.
        direction[np.abs(direction) < 1e-12] = 0.0
        return (
            tuple(float(v) for v in ijk_to_lps[:, 3]),
            tuple(float(v) for v in spacing),
            tuple(float(v) for v in direction.ravel()),
        )

    def to_sitk_image(self, array_kji: np.ndarray):
        """A ``SimpleITK.Image`` of ``array_kji`` carrying this geometry (RAS affine → LPS header)."""
        import SimpleITK as sitk

        if tuple(array_kji.shape) != self.shape_kji:
            raise ValueError(f"array shape {array_kji.shape} differs from the volume's {self.shape_kji}")
        image = sitk.GetImageFromArray(np.ascontiguousarray(array_kji))
        origin, spacing, direction = self.sitk_header()
        image.SetSpacing(spacing)
        image.SetDirection(direction)
        image.SetOrigin(origin)
        return image

    def cropped(self, bbox_kji: BBoxKJI) -> VolumeGeometry:
        """The sub-grid of a half-open (k, j, i) box: same axes and spacing, voxel (0, 0, 0) at the box start."""
        (k0, k1), (j0, j1), (i0, i1) = bbox_kji
        matrix = self.ijk_to_ras.copy()
        matrix[:3, 3] = self.ijk_to_ras_points([[i0, j0, k0]])[0]
        return VolumeGeometry((k1 - k0, j1 - j0, i1 - i0), matrix)

    def box_mask_kji(self, bbox_kji: BBoxKJI, min_ras: Sequence[float], max_ras: Sequence[float]) -> np.ndarray:
        """Bool array of the bbox's shape: voxel centres inside the axis-aligned RAS box [min_ras, max_ras]."""
        (k0, k1), (j0, j1), (i0, i1) = bbox_kji
        k = np.arange(k0, k1, dtype=np.float64)[:, None, None]
        j = np.arange(j0, j1, dtype=np.float64)[None, :, None]
        i = np.arange(i0, i1, dtype=np.float64)[None, None, :]
        m = self.ijk_to_ras
        inside = np.ones((k1 - k0, j1 - j0, i1 - i0), dtype=bool)
        for axis in range(3):  # separable: RAS coordinate = m[a,0] i + m[a,1] j + m[a,2] k + t
            coord = m[axis, 0] * i + m[axis, 1] * j + m[axis, 2] * k + m[axis, 3]
            inside &= (coord >= min_ras[axis]) & (coord <= max_ras[axis])
        return inside


@dataclass(frozen=True)
class ModelGrid:
    """The model grid of one volume: isotropic, axes along +R, +A, +S, tensor order (R, A, S).

    Attributes:
        origin_ras: RAS of model voxel (0, 0, 0).
        shape_model: number of voxels along (R, A, S).
        spacing: voxel size in mm (1.5 for SAM-Med3D).
    """

    origin_ras: Tuple[float, float, float]
    shape_model: Tuple[int, int, int]
    spacing: float = MODEL_SPACING_MM

    @staticmethod
    def covering(geometry: VolumeGeometry, spacing: float = MODEL_SPACING_MM) -> ModelGrid:
        """The grid the reference pipeline resamples to (torchio ``Resample`` + ``ToCanonical``).

        Like torchio, the resampled grid keeps the corner of the first voxel and ceil-rounds the voxel count
        per axis; its voxel centres are then ordered along +R, +A, +S. For axis-aligned volumes this is exactly
        torchio's grid; oblique volumes get an axis-aligned grid covering the same extent (torchio would keep
        the oblique grid), which is what the model saw in training.
        """
        linear = geometry.ijk_to_ras[:3, :3]
        axis_aligned = all(np.count_nonzero(np.abs(col) > 1e-9 * np.abs(col).max()) == 1 for col in linear.T)
        if axis_aligned:
            shape_ijk = np.array(geometry.shape_kji[::-1], dtype=np.float64)
            new_shape_ijk = np.ceil(shape_ijk * geometry.spacing / spacing - 1e-6)
            # Corner-preserving first voxel centre: shift by half the spacing difference, in index units.
            first_ijk = (spacing / geometry.spacing - 1.0) / 2.0
            last_ijk = first_ijk + (new_shape_ijk - 1) * spacing / geometry.spacing
            lo, hi = ordered_box(geometry.ijk_to_ras_points(box_corners(first_ijk, last_ijk)))
            shape = np.floor((hi - lo) / spacing + 1e-6).astype(int) + 1
        else:
            lo, hi = geometry.bounds_ras()
            shape = np.ceil((hi - lo) / spacing - 1e-6).astype(int) + 1
        return ModelGrid(tuple(float(v) for v in lo), tuple(int(v) for v in shape), float(spacing))  # type: ignore[arg-type]

    @property
    def affine_ras(self) -> np.ndarray:
        """4×4 model index (R, A, S order) → RAS mm."""
        affine = np.eye(4)
        affine[:3, :3] *= self.spacing
        affine[:3, 3] = self.origin_ras
        return affine

    def as_volume_geometry(self) -> VolumeGeometry:
        """This grid as a :class:`VolumeGeometry` whose (i, j, k) are the model's (R, A, S) axes.

        An array in model tensor order (R, A, S) is the ``array_kji.transpose(2, 1, 0)`` of that geometry
        (see :func:`model_order_to_kji`), which is how model-grid arrays go to and from SimpleITK.
        """
        return VolumeGeometry(tuple(int(v) for v in self.shape_model[::-1]), self.affine_ras)  # type: ignore[arg-type]

    def model_to_ras(self, points_model: np.ndarray) -> np.ndarray:
        return np.asarray(points_model, dtype=np.float64).reshape(-1, 3) * self.spacing + np.asarray(self.origin_ras)

    def ras_to_model(self, points_ras: np.ndarray) -> np.ndarray:
        return (np.asarray(points_ras, dtype=np.float64).reshape(-1, 3) - np.asarray(self.origin_ras)) / self.spacing


@dataclass(frozen=True)
class RoiWindow:
    """A cubic window of a model grid (may extend beyond it: outside voxels are zero padding).

    Attributes:
        start_model: model index of ROI voxel (0, 0, 0), order (R, A, S).
        size: edge length in voxels (128 for SAM-Med3D).
        origin_ras, spacing: of the model grid the window belongs to.
    """

    start_model: Tuple[int, int, int]
    size: int
    origin_ras: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    spacing: float = MODEL_SPACING_MM

    @staticmethod
    def centred_at(grid: ModelGrid, centre_ras: Sequence[float], size: int = 128) -> RoiWindow:
        """The window whose voxel (size//2,)*3 is the model voxel nearest ``centre_ras``."""
        centre_model = np.rint(grid.ras_to_model(np.asarray(centre_ras, dtype=np.float64))[0]).astype(int)
        start = centre_model - size // 2
        return RoiWindow(tuple(int(v) for v in start), int(size), grid.origin_ras, grid.spacing)  # type: ignore[arg-type]

    def shifted(self, start_model: Sequence[int]) -> RoiWindow:
        """Same grid and size, another start."""
        return RoiWindow(tuple(int(v) for v in start_model), self.size, self.origin_ras, self.spacing)  # type: ignore[arg-type]

    @property
    def key(self) -> Tuple[int, int, int]:
        return tuple(int(v) for v in self.start_model)  # type: ignore[return-value]

    def embedding_key(self, fingerprint: str) -> Tuple[str, RoiWindow]:
        """Cache key of this window's embedding in the volume with ``fingerprint``: one key per window of one
        grid (start, size, origin, spacing), whichever step encodes it first (a click, a proposal)."""
        return (fingerprint, self)

    @property
    def affine_ras(self) -> np.ndarray:
        """4×4 ROI index → RAS mm."""
        affine = np.eye(4)
        affine[:3, :3] *= self.spacing
        affine[:3, 3] = np.asarray(self.origin_ras) + np.asarray(self.start_model) * self.spacing
        return affine

    def lowres_affine_ras(self, low: int) -> np.ndarray:
        """4×4 index on an ``low``-sample grid spanning the window → RAS mm.

        The reference upsamples low-res logits with ``F.interpolate(..., align_corners=False)``: low-res sample
        ``c`` sits at ROI coordinate ``(c + 0.5) * size / low - 0.5``, and the low-res grid's outer faces
        (index −0.5 and ``low`` − 0.5) coincide with the ROI's (−0.5 and ``size`` − 0.5).
        """
        scale = self.size / float(low)
        to_roi = np.diag([scale, scale, scale, 1.0])
        to_roi[:3, 3] = (scale - 1.0) / 2.0
        return self.affine_ras @ to_roi

    def lowres_spacing(self, low: int) -> float:
        """Edge of one voxel (mm) of the ``low``-sample grid spanning the window."""
        return self.spacing * self.size / float(low)

    def lowres_geometry(self, low: int) -> VolumeGeometry:
        """The ``low``³ grid of the window as a :class:`VolumeGeometry` ((i, j, k) = (R, A, S), like
        :meth:`ModelGrid.as_volume_geometry`)."""
        return VolumeGeometry((int(low),) * 3, self.lowres_affine_ras(low))  # type: ignore[arg-type]

    def roi_to_model(self, points_roi: np.ndarray) -> np.ndarray:
        return np.asarray(points_roi, dtype=np.float64).reshape(-1, 3) + np.asarray(self.start_model)

    def roi_to_ras(self, points_roi: np.ndarray) -> np.ndarray:
        return _apply(self.affine_ras, points_roi)

    def ras_to_roi(self, points_ras: np.ndarray) -> np.ndarray:
        return (np.asarray(points_ras, dtype=np.float64).reshape(-1, 3) - self.affine_ras[:3, 3]) / self.spacing

    def contains_roi(self, points_roi: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """(N,) bool: inside [margin, size - 1 - margin] on every axis."""
        points = np.asarray(points_roi, dtype=np.float64).reshape(-1, 3)
        return np.all((points >= margin) & (points <= self.size - 1 - margin), axis=1)

    def bbox_model(self, clip_to: Optional[ModelGrid] = None) -> Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]:
        """Half-open model-index box of the window; with ``clip_to``, its overlap with that grid (an empty
        ``(lo, lo)`` range on an axis the window misses, see :func:`clip_bbox`)."""
        box = tuple((int(s), int(s) + self.size) for s in self.start_model)
        return box if clip_to is None else clip_bbox(box, clip_to.shape_model)  # type: ignore[return-value]
