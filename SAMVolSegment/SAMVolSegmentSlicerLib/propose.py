"""Propose (a model taught a structure): the Logic's class check and status line, the panel's class list and
button.

MRML/Qt glue moved out of ``SAMVolSegment.py`` (uses ``slicer.i18n`` and the module's widgets), so it follows
Slicer's camelCase. The step itself is ``SAMVolSegmentLogic.propose``; like the widget, the control makes one
Logic call per user action through the widget's ``run(failureMessage, fn, *args)`` (busy cursor, one dialog).
"""

from __future__ import annotations

from typing import Callable, Sequence, Tuple

from slicer.i18n import tr as _

from SAMVolSegmentLib.engine.mask_update import MaskUpdate

from .undo_stack import Prompt


def checkProposalClass(classes: Sequence[str], modelID: str, className: str) -> None:
    """Raise ``InvalidPromptError`` unless the loaded model (``modelID``, proposing ``classes``) knows
    ``className``; the message says how to get a model that does."""
    from SAMVolSegmentLib.errors import InvalidPromptError

    if className in classes:
        return
    if not classes:
        raise InvalidPromptError(_(
            "The model {model} cannot propose: it has no proposal head. Teach it a structure with "
            "'samvolseg teach' and choose the file that writes (structure.pt) under Model and settings > "
            "Model > From file...").format(model=modelID))
    raise InvalidPromptError(_("The model {model} cannot propose {name!r}; it proposes {classes}.").format(
        model=modelID, name=className, classes=", ".join(classes)))


class ProposalStep:
    """The engine call and the prompt of one proposal of ``className`` (``SAMVolSegmentLogic.propose`` gives both
    to its ``_step``); ``stepped`` tells whether the engine made the step (else what was created for it goes)."""

    def __init__(self, className: str) -> None:
        self.className, self.stepped = className, False

    def call(self, session) -> MaskUpdate:
        update = session.propose(self.className)
        self.stepped = True
        return update

    def prompt(self, session) -> Prompt:
        # The proposal's click is the first of the new state (the engine may add more when the mask continues
        # into a neighbouring region: session.py, _propose_step).
        clicks = session.clicks
        position = tuple(float(v) for v in clicks[0].point_ras) if clicks else ()
        return Prompt("proposal", True, position, "", label=self.className)


def modelReadyStatus(modelID: str, classes: Sequence[str], adapted: Sequence[str]) -> str:
    """The status line after a model loads: what it proposes (``classes``) and, for a structure file whose
    adapter runs on every click (``adapted``, adapter scope "all"), that its clicks are tuned to those."""
    status = _("Model {id} ready.").format(id=modelID)
    if classes:
        status += " " + _("It proposes {classes} without a click (Propose).").format(classes=", ".join(classes))
    if adapted:
        status += " " + _("Its clicks are tuned to {classes}; for other structures load the base model.").format(
            classes=", ".join(adapted))
    return status


class ProposeControl:
    """The *Propose* class combo box and button of ``ui`` (the module's ``childWidgetVariables``)."""

    def __init__(self, ui, logic, run: Callable, showTiming: Callable[[], None]) -> None:
        self.ui, self.logic = ui, logic
        self._run, self._showTiming = run, showTiming
        self._shownClasses: Tuple[str, ...] = ()
        ui.proposeButton.connect("clicked(bool)", self.onPropose)

    def onPropose(self) -> None:
        """Propose the chosen structure: one Logic step, like a click (undo, refine with clicks)."""
        if self.logic is None or self.logic.busy:
            return
        className = self.ui.proposeClassComboBox.currentData
        if not className:
            return
        if self._run(_("Proposal failed."), self.logic.propose, str(className)) is not None:
            self._showTiming()

    def update(self) -> None:
        """List what the loaded model proposes; it changes with the model or backend (a new session)."""
        combo = self.ui.proposeClassComboBox
        classes = self.logic.proposalClasses() if self.logic else ()
        if classes != self._shownClasses:
            previous = combo.currentData
            combo.clear()
            for name in classes:
                combo.addItem(name, name)
            if previous in classes:
                combo.setCurrentIndex(combo.findData(previous))
            self._shownClasses = classes
        combo.enabled = bool(classes)
        self.ui.proposeButton.enabled = bool(classes)
        if classes:
            tip = _("A first mask of the chosen structure without a click (one undoable step); correct it with "
                    "clicks.")
        elif self.logic is None or self.logic.session is None:
            tip = _("Load the model (Model and settings > Load model) to list the structures it proposes without a "
                    "click. Only a model taught with 'samvolseg teach' proposes.")
        else:
            tip = _("The loaded model has no proposal head. Teach it a structure with 'samvolseg teach' and choose "
                    "the file that writes (structure.pt) under Model and settings > Model > From file...")
        # Disabled with a tooltip that says why, as Slicer's scripted-module template does for its Apply button
        # (Utilities/Templates/Modules/Scripted/TemplateKey.py).
        combo.toolTip = tip
        self.ui.proposeButton.toolTip = tip
