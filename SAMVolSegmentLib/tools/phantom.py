"""A deterministic CT-like abdominal phantom with its reference label map (the demo's data and the tests').

The phantom is one axial slab of an upper abdomen in Hounsfield units, built from smooth implicit shapes in
millimetres, so the same anatomy comes out at any voxel spacing:

* air around a body ellipse: skin, subcutaneous fat, the abdominal wall muscles, visceral fat inside;
* the spleen (the default target): a crescent pressed against the left posterolateral wall, its medial face
  concave, with a smooth random surface deformation, touched by the left kidney (similar enhancement), the
  splenic vein at its hilum (brighter), a rib of the wall, the colon's splenic flexure and the stomach;
* liver, stomach (wall, fluid, gas), colon and small-bowel loops, both kidneys (cortex, medulla, sinus fat),
  aorta, inferior vena cava, psoas and paraspinal muscles, a vertebra (cortex, cancellous bone, discs, arch,
  spinal canal) and ribs that descend from back to front, so a 5 mm slice cuts them obliquely;
* partial volume: every output slice averages sub-slices through its thickness, and in-plane edges are as
  wide as a voxel; a Gaussian point-spread blur; correlated noise (``noise_hu``) and a faint organ texture.

Intensities are those of a portal-venous-phase CT (spleen ~120 HU, liver ~105, kidney cortex ~165, muscle
~50, fat ~ -100). The reference label map assigns each voxel to the structure that covers at least half of
it (partial volume included), so its boundary is where a careful manual contour would be.

The image geometry is a scanner's, not a toy's: LPS identity direction, anisotropic spacing (default
0.8 × 0.8 × 5 mm) and an origin at a table position far from (0, 0, 0). Everything random (surface
deformations, bowel loops, texture, noise) comes from ``numpy.random.default_rng(seed)``: one seed, one
phantom, on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

if TYPE_CHECKING:  # SimpleITK and scipy load in make_phantom: the CLI reads PHANTOM_LABELS for its help text
    import SimpleITK as sitk

#: Label values of the reference label map.
PHANTOM_LABELS: Dict[str, int] = {
    "spleen": 1,
    "liver": 2,
    "left_kidney": 3,
    "right_kidney": 4,
    "stomach": 5,
    "aorta": 6,
    "vertebra": 7,
}
DEFAULT_TARGET = "spleen"
DEFAULT_SPACING: Tuple[float, float, float] = (0.8, 0.8, 5.0)
#: Field of view (x, y, z) in mm: the whole body width, 32 slices of 5 mm.
FIELD_OF_VIEW_MM: Tuple[float, float, float] = (360.0, 280.0, 160.0)
#: LPS position of the body centre: a table position, so world and voxel coordinates differ as on a scanner.
BODY_CENTRE_LPS: Tuple[float, float, float] = (12.4, -171.6, -418.5)

_AIR_HU = -1000.0
_SUB_SLICE_MM = 1.7  # partial volume across a slice: sub-slices at most this far apart are averaged
_PSF_SIGMA_MM = 0.5  # in-plane blur of the scanner's reconstruction kernel


@dataclass(frozen=True)
class Phantom:
    """A phantom image and its reference label map on the same grid.

    Attributes:
        image: int16 CT in HU (SimpleITK, LPS).
        label: uint8 label map, values in ``labels``.
        labels: structure name → label value (:data:`PHANTOM_LABELS`).
    """

    image: sitk.Image
    label: sitk.Image
    labels: Dict[str, int]


class _SmoothField:
    """A zero-mean, unit-variance random field in world mm: a sum of random plane waves.

    Plane waves evaluate at any point, so a field is the same at every voxel spacing (a noise volume that is
    filtered on the grid would not be).
    """

    def __init__(self, rng: np.random.Generator, wavelength_mm: Tuple[float, float], waves: int = 8) -> None:
        directions = rng.standard_normal((waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        lengths = rng.uniform(wavelength_mm[0], wavelength_mm[1], waves)
        self.k = directions * (2 * math.pi / lengths)[:, None]
        self.phase = rng.uniform(0, 2 * math.pi, waves)
        self.amplitude = math.sqrt(2.0 / waves)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: float) -> np.ndarray:
        """The field at a row ``x`` (1, nx) and a column ``y`` (ny, 1) of coordinates at height ``z``."""
        total = np.zeros((y.shape[0], x.shape[1]), dtype=np.float64)
        for (kx, ky, kz), phase in zip(self.k, self.phase):
            # cos(a + b) = Re(e^ia e^ib): two 1-D exponentials and a product, ~10x cheaper than a 2-D cosine.
            along_x, along_y = np.exp(1j * kx * x), np.exp(1j * (ky * y + kz * z + phase))
            total += along_y.real * along_x.real - along_y.imag * along_x.imag
        return self.amplitude * total


def _ellipsoid_distance(dx: np.ndarray, dy: np.ndarray, dz: float, semi: Sequence[float]) -> np.ndarray:
    """Approximate signed distance (mm, negative inside) to an axis-aligned ellipsoid centred at 0.

    First-order: the implicit value over its gradient's length, exact on the surface and close to it, which
    is all the soft edges need.
    """
    a, b, c = semi
    implicit = (dx / a) ** 2 + (dy / b) ** 2 + (dz / c) ** 2 - 1.0
    gradient = 2.0 * np.sqrt((dx / a**2) ** 2 + (dy / b**2) ** 2 + (dz / c**2) ** 2)
    return implicit / np.maximum(gradient, 1e-3)


def _rotate(dx: np.ndarray, dy: np.ndarray, degrees: float) -> Tuple[np.ndarray, np.ndarray]:
    """In-plane coordinates of (dx, dy) in a frame turned by ``degrees`` (x toward the patient's left)."""
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    return cos * dx + sin * dy, -sin * dx + cos * dy


def _segment_distance(x: np.ndarray, y: np.ndarray, z: float, start: Sequence[float], end: Sequence[float]) -> np.ndarray:
    """Distance (mm) from points to the segment ``start``-``end`` (a vessel's centre line)."""
    p0, direction = np.asarray(start, float), np.asarray(end, float) - np.asarray(start, float)
    length2 = float(direction @ direction)
    t = np.clip(((x - p0[0]) * direction[0] + (y - p0[1]) * direction[1] + (z - p0[2]) * direction[2]) / length2, 0, 1)
    return np.sqrt((x - p0[0] - t * direction[0]) ** 2 + (y - p0[1] - t * direction[1]) ** 2
                   + (z - p0[2] - t * direction[2]) ** 2)


class _Slice:
    """One thin axial sub-slice being painted: HU values and each named structure's coverage (0..1)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, z: float, edge_mm: float, names: Sequence[str],
                 texture: np.ndarray) -> None:
        self.x, self.y, self.z = x, y, z  # x (1, nx), y (ny, 1): local mm, x to the left, y to the back
        self.edge_mm = edge_mm
        self.texture = texture  # (ny, nx), unit variance, shared by the sub-slices of one output slice
        self.hu = np.full((y.shape[0], x.shape[1]), _AIR_HU)
        self.cover = {name: np.zeros_like(self.hu) for name in names}
        self._painted: List[str] = []  # names painted so far: only their coverage can be taken away

    def window(self, centre: Sequence[float], radius: float) -> Tuple[slice, slice]:
        """Rows and columns within ``radius`` mm of ``centre`` (x, y): where a structure can be."""
        xs, ys = self.x[0], self.y[:, 0]
        cols = np.nonzero(np.abs(xs - centre[0]) <= radius)[0]
        rows = np.nonzero(np.abs(ys - centre[1]) <= radius)[0]
        if cols.size == 0 or rows.size == 0:
            return slice(0, 0), slice(0, 0)
        return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)

    def coords(self, window: Tuple[slice, slice]) -> Tuple[np.ndarray, np.ndarray]:
        return self.x[:, window[1]], self.y[window[0], :]

    def alpha(self, distance: np.ndarray) -> np.ndarray:
        """Coverage of voxels by a shape from the signed distance: a logistic edge about a voxel wide."""
        return 1.0 / (1.0 + np.exp(np.clip(distance / self.edge_mm, -50, 50)))

    def paint(self, window: Tuple[Any, Any], alpha: np.ndarray, hu, name: Optional[str] = None) -> None:
        """Lay a structure over what is there; it takes ``alpha`` of each voxel from the structures below.

        ``window`` is a pair of slices or of index arrays (rows, columns).
        """
        region = self.hu[window]
        self.hu[window] = region + alpha * (np.asarray(hu) - region)
        for painted in self._painted:
            self.cover[painted][window] *= 1.0 - alpha
        if name is not None:
            self.cover[name][window] += alpha
            if name not in self._painted:
                self._painted.append(name)


class _Anatomy:
    """The structures of the phantom and the seeded random parts (deformations, bowel loops, texture)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.texture = _SmoothField(rng, (8.0, 25.0))
        self.spleen_shape = _SmoothField(rng, (45.0, 90.0), waves=6)
        self.liver_shape = _SmoothField(rng, (60.0, 120.0), waves=6)
        self.kidney_shape = _SmoothField(rng, (40.0, 80.0), waves=6)
        # Small-bowel loops in the lower anterior abdomen: (x, y, z) centre, semi-axes, gas or fluid.
        self.loops: List[Tuple[np.ndarray, np.ndarray, bool]] = []
        for _ in range(9):
            centre = np.array([rng.uniform(-60, 45), rng.uniform(-75, -20), rng.uniform(-80, -10)])
            semi = np.array([rng.uniform(10, 18), rng.uniform(8, 14), rng.uniform(15, 30)])
            self.loops.append((centre, semi, bool(rng.random() < 0.4)))

    # Each method paints one structure group into a sub-slice; the order is the drawing order (later on top).
    def body(self, s: _Slice) -> np.ndarray:
        window = (slice(None), slice(None))
        x, y = s.coords(window)
        semi_y = np.where(y < 0, 112.0, 100.0)  # the back is flatter than the belly
        distance = _ellipse_distance_2d(x, y, 158.0 + 0.05 * s.z, semi_y)
        s.paint(window, s.alpha(distance), 25.0)  # skin
        s.paint(window, s.alpha(distance + 2.0), -105.0 + 6.0 * s.texture[window])  # subcutaneous fat
        s.paint(window, s.alpha(distance + 18.0), 52.0 + 3.0 * s.texture[window])  # abdominal wall muscle
        s.paint(window, s.alpha(distance + 30.0), -92.0 + 8.0 * s.texture[window])  # visceral fat
        return distance

    def back(self, s: _Slice) -> None:
        for side in (-1.0, 1.0):
            for centre, semi, hu in (((38.0, 80.0), (30.0, 22.0), 50.0),  # erector spinae
                                     ((40.0, 40.0), (13.0 + max(0.0, -s.z) * 0.08, 15.0), 48.0)):  # psoas
                cx, cy = side * centre[0], centre[1]
                window = s.window((cx, cy), max(semi) + 4)
                x, y = s.coords(window)
                s.paint(window, s.alpha(_ellipse_distance_2d(x - cx, y - cy, semi[0], semi[1])),
                        hu + 3.0 * s.texture[window])

    def vertebra(self, s: _Slice) -> None:
        disc = abs((s.z + 17.0) % 34.0 - 17.0) < 4.0  # intervertebral discs every 34 mm
        window = s.window((0.0, 62.0), 48.0)
        x, y = s.coords(window)
        body = _ellipse_distance_2d(x, y - 42.0, 20.0, 17.0)
        arch = _ellipse_distance_2d(x, y - 70.0, 15.0, 14.0)
        spinous = _ellipse_distance_2d(x, y - 92.0, 5.0, 14.0)
        s.paint(window, s.alpha(np.minimum(arch, spinous)), 560.0, "vertebra")  # posterior elements
        s.paint(window, s.alpha(body), 90.0 if disc else 560.0, "vertebra")  # cortex (or disc)
        s.paint(window, s.alpha(body + 2.5), 85.0 if disc else 190.0, "vertebra")  # cancellous bone
        s.paint(window, s.alpha(_ellipse_distance_2d(x, y - 70.0, 9.0, 9.0)), 18.0)  # spinal canal (CSF)

    def vessels(self, s: _Slice) -> None:
        for centre, semi, hu, name in (((14.0, 18.0), (12.0, 12.0), 168.0, "aorta"),
                                       ((-24.0, 10.0), (15.0, 10.0), 132.0, None)):  # inferior vena cava
            window = s.window(centre, max(semi) + 4)
            x, y = s.coords(window)
            s.paint(window, s.alpha(_ellipse_distance_2d(x - centre[0], y - centre[1], *semi)), hu, name)

    def liver(self, s: _Slice, body: np.ndarray) -> None:
        centre, semi = (-70.0, -5.0, 24.0), (82.0, 80.0, 80.0)
        if abs(s.z - centre[2]) > semi[2] + 10:
            return
        window = s.window(centre, 110.0)
        x, y = s.coords(window)
        distance = _ellipsoid_distance(x - centre[0], y - centre[1], s.z - centre[2], semi)
        distance = distance + 4.0 * self.liver_shape(x, y, s.z)
        distance = np.maximum(distance, body[window] + 30.5)  # the liver fills the right upper cavity
        s.paint(window, s.alpha(distance), 106.0 + 5.0 * s.texture[window], "liver")

    def stomach(self, s: _Slice, body: np.ndarray) -> None:
        centre, semi = (38.0, -52.0, 38.0), (42.0, 30.0, 48.0)
        if abs(s.z - centre[2]) > semi[2] + 6:
            return
        window = s.window(centre, 50.0)
        x, y = s.coords(window)
        wall = _ellipsoid_distance(x - centre[0], y - centre[1], s.z - centre[2], semi)
        wall = np.maximum(wall, body[window] + 30.5)
        s.paint(window, s.alpha(wall), 62.0, "stomach")
        s.paint(window, s.alpha(wall + 4.0), 12.0, "stomach")  # fluid
        gas = np.maximum(wall + 4.0, y - (centre[1] - 0.35 * semi[1]))  # gas floats to the front (supine)
        s.paint(window, s.alpha(gas), -950.0, "stomach")

    def bowel(self, s: _Slice) -> None:
        colon = (np.array([84.0, -22.0, 4.0]), np.array([22.0, 18.0, 42.0]), True)  # splenic flexure
        for centre, semi, with_gas in [colon, *self.loops]:
            if abs(s.z - centre[2]) > semi[2] + 4:
                continue
            window = s.window(centre, float(max(semi[:2])) + 4)
            x, y = s.coords(window)
            wall = _ellipsoid_distance(x - centre[0], y - centre[1], s.z - centre[2], semi)
            s.paint(window, s.alpha(wall), 45.0)
            s.paint(window, s.alpha(wall + 2.5), -880.0 if with_gas else 22.0)

    def spleen(self, s: _Slice, body: np.ndarray) -> None:
        centre, semi, turn = (90.0, 40.0, 18.0), (58.0, 25.0, 52.0), 58.0
        if abs(s.z - centre[2]) > semi[2] + 10:
            return
        window = s.window(centre, 70.0)
        x, y = s.coords(window)
        u, v = _rotate(x - centre[0], y - centre[1], turn)  # u along the wall, v across it (toward the body)
        distance = _ellipsoid_distance(u, v, s.z - centre[2], semi)
        hollow = (0.0, 48.0)  # the medial face is concave: a ball around the hilum's side is cut out
        hollow_distance = np.sqrt((u - hollow[0]) ** 2 + (v - hollow[1]) ** 2 + (0.7 * (s.z - centre[2])) ** 2) - 38.0
        distance = np.maximum(distance, -hollow_distance) + 3.0 * self.spleen_shape(x, y, s.z)
        distance = np.maximum(distance, body[window] + 30.5)  # pressed against the inside of the wall
        s.paint(window, s.alpha(distance), 120.0 + 5.0 * s.texture[window], "spleen")

    def splenic_vein(self, s: _Slice) -> None:
        start, end = (72.0, 30.0, 16.0), (-8.0, 22.0, 10.0)
        window = s.window((32.0, 26.0), 50.0)
        x, y = s.coords(window)
        s.paint(window, s.alpha(_segment_distance(x, y, s.z, start, end) - 5.0), 158.0)

    def kidneys(self, s: _Slice, body: np.ndarray) -> None:
        for side, centre, name in ((1.0, (70.0, 54.0, -28.0), "left_kidney"),
                                   (-1.0, (-66.0, 52.0, -54.0), "right_kidney")):
            semi = (22.0, 28.0, 55.0)
            if abs(s.z - centre[2]) > semi[2] + 6:
                continue
            window = s.window(centre, 36.0)
            x, y = s.coords(window)
            u, v = _rotate(x - centre[0], y - centre[1], side * -35.0)
            distance = _ellipsoid_distance(u, v, s.z - centre[2], semi) + 2.0 * self.kidney_shape(x, y, s.z)
            distance = np.maximum(distance, body[window] + 30.5)  # retroperitoneal, inside the wall
            s.paint(window, s.alpha(distance), 165.0 + 4.0 * s.texture[window], name)  # cortex
            s.paint(window, s.alpha(distance + 7.0), 112.0, name)  # medulla
            sinus = _ellipsoid_distance(u + side * 12.0, v, s.z - centre[2], (9.0, 12.0, 22.0))
            s.paint(window, s.alpha(sinus), -60.0, name)  # renal sinus fat at the hilum

    def ribs(self, s: _Slice, body: np.ndarray) -> None:
        radial = body + 28.0  # the ribs lie in the wall, just outside the cavity
        rows, cols = np.nonzero(np.abs(radial) < 8.0)  # only the ring where a rib can be (~10 % of the slice)
        x, y, radial = s.x[0, cols], s.y[rows, 0], radial[rows, cols]
        # Angle around the body from the spine (0) to the front (pi); ribs descend by 45 mm per radian.
        semi_y = np.where(y < 0, 112.0, 100.0)
        around = np.arccos(np.clip((y / semi_y) / np.maximum(np.hypot(x / 158.0, y / semi_y), 1e-6), -1, 1))
        best = np.full_like(radial, np.inf)
        for top in np.arange(-130.0, 190.0, 30.0):
            if not top - 45.0 * 2.3 - 10.0 < s.z < top - 45.0 * 0.3 + 10.0:
                continue  # this rib does not reach this height
            height = s.z - (top - 45.0 * around)
            best = np.minimum(best, (np.sqrt((radial / 4.5) ** 2 + (height / 7.0) ** 2) - 1.0) * 4.5)
        best = np.where((around > 0.3) & (around < 2.3), best, np.inf)
        s.paint((rows, cols), s.alpha(best), 640.0)  # cortex
        s.paint((rows, cols), s.alpha(best + 1.5), 230.0)  # marrow


def _ellipse_distance_2d(dx: np.ndarray, dy: np.ndarray, a, b) -> np.ndarray:
    """Approximate signed distance (mm) to the ellipse with semi-axes ``a`` (x) and ``b`` (y) around 0."""
    implicit = (dx / a) ** 2 + (dy / b) ** 2 - 1.0
    gradient = 2.0 * np.sqrt((dx / a**2) ** 2 + (dy / b**2) ** 2)
    return implicit / np.maximum(gradient, 1e-3)


def make_phantom(spacing: Sequence[float] = DEFAULT_SPACING, seed: int = 0, noise_hu: float = 14.0) -> Phantom:
    """Generate the phantom at ``spacing`` (x, y, z mm) over :data:`FIELD_OF_VIEW_MM`.

    Args:
        spacing: voxel size in mm; the anatomy is the same at any spacing (coarser = faster, for tests).
        seed: seeds deformations, bowel loops, texture and noise; the same seed gives the same phantom.
        noise_hu: standard deviation of the image noise in HU (0 for a noise-free image).
    Returns:
        a :class:`Phantom` (int16 HU image, uint8 label map).
    Raises:
        ValueError: a spacing that is not three positive numbers, or negative noise.
    """
    import SimpleITK as sitk
    from scipy import ndimage

    spacing = tuple(float(v) for v in spacing)
    if len(spacing) != 3 or not all(math.isfinite(v) and v > 0 for v in spacing):
        raise ValueError(f"spacing must be three positive numbers (x, y, z mm), got {spacing!r}")
    if not noise_hu >= 0:
        raise ValueError(f"noise_hu must be >= 0, got {noise_hu!r}")
    rng = np.random.default_rng(seed)
    anatomy = _Anatomy(rng)
    size = [max(1, int(round(fov / step))) for fov, step in zip(FIELD_OF_VIEW_MM, spacing)]
    # Voxel-centre coordinates relative to the body centre (x to the patient's left, y to the back, z up).
    local = [(np.arange(n) - (n - 1) / 2.0) * step for n, step in zip(size, spacing)]
    x, y = local[0][None, :], local[1][:, None]
    names = list(PHANTOM_LABELS)
    sub_slices = max(1, int(math.ceil(spacing[2] / _SUB_SLICE_MM)))
    edge_mm = max(spacing[0], spacing[1]) / 4.0  # a logistic this steep rises over about one voxel
    hu = np.empty((size[2], size[1], size[0]), dtype=np.float32)
    cover = np.empty((len(names),) + hu.shape, dtype=np.float32)
    for k, z_centre in enumerate(local[2]):
        offsets = ((np.arange(sub_slices) + 0.5) / sub_slices - 0.5) * spacing[2]
        texture = anatomy.texture(x, y, float(z_centre))
        slices = [_paint(anatomy, _Slice(x, y, float(z_centre + dz), edge_mm, names, texture)) for dz in offsets]
        hu[k] = np.mean([s.hu for s in slices], axis=0)
        for index, name in enumerate(names):
            cover[index, k] = np.mean([s.cover[name] for s in slices], axis=0)
    hu = ndimage.gaussian_filter(hu, sigma=(0.0, _PSF_SIGMA_MM / spacing[1], _PSF_SIGMA_MM / spacing[0]))
    if noise_hu > 0:
        # CT noise is correlated over about a pixel in-plane; rescale so its std is noise_hu after smoothing.
        noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32), sigma=(0.0, 0.7, 0.7))
        hu += noise * np.float32(noise_hu / max(float(noise.std()), 1e-6))
    values = np.asarray([PHANTOM_LABELS[name] for name in names], dtype=np.uint8)
    label = np.where(cover.max(axis=0) >= 0.5, values[np.argmax(cover, axis=0)], 0).astype(np.uint8)
    origin = [centre + axis[0] for centre, axis in zip(BODY_CENTRE_LPS, local)]
    image_out = sitk.GetImageFromArray(np.clip(np.round(hu), -1024, 3071).astype(np.int16))
    label_out = sitk.GetImageFromArray(label)
    for item in (image_out, label_out):
        item.SetSpacing(spacing)
        item.SetOrigin(origin)
    return Phantom(image_out, label_out, dict(PHANTOM_LABELS))


