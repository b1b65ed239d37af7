# ruff: noqa: N801, N802, N815, N816 - the stand-in mirrors Slicer's class and method names
"""Stand-ins for the parts of Slicer that need PythonQt: Qt/CTK widgets, ``slicer.app``'s GUI side, dialogs,
``ScriptedLoadableModule*``, ``@parameterNodeWrapper`` and ``slicer.i18n``.

Everything else (the MRML scene and nodes, segmentations, markups, transforms, storage, the module logics and
``slicer.util``) is Slicer's own, from the ``slicer-core`` wheel: ``real_slicer.install()`` puts these stand-ins
next to it. Each stand-in is small and cites the Slicer source it mirrors (paths in github.com/Slicer/Slicer,
checked against v5.6, v5.8 and main):

* Qt (and PythonQt) call the slots of one signal in connection order; an exception in a slot is printed and
  swallowed by the binding (recorded here in ``errorsInCallbacks``; ``real_slicer`` records the ones VTK swallows
  in observers the same way). PythonQt passes a slot only as many of the signal's arguments as it declares —
  src/PythonQtSignalReceiver.cpp (commontk/PythonQt).
* ``qMRMLSegmentSelectorWidget``: with ``noneEnabled`` it starts on None, repopulates on the segmentation's
  ``SegmentAdded``/``SegmentRemoved`` (real events of the real node here) keeping the selection with signals
  blocked, and ``setCurrentSegmentID`` emits ``currentSegmentChanged`` — Libs/MRML/Widgets/qMRMLSegmentSelectorWidget.cxx.
* ``@parameterNodeWrapper`` stores on the real ``vtkMRMLScriptedModuleNode``: node fields as node references
  (``SetNodeReferenceID``), other fields as parameters (``SetParameter``); ``connectGui`` connects its own handlers
  when called, i.e. after the widget's ``setup`` connected its slots —
  Base/Python/slicer/parameterNodeWrapper/wrapper.py, serializers.py.
* ``ScriptedLoadableModuleLogic.getParameterNode``: the scene's singleton ``vtkMRMLScriptedModuleNode`` tagged with
  the module name, created when missing — Base/Python/slicer/ScriptedLoadableModule.py.
* ``slicer.util.errorDisplay`` / ``confirmOkCancelDisplay`` open Qt dialogs — Base/Python/slicer/util.py; here they
  are recorded (``errorDialogs``, ``confirmQuestions``) and answered from ``confirmAnswers``.
* QSettings gives a bool back as the string "true"/"false" after a restart (qsettings.cpp).
"""

from __future__ import annotations

import enum
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "SAMVolSegment"


class FakeState:
    """Everything a test may inspect: dialogs shown, cursor depth, errors swallowed by the bindings."""

    def __init__(self) -> None:
        self.errorDialogs: List[str] = []
        #: (text of the error dialog, number of progress dialogs open at that moment)
        self.errorDialogsWithProgressOpen: List[int] = []
        self.confirmAnswers: List[bool] = []
        self.confirmQuestions: List[str] = []
        self.overrideCursorDepth = 0
        self.errorsInCallbacks: List[BaseException] = []
        self.processEventsCalls = 0
        self.pauseRenderDepth = 0
        self.progressDialogs: List[QProgressDialog] = []
        self.settings: Dict[str, Any] = {}
        self.timers: List[Callable] = []
        #: (context, text) of each ``slicer.i18n.translate`` call.
        self.translations: List[tuple] = []


STATE = FakeState()


# ---------------------------------------------------------------------------------------------- Qt widgets
def _pythonQtArgumentCount(slot: Callable, available: int) -> int:
    """How many of a signal's arguments PythonQt passes to a Python slot: a plain function or a bound method with a
    fixed parameter list gets only as many as it declares (``self`` not counted); anything else gets them all —
    PythonQtSignalTarget::call, src/PythonQtSignalReceiver.cpp in commontk/PythonQt (Slicer's PythonQt). So
    ``connect("clicked(bool)", self.onApply)`` with ``def onApply(self)`` works, as Slicer's module template
    relies on (Utilities/Templates/Modules/Scripted/TemplateKey.py)."""
    function = getattr(slot, "__func__", slot)
    code = getattr(function, "__code__", None)
    if code is None or code.co_flags & 0x04:  # not a Python function, or *args (CO_VARARGS)
        return available
    return min(available, code.co_argcount - (1 if hasattr(slot, "__self__") else 0))


