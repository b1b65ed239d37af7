"""How a slow step is shown: the panel's progress bar and status line, then a modal dialog after 2 s.

Qt glue moved out of ``SAMVolSegment.py`` (imports ``qt`` and ``slicer``), so it follows Slicer's camelCase.
The Logic reports through ``slowCallback(elapsedSeconds, fraction, message)`` = :meth:`ProgressDisplay.onSlow`
(fraction None: no measure, a busy indicator); the widget calls :meth:`ProgressDisplay.hide` when a step ends.
The status line's texts after a step or a place-mode key (:func:`stepText`, :func:`placingText`) are here too.
"""

from __future__ import annotations

import time
from typing import Dict, Optional, Sequence

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


def placingText(kind: str, positive: bool = True) -> str:
    """The status line's note of what a click in a view places now (``PromptMarkers.placingKind``; ``positive``:
    the polarity a scribble or lasso draws with, ``PromptMarkers.positive``)."""
    if kind in ("scribble", "lasso"):
        text = {("scribble", True): _("Drawing a positive scribble (T: negative)."),
                ("scribble", False): _("Drawing a negative scribble (T: positive)."),
                ("lasso", True): _("Drawing a positive lasso (T: negative)."),
                ("lasso", False): _("Drawing a negative lasso (T: positive).")}[(kind, bool(positive))]
        return text + " " + _("Click along it; right-click or double-click finishes it.")
    return {"positive": _("Placing positive points (T: negative)."),
            "negative": _("Placing negative points (T: positive)."),
            "box": _("Placing a box.")}.get(kind, "")


def stepText(timing: dict, kind: str, imageWarnings: Sequence[str] = (), positive: bool = True) -> str:
    """The status line after a step: its time (model and segment write) and what a click places now, after the
    engine's warnings about the volume (e.g. it looks like a label map: probably the wrong input volume)."""
    total = 1000 * timing.get("total_s", 0.0)
    write = 1000 * timing.get("write_s", 0.0)
    text = _("Segment updated in {total:.0f} ms (model {model:.0f} ms, write {write:.0f} ms). {placing}").format(
        total=total, model=total - write, write=write, placing=placingText(kind, positive))
    return " ".join([_("Warning: {text}").format(text=w) for w in imageWarnings] + [text])


def stepTiming(engineTiming: Optional[dict], start: float, writeStart: float) -> Dict[str, float]:
    """A step's times for ``logic.lastTiming``: the engine's (``last_timing``) with ``write_s`` (since
    ``writeStart``) and ``total_s`` (since ``start``), both ``time.perf_counter()`` values."""
    timing = dict(engineTiming or {})
    timing["write_s"] = time.perf_counter() - writeStart
    timing["total_s"] = time.perf_counter() - start
    return timing


def showStep(label, logic) -> None:
    """Show :func:`stepText` for the Logic's last step in ``label``, with its session's warnings about the volume."""
    markers = logic.markers
    warnings = logic.session.image_warnings if logic.session is not None else ()  # None: cleaned up meanwhile
    label.setText(stepText(logic.lastTiming, markers.placingKind(), warnings, markers.positive))


def showPlacing(label, markers) -> None:
    """Show what a click in a view places now (after a place-mode key: A, S, T, X, D, L)."""
    label.setText(placingText(markers.placingKind(), markers.positive))
