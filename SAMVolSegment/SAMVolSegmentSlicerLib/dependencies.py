"""What the engine needs inside Slicer's Python, what is missing, and how to install it without harm.

Rules (from the Slicer ecosystem survey): torch comes from the PyTorch extension (``PyTorchUtils``, which
picks a CUDA build matching the driver); numpy, SimpleITK, requests (and scipy, VTK) are Slicer's own builds
and must never be replaced by pip, so they are never installed by this module and are pinned to their current
versions during any pip install; anything else is installed only after the user clicks, on the main thread.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

#: Minimum torch: the engine uses only APIs that exist in torch 2.1 (Slicer 5.6/5.8 can get up to 2.6/2.8).
TORCH_REQUIREMENT = ">=2.1"

#: Distributions Slicer ships (or the PyTorch extension manages) that pip must never replace.
PROTECTED_DISTRIBUTIONS = frozenset({"numpy", "simpleitk", "requests", "scipy", "vtk", "torch", "torchvision"})


@dataclass(frozen=True)
class Requirement:
    """One import the engine needs.

    Attributes:
        import_name: module name to import.
        pip_spec: pip requirement (name + version specifier).
        provider: ``"slicer"`` (bundled; missing means a broken Slicer), ``"pytorch"`` (the PyTorch extension)
            or ``"pip"`` (installed on the user's click).
    """

    import_name: str
    pip_spec: str
    provider: str

    @property
    def distribution(self) -> str:
        """Normalised distribution name of ``pip_spec`` (lower case, ``-``/``_``/``.`` folded to ``-``)."""
        return normalize_name(re.split(r"[\s<>=!~;\[]", self.pip_spec.strip(), maxsplit=1)[0])


#: The engine's imports. Keep in step with pyproject's ``[project].dependencies``.
ENGINE_REQUIREMENTS: Tuple[Requirement, ...] = (
    Requirement("numpy", "numpy", "slicer"),
    Requirement("SimpleITK", "SimpleITK", "slicer"),
    Requirement("torch", f"torch{TORCH_REQUIREMENT}", "pytorch"),
)


def normalize_name(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def is_importable(import_name: str) -> bool:
    """True when ``import_name`` can be found without importing it (importing torch takes seconds)."""
    try:
        return importlib.util.find_spec(import_name) is not None
    except (ImportError, ValueError):
        return False


def missing_requirements(
    requirements: Iterable[Requirement] = ENGINE_REQUIREMENTS,
    importable: Callable[[str], bool] = is_importable,
) -> List[Requirement]:
    """The requirements whose module cannot be found, in the given order."""
    return [req for req in requirements if not importable(req.import_name)]


def version_tuple(version: str) -> Tuple[int, ...]:
    """Leading numeric release of a version string: ``"2.6.0+cu126"`` → ``(2, 6, 0)``."""
    parts = []
    for piece in re.split(r"[.+-]", version.strip()):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
        if match.group() != piece:
            break
    return tuple(parts)


def version_at_least(version: str, minimum: str) -> bool:
    """True when ``version``'s release is ≥ ``minimum`` (pre-release tags are ignored)."""
    have, need = version_tuple(version), version_tuple(minimum)
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))


def installed_versions(names: Iterable[str] = PROTECTED_DISTRIBUTIONS) -> Dict[str, Optional[str]]:
    """Installed version of each distribution (normalised name → version, None when it has no metadata).

    Slicer builds SimpleITK from source, so it may be importable without pip metadata.
    """
    out: Dict[str, Optional[str]] = {}
    for name in names:
        try:
            out[normalize_name(name)] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[normalize_name(name)] = None
    return out


@dataclass(frozen=True)
class PipPlan:
    """A safe pip invocation: what to install, which installed packages to pin, and whether to skip deps."""

    specs: Tuple[str, ...]
    constraints: Tuple[str, ...]
    no_deps: bool

    def arguments(self, constraints_path: Optional[str]) -> List[str]:
        """Arguments for ``slicer.util.pip_install`` (a list is passed to pip as is).

        ``constraints_path`` is the file the caller wrote ``constraints`` into (one per line).
        """
        args = list(self.specs)
        if self.constraints and constraints_path:
            args += ["--constraint", os.fspath(constraints_path)]
        if self.no_deps:
            args.append("--no-deps")
        return args


