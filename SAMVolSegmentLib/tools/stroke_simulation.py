"""Simulated scribbles and lassos (issue 24): what a user would draw, from a reference mask and a prediction.

The stroke counterparts of :mod:`~SAMVolSegmentLib.engine.clicks` for the evaluation's ``lasso`` and
``scribbles`` protocols (:mod:`.evaluation`). Pure numpy/scipy, deterministic (the optional lasso jitter is
seeded). Every stroke lies on one axial slice — a constant array index k — and comes back in world RAS mm, as a
user draws it on a slice view; the session's :func:`~SAMVolSegmentLib.engine.strokes.scribble_prompt` and
:func:`~SAMVolSegmentLib.engine.strokes.lasso_prompt` then turn it into voxels and clicks.

* **Lasso** (:func:`simulate_lasso`): the target's cross-section on the slice of largest area (its largest
  4-connected component, holes filled), outlined by the polygon through the midpoints of its boundary's voxel
  edges. That polygon separates inside from outside voxel centres exactly, so filling it on its slice gives the
  cross-section back voxel for voxel; it is then simplified to at most :data:`LASSO_MAX_VERTICES` vertices
  (collinear vertices first, then the vertex that changes the area least, Visvalingam–Whyatt). Behind flags, a
  sloppier user: the cross-section dilated (``margin_voxels`` > 0) or eroded (< 0) first, and every vertex
  moved by Gaussian noise (``jitter_mm``, in plane, ``seed``) — nnInteractive's lasso augmentations.
* **Scribble** (:func:`simulate_scribble`, :func:`correction_scribble`): in a region (the target for the first
  scribble; the largest error component of the prediction for a correction, chosen as
  :func:`~SAMVolSegmentLib.engine.clicks.largest_error` does, positive for a miss, negative for a false
  positive), a stroke on the axial slice through the region's deepest point (mm), starting there and walking
  both ways along the longer principal axis of the region's cross-section (its 8-connected component through
  that point), bending towards the cross-section's ridge (the deepest voxels across the walking direction) by at
  most 90° in all, as long as it stays one voxel inside the region (every voxel within one voxel of the stroke belongs to it).
  It is then smoothed (moving average) and cut where a voxel it would draw lies outside the region, so a
  scribble never decides a voxel the region does not hold. Where the cross-section is too thin to keep a voxel
  inside, the walk may touch its border; a region thinner than that gets a one-point scribble at its deepest
  voxel.

Coordinate spaces: ``_kji`` voxel indices in array order; ``_ji`` continuous (j, i) indices on one slice;
``_ras`` world mm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from ..engine.clicks import SAMVOLSEG_CLICKS, ClickRule, deepest_point, largest_error
from ..engine.geometry import IndexKJI, VolumeGeometry, bbox_slices, mask_bbox
from ..engine.strokes import resample_polyline
from ..errors import InvalidPromptError

#: Most vertices of a simulated lasso (a hand-drawn contour in Slicer has tens of points).
LASSO_MAX_VERTICES = 64
#: A scribble's walk: step (in voxels, per in-plane axis) and how far the ridge correction may move a step
#: sideways (voxels).
SCRIBBLE_STEP_VOXELS = 0.5
SCRIBBLE_RIDGE_VOXELS = 1.0
#: Weight of the previous direction when the walk bends towards the ridge (0: follow the ridge at once).
SCRIBBLE_MOMENTUM = 0.7
#: The walk stops where it has turned more than this from its first direction (degrees): no hooks at the ends.
SCRIBBLE_MAX_TURN_DEGREES = 90.0
#: Moving-average window (walk points) of the smoothing.
SCRIBBLE_SMOOTHING_POINTS = 5
_FULL_2D = np.ones((3, 3), dtype=bool)
_CROSS_2D = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class SimulatedStroke:
    """A simulated scribble or lasso.

    Attributes:
        kind: "scribble" (open polyline) or "lasso" (closed contour, first vertex not repeated).
        points_ras: (N, 3) world RAS mm, all on the axial slice ``anchor_kji[0]``.
        positive: the stroke's sign.
        anchor_kji: the voxel the stroke was built around (a scribble's deepest point; a lasso's cross-section's
            deepest voxel), recorded in the evaluation's rows as the prompt's position.
    """

    kind: str
    points_ras: np.ndarray
    positive: bool
    anchor_kji: IndexKJI


# ---------------------------------------------------------------- lasso
def largest_cross_section(target_kji: np.ndarray) -> int:
    """Array index k of the axial slice where the target has the most voxels (the first of equal ones)."""
    target = np.asarray(target_kji).astype(bool)
    if not target.any():
        raise InvalidPromptError("The target is empty: a lasso needs at least one target voxel; check the label.")
    return int(np.argmax(target.reshape(target.shape[0], -1).sum(axis=1)))


def simulate_lasso(
    target_kji: np.ndarray, geometry: VolumeGeometry, slice_k: Optional[int] = None,
    max_vertices: int = LASSO_MAX_VERTICES, margin_voxels: int = 0, jitter_mm: float = 0.0, seed: int = 0,
) -> SimulatedStroke:
    """A positive lasso around the target's cross-section on one axial slice.

    Args:
        target_kji: binary target (K, J, I) on ``geometry``'s grid.
        slice_k: the slice; default the one of largest area (:func:`largest_cross_section`).
        max_vertices: most polygon vertices (≥ 3).
        margin_voxels: dilate (> 0) or erode (< 0) the cross-section by this many voxels first (a user who
            draws outside or inside the border); 0 (default) outlines it exactly.
        jitter_mm: standard deviation of in-plane Gaussian noise on every vertex (mm); 0 (default) none.
        seed: seed of the jitter's generator.
    Raises:
        InvalidPromptError: an empty target or slice, or a cross-section eroded away.
    """
    if max_vertices < 3:
        raise ValueError("max_vertices must be at least 3")
    k = largest_cross_section(target_kji) if slice_k is None else int(slice_k)
    section = np.asarray(target_kji[k]).astype(bool)
    if margin_voxels > 0:
        section = ndimage.binary_dilation(section, _CROSS_2D, iterations=int(margin_voxels))
    elif margin_voxels < 0:
        section = ndimage.binary_erosion(section, _CROSS_2D, iterations=int(-margin_voxels))
    if not section.any():
        raise InvalidPromptError(f"The target has no voxel on slice k={k} (after a margin of {margin_voxels} "
                                 "voxels); pick another slice or a smaller erosion.")
    labels, count = ndimage.label(section, _CROSS_2D)
    largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:])) if count > 1 else 1
    section = ndimage.binary_fill_holes(labels == largest)
    spacing_ji = (float(geometry.spacing[1]), float(geometry.spacing[0]))
    polygon_ji = simplify_polygon(outer_contour(section), max_vertices, spacing_ji)
    if jitter_mm > 0:
        noise_mm = np.random.default_rng(seed).normal(0.0, jitter_mm, polygon_ji.shape)
        polygon_ji = polygon_ji + noise_mm / np.asarray(spacing_ji)
    depth = ndimage.distance_transform_edt(np.pad(section, 1), sampling=spacing_ji)[1:-1, 1:-1]
    j, i = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return SimulatedStroke("lasso", _slice_to_ras(geometry, k, polygon_ji), True, (k, int(j), int(i)))


def outer_contour(section_ji: np.ndarray) -> np.ndarray:
    """(V, 2) continuous (j, i) polygon around the 4-connected region of a 2D mask with the largest outline.

    The polygon runs through the midpoints of the region's boundary voxel edges (a voxel centre is never on it:
    every inside centre is inside the polygon, every outside one outside); collinear midpoints are dropped.
    Diagonal contacts separate (4-connectivity): the outline goes around one voxel's corner, not across.
    """
    mask = np.pad(np.asarray(section_ji).astype(bool), 1)
    if not mask.any():
        raise ValueError("outer_contour needs a non-empty mask")
    # Directed edges between voxel corners (corner (r, c) = top-left of padded voxel (r, c)), oriented so each
    # voxel's four sides run (r, c) → (r+1, c) → (r+1, c+1) → (r, c+1) → (r, c); shared sides cancel.
    sides = (((0, -1), (0, 0), (1, 0)), ((1, 0), (1, 0), (1, 1)), ((0, 1), (1, 1), (0, 1)), ((-1, 0), (0, 1), (0, 0)))
    starts: List[np.ndarray] = []
    ends: List[np.ndarray] = []
    owners: List[np.ndarray] = []
    side_of: List[np.ndarray] = []
    voxels = np.argwhere(mask)
    for side, ((dr, dc), start, end) in enumerate(sides):
        exposed = voxels[~mask[voxels[:, 0] + dr, voxels[:, 1] + dc]]
        starts.append(exposed + start)
        ends.append(exposed + end)
        owners.append(exposed)
        side_of.append(np.full(len(exposed), side))
    start_pts, end_pts = np.concatenate(starts), np.concatenate(ends)
    owner, side_index = np.concatenate(owners), np.concatenate(side_of)
    outgoing: Dict[Tuple[int, int], List[int]] = {}
    for e, (r, c) in enumerate(start_pts.tolist()):
        outgoing.setdefault((r, c), []).append(e)
    owner_side = {(tuple(o), int(s)): e for e, (o, s) in enumerate(zip(owner.tolist(), side_index.tolist()))}
    used = np.zeros(len(start_pts), dtype=bool)
    best: Optional[np.ndarray] = None
    best_area = -1.0
    for first in range(len(start_pts)):
        if used[first]:
            continue
        loop = []
        e = first
        while not used[e]:
            used[e] = True
            loop.append(e)
            choices = [c for c in outgoing[tuple(end_pts[e].tolist())] if not used[c]]
            if not choices:
                break
            # Two ways on at a corner shared by two diagonal voxels: keep going around the same voxel.
            same = owner_side.get((tuple(owner[e].tolist()), (int(side_index[e]) + 1) % 4))
            e = same if same in choices else choices[0]
        corners = start_pts[loop].astype(np.float64)
        area = abs(_shoelace(corners))
        if area > best_area:
            best, best_area = corners, area
    assert best is not None
    midpoints = (best + np.roll(best, -1, axis=0)) / 2.0 - 1.5  # corner → voxel-centre coordinates, unpadded
    return _drop_collinear(midpoints)


def simplify_polygon(polygon_ji: np.ndarray, max_vertices: int, spacing_ji: Sequence[float]) -> np.ndarray:
    """At most ``max_vertices`` vertices of a closed polygon: repeatedly drop the vertex whose triangle with its
    neighbours has the least area in mm² (Visvalingam–Whyatt); unchanged when it already has few enough."""
    points = _drop_collinear(np.asarray(polygon_ji, dtype=np.float64))
    scale = np.asarray(spacing_ji, dtype=np.float64)
    while len(points) > max_vertices:
        mm = points * scale
        before, after = np.roll(mm, 1, axis=0), np.roll(mm, -1, axis=0)
        area = np.abs((mm[:, 0] - before[:, 0]) * (after[:, 1] - before[:, 1])
                      - (after[:, 0] - before[:, 0]) * (mm[:, 1] - before[:, 1]))
        # Drop many of the smallest at once on long outlines (never two neighbours), one at a time near the end.
        count = max(1, min(len(points) - max_vertices, len(points) // 8))
        order = np.argsort(area, kind="stable")
        drop = np.zeros(len(points), dtype=bool)
        for index in order:
            if drop.sum() >= count:
                break
            if not drop[index - 1] and not drop[(index + 1) % len(points)]:
                drop[index] = True
        points = points[~drop]
    return points


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    before, after = np.roll(points, 1, axis=0), np.roll(points, -1, axis=0)
    cross = (points[:, 0] - before[:, 0]) * (after[:, 1] - before[:, 1]) - (after[:, 0] - before[:, 0]) * (
        points[:, 1] - before[:, 1])
    keep = np.abs(cross) > 1e-9
    return points[keep] if keep.sum() >= 3 else points


def _shoelace(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _slice_to_ras(geometry: VolumeGeometry, k: int, points_ji: np.ndarray) -> np.ndarray:
    """(N, 2) continuous (j, i) on slice k → (N, 3) RAS mm."""
    ijk = np.stack([points_ji[:, 1], points_ji[:, 0], np.full(len(points_ji), float(k))], axis=1)
    return geometry.ijk_to_ras_points(ijk)


# ---------------------------------------------------------------- scribbles
def simulate_scribble(region_kji: np.ndarray, geometry: VolumeGeometry, positive: bool = True) -> SimulatedStroke:
    """A scribble inside a binary region (K, J, I) on ``geometry``'s grid: through the region's deepest point
    (mm) on its axial slice, along the cross-section's longer principal axis, one voxel inside its border.

    Raises:
        InvalidPromptError: the region is empty.
    """
    region = np.asarray(region_kji).astype(bool)
    if not region.any():
        raise InvalidPromptError("A scribble needs a non-empty region; check the label (or the prediction).")
    box = bbox_slices(mask_bbox(region))  # type: ignore[arg-type]
    offset = np.array([s.start for s in box])
    local = _scribble_in_box(region[box], geometry.cropped(tuple((s.start, s.stop) for s in box)), positive)  # type: ignore[arg-type]
    return SimulatedStroke("scribble", local.points_ras, positive,
                           tuple(int(v) for v in np.asarray(local.anchor_kji) + offset))  # type: ignore[arg-type]


def correction_scribble(
    target_kji: np.ndarray, prediction_kji: np.ndarray, geometry: VolumeGeometry, rule: ClickRule = SAMVOLSEG_CLICKS,
) -> Optional[SimulatedStroke]:
    """The scribble that corrects a prediction's largest error component (the one :func:`next_click` would click):
    positive in a miss, negative in a false positive; None when the prediction equals the target."""
    error = largest_error(target_kji, prediction_kji, rule)
    if error is None:
        return None
    component, box = error
    offset = np.array([s.start for s in box])
    positive = bool(np.asarray(target_kji)[box][component].any())
    local = _scribble_in_box(component, geometry.cropped(tuple((s.start, s.stop) for s in box)), positive)  # type: ignore[arg-type]
    return SimulatedStroke("scribble", local.points_ras, positive,
                           tuple(int(v) for v in np.asarray(local.anchor_kji) + offset))  # type: ignore[arg-type]


def _scribble_in_box(region: np.ndarray, geometry: VolumeGeometry, positive: bool) -> SimulatedStroke:
    """:func:`simulate_scribble` on a region already cropped to its box (``geometry`` is the box's grid)."""
    spacing_kji = tuple(float(v) for v in geometry.spacing[::-1])
    anchor = deepest_point(region, spacing_kji)
    k = anchor[0]
    labels, _ = ndimage.label(region[k], _FULL_2D)
    section = labels == labels[anchor[1], anchor[2]]
    spacing_ji = np.array(spacing_kji[1:])
    inner = ndimage.binary_erosion(section, _FULL_2D)  # voxels whose 8 neighbours all belong to the region
    allowed = inner if inner[anchor[1], anchor[2]] else section
    start = np.array(anchor[1:], dtype=np.float64)
    points_ji = start[None]
    if allowed.sum() > 1:
        depth = ndimage.distance_transform_edt(np.pad(section, 1), sampling=spacing_ji)[1:-1, 1:-1]
        axis_mm = _principal_axis_mm(section, spacing_ji)
        halves = [_walk(start, sign * axis_mm, allowed, depth, spacing_ji) for sign in (-1.0, 1.0)]
        points_ji = np.vstack([halves[0][::-1], start[None], halves[1]])
        points_ji = _smooth(points_ji, SCRIBBLE_SMOOTHING_POINTS, anchor_index=len(halves[0]))
        points_ji = _keep_inside(points_ji, len(halves[0]), section, geometry, k)
    return SimulatedStroke("scribble", _slice_to_ras(geometry, k, points_ji), positive, anchor)


def _principal_axis_mm(section: np.ndarray, spacing_ji: np.ndarray) -> np.ndarray:
    """Unit (j, i) direction in mm of the longer principal axis of a 2D region's voxels."""
    coords_mm = np.argwhere(section) * spacing_ji
    if len(coords_mm) < 2:
        return np.array([0.0, 1.0])
    values, vectors = np.linalg.eigh(np.cov(coords_mm.T))
    return vectors[:, int(np.argmax(values))]


def _walk(start: np.ndarray, direction_mm: np.ndarray, allowed: np.ndarray, depth: np.ndarray,
          spacing_ji: np.ndarray) -> np.ndarray:
    """Points (M, 2) in (j, i) from ``start`` (excluded) walking along ``direction_mm``, bending towards the
    deepest voxels across the way, while each point's voxel is ``allowed`` and the way has turned at most
    :data:`SCRIBBLE_MAX_TURN_DEGREES`; at most 2 × the slice's perimeter."""
    points: List[np.ndarray] = []
    position = start.copy()
    heading = direction_mm / np.linalg.norm(direction_mm)
    initial = heading.copy()
    min_cos = np.cos(np.radians(SCRIBBLE_MAX_TURN_DEGREES))
    offsets = np.linspace(-SCRIBBLE_RIDGE_VOXELS, SCRIBBLE_RIDGE_VOXELS, 9)
    for _ in range(2 * sum(allowed.shape) * int(round(1 / SCRIBBLE_STEP_VOXELS))):
        step = heading / spacing_ji
        step *= SCRIBBLE_STEP_VOXELS / np.abs(step).max()
        across = np.array([-heading[1], heading[0]]) / spacing_ji
        across *= 1.0 / np.abs(across).max()
        candidates = position + step + offsets[:, None] * across
        cells = np.rint(candidates).astype(int)
        valid = np.all((cells >= 0) & (cells < allowed.shape), axis=1)
        valid[valid] = allowed[cells[valid, 0], cells[valid, 1]]
        if not valid.any():
            break
        score = np.where(valid, depth[np.clip(cells[:, 0], 0, allowed.shape[0] - 1),
                                       np.clip(cells[:, 1], 0, allowed.shape[1] - 1)], -np.inf)
        score -= 1e-6 * np.abs(offsets)  # ties: straight on
        new = candidates[int(np.argmax(score))]
        moved_mm = (new - position) * spacing_ji
        heading = SCRIBBLE_MOMENTUM * heading + (1 - SCRIBBLE_MOMENTUM) * moved_mm / np.linalg.norm(moved_mm)
        heading /= np.linalg.norm(heading)
        if float(heading @ initial) < min_cos - 1e-9:
            break
        position = new
        points.append(new)
    return np.array(points).reshape(-1, 2)


def _smooth(points: np.ndarray, window: int, anchor_index: int) -> np.ndarray:
    """Moving average of a polyline (window clipped at its ends); the anchor point keeps its place."""
    if len(points) < 3 or window < 2:
        return points
    half = window // 2
    cumulative = np.vstack([np.zeros((1, 2)), np.cumsum(points, axis=0)])
    lo = np.clip(np.arange(len(points)) - half, 0, len(points))
    hi = np.clip(np.arange(len(points)) + half + 1, 0, len(points))
    smooth = (cumulative[hi] - cumulative[lo]) / (hi - lo)[:, None]
    smooth[anchor_index] = points[anchor_index]
    return smooth


def _keep_inside(points_ji: np.ndarray, anchor_index: int, section: np.ndarray, geometry: VolumeGeometry,
                 k: int) -> np.ndarray:
    """The longest run of the polyline around the anchor whose drawn voxels (the session's sampling of each
    segment, :func:`~SAMVolSegmentLib.engine.strokes.resample_polyline`) all lie in ``section``."""
    points_ras = _slice_to_ras(geometry, k, points_ji)
    step = float(geometry.spacing.min()) / 3
    ok = []
    for a, b in zip(points_ras[:-1], points_ras[1:]):
        dense = geometry.ras_to_ijk(resample_polyline(np.stack([a, b]), step))
        cells = np.rint(dense[:, [1, 0]]).astype(int)
        inside = np.all((cells >= 0) & (cells < section.shape), axis=1) & (np.rint(dense[:, 2]) == k)
        ok.append(bool(inside.all() and section[cells[:, 0], cells[:, 1]].all()))
    lo = anchor_index
    while lo > 0 and ok[lo - 1]:
        lo -= 1
    hi = anchor_index
    while hi < len(ok) and ok[hi]:
        hi += 1
    return points_ji[lo:hi + 1]