def _paint(anatomy: _Anatomy, s: _Slice) -> _Slice:
    """Paint every structure into one sub-slice, bottom to top."""
    body = anatomy.body(s)
    anatomy.back(s)
    anatomy.vertebra(s)
    anatomy.vessels(s)
    anatomy.liver(s, body)
    anatomy.stomach(s, body)
    anatomy.bowel(s)
    anatomy.spleen(s, body)
    anatomy.splenic_vein(s)
    anatomy.kidneys(s, body)
    anatomy.ribs(s, body)
    return s


def write_phantom(folder: Union[str, Path], spacing: Sequence[float] = DEFAULT_SPACING, seed: int = 0,
                  noise_hu: float = 14.0) -> Tuple[Path, Path]:
    """Generate the phantom and write ``image.nii.gz``, ``label.nii.gz`` and ``labels.json`` into ``folder``.

    The folder is then a case for ``samvolseg evaluate`` (``labels.json`` names the label values).

    Returns:
        the image and label paths.
    """
    from ..io_utils import write_image, write_json

    folder = Path(folder)
    phantom = make_phantom(spacing, seed, noise_hu)
    image_path = write_image(phantom.image, folder / "image.nii.gz")
    label_path = write_image(phantom.label, folder / "label.nii.gz")
    write_json({str(value): name for name, value in phantom.labels.items()}, folder / "labels.json")
    return image_path, label_path
