"""Scribbles and lassos: freehand prompts in world RAS, turned into voxels of a volume and into clicks.

A **scribble** is an open polyline (a stroke drawn inside or outside the structure, in any view, any
orientation). A **lasso** is a closed planar contour (drawn on one slice); its prompt is the polygon filled on
its plane. Both are hard user statements where they are drawn — the stroke's voxels and the filled polygon
are foreground (positive) or background (negative) — and both are also given to the model as clicks, which
every model takes (see :class:`StrokePrompt`): a scribble as clicks spread along it, a lasso as clicks at
the deepest points of its filled polygon.

Coordinate spaces: ``_ras`` world millimetres (RAS), ``_kji`` voxel indices in numpy order of the volume's
array, ``_ijk`` continuous voxel coordinates (i fastest), ``_uv`` millimetres in a lasso's plane.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from ..errors import InvalidPromptError
from .geometry import BBoxKJI, VolumeGeometry, bbox_shape, clip_bbox, overlap_slices
from .mask_update import MaskUpdate

#: Clicks a scribble gives the model: one per this many mm of its length (at least 1) ... Chosen on 14 training
#: targets (benchmarks/stroke_tuning.py, v2 default): 20 mm beat 5 and 10 mm after every scribble count.
SCRIBBLE_CLICK_SPACING_MM = 20.0
#: ... and at most this many (a long stroke along a boundary says "not here" without dominating the decoder).
MAX_SCRIBBLE_CLICKS = 6
#: Clicks a lasso gives the model: the deepest point of the filled polygon, then points spread over it
#: (:func:`_spread_deepest`).
LASSO_CLICKS = 3
#: The session method of each stroke kind (what the remote API and the Slicer module call).
STROKE_METHODS = {"scribble": "add_scribble", "lasso": "add_lasso"}
#: Most control points a scribble or lasso may have (Slicer's curves have tens to a few hundred).
MAX_STROKE_POINTS = 10_000
#: A lasso's points may lie this far from their best-fit plane (mm), or half the largest voxel spacing if
#: that is more: a contour drawn on a slice view is planar up to rounding.
LASSO_PLANE_TOLERANCE_MM = 0.5


@dataclass(frozen=True)
class StrokePrompt:
    """What a scribble or lasso does to one volume: voxels it decides and clicks it gives the model.

    Attributes:
        bbox_kji: box of ``voxels_kji`` in the volume's array.
        voxels_kji: (k, j, i) bool of ``bbox_shape(bbox_kji)``: the voxels the user drew (stroke or filled polygon).
        clicks_ras: (N, 3) world points given to the model as clicks of the prompt's sign (N ≥ 1).
        positive: the prompt's sign.
    """

    bbox_kji: BBoxKJI
    voxels_kji: np.ndarray
    clicks_ras: np.ndarray
    positive: bool


def apply_drawn(update: MaskUpdate, drawn: Sequence[StrokePrompt]) -> MaskUpdate:
    """``update`` with the voxels of every scribble/lasso in ``drawn`` (oldest first, later ones win) set to
    their sign where its box overlaps them; the same object when none overlaps."""
    mask = None
    for prompt in drawn:
        overlap = overlap_slices(update.bbox_kji, prompt.bbox_kji)
        if overlap is None:
            continue
        if mask is None:
            mask = update.mask.copy()
        target, source = overlap
        mask[target][prompt.voxels_kji[source]] = 1 if prompt.positive else 0
    return update if mask is None else MaskUpdate(update.bbox_kji, mask)


def as_polyline_ras(points_ras: Sequence[Sequence[float]], what: str, min_points: int) -> np.ndarray:
    """Validate a stroke's control points: (N, 3) finite RAS mm with ``N ≥ min_points``; consecutive
    duplicates removed. Raises :class:`InvalidPromptError` naming the fix."""
    try:
        points = np.asarray(points_ras, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidPromptError(f"The {what} must be a list of [r, a, s] points in mm.") from None
    if points.ndim != 2 or points.shape[1] != 3:
        raise InvalidPromptError(f"The {what} must be a list of [r, a, s] points in mm (got shape {points.shape}).")
    if not np.all(np.isfinite(points)):
        raise InvalidPromptError(f"The {what} has a point that is not a finite number; redraw it.")
    if len(points) > MAX_STROKE_POINTS:
        raise InvalidPromptError(f"The {what} has {len(points)} points, more than {MAX_STROKE_POINTS}; "
                                 "resample the curve to fewer points.")
    if len(points) > 1:
        keep = np.concatenate([[True], np.any(np.diff(points, axis=0) != 0, axis=1)])
        points = points[keep]
    if len(points) < min_points:
        raise InvalidPromptError(f"The {what} needs at least {min_points} distinct points; draw a longer stroke.")
    return points


def resample_polyline(points_ras: np.ndarray, step_mm: float) -> np.ndarray:
    """Points every ``step_mm`` (or closer) along an open polyline, vertices included; (M, 3) RAS mm."""
    if len(points_ras) == 1:
        return points_ras.copy()
    pieces = []
    for start, end in zip(points_ras[:-1], points_ras[1:]):
        count = max(1, int(np.ceil(np.linalg.norm(end - start) / step_mm)))
        t = np.arange(count)[:, None] / count
        pieces.append(start + t * (end - start))
    pieces.append(points_ras[-1:])
    return np.vstack(pieces)


def polyline_length_mm(points_ras: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(points_ras, axis=0), axis=1).sum()) if len(points_ras) > 1 else 0.0


def points_along(points_ras: np.ndarray, count: int) -> np.ndarray:
    """``count`` points spread evenly along a polyline by arc length (centres of equal pieces); (count, 3)."""
    if len(points_ras) == 1:
        return np.repeat(points_ras, count, axis=0)
    lengths = np.linalg.norm(np.diff(points_ras, axis=0), axis=1)
    cumulative = np.concatenate([[0.0], np.cumsum(lengths)])
    targets = (np.arange(count) + 0.5) / count * cumulative[-1]
    return np.stack([np.interp(targets, cumulative, points_ras[:, axis]) for axis in range(3)], axis=1)


def scribble_prompt(geometry: VolumeGeometry, points_ras: Sequence[Sequence[float]], positive: bool) -> StrokePrompt:
    """The voxels and clicks of a scribble (an open polyline in RAS mm).

    The stroke is resampled at a third of the finest voxel spacing and every voxel it passes through is drawn;
    parts outside the volume are dropped. Raises :class:`InvalidPromptError` when no part lies in the volume.
    """
    points = as_polyline_ras(points_ras, "scribble", min_points=1)
    dense = resample_polyline(points, float(geometry.spacing.min()) / 3)
    inside = geometry.contains_ras(dense)
    if not inside.any():
        raise InvalidPromptError("The scribble lies outside the volume; draw it over the image.")
    index_kji = np.rint(geometry.ras_to_ijk(dense[inside])[:, ::-1]).astype(np.int64)
    index_kji = np.clip(index_kji, 0, np.array(geometry.shape_kji) - 1)
    lo, hi = index_kji.min(axis=0), index_kji.max(axis=0) + 1
    bbox: BBoxKJI = tuple((int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[assignment]
    voxels = np.zeros(bbox_shape(bbox), dtype=bool)
    voxels[tuple((index_kji - lo).T)] = True
    # Clicks along the part inside the volume (the stroke may cross the volume's edge).
    kept = dense[inside]
    count = int(np.clip(np.ceil(polyline_length_mm(kept) / SCRIBBLE_CLICK_SPACING_MM), 1, MAX_SCRIBBLE_CLICKS))
    return StrokePrompt(bbox, voxels, points_along(kept, count), bool(positive))


@dataclass(frozen=True)
class Plane:
    """A plane in RAS: ``origin_ras`` (3,), unit ``normal_ras`` (3,), in-plane unit axes ``u_ras``, ``v_ras``."""

    origin_ras: np.ndarray
    normal_ras: np.ndarray
    u_ras: np.ndarray
    v_ras: np.ndarray

    def to_uv(self, points_ras: np.ndarray) -> np.ndarray:
        """(N, 3) RAS → (N, 2) in-plane mm."""
        offset = points_ras - self.origin_ras
        return np.stack([offset @ self.u_ras, offset @ self.v_ras], axis=1)

    def distance_mm(self, points_ras: np.ndarray) -> np.ndarray:
        """Signed distance (N,) of points from the plane along the normal."""
        return (points_ras - self.origin_ras) @ self.normal_ras


def fit_plane(points_ras: np.ndarray, tolerance_mm: float) -> Plane:
    """The best-fit plane of a lasso's (N ≥ 3, 3) points; refuses points that span no area or lie off one plane."""
    origin = points_ras.mean(axis=0)
    _, singular, vt = np.linalg.svd(points_ras - origin, full_matrices=False)  # N ≥ 3: three singular values
    if singular[1] <= 1e-6 * max(float(singular[0]), 1.0):
        raise InvalidPromptError("The lasso encloses no area (its points lie on a line); draw a closed contour "
                                 "around the structure.")
    plane = Plane(origin, vt[2], vt[0], vt[1])
    off = float(np.abs(plane.distance_mm(points_ras)).max())
    if off > tolerance_mm:
        raise InvalidPromptError(
            f"The lasso's points lie up to {off:.1f} mm off one plane (at most {tolerance_mm:.1f} mm allowed); "
            "draw the lasso on a single slice view."
        )
    return plane


