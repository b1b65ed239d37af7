"""Slicer-side helpers of the SAMVolSegment module (engine-free; most need neither Slicer nor Qt).

Most of it is plain Python + numpy (``vtk_numpy`` also uses ``vtkmodules``), tested with pytest outside Slicer,
and named like the engine (snake_case, coordinate suffixes ``_ras``/``_ijk``/``_kji``) because it is
numpy-facing. The MRML/Qt glue moved out of ``SAMVolSegment.py`` uses Slicer's camelCase: ``target`` (the
Logic's volume/segmentation/segment and undo/redo's segment side), ``segment_io`` (segment read/write),
``segment_volume`` (``segmentVolume``), ``markers`` (prompt markups), ``settings_panel`` (Model and settings
panel), ``propose`` (Propose control), ``shortcuts`` (keys), ``progress_display`` (progress bar, dialog, status
texts), ``local_session`` (the kept local model) and ``backend`` (local or remote session, QSettings; no Qt
import); they are tested on Slicer's real core (``slicer-core``, ``Testing/real_slicer.py``).
"""

from __future__ import annotations
