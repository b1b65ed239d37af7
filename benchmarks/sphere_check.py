"""Issue 22's synthetic intensity check: one click at the centre of a bright sphere (radius 12 mm, noise σ 8)
through the public session API, Dice after that click, for several intensity pairs and voxel spacings.

A model whose normalisation is right for CT gives the same Dice whatever the intensity offset: v2 (z-score
over voxels > 0) gave 0.46 / 0.09 for a +60 sphere in a −100 background and 0.97–0.98 once the same contrast
sits at positive values.

    python benchmarks/sphere_check.py --models default,model_runs/default_v3/export.pt --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np

#: (sphere, background) intensities: the issue's failing CT-like pair, and two positive pairs of the same contrast.
INTENSITY_PAIRS = ((60.0, -100.0), (140.0, 40.0), (260.0, 100.0), (-940.0, -1100.0))
#: Voxel spacings (i, j, k) in mm.
SPACINGS = ((1.0, 1.0, 1.0), (1.0, 1.2, 2.5))
RADIUS_MM, NOISE_SIGMA, EXTENT_MM = 12.0, 8.0, 64.0


def sphere_volume(spacing_ijk: Sequence[float], inside: float, outside: float, seed: int = 0,
                  extent_mm: float = EXTENT_MM, radius_mm: float = RADIUS_MM) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image (K, J, I) float32, ijk_to_ras 4×4, truth (K, J, I) bool): a sphere of ``radius_mm`` at the centre
    of an ``extent_mm`` cube, Gaussian noise σ ``NOISE_SIGMA`` (same seed for every intensity pair)."""
    spacing = np.asarray(spacing_ijk, dtype=np.float64)
    shape_ijk = np.round(extent_mm / spacing).astype(int)
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape_ijk, spacing)]
    k, j, i = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    truth = i**2 + j**2 + k**2 <= radius_mm**2
    noise = np.random.default_rng(seed).normal(0.0, NOISE_SIGMA, truth.shape)
    image = np.where(truth, inside, outside) + noise
    ijk_to_ras = np.diag([*spacing, 1.0])
    return image.astype(np.float32), ijk_to_ras, truth


def run(models: Sequence[str], threads: int, extent_mm: float = EXTENT_MM, radius_mm: float = RADIUS_MM,
        coarse_context: bool = False) -> List[Dict[str, object]]:
    import torch

    from SAMVolSegmentLib.engine.metrics import dice
    from SAMVolSegmentLib.engine.session import InteractiveSession
    from SAMVolSegmentLib.model import load_model

    torch.set_num_threads(threads)
    rows = []
    for name in models:
        model = load_model(name)
        for spacing in SPACINGS:
            for inside, outside in INTENSITY_PAIRS:
                image, ijk_to_ras, truth = sphere_volume(spacing, inside, outside, extent_mm=extent_mm,
                                                         radius_mm=radius_mm)
                centre_ras = ijk_to_ras[:3, :3] @ ((np.array(image.shape[::-1]) - 1) / 2)
                with InteractiveSession(model, coarse_context=coarse_context) as session:
                    session.set_volume(image, ijk_to_ras)
                    start = time.perf_counter()
                    session.add_click(centre_ras, positive=True)
                    seconds = time.perf_counter() - start
                    mask = session.mask_array_kji() > 0
                rows.append({"model": name, "coarse_context": coarse_context, "extent_mm": extent_mm,
                             "radius_mm": radius_mm, "spacing_ijk": list(spacing), "sphere": inside, "background": outside,
                             "dice_click1": round(dice(mask, truth), 4),
                             "mask_over_truth": round(float(mask.sum()) / float(truth.sum()), 3),
                             "click_s": round(seconds, 3)})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="default", help="comma-separated registry names or weight files")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--extent-mm", type=float, default=EXTENT_MM,
                        help="edge of the cubic volume (the ROI is 192 mm: a smaller volume means padding)")
    parser.add_argument("--radius-mm", type=float, default=RADIUS_MM,
                        help="sphere radius (e.g. 80 in a 240 mm cube: an organ larger than one 192 mm ROI)")
    parser.add_argument("--coarse-context", action="store_true",
                        help="sessions with coarse_context=True (a 3 mm context ROI on the first click)")
    args = parser.parse_args()
    run([m for m in args.models.split(",") if m], args.threads, args.extent_mm, args.radius_mm, args.coarse_context)


if __name__ == "__main__":
    main()
