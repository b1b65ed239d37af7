"""Packaging for Slicer users: the Extensions Index entry agrees with CMakeLists.txt and pyproject.toml, and the
release ZIP installs by "Additional module paths" (docs/PACKAGING.md)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ROOT / "Packaging" / "SAMVolSegment.json"
#: The properties of the Extensions Index's catalog entry schema v1.0.2 (Slicer/ExtensionsIndex, schemas/), which
#: allows no others ("additionalProperties": false); "$schema", "category" and "scm_url" are required.
SCHEMA_PROPERTIES = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                     "dicom_support_rule", "build_subdirectory", "enabled", "tier"}


def cmake_setting(name: str) -> str:
    match = re.search(rf'set\({name} "([^"]*)"\)', (ROOT / "CMakeLists.txt").read_text(encoding="utf-8"))
    assert match, f"{name} not set in CMakeLists.txt"
    return match.group(1)


def project_urls() -> dict:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.urls]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^(\w+) = "([^"]+)"', section, flags=re.M))


def test_the_extensions_index_entry_follows_the_schema_and_agrees_with_cmake_and_pyproject():
    entry = json.loads(ENTRY.read_text(encoding="utf-8"))
    assert set(entry) <= SCHEMA_PROPERTIES, set(entry) - SCHEMA_PROPERTIES
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.2.json#")
    assert entry["category"] == cmake_setting("EXTENSION_CATEGORY")
    assert entry["build_dependencies"] == cmake_setting("EXTENSION_DEPENDS").split()
    assert entry["build_subdirectory"] == "." and 1 <= entry["tier"] <= 5
    homepage = cmake_setting("EXTENSION_HOMEPAGE")
    assert entry["scm_url"] == homepage + ".git"
    assert project_urls() == {"Homepage": homepage, "Repository": homepage}
    icon = cmake_setting("EXTENSION_ICONURL")
    prefix = homepage.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    assert icon.startswith(prefix) and (ROOT / icon[len(prefix):]).is_file(), icon


def test_the_release_zip_installs_by_additional_module_paths(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (the release ZIP is made from a commit)")
    made = subprocess.run([str(ROOT / "scripts" / "release_zip.sh"), "HEAD", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    archive = Path(made.stdout.strip().splitlines()[-1])
    version = re.search(r'^version = "(.*)"$', (ROOT / "pyproject.toml").read_text(), flags=re.M).group(1)
    assert archive.name == f"SAMVolSegment-{version}.zip"
    with zipfile.ZipFile(archive) as z:
        z.extractall(tmp_path / "unpacked")
    top = tmp_path / "unpacked" / f"SAMVolSegment-{version}"
    module_dir = top / "SAMVolSegment"  # the folder the docs say to add to Additional module paths
    assert (module_dir / "SAMVolSegment.py").is_file()
    assert list((top / "SAMVolSegmentLib" / "model" / "weights").glob("*.pt")), "the bundled model is in the ZIP"
    # The module's own lookup (SAMVolSegmentSlicerLib.dependencies, as Slicer runs it) finds the engine.
    check = (f"import sys; sys.path.insert(0, {str(module_dir)!r}); "
             "from SAMVolSegmentSlicerLib.dependencies import engine_import_root; "
             f"root = engine_import_root({str(module_dir)!r}); sys.path.insert(0, root); "
             "import SAMVolSegmentLib, SAMVolSegmentLib.model.registry as r; print(root); print(SAMVolSegmentLib.__file__)")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    root, engine = done.stdout.split()
    assert Path(root) == top and Path(engine).is_relative_to(top)
