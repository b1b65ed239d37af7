"""How a slow step is shown: the panel's progress bar and status line, then a modal dialog after 2 s.

Qt glue moved out of ``SAMVolSegment.py`` (imports ``qt`` and ``slicer``), so it follows Slicer's camelCase.
The Logic reports through ``slowCallback(elapsedSeconds, fraction, message)`` = :meth:`ProgressDisplay.onSlow`
(fraction None: no measure, a busy indicator); the widget calls :meth:`ProgressDisplay.hide` when a step ends.
"""

from __future__ import annotations

from typing import Optional

import qt
import slicer
from slicer.i18n import tr as _

#: A step running longer than this shows a modal progress dialog (the status line reports from 0.5 s).
PROGRESS_DIALOG_AFTER_S = 2.0


class ProgressDisplay:
    """Shows progress in ``progressBar`` and ``statusLabel``, and in a dialog once a step is slow."""

    def __init__(self, progressBar, statusLabel) -> None:
        self.progressBar, self.statusLabel = progressBar, statusLabel
        self.dialog = None

    def onSlow(self, elapsed: float, fraction: Optional[float], message: str) -> None:
        self.progressBar.show()
        if fraction is None:
            self.progressBar.setRange(0, 0)  # busy indicator
        else:
            self.progressBar.setRange(0, 100)
            self.progressBar.setValue(int(100 * fraction))
        text = _("{message} ({elapsed:.1f} s)").format(message=message or _("Working..."), elapsed=elapsed)
        self.statusLabel.setText(text)
        if elapsed < PROGRESS_DIALOG_AFTER_S:
            return
        if self.dialog is None:
            # No cancel button: the engine step cannot be interrupted safely mid-way.
            self.dialog = qt.QProgressDialog(text, "", 0, 0, slicer.util.mainWindow())
            self.dialog.setCancelButton(None)
            self.dialog.setWindowModality(qt.Qt.WindowModal)
            self.dialog.setWindowTitle(_("SAMVolSegment"))
            self.dialog.show()
        self.dialog.setLabelText(text)
        if fraction is not None:
            self.dialog.setRange(0, 100)
            self.dialog.setValue(int(100 * fraction))

    def hide(self) -> None:
        self.progressBar.hide()
        if self.dialog is not None:
            self.dialog.close()
            self.dialog = None
