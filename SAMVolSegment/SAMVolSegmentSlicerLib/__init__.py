"""Slicer-side helpers of the SAMVolSegment module (engine-free; most need neither Slicer nor Qt).

Most of it is plain Python + numpy (``vtk_numpy`` also uses ``vtkmodules``), tested with pytest outside Slicer,
and named like the engine (snake_case, coordinate suffixes ``_ras``/``_ijk``/``_kji``) because it is
numpy-facing. Two modules are MRML glue moved out of ``SAMVolSegment.py`` and use Slicer's camelCase:
``segment_io`` (segment read/write) and ``markers`` (prompt markups); they are tested against the Slicer
stand-in ``Testing/slicer_fake.py``.
"""

from __future__ import annotations