class FakeWidget:
    """A Qt widget with PythonQt-style ``connect(signature, slot)``; slots run in connection order."""

    def __init__(self, className: str, name: str, properties: Optional[Dict[str, Any]] = None) -> None:
        self.className, self.name = className, name
        self.properties = properties or {}
        self.slots: Dict[str, List[Callable]] = {}
        self.enabled = True
        self.visible = True
        self.text = str(self.properties.get("text", ""))
        self.checked = bool(self.properties.get("checked", False))

    def connect(self, signature: str, slot: Callable) -> None:
        self.slots.setdefault(signature, []).append(slot)

    def disconnect(self, signature: str, slot: Optional[Callable] = None) -> None:
        if slot is None:
            self.slots.pop(signature, None)
        else:
            self.slots[signature] = [s for s in self.slots.get(signature, []) if s is not slot]

    def emit(self, signature: str, *args) -> None:
        for slot in list(self.slots.get(signature, [])):
            try:
                slot(*args[:_pythonQtArgumentCount(slot, len(args))])
            except Exception as exc:  # PythonQt prints it; the signal's other slots still run
                STATE.errorsInCallbacks.append(exc)

    def setText(self, text: str) -> None:
        self.text = text

    def setVisible(self, visible: bool) -> None:
        self.visible = bool(visible)

    def show(self) -> None:
        self.visible = True

    def hide(self) -> None:
        self.visible = False

    def setMRMLScene(self, scene) -> None:
        pass

    def setRange(self, lo, hi) -> None:
        self.range = (lo, hi)

    def setValue(self, value) -> None:
        self.value = value

    def property(self, name: str):
        return self.properties.get(name)


class QComboBox(FakeWidget):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.items: List[tuple] = []
        self.currentIndex = -1

    def addItem(self, text, data=None) -> None:
        self.items.append((text, data))
        if self.currentIndex < 0:
            self.setCurrentIndex(0)

    def clear(self) -> None:
        """QComboBox::clear: no items, current index -1 (currentIndexChanged(-1) when it had one)."""
        self.items = []
        self.setCurrentIndex(-1)

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def currentText(self) -> str:
        return self.items[self.currentIndex][0] if 0 <= self.currentIndex < len(self.items) else ""

    def findData(self, data) -> int:
        return next((i for i, (_t, d) in enumerate(self.items) if d == data), -1)

    def setCurrentIndex(self, index: int) -> None:
        if index != self.currentIndex:
            self.currentIndex = index
            self.emit("currentIndexChanged(int)", index)

    @property
    def currentData(self):
        return self.items[self.currentIndex][1] if 0 <= self.currentIndex < len(self.items) else None


class qMRMLNodeComboBox(FakeWidget):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._node = None

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node) -> None:
        if node is not self._node:
            self._node = node
            self.emit("currentNodeChanged(vtkMRMLNode*)", node)


class qMRMLSegmentSelectorWidget(FakeWidget):
    """qMRMLSegmentSelectorWidget.cxx: combo of segments (with a None item when noneEnabled)."""

    NONE = "None"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.noneEnabled = bool(self.properties.get("noneEnabled", False))
        self._node = None
        self._tags: List[int] = []
        self.comboItems: List[str] = []
        self.comboIndex = -1
        self.currentID = ""

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node) -> None:
        if node is self._node:
            return
        if self._node is not None:
            for tag in self._tags:
                self._node.RemoveObserver(tag)
        self._node = node
        self._tags = []
        if node is not None:
            segmentation = sys.modules["slicer"].vtkSegmentation
            for event in (segmentation.SegmentAdded, segmentation.SegmentRemoved):
                self._tags.append(node.AddObserver(event, lambda *a: self.populateSegmentCombobox()))
        # The node combo box's currentNodeChanged reaches onCurrentNodeChanged (which repopulates the segments,
        # possibly emitting currentSegmentChanged) before it is forwarded as the widget's own signal: connection
        # order in qMRMLSegmentSelectorWidgetPrivate::init.
        self.populateSegmentCombobox()
        self.emit("currentNodeChanged(vtkMRMLNode*)", node)

    def _setComboIndex(self, index: int, blocked: bool) -> None:
        if index == self.comboIndex:
            return
        self.comboIndex = index
        if not blocked:
            self._onCurrentSegmentChanged(index)

    def _onCurrentSegmentChanged(self, index: int) -> None:
        if self._node is None:
            return
        data = self.comboItems[index] if 0 <= index < len(self.comboItems) else ""
        self.currentID = "" if data == self.NONE else data
        self.emit("currentSegmentChanged(QString)", self.currentID)

    def populateSegmentCombobox(self) -> None:
        self.comboItems, self.comboIndex = [], -1
        if self._node is None or self._node.GetSegmentation().GetNumberOfSegments() == 0:
            return
        ids = list(self._node.GetSegmentation().GetSegmentIDs())
        self.comboItems = ([self.NONE] if self.noneEnabled else []) + ids
        if (self.noneEnabled and not self.currentID) or (self.currentID and self.currentID in ids):
            self._setCurrentSegmentID(self.currentID, blocked=True)
        else:
            self._setComboIndex(-1, blocked=True)
            self._setComboIndex(1 if self.noneEnabled else 0, blocked=False)

    def _setCurrentSegmentID(self, segmentID: str, blocked: bool) -> None:
        if not segmentID and self.noneEnabled:
            self._setComboIndex(0, blocked)
            return
        if segmentID in self.comboItems:
            self._setComboIndex(self.comboItems.index(segmentID), blocked)

    def setCurrentSegmentID(self, segmentID: str) -> None:
        self._setCurrentSegmentID(segmentID, blocked=False)

    def currentSegmentID(self) -> str:
        return self.currentID

    def userSelects(self, segmentID: str) -> None:
        """Test helper: the user picks a segment in the combo box."""
        self.setCurrentSegmentID(segmentID)


