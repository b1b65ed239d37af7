"""Static checks of the Slicer module that need no Slicer: the .ui form, CMake lists, and py39 lint."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "SAMVolSegment"
MODULE_FILE = MODULE_DIR / "SAMVolSegment.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "SAMVolSegment.ui"


def ui_widgets() -> dict:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


# The module file and every helper that looks up the panel's widgets (settings_panel, propose, ...).
UI_USERS = [MODULE_FILE] + sorted(p for p in (MODULE_DIR / "SAMVolSegmentSlicerLib").glob("*.py")
                                  if re.search(r"\bui\.\w+", p.read_text(encoding="utf-8")))


@pytest.mark.parametrize("path", UI_USERS, ids=lambda p: p.name)
def test_ui_parses_and_has_every_widget_the_module_uses(path):
    widgets = ui_widgets()
    used = set(re.findall(r"\bui\.(\w+)", path.read_text(encoding="utf-8")))
    assert used, "the file looks up no widget: the regex is wrong"
    missing = sorted(used - set(widgets))
    assert not missing, f"widgets used by {path.name} but absent from the .ui: {missing}"


def test_token_field_hides_its_text_and_is_not_a_scene_parameter():
    root = ET.parse(UI_FILE).getroot()
    token = next(w for w in root.iter("widget") if w.get("name") == "serverTokenLineEdit")
    props = {p.get("name"): p for p in token.findall("property")}
    assert props["echoMode"].find("enum").text == "QLineEdit::Password"
    assert "SlicerParameterName" not in props, "the token must never be bound to the parameter node"


def test_parameter_bindings_name_real_parameters():
    root = ET.parse(UI_FILE).getroot()
    bound = {
        prop.find("string").text
        for prop in root.iter("property")
        if prop.get("name") == "SlicerParameterName"
    }
    tree = ast.parse(MODULE_FILE.read_text())
    node_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SAMVolSegmentParameterNode")
    fields = {s.target.id for s in node_class.body if isinstance(s, ast.AnnAssign)}
    assert bound and bound <= fields, f"unknown parameter names in the .ui: {sorted(bound - fields)}"


def test_custom_widget_classes_are_declared():
    root = ET.parse(UI_FILE).getroot()
    declared = {c.find("class").text for c in root.iter("customwidget")}
    used = {cls for cls in ui_widgets().values() if cls.startswith(("ctk", "qMRML", "qSlicer"))}
    assert used <= declared, f"custom widgets without <customwidget>: {sorted(used - declared)}"


def test_module_classes_follow_slicer_naming():
    tree = ast.parse(MODULE_FILE.read_text())
    names = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    for suffix in ("", "Widget", "Logic", "Test", "ParameterNode"):
        assert f"SAMVolSegment{suffix}" in names


def test_cmake_lists_every_helper_and_resource():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    for path in sorted((MODULE_DIR / "SAMVolSegmentSlicerLib").glob("*.py")):
        assert f"${{MODULE_NAME}}SlicerLib/{path.name}" in cmake, f"{path.name} not in SAMVolSegment/CMakeLists.txt"
    for resource in re.findall(r"(Resources/\S+)", cmake):
        assert (MODULE_DIR / resource.replace("${MODULE_NAME}", "SAMVolSegment")).is_file(), resource
    top = (REPO / "CMakeLists.txt").read_text()
    assert 'EXTENSION_DEPENDS "PyTorch"' in top and "add_subdirectory(SAMVolSegmentLib)" in top
    assert "WITH_SUBDIR" in (REPO / "SAMVolSegmentLib" / "CMakeLists.txt").read_text()
    assert "WITH_GENERIC_TESTS" in cmake


def test_module_file_stays_ascii_and_under_900_lines():
    # ASCII: Slicer and these tests may read it with the locale's encoding. Under 900 lines (issue 9): what is
    # not the module classes' glue belongs in SAMVolSegmentSlicerLib.
    data = MODULE_FILE.read_bytes()
    assert data.isascii(), [n for n, line in enumerate(data.splitlines(), 1) if not line.isascii()]
    assert len(data.splitlines()) < 900
    assert {"settings_panel.py", "propose.py"} <= {p.name for p in UI_USERS}


def test_no_extra_top_level_python_files_in_module_folder():
    # Slicer's scripted-module factory treats every .py file there as a module.
    assert sorted(p.name for p in MODULE_DIR.glob("*.py")) == ["SAMVolSegment.py"]


@pytest.mark.parametrize("target", ["py39"])
def test_module_passes_ruff_at_py39(target):
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed")
    files = [str(MODULE_FILE), *map(str, sorted((MODULE_DIR / "SAMVolSegmentSlicerLib").glob("*.py")))]
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--target-version", target, *files], capture_output=True, text=True,
                            cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