def inside_polygon(points_uv: np.ndarray, polygon_uv: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Even-odd rule: which points (N, 2) lie inside the closed polygon (V, 2); (N,) bool."""
    a = polygon_uv
    b = np.roll(polygon_uv, -1, axis=0)
    result = np.zeros(len(points_uv), dtype=bool)
    for start in range(0, len(points_uv), chunk):
        p = points_uv[start:start + chunk, None, :]
        crosses = (a[None, :, 1] > p[..., 1]) != (b[None, :, 1] > p[..., 1])
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = a[None, :, 0] + (p[..., 1] - a[None, :, 1]) * (b[None, :, 0] - a[None, :, 0]) / (
                b[None, :, 1] - a[None, :, 1])
        result[start:start + chunk] = np.count_nonzero(crosses & (p[..., 0] < x_at), axis=1) % 2 == 1
    return result


def distance_to_polygon_edges(points_uv: np.ndarray, polygon_uv: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """Distance (N,) in mm from each point (N, 2) to the nearest edge of the closed polygon (V, 2)."""
    a = polygon_uv
    edge = np.roll(polygon_uv, -1, axis=0) - a
    length2 = np.maximum((edge ** 2).sum(axis=1), 1e-12)
    result = np.empty(len(points_uv))
    for start in range(0, len(points_uv), chunk):
        p = points_uv[start:start + chunk, None, :]
        t = np.clip(((p - a[None]) * edge[None]).sum(axis=2) / length2[None], 0.0, 1.0)
        nearest = a[None] + t[..., None] * edge[None]
        result[start:start + chunk] = np.sqrt(((p - nearest) ** 2).sum(axis=2).min(axis=1))
    return result


def _plane_voxels(geometry: VolumeGeometry, plane: Plane, polygon_ras: np.ndarray
                  ) -> Tuple[Optional[BBoxKJI], np.ndarray, np.ndarray]:
    """Voxels whose centres lie in the plane's one-voxel-thick digital slab and in the polygon's box.

    Returns ``(bbox_kji, in_slab (bbox shape) bool, centres_ras (n, 3) of the slab voxels in C order)``.
    """
    polygon_ijk = geometry.ras_to_ijk(polygon_ras)
    lo = np.floor(polygon_ijk.min(axis=0)).astype(np.int64) - 1
    hi = np.ceil(polygon_ijk.max(axis=0)).astype(np.int64) + 2
    bbox = clip_bbox(tuple((int(lo[a]), int(hi[a])) for a in (2, 1, 0)), geometry.shape_kji)  # type: ignore[arg-type]
    shape = bbox_shape(bbox)
    if min(shape) <= 0:
        return None, np.zeros((0, 0, 0), bool), np.zeros((0, 3))
    k, j, i = np.meshgrid(*(np.arange(a, b) for a, b in bbox), indexing="ij")
    centres_ras = geometry.ijk_to_ras_points(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(np.float64))
    # The slab is one voxel thick along the normal: half the voxel's extent on each side, half-open so a plane
    # exactly between two slices takes one of them.
    extent = float(np.abs(plane.normal_ras @ geometry.ijk_to_ras[:3, :3]).sum())
    distance = plane.distance_mm(centres_ras)
    in_slab = (distance >= -extent / 2) & (distance < extent / 2)
    return bbox, in_slab.reshape(shape), centres_ras[in_slab]


def lasso_prompt(geometry: VolumeGeometry, points_ras: Sequence[Sequence[float]], positive: bool) -> StrokePrompt:
    """The filled polygon of a lasso (a closed planar contour in RAS mm) on its plane, and its clicks.

    Raises :class:`InvalidPromptError` for fewer than 3 points, points off one plane, a contour that encloses
    no area or no voxel centre, or one outside the volume.
    """
    points = as_polyline_ras(points_ras, "lasso", min_points=3)
    if len(points) > 3 and np.all(points[0] == points[-1]):
        points = points[:-1]  # a closed curve may repeat its first point
    tolerance = max(LASSO_PLANE_TOLERANCE_MM, float(geometry.spacing.max()) / 2)
    plane = fit_plane(points, tolerance)
    bbox, in_slab, centres_ras = _plane_voxels(geometry, plane, points)
    polygon_uv = plane.to_uv(points)
    if bbox is None or not centres_ras.size:
        raise InvalidPromptError("The lasso lies outside the volume; draw it on a slice of the image.")
    centres_uv = plane.to_uv(centres_ras)
    inside = inside_polygon(centres_uv, polygon_uv)
    if not inside.any():
        raise InvalidPromptError("The lasso encloses no voxel; draw a larger contour (or zoom in).")
    voxels = np.zeros(in_slab.shape, dtype=bool)
    voxels[in_slab] = inside
    depth = distance_to_polygon_edges(centres_uv[inside], polygon_uv)
    clicks = _spread_deepest(centres_ras[inside], depth, LASSO_CLICKS)
    return StrokePrompt(bbox, voxels, clicks, bool(positive))


def _spread_deepest(points_ras: np.ndarray, depth_mm: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` points spread over a region: the deepest first, then each the point that maximises
    min(its depth, its distance to the chosen ones) — deep in the region and away from the other clicks (in a
    disc of radius R: the centre, then two points R/2 from it on opposite sides)."""
    chosen = [int(np.argmax(depth_mm))]
    nearest = np.linalg.norm(points_ras - points_ras[chosen[0]], axis=1)
    for _ in range(count - 1):
        score = np.minimum(depth_mm, nearest)
        best = int(np.argmax(score))
        if score[best] <= 0:
            break
        chosen.append(best)
        nearest = np.minimum(nearest, np.linalg.norm(points_ras - points_ras[best], axis=1))
    return points_ras[chosen]