class ctkPathLineEdit(FakeWidget):
    """``currentPath`` only; a test that plays the user choosing a file also emits ``currentPathChanged``."""

    currentPath = ""

    def userChooses(self, path: str) -> None:
        """Test helper: the user picks a file (the widget then emits currentPathChanged, ctkPathLineEdit.h)."""
        self.currentPath = path
        self.emit("currentPathChanged(QString)", path)


class QLineEdit(FakeWidget):
    """``setText`` emits ``textChanged`` when the text changes, for the user and for code alike (qlineedit.cpp;
    ``textEdited`` would be the user-only signal)."""

    def setText(self, text: str) -> None:
        if text != self.text:
            self.text = text
            self.emit("textChanged(QString)", text)


class QCheckBox(FakeWidget):
    """Setting ``checked`` (PythonQt maps the property to ``setChecked``) emits ``toggled`` on a change
    (QAbstractButton::setChecked)."""

    @property
    def checked(self) -> bool:
        return self.__dict__.get("_checked", False)

    @checked.setter
    def checked(self, value: bool) -> None:
        changed = bool(value) != self.__dict__.get("_checked", False)
        self.__dict__["_checked"] = bool(value)
        if changed:
            self.emit("toggled(bool)", bool(value))

    def setChecked(self, value: bool) -> None:
        self.checked = value


WIDGET_CLASSES = {"QComboBox": QComboBox, "qMRMLNodeComboBox": qMRMLNodeComboBox,
                  "qMRMLSegmentSelectorWidget": qMRMLSegmentSelectorWidget, "ctkPathLineEdit": ctkPathLineEdit,
                  "QLineEdit": QLineEdit, "QCheckBox": QCheckBox}


def _propertyValue(prop: ET.Element):
    child = list(prop)[0]
    if child.tag == "bool":
        return child.text == "true"
    if child.tag == "number":
        return int(child.text)
    if child.tag == "stringlist":
        return [s.text for s in child]
    return child.text


def loadUI(path: str):
    """The .ui file's widgets as fakes (root first); ``childWidgetVariables`` names them."""
    root = ET.parse(path).getroot()
    widgets = []
    for element in root.iter("widget"):
        properties = {p.get("name"): _propertyValue(p) for p in element.findall("property")}
        cls = WIDGET_CLASSES.get(element.get("class"), FakeWidget)
        widgets.append(cls(element.get("class"), element.get("name"), properties))
    top = widgets[0]
    top.children = widgets
    return top


def childWidgetVariables(top) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{w.name: w for w in top.children})


