"""The *Model and settings* panel: model, device, CPU threads and backend preferences (QSettings), *Test
connection* and *Install dependencies*.

Qt glue moved out of ``SAMVolSegment.py`` (imports ``qt`` and ``slicer``), so it follows Slicer's camelCase.
Like the widget, it makes one Logic call per user action, through the widget's ``run(failureMessage, fn,
*args)`` (busy cursor, one error dialog). What is stored where is decided in ``backend.py``.
"""

from __future__ import annotations

from typing import Callable

import qt
import slicer
from slicer.i18n import tr as _

from . import backend, dependencies, local_session
from .dependencies import InstallError


class SettingsPanel:
    """Binds the panel's widgets (``ui``: the module's ``childWidgetVariables``) to QSettings and ``logic``."""

    def __init__(self, ui, logic, run: Callable, updateGUI: Callable[[], None],
                 hideProgress: Callable[[], None]) -> None:
        self.ui, self.logic = ui, logic
        self._run, self._updateGUI, self._hideProgress = run, updateGUI, hideProgress
        self._installJob = None
        for name, label in backend.MODEL_CHOICES:
            ui.modelComboBox.addItem(_(label), name)
        for device in backend.DEVICE_CHOICES:
            ui.deviceComboBox.addItem(device, device)
        for value, label in local_session.threadChoices():
            ui.threadsComboBox.addItem(_(label), value)
        for kind, label in backend.BACKEND_CHOICES:
            ui.backendComboBox.addItem(_(label), kind)
        prefs = backend.loadPreferences(qt.QSettings())
        ui.modelComboBox.setCurrentIndex(max(0, ui.modelComboBox.findData(prefs["model"])))
        ui.modelPathLineEdit.currentPath = prefs["modelPath"]
        ui.deviceComboBox.setCurrentIndex(max(0, ui.deviceComboBox.findData(prefs["device"])))
        # A stored count this computer no longer has (or an unknown value) falls back to Automatic.
        ui.threadsComboBox.setCurrentIndex(max(0, ui.threadsComboBox.findData(str(prefs["threads"]))))
        ui.backendComboBox.setCurrentIndex(max(0, ui.backendComboBox.findData(prefs["backend"])))
        ui.serverURLLineEdit.setText(prefs["serverURL"])
        ui.serverCAFileLineEdit.currentPath = prefs["serverCAFile"]
        ui.rememberTokenCheckBox.checked = prefs["rememberServerToken"]
        # Unless remembered, the token is typed once per Slicer session and lives in this line edit.
        ui.serverTokenLineEdit.setText(backend.loadRememberedToken(qt.QSettings()))
        self._applyModelSettings()
        self._applyBackend()

        ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSettingsChanged)
        ui.deviceComboBox.connect("currentIndexChanged(int)", self.onModelSettingsChanged)
        ui.threadsComboBox.connect("currentIndexChanged(int)", self.onModelSettingsChanged)
        ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelSettingsChanged)
        ui.backendComboBox.connect("currentIndexChanged(int)", self.onBackendChanged)
        ui.serverURLLineEdit.connect("textChanged(QString)", self.onBackendChanged)
        ui.serverTokenLineEdit.connect("textChanged(QString)", self.onBackendChanged)
        ui.serverCAFileLineEdit.connect("currentPathChanged(QString)", self.onBackendChanged)
        ui.rememberTokenCheckBox.connect("toggled(bool)", self.onBackendChanged)
        ui.testConnectionButton.connect("clicked(bool)", self.onTestConnection)
        ui.installButton.connect("clicked(bool)", self.onInstallDependencies)

    # ------------------------------------------------------------------ model and backend
    def _applyModelSettings(self) -> None:
        choice = self.ui.modelComboBox.currentData
        self.ui.modelPathLineEdit.setVisible(choice == "file")
        self.logic.modelSource = self.ui.modelPathLineEdit.currentPath if choice == "file" else choice
        self.logic.device = self.ui.deviceComboBox.currentData
        self.logic.threads = self.ui.threadsComboBox.currentData or local_session.AUTOMATIC_THREADS

    def onModelSettingsChanged(self, *_args) -> None:
        """Store the preferences; the model is (re)loaded, or the session remade with the new threads, on the next
        click or 'Load model'."""
        backend.savePreferences(qt.QSettings(), self.ui.modelComboBox.currentData,
                                self.ui.modelPathLineEdit.currentPath, self.ui.deviceComboBox.currentData,
                                self.ui.threadsComboBox.currentData or local_session.AUTOMATIC_THREADS)
        self._applyModelSettings()

    def backendFromUI(self) -> backend.Backend:
        return backend.Backend(kind=self.ui.backendComboBox.currentData or backend.LOCAL,
                               url=self.ui.serverURLLineEdit.text.strip(),
                               token=self.ui.serverTokenLineEdit.text.strip(),
                               caFile=self.ui.serverCAFileLineEdit.currentPath or "")

    def _applyBackend(self) -> None:
        chosen = self.backendFromUI()
        self.ui.serverGroupBox.setVisible(chosen.isRemote)
        # A server runs its own model on its own device and threads.
        for widget in (self.ui.modelComboBox, self.ui.modelPathLineEdit, self.ui.deviceComboBox,
                       self.ui.threadsComboBox):
            widget.enabled = not chosen.isRemote
        # Directly, not through ``run``: that disables this panel, which would take the focus from the line
        # edit being typed in. The panel is disabled while a step runs, so the Logic is never busy here.
        if not self.logic.busy:
            self.logic.setBackend(chosen)
        self._updateGUI()

    def onBackendChanged(self, *_args) -> None:
        """Store the choice (the token only if *Remember token* is ticked) and use it from the next step on."""
        backend.saveBackend(qt.QSettings(), self.backendFromUI(), self.ui.rememberTokenCheckBox.checked)
        self._applyBackend()

    def onTestConnection(self) -> None:
        """Reach the server with the URL, token and certificate as entered; the status line gives its model."""
        self._run(_("Connection test failed."), self.logic.testConnection, self.backendFromUI())

    # ------------------------------------------------------------------ dependencies
    def onInstallDependencies(self) -> None:
        """Install torch through the PyTorch extension's installer on a background thread, with progress."""
        if self._installJob is not None:
            return
        try:
            job = dependencies.TorchInstallJob.fromSlicer(confirm=slicer.util.confirmOkCancelDisplay)
        except InstallError as exc:
            if exc.restartRequired and slicer.util.confirmYesNoDisplay(
                    _("{error}\n\nOpen the Extensions Manager now?").format(error=exc)):
                slicer.app.openExtensionsManagerDialog()
            else:
                slicer.util.errorDisplay(str(exc))
            return
        if job is None:
            return
        self._installJob = job
        self.ui.installButton.enabled = False
        self.ui.progressBar.show()
        self.ui.progressBar.setRange(0, 0)
        job.start()
        self._pollInstall()

    def _pollInstall(self) -> None:
        job = self._installJob
        if not job.done:
            self.ui.statusLabel.setText(job.lastLine or _("Installing PyTorch..."))
            qt.QTimer.singleShot(200, self._pollInstall)
            return
        self._installJob = None
        self.ui.installButton.enabled = True
        self._hideProgress()
        if job.error is not None:
            slicer.util.errorDisplay(str(job.error), detailedText="\n".join(job.lines[-200:]))
        else:
            self.ui.statusLabel.setText(_("PyTorch is installed."))
        self._updateGUI()
