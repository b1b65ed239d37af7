"""SAMVolSegmentLib: the engine of SAMVolSegment (click-based 3D segmentation with SAM-Med3D-compatible models).

Pure Python (numpy, SimpleITK, torch); never imports Slicer or Qt, so the same code runs in Slicer's Python
console, a terminal, a server and batch workers::

    from SAMVolSegmentLib import load_model, InteractiveSession
    session = InteractiveSession(load_model("default"))
    session.set_volume(sitk_image)
    update = session.add_click((x, y, z), positive=True)    # RAS mm

    from SAMVolSegmentLib import segment, segment_cases
    mask = segment("ct.nii.gz", [(x, y, z)], [True])          # one case: a mask with the image's geometry
    for result in segment_cases("manifest.csv", workers=2):  # many: image,prompts,output rows
        print(result.name, result.status, result.error)

Heavy submodules (torch) are imported on first use of the names below.
"""

from __future__ import annotations

import importlib
from typing import Any

from .engine.threads import configure_openmp

# Idle OpenMP threads sleep instead of spinning for ~3 ms after every operator (libgomp's default), which took
# a core from other programs and, on a busy machine, from our own clicks (benchmarks/under_load.py). Effective
# only when torch is imported after this package; OMP_WAIT_POLICY or GOMP_SPINCOUNT set by the user win.
configure_openmp()

__version__ = "0.1.0"

_LAZY = {
    "load_model": ".model",
    "build_model": ".model",
    "ModelConfig": ".model",
    "InteractiveSession": ".engine.session",
    "LocalSession": ".engine.session",
    "Click": ".engine.session",
    "Predictor": ".engine.predictor",
    "MaskUpdate": ".engine.mask_update",
    "segment": ".batch",
    "segment_cases": ".batch",
    "BatchCase": ".batch",
    "CaseResult": ".batch",
    "lps_to_ras": ".engine.geometry",
    "ras_to_lps": ".engine.geometry",
    "RemoteSession": ".remote.client",
}

__all__ = [*sorted(_LAZY), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