# ---------------------------------------------------------------------------------------------- parameter node
def parameterNodeWrapper(cls):
    """``@parameterNodeWrapper`` on the real scripted module node (Base/Python/slicer/parameterNodeWrapper/): a
    node field is a node reference (``SetNodeReferenceID``/``GetNodeReference``, so scene loading remaps it), a
    bool ``str(value)``, an enum its name, a str itself (``SetParameter``); unset fields get their default when
    the node is wrapped (wrapper.py, ``_initializeParameters``)."""
    annotations = dict(cls.__annotations__)
    defaults = {name: getattr(cls, name, None) for name in annotations}
    isNode = {name: str(kind).startswith("vtkMRML") for name, kind in annotations.items()}

    class Wrapped:
        __name__ = cls.__name__

        def __init__(self, node) -> None:
            object.__setattr__(self, "parameterNode", node)
            for name in annotations:
                if not isNode[name] and not node.GetParameter(name) and defaults[name] is not None:
                    setattr(self, name, defaults[name])

        def __getattr__(self, name):
            if name not in annotations:
                raise AttributeError(name)
            node = object.__getattribute__(self, "parameterNode")
            if isNode[name]:
                return node.GetNodeReference(name)
            text = node.GetParameter(name)
            default = defaults[name]
            if isinstance(default, bool):
                return text == "True"
            if isinstance(default, enum.Enum):
                return type(default)[text] if text else default
            return text

        def __setattr__(self, name, value):
            if name not in annotations:
                raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
            node = object.__getattribute__(self, "parameterNode")
            if isNode[name]:
                node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
            elif isinstance(value, enum.Enum):
                node.SetParameter(name, value.name)
            else:
                node.SetParameter(name, str(value))

        def connectGui(self, ui) -> int:
            """Bind widgets that name a parameter; their handlers come after the ones connected before."""
            bindings = []
            for widget in vars(ui).values():
                parameter = widget.properties.get("SlicerParameterName")
                if not parameter:
                    continue
                if isinstance(widget, qMRMLNodeComboBox):
                    widget.setCurrentNode(getattr(self, parameter))
                    slot = (lambda p: lambda node: setattr(self, p, node))(parameter)
                    signature = "currentNodeChanged(vtkMRMLNode*)"
                else:
                    widget.checked = bool(getattr(self, parameter))
                    slot = (lambda p: lambda checked: setattr(self, p, bool(checked)))(parameter)
                    signature = "toggled(bool)"
                widget.connect(signature, slot)
                bindings.append((widget, signature, slot))
            tag = id(bindings)
            _GUI_BINDINGS[tag] = bindings
            return tag

        def disconnectGui(self, tag) -> None:
            for widget, signature, slot in _GUI_BINDINGS.pop(tag, []):
                widget.disconnect(signature, slot)

    return Wrapped


_GUI_BINDINGS: Dict[int, list] = {}




# ---------------------------------------------------------------------------------------------- dialogs
def errorDisplay(text, **kwargs) -> None:
    STATE.errorDialogs.append(str(text))
    STATE.errorDialogsWithProgressOpen.append(sum(dialog.visible for dialog in STATE.progressDialogs))


def confirmOkCancelDisplay(text, **kwargs) -> bool:
    STATE.confirmQuestions.append(str(text))
    return STATE.confirmAnswers.pop(0) if STATE.confirmAnswers else False


confirmYesNoDisplay = confirmOkCancelDisplay



# ---------------------------------------------------------------------------------------------- app and qt


class FakeApp:
    """``slicer.app`` (qSlicerApplication, Base/QTGUI/qSlicerApplication.h; qSlicerCoreApplication.h): its GUI side
    is recorded; ``applicationLogic()`` is the real ``vtkSlicerApplicationLogic`` that ``real_slicer`` made."""

    def __init__(self, applicationLogic=None, scene=None) -> None:
        self._applicationLogic = applicationLogic
        self._scene = scene
        self._moduleManager = ModuleManager()

    def processEvents(self) -> None:
        STATE.processEventsCalls += 1

    def setOverrideCursor(self, cursor) -> None:
        STATE.overrideCursorDepth += 1

    def restoreOverrideCursor(self) -> None:
        STATE.overrideCursorDepth -= 1

    def pauseRender(self) -> None:
        STATE.pauseRenderDepth += 1

    def resumeRender(self) -> None:
        STATE.pauseRenderDepth -= 1

    def testingEnabled(self) -> bool:
        return False

    def applicationLogic(self):
        return self._applicationLogic

    def mrmlScene(self):
        return self._scene

    def moduleManager(self):
        return self._moduleManager

    def openExtensionsManagerDialog(self) -> None:
        pass


class qSlicerScriptedLoadableModule:
    """A scripted module as ``slicer.util.getModuleLogic`` sees it (Base/QTGUI/qSlicerScriptedLoadableModule.h):
    its widget representation's ``self()`` is the Python widget."""

    def __init__(self, name: str, widget=None) -> None:
        self.name = name
        self.widget = widget

    def widgetRepresentation(self):
        return qSlicerScriptedLoadableModuleWidget(self.widget) if self.widget is not None else None


