"""Slicer-side helpers of the SAMVolSegment module that need neither Slicer nor Qt.

Everything here is plain Python + numpy (``vtk_numpy`` also uses ``vtkmodules``), so it is tested with pytest
outside Slicer. The module file ``SAMVolSegment.py`` keeps only the MRML/Qt glue.

Naming follows the engine (snake_case, coordinate suffixes ``_ras``/``_ijk``/``_kji``) because this code is
numpy-facing; the camelCase Slicer dialect stays in ``SAMVolSegment.py``.
"""

from __future__ import annotations
