"""The package's layers (docs/ARCHITECTURE.md): dependencies point one way and there are no import circles.

Every import statement counts, including the ones inside functions (lazy imports are how the old circles
hid). Layers, lowest first: the foundation modules, ``model``, ``engine``, ``tools``, then the applications
(``cli``, ``batch``, ``remote``) and the package's public API (``__init__``). A module may import its own
layer and the ones below it, never above.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = "SAMVolSegmentLib"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

FOUNDATION = ("errors", "io_utils", "download", "progress")
LAYER_NAMES = ("foundation", "model", "engine", "tools", "applications")


def layer_of(module: str) -> int:
    """Layer index of a dotted module name inside the package ("" is the package itself)."""
    top = module.split(".")[0]
    if top in FOUNDATION:
        return 0
    if top in ("model", "engine", "tools"):
        return LAYER_NAMES.index(top)
    if top in ("cli", "batch", "remote", ""):
        return 4
    raise AssertionError(f"{PACKAGE}.{module} belongs to no layer: add it to one in this test and in "
                         "docs/ARCHITECTURE.md")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> Dict[str, Set[str]]:
    """Module → the package modules it imports (names relative to the package; "" is the package)."""
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: Dict[str, Set[str]] = {}
    for name, path in files.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        package = [p for p in package if p]
        targets: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                elif node.module and (node.module == PACKAGE or node.module.startswith(PACKAGE + ".")):
                    module = node.module[len(PACKAGE) + 1:]
                else:
                    continue
                for alias in node.names:  # `from .engine import clicks` imports the submodule
                    submodule = f"{module}.{alias.name}" if module else alias.name
                    targets.add(submodule if submodule in files else module)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(PACKAGE + "."):
                        targets.add(alias.name[len(PACKAGE) + 1:])
        graph[name] = {t for t in targets if t != name}
    return graph


def test_every_module_imports_only_its_own_layer_or_below():
    violations = [
        f"{PACKAGE}.{source} ({LAYER_NAMES[layer_of(source)]}) imports {PACKAGE}.{target} "
        f"({LAYER_NAMES[layer_of(target)]})"
        for source, targets in sorted(import_graph().items()) for target in sorted(targets)
        if layer_of(target) > layer_of(source)
    ]
    assert not violations, "imports against the layers:\n" + "\n".join(violations)


def strongly_connected(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Tarjan's algorithm, iterative: the components with more than one module (import circles)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    circles: List[List[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next((c for c in children if c in graph), None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return circles


def test_no_import_circles():
    circles = strongly_connected(import_graph())
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_the_circle_finder_finds_a_circle():
    """The check above can fail: a made-up graph with a circle is reported, one without is not."""
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_the_layer_rule_sees_lazy_imports(tmp_path):
    """An import inside a function counts: the graph of a module that imports upwards lazily has the edge."""
    graph = import_graph()
    assert "engine.geometry" in graph["engine.session"]
    assert any(target.startswith("model") for target in graph["engine.predictor"] | graph["engine.session"]
               | graph["engine.proposals"])


BLOCKED = ("matplotlib", "dask", "distributed", "fastapi", "uvicorn", "starlette", "requests", "tqdm", "httpx")


def test_engine_runs_without_the_tools_dependencies():
    """A fresh interpreter that cannot import the tools' and applications' dependencies still imports the
    engine and the model, and runs a click with the bundled model."""
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = {BLOCKED!r}

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked for this test: {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        import numpy as np
        import SimpleITK as sitk
        from SAMVolSegmentLib import InteractiveSession, load_model, lps_to_ras
        from SAMVolSegmentLib.engine import clicks, geometry, metrics, preprocessing, prompts_io, proposals
        from SAMVolSegmentLib.model import adapters, proposal_head, registry

        array = np.zeros((24, 40, 40), np.float32)
        array[8:16, 14:26, 14:26] = 100.0
        session = InteractiveSession(load_model("default"))
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((1.0, 1.0, 2.0))
        session.set_volume(image)
        update = session.add_click(lps_to_ras(image.TransformIndexToPhysicalPoint((20, 20, 12))), positive=True)
        assert update.mask.any()
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


@pytest.mark.parametrize("name", ["InteractiveSession", "LocalSession", "Click", "Predictor", "MaskUpdate",
                                  "segment", "segment_cases", "BatchCase", "CaseResult", "lps_to_ras",
                                  "ras_to_lps", "load_model", "build_model", "ModelConfig", "RemoteSession"])
def test_public_api_is_where_it_was(name):
    import SAMVolSegmentLib

    assert getattr(SAMVolSegmentLib, name) is not None


def test_documented_module_paths_still_import():
    """Paths the README and docs/SLICER.md name (user code and Slicer's console use them)."""
    from SAMVolSegmentLib.batch import run_prompts, segment_volume
    from SAMVolSegmentLib.errors import InvalidPromptError
    from SAMVolSegmentLib.remote import RemoteSession

    assert callable(segment_volume) and callable(run_prompts) and RemoteSession and InvalidPromptError
