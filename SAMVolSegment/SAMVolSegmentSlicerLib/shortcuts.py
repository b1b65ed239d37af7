"""The module's keyboard shortcuts, installed on Slicer's main window while the module is shown.

Qt glue moved out of ``SAMVolSegment.py`` (imports ``qt`` and ``slicer``), so it follows Slicer's camelCase.
Each key names a widget action (``SAMVolSegmentWidget.onAction``), which makes one Logic call.
"""

from __future__ import annotations

from typing import Callable, List

import qt
import slicer

#: A/S/X/N/D/L match no Segment Editor effect key and avoid the slice views' own keys (b/f step slices, r resets
#: the view, g/t/v layers, s snaps a hovered markup point; vtkMRMLSliceIntersectionWidget.cxx,
#: vtkSlicerMarkupsWidget.cxx). T and V shadow the views' layer toggles while the module is shown, as in
#: SlicerNNInteractive, whose users expect them. D draws a scribble, L a lasso, with the polarity A/S/T choose.
SHORTCUTS = (
    ("A", "positive"),
    ("S", "negative"),
    ("T", "togglePolarity"),
    ("X", "box"),
    ("D", "scribble"),
    ("L", "lasso"),
    ("V", "toggleVisibility"),
    ("Ctrl+Z", "undo"),
    ("Ctrl+Y", "redo"),
    ("Ctrl+Shift+Z", "redo"),
    ("N", "accept"),
    ("Shift+R", "reset"),
)


class ModuleShortcuts:
    """``QShortcut``s on the main window calling ``onAction(action)``; only while installed (module shown)."""

    def __init__(self, onAction: Callable[[str], None]) -> None:
        self._onAction = onAction
        self._shortcuts: List = []

    def install(self) -> None:
        self.remove()
        for keys, action in SHORTCUTS:
            shortcut = qt.QShortcut(qt.QKeySequence(keys), slicer.util.mainWindow())
            shortcut.connect("activated()", lambda action=action: self._onAction(action))
            self._shortcuts.append(shortcut)

    def remove(self) -> None:
        for shortcut in self._shortcuts:
            shortcut.disconnect("activated()")
            shortcut.setParent(None)
        self._shortcuts = []