def pip_plan(
    requirements: Sequence[Requirement],
    versions: Optional[Dict[str, Optional[str]]] = None,
) -> PipPlan:
    """Plan the pip install of the ``"pip"`` requirements among ``requirements``.

    Protected packages Slicer ships are pinned to their installed versions with a constraints file, so pip
    fails instead of replacing them; when one of them is importable but has no pip metadata (Slicer's source
    build of SimpleITK), pins cannot protect it, so dependencies are not installed at all (``--no-deps``).

    Raises:
        ValueError: a requirement asks pip for a protected package (torch must come from PyTorchUtils).
    """
    versions = installed_versions() if versions is None else versions
    specs = []
    for req in requirements:
        if req.provider != "pip":
            continue
        if req.distribution in PROTECTED_DISTRIBUTIONS:
            raise ValueError(
                f"{req.pip_spec} must not be installed with pip inside Slicer: it is provided by Slicer or the "
                "PyTorch extension."
            )
        specs.append(req.pip_spec)
    constraints = tuple(
        f"{name}=={version}"
        for name, version in sorted(versions.items())
        if version is not None and name in PROTECTED_DISTRIBUTIONS
    )
    unpinnable = any(version is None and is_importable_distribution(name) for name, version in versions.items())
    return PipPlan(specs=tuple(specs), constraints=constraints, no_deps=bool(specs) and unpinnable)


def is_importable_distribution(name: str) -> bool:
    """Whether the module of a protected distribution can be found (its import name may differ)."""
    import_names = {"simpleitk": "SimpleITK"}
    return is_importable(import_names.get(name, name.replace("-", "_")))


def engine_import_root(module_dir: str) -> Optional[str]:
    """The folder to put on ``sys.path`` so ``import SAMVolSegmentLib`` works, or None if it already does.

    Installed builds place ``SAMVolSegmentLib/`` beside the module file (``WITH_SUBDIR``), and Slicer puts the
    module's folder on ``sys.path``. Loaded from source ("Additional module paths" = ``<repo>/SAMVolSegment``),
    the engine is one level up, in the repository root.
    """
    module_dir = os.path.abspath(module_dir)
    for candidate in (module_dir, os.path.dirname(module_dir)):
        if os.path.isfile(os.path.join(candidate, "SAMVolSegmentLib", "__init__.py")):
            return None if candidate == module_dir else candidate
    raise FileNotFoundError(
        f"SAMVolSegmentLib was not found beside {module_dir} or in its parent folder: reinstall the extension, "
        "or add the repository's SAMVolSegment folder (not a copy of it) to Additional module paths."
    )


class InstallError(RuntimeError):
    """A dependency is missing or failed to install; ``restartRequired`` says whether Slicer must restart."""

    def __init__(self, message: str, restartRequired: bool = False) -> None:
        super().__init__(message)
        self.restartRequired = restartRequired


def check_dependencies(importable: Callable[[str], bool] = is_importable) -> None:
    """Raise :class:`InstallError` naming the fix when an engine requirement is missing."""
    missing = missing_requirements(importable=importable)
    if not missing:
        return
    names = ", ".join(req.import_name for req in missing)
    if any(req.provider == "pytorch" for req in missing):
        raise InstallError(
            f"PyTorch is not installed ({names}). Click 'Install dependencies' (under 'Model and settings'), or "
            "install the PyTorch extension from the Extensions Manager and use its module to install torch.")
    raise InstallError(f"Missing Python packages: {names}. Reinstall Slicer: these ship with it.")


def python_slicer_executable(which: Callable[[str], Optional[str]] = None, executable: str = "") -> str:
    """Slicer's command-line Python (``PythonSlicer``), found as ``slicer.util`` finds it for pip.

    Raises:
        InstallError: it cannot be found.
    """
    import shutil
    import sys

    which = shutil.which if which is None else which
    found = which("PythonSlicer")
    if found:
        return found
    candidate = os.path.join(os.path.dirname(executable or sys.executable), "PythonSlicer")
    for path in (candidate, candidate + ".exe"):
        if os.path.isfile(path):
            return path
    raise InstallError("Slicer's PythonSlicer executable was not found: install torch from the PyTorch module "
                       "(Extensions Manager, 'PyTorch') instead.")


