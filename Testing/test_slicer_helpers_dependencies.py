"""Dependency checks and safe pip plans of the Slicer module (no Slicer, no network)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SAMVolSegment"))

from SAMVolSegmentSlicerLib import dependencies as dep  # noqa: E402


def test_missing_requirements_uses_the_injected_check():
    missing = dep.missing_requirements(importable=lambda name: name != "torch")
    assert [r.import_name for r in missing] == ["torch"]
    assert missing[0].provider == "pytorch"
    # With the real check in this environment, the engine's imports are all present.
    assert dep.missing_requirements() == []


def test_requirement_distribution_names():
    assert dep.Requirement("x", "Some_Pkg.Name>=1.2", "pip").distribution == "some-pkg-name"
    assert dep.Requirement("torch", "torch>=2.1", "pytorch").distribution == "torch"


@pytest.mark.parametrize(
    ("version", "minimum", "ok"),
    [("2.6.0+cu126", "2.1", True), ("2.1", "2.1.0", True), ("2.0.1", "2.1", False), ("2.10.0", "2.9", True),
     ("2.1.0rc1", "2.1", True), ("1.13.1", "2.1", False)],
)
def test_version_at_least(version, minimum, ok):
    assert dep.version_at_least(version, minimum) is ok


def test_pip_plan_pins_protected_packages_and_refuses_to_install_them():
    versions = {"numpy": "1.26.4", "requests": "2.31.0", "simpleitk": None, "torch": "2.6.0"}
    plan = dep.pip_plan([dep.Requirement("tqdm", "tqdm>=4.60", "pip")], versions)
    assert plan.specs == ("tqdm>=4.60",)
    assert plan.constraints == ("numpy==1.26.4", "requests==2.31.0", "torch==2.6.0")
    # SimpleITK is importable here but has "no metadata" in this plan: pins cannot protect it.
    assert plan.no_deps
    args = plan.arguments("/tmp/c.txt")
    assert args == ["tqdm>=4.60", "--constraint", "/tmp/c.txt", "--no-deps"]
    with pytest.raises(ValueError, match="PyTorch extension"):
        dep.pip_plan([dep.Requirement("numpy", "numpy>=2", "pip")], versions)
    # Requirements provided by Slicer or the PyTorch extension are never handed to pip.
    assert dep.pip_plan(list(dep.ENGINE_REQUIREMENTS), versions).specs == ()


def test_pip_plan_with_full_metadata_keeps_dependencies():
    versions = {"numpy": "1.26.4", "simpleitk": "2.3.1"}
    plan = dep.pip_plan([dep.Requirement("tqdm", "tqdm", "pip")], versions)
    assert not plan.no_deps and "simpleitk==2.3.1" in plan.constraints


def test_engine_import_root_from_source_and_installed(tmp_path):
    assert dep.engine_import_root(str(REPO / "SAMVolSegment")) == str(REPO)
    installed = tmp_path / "qt-scripted-modules"
    (installed / "SAMVolSegmentLib").mkdir(parents=True)
    (installed / "SAMVolSegmentLib" / "__init__.py").write_text("")
    assert dep.engine_import_root(str(installed)) is None
    with pytest.raises(FileNotFoundError, match="Additional module paths"):
        dep.engine_import_root(str(tmp_path / "elsewhere" / "SAMVolSegment"))


def test_check_dependencies_names_the_fix():
    from SAMVolSegmentSlicerLib.dependencies import InstallError, check_dependencies

    check_dependencies(importable=lambda name: True)
    with pytest.raises(InstallError, match="Install dependencies"):
        check_dependencies(importable=lambda name: name != "torch")


def test_torch_install_job_runs_off_the_calling_thread_and_reports_failure():
    import threading

    from SAMVolSegmentSlicerLib.dependencies import InstallError, TorchInstallJob, torch_install_commands

    commands = torch_install_commands("/opt/slicer/bin/PythonSlicer")
    assert commands[-1][1:] == ["-m", "light_the_torch", "install", "torch>=2.1"]
    threads = []

    def fake_run(command, on_line):
        threads.append(threading.current_thread())
        on_line(f"running {command[2]}")
        return 0 if command[2] == "pip" else 1

    job = TorchInstallJob(commands, run=fake_run)
    job.start()
    assert job.wait(5)
    assert threads and all(t is not threading.current_thread() for t in threads)
    assert isinstance(job.error, InstallError) and "exited with 1" in str(job.error)
    assert job.lastLine == "running light_the_torch"


def test_torch_install_job_turns_an_exception_into_an_install_error():
    from SAMVolSegmentSlicerLib.dependencies import InstallError, TorchInstallJob

    def boom(command, on_line):
        raise OSError("no such file")

    job = TorchInstallJob([["python", "-m", "pip"]], run=boom)
    job.start()
    job.wait(5)
    assert isinstance(job.error, InstallError) and "no such file" in str(job.error)


def test_python_slicer_executable_is_found_or_named():
    from SAMVolSegmentSlicerLib.dependencies import InstallError, python_slicer_executable

    assert python_slicer_executable(which=lambda name: "/x/PythonSlicer") == "/x/PythonSlicer"
    with pytest.raises(InstallError, match="PyTorch module"):
        python_slicer_executable(which=lambda name: None, executable="/nonexistent/bin/SlicerApp")


def test_torch_install_pins_the_packages_slicer_ships(monkeypatch):
    """docs/SLICER.md promises pip never replaces Slicer's numpy, SimpleITK or requests: the torch install (pip
    for light-the-torch, then light-the-torch for torch) runs with a constraints file pinning the protected
    packages Slicer has installed (issue 21: it passed none)."""
    from pathlib import Path

    from SAMVolSegmentSlicerLib import dependencies

    monkeypatch.setattr(dependencies, "is_importable", lambda name: True)
    monkeypatch.setattr(dependencies, "python_slicer_executable", lambda: "/opt/slicer/bin/PythonSlicer")
    monkeypatch.setattr(dependencies, "installed_versions",
                        lambda names=dependencies.PROTECTED_DISTRIBUTIONS: {"numpy": "1.26.4", "requests": "2.31.0",
                                                                            "simpleitk": None, "torch": None})
    questions = []
    job = dependencies.TorchInstallJob.fromSlicer(lambda question: questions.append(question) or True)
    assert job is not None and len(job.commands) == 2
    for command in job.commands:
        assert "--constraint" in command, command
        path = Path(command[command.index("--constraint") + 1])
        assert path.read_text().split() == ["numpy==1.26.4", "requests==2.31.0"]
    assert "--constraint" in questions[0]