class qSlicerScriptedLoadableModuleWidget:
    def __init__(self, widget) -> None:
        self._self = widget

    def self(self):
        return self._self


class qSlicerCoreModule:
    """A C++ loadable module (qSlicerAbstractCoreModule.h): ``logic()`` is its real VTK logic."""

    def __init__(self, name: str, logic) -> None:
        self.name = name
        self._logic = logic

    def logic(self):
        return self._logic


class ModuleManager:
    """``slicer.app.moduleManager().module(name)`` (Base/QTCore/qSlicerModuleManager.h)."""

    def __init__(self) -> None:
        self.modules: Dict[str, Any] = {}

    def module(self, name: str):
        return self.modules.get(name)


app = FakeApp()


class Qt:
    WaitCursor = 3
    WindowModal = 1


class QSettings:
    """Values as Slicer's .ini file gives them back after a restart: a bool is stored as "true"/"false" and read
    back as that string (QSettingsPrivate::variantToString in Qt's qsettings.cpp; the reason
    ``slicer.util.toBool`` exists, Base/Python/slicer/util.py)."""

    def value(self, key, default=None):
        return STATE.settings.get(key, default)

    def setValue(self, key, value) -> None:
        STATE.settings[key] = ("true" if value else "false") if isinstance(value, bool) else value

    def contains(self, key) -> bool:
        return key in STATE.settings

    def remove(self, key) -> None:
        STATE.settings.pop(key, None)


class QProgressDialog:
    def __init__(self, text, cancel, lo, hi, parent=None) -> None:
        self.text, self.visible = text, False
        STATE.progressDialogs.append(self)

    def setCancelButton(self, button) -> None:
        pass

    def setWindowModality(self, modality) -> None:
        pass

    def setWindowTitle(self, title) -> None:
        pass

    def show(self) -> None:
        self.visible = True

    def close(self) -> None:
        self.visible = False

    def setLabelText(self, text) -> None:
        self.text = text

    def setRange(self, lo, hi) -> None:
        pass

    def setValue(self, value) -> None:
        pass


class QTimer:
    @staticmethod
    def singleShot(ms, callback) -> None:
        STATE.timers.append(callback)


class QShortcut(FakeWidget):
    def __init__(self, keys, parent=None) -> None:
        super().__init__("QShortcut", str(keys))

    def setParent(self, parent) -> None:
        pass


def QKeySequence(keys: str) -> str:
    return keys


# ---------------------------------------------------------------------------------------------- ScriptedLoadableModule
class ScriptedLoadableModule:
    def __init__(self, parent) -> None:
        self.parent = parent
        self.moduleName = self.__class__.__name__


class ScriptedLoadableModuleLogic:
    """Base/Python/slicer/ScriptedLoadableModule.py: the module's parameter node is the scene's singleton
    ``vtkMRMLScriptedModuleNode`` tagged with the module name (created and added when missing; the ``ModuleName``
    attribute is put back when a scene close removed it)."""

    def __init__(self, parent=None) -> None:
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Logic"):
            self.moduleName = self.moduleName[:-5]

    def getParameterNode(self):
        scene = sys.modules["slicer"].mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node:
            if node.GetAttribute("ModuleName") != self.moduleName:
                node.SetAttribute("ModuleName", self.moduleName)
            return node
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(self.moduleName)
        node.SetName(scene.GenerateUniqueName(self.moduleName))
        node.SetAttribute("ModuleName", self.moduleName)
        return scene.AddNode(node)


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None) -> None:
        self.parent = parent or types.SimpleNamespace(isEntered=True)
        self.layout = types.SimpleNamespace(addWidget=lambda widget: None)

    def setup(self) -> None:
        pass

    def resourcePath(self, filename: str) -> str:
        return str(MODULE_DIR / "Resources" / filename)


class ScriptedLoadableModuleTest:
    def delayDisplay(self, message, msec=0) -> None:
        pass


def translate(context: str, text: str) -> str:
    """``slicer.i18n.translate`` (Base/Python/slicer/i18n.py: ``qt.QCoreApplication.translate``), recorded."""
    STATE.translations.append((context, text))
    return text


def state() -> FakeState:
    return STATE


def reset() -> FakeState:
    """A new state (each ``real_slicer.install()``)."""
    global STATE
    STATE = FakeState()
    return STATE
