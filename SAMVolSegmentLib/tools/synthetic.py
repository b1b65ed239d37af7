"""Synthetic training volumes: deformed blobs with texture, noise, bias field and varied contrast.

They teach the click → region mapping for shapes and contrasts the few real development cases lack. Every
sample is generated directly as a ROI in model-grid order and normalised with the inference rule.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.preprocessing import normalize_roi


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth random field: ``cells``³ Gaussian noise upsampled trilinearly to ``size``³."""
    coarse = torch.from_numpy(rng.standard_normal((1, 1, cells, cells, cells)).astype(np.float32))
    return F.interpolate(coarse, size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0].numpy()


def blob(rng: np.random.Generator, size: int, centre: np.ndarray, radius_vox: float) -> np.ndarray:
    """A random ellipsoid around ``centre`` with a smooth boundary deformation (bool, size³)."""
    axes = radius_vox * rng.uniform(0.6, 1.4, 3)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    grid = np.stack(np.meshgrid(*(np.arange(size, dtype=np.float32),) * 3, indexing="ij"), axis=-1) - centre
    local = grid @ q.astype(np.float32)
    r = np.sqrt(((local / axes.astype(np.float32)) ** 2).sum(-1))
    return r < 1.0 + 0.25 * smooth_noise(rng, size, 5)


def synthetic_sample(rng: np.random.Generator, size: int = 128) -> Tuple[np.ndarray, np.ndarray]:
    """A normalised ROI (size³ float32) whose target contains the ROI centre, and its label (uint8)."""
    image, target = synthetic_raw_sample(rng, size)
    return normalize_roi(image), target


def synthetic_raw_sample(rng: np.random.Generator, size: int = 128, large: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`synthetic_sample` before the normalisation (size must be even).

    Shapes are drawn at half resolution (8× cheaper) and upsampled; voxel noise is added at full resolution.
    ``large``: a blob of radius 60–120 mm (an organ as large as the ROI or larger) instead of 4.5–60 mm.
    """
    half = size // 2
    image, target = _half_resolution_sample(rng, half, large)
    image_t = torch.from_numpy(image)[None, None]
    image = F.interpolate(image_t, size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0].numpy()
    target = np.repeat(np.repeat(np.repeat(target, 2, 0), 2, 1), 2, 2)
    image = image + rng.uniform(1, 30) * rng.standard_normal(image.shape).astype(np.float32)
    if rng.random() < 0.3:  # MR-like: air at 0 (the normalisation ignores voxels <= 0)
        image = np.maximum(image, 0)
    return image.astype(np.float32), target.astype(np.uint8)


def _half_resolution_sample(rng: np.random.Generator, size: int, large: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    centre = size / 2 + rng.uniform(-4, 4, 3)
    if large:
        radius = float(rng.uniform(20, 40))  # 60–120 mm
    else:
        radius = float(np.exp(rng.uniform(np.log(1.5), np.log(20))))  # 4.5–60 mm at 3 mm per voxel
    target = blob(rng, size, centre, radius)
    target[tuple(np.clip(np.round(centre).astype(int), 0, size - 1))] = True  # the ROI centre is inside
    background = rng.uniform(0, 300) + rng.uniform(5, 80) * smooth_noise(rng, size, int(rng.integers(4, 16)))
    contrast = rng.choice([-1, 1]) * rng.uniform(0.3, 4.0) * rng.uniform(10, 80)
    image = background + contrast * target * (1 + 0.2 * smooth_noise(rng, size, 8))
    for _ in range(int(rng.integers(0, 4))):  # distractors: other structures, some touching the target
        other = blob(rng, size, rng.uniform(0, size, 3), float(rng.uniform(1.5, 12)))
        image = image + rng.choice([-1, 1]) * rng.uniform(10, 150) * (other & ~target)
    image = image * (1 + 0.2 * smooth_noise(rng, size, 3))  # bias field
    image = image - rng.uniform(0, 200) * (smooth_noise(rng, size, 3) > 1.0)  # CT-like air pockets
    return image.astype(np.float32), target