def torch_install_commands(python: str, constraints_path: Optional[str] = None) -> List[List[str]]:
    """The commands that install torch as the PyTorch extension does: light-the-torch picks a build that
    matches the NVIDIA driver (or the CPU build). Mirrors ``PyTorchUtilsLogic.installTorch`` (SlicerPyTorch).
    With ``constraints_path`` both pass it to pip (``ltt install`` forwards pip's options), so neither replaces a
    package Slicer ships (:func:`write_protected_constraints`)."""
    pinned = ["--constraint", os.fspath(constraints_path)] if constraints_path else []
    return [
        [python, "-m", "pip", "install", "light-the-torch>=0.5", *pinned],
        [python, "-m", "light_the_torch", "install", f"torch{TORCH_REQUIREMENT}", *pinned],
    ]


def write_protected_constraints() -> Optional[str]:
    """A pip constraints file pinning the protected packages installed here (numpy, requests, ... as Slicer ships
    them: :func:`pip_plan`); its path, or None when none is installed with pip metadata."""
    import tempfile

    constraints = pip_plan([]).constraints
    if not constraints:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="SAMVolSegment-constraints-", delete=False) as f:
        f.write("\n".join(constraints) + "\n")
    return f.name


class TorchInstallJob:
    """Runs the torch install commands on a background thread, so Slicer stays responsive for minutes.

    The main thread polls ``done``/``lastLine``/``error``; output lines accumulate in ``lines``. A failed
    command becomes an :class:`InstallError` holding its last output lines (never an escaping
    ``CalledProcessError``).
    """

    def __init__(self, commands: Sequence[Sequence[str]], run: Optional[Callable] = None) -> None:
        import threading

        self.commands = [list(c) for c in commands]
        self.lines: List[str] = []
        self.error: Optional[BaseException] = None
        self._done = threading.Event()
        self._run = run or self._runCommand
        self._thread = threading.Thread(target=self._main, name="SAMVolSegment-install", daemon=True)

    @classmethod
    def fromSlicer(cls, confirm: Callable[[str], bool]) -> Optional[TorchInstallJob]:
        """A job for this Slicer after the user confirms; None when they decline.

        Raises:
            InstallError: the PyTorch extension is missing (restart required after installing it).
        """
        if not is_importable("PyTorchUtils"):
            raise InstallError("The PyTorch extension is required: install 'PyTorch' from the Extensions Manager, "
                               "restart Slicer, then click 'Install dependencies' again.", restartRequired=True)
        commands = torch_install_commands(python_slicer_executable(), write_protected_constraints())
        if not confirm("PyTorch will be downloaded and installed (this can take several minutes):\n\n"
                       + "\n".join(" ".join(c) for c in commands)):
            return None
        return cls(commands)

    @property
    def done(self) -> bool:
        """True once every command finished or one failed."""
        return self._done.is_set()

    @property
    def lastLine(self) -> str:
        """The latest output line (for the status line)."""
        return self.lines[-1] if self.lines else ""

    def start(self) -> None:
        """Start the background thread."""
        self._thread.start()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until done (tests and scripts); returns ``done``."""
        return self._done.wait(timeout)

    def _main(self) -> None:
        try:
            for command in self.commands:
                code = self._run(command, self.lines.append)
                if code != 0:
                    tail = "\n".join(self.lines[-5:])
                    raise InstallError(f"Installing PyTorch failed ({' '.join(command)} exited with {code}). "
                                       f"Check the network connection and disk space, then try again.\n\n{tail}")
        except BaseException as exc:  # delivered to the main thread through ``error``
            self.error = exc if isinstance(exc, InstallError) else InstallError(f"Installing PyTorch failed: {exc}")
        finally:
            self._done.set()

    @staticmethod
    def _runCommand(command: Sequence[str], onLine: Callable[[str], None]) -> int:
        import subprocess

        process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   errors="replace")
        assert process.stdout is not None
        for line in process.stdout:
            onLine(line.rstrip())
        return process.wait()
