"""The package's modules depend one way: no import cycle (imports inside functions counted), and the layers of
docs/design.md ("Layers") hold.

An import inside a function hides a cycle from Python (it runs later) but not from a reader: the two modules
still need each other. So the graph here is read from the source (every ``import`` statement anywhere in a
module), not from what Python happened to load.
"""

from __future__ import annotations

import ast
import graphlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "edgedistill"
TOOL = Path(__file__).resolve().parents[2] / "shared" / "tools" / "import_cycles.py"

LAYERS: list[tuple[str, ...]] = [
    # 0. the base every module may use
    ("errors", "console", "storage", "tutorial", "config"),
    # 1. data and the formats users hand us (images, views, sources, splits, manifests, prompts files)
    ("data", "prompts"),
    # 2. the deploy runtime (torch-free) and the leaf that exports a torch model to ONNX with parity
    ("deploy.runtime", "deploy.quantize", "deploy.onnx"),
    # 3. frozen teachers (the ONNX Runtime teacher exports through deploy.onnx)
    ("teachers",),
    # 4. heads over teacher outputs (they take a teacher object, never build one)
    ("heads",),
    # 5. the teacher-output and pixel caches
    ("cache",),
    # 6. students, losses, training (fit, optimize)
    ("students", "losses", "training"),
    # 7. jobs over trained models and caches
    ("evaluate", "retrieve", "deploy.export", "deploy.bench", "deploy.predict", "deploy"),
    # 8. whole pipelines and the command line
    ("pipelines", "cli", ""),
]
"""Lowest first. A module may import its own layer or a lower one; ``""`` is the package itself."""


def _module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(name: str, src: Path) -> bool:
    base = src / name.replace(".", "/")
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def import_graph(package: Path = PACKAGE) -> dict[str, dict[str, str]]:
    """``{module: {imported module: "file:line"}}`` over every import statement of the package, at any depth."""
    root, src = package.name, package.parent
    graph: dict[str, dict[str, str]] = {}
    for path in sorted(package.rglob("*.py")):
        name = _module_name(path, src)
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps: dict[str, str] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolved against the importing module's package
                    base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
                # `from pkg import mod` imports the module pkg.mod; `from mod import name` the module mod
                candidates = [f"{base}.{a.name}" if _exists(f"{base}.{a.name}", src) else base for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            for target in candidates:
                if target.split(".")[0] != root:
                    continue
                while target and not _exists(target, src):  # `from pkg.mod import name`: the module is pkg.mod
                    target = target.rpartition(".")[0]
                # a module importing its own parent package runs that package's __init__ anyway: not an edge
                if target and target != name and not name.startswith(target + "."):
                    deps.setdefault(target, f"{path.relative_to(src.parent)}:{node.lineno}")
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]``, or None."""
    try:
        graphlib.TopologicalSorter({m: set(d) & set(graph) for m, d in graph.items()}).prepare()
    except graphlib.CycleError as e:
        return list(reversed(e.args[1]))  # graphlib lists it against the import direction
    return None


def layer_of(module: str) -> int:
    """The layer of a module: the one whose entry names it or its nearest enclosing package."""
    rel = module.removeprefix("edgedistill").removeprefix(".")
    best = None
    for i, names in enumerate(LAYERS):
        for prefix in names:
            if rel == prefix or (prefix and rel.startswith(prefix + ".")):
                if best is None or len(prefix) > len(best[1]):
                    best = (i, prefix)
    if best is None:
        raise AssertionError(f"module {module} is in no layer of tests/test_layers.py LAYERS (and docs/design.md); "
                             "place it in the layer whose modules it needs")
    return best[0]


def layer_violations(graph: dict[str, dict[str, str]]) -> list[str]:
    return [f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)}) at {where}"
            for m, deps in graph.items() for d, where in deps.items() if layer_of(d) > layer_of(m)]


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 30 and "edgedistill.cache" in graph  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle) + "\n" + "\n".join(
        f"  {a} -> {b}   ({graph[a][b]})" for a, b in zip(cycle, cycle[1:]))


def test_imports_follow_the_layers():
    bad = layer_violations(import_graph())
    assert not bad, "imports that climb the layers (docs/design.md, 'Layers'):\n" + "\n".join(bad)


def test_design_doc_draws_these_layers():
    """docs/design.md's layer table names the same modules, layer by layer, as LAYERS here."""
    text = (SRC.parent / "docs" / "design.md").read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*(\d+)\s*\|([^|\n]*)\|", section, re.M)
    documented = {int(n): {m.strip() for m in mods.split(",") if m.strip()} for n, mods in rows}
    expected = {i: {m or "edgedistill" for m in names} for i, names in enumerate(LAYERS)}
    assert documented == expected


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_check_catches_a_function_local_cycle(tmp_path):
    """Break it once: a cycle closed only by an import inside a function, and an import that climbs a layer."""
    pkg = tmp_path / "src" / "edgedistill"
    _write(tmp_path, "src/edgedistill/__init__.py", "")
    _write(tmp_path, "src/edgedistill/errors.py", "")
    _write(tmp_path, "src/edgedistill/heads/__init__.py", "from edgedistill.heads.probe import fit\n")
    _write(tmp_path, "src/edgedistill/heads/probe.py", "def fit():\n    from edgedistill.cache import gather\n")
    _write(tmp_path, "src/edgedistill/cache.py", "from edgedistill import errors\nfrom .heads import probe\n")
    graph = import_graph(pkg)
    assert graph["edgedistill.heads.probe"] == {"edgedistill.cache": "src/edgedistill/heads/probe.py:2"}
    assert graph["edgedistill.cache"] == {"edgedistill.errors": "src/edgedistill/cache.py:1",
                                          "edgedistill.heads.probe": "src/edgedistill/cache.py:2"}
    cycle = find_cycle(graph)
    assert cycle is not None and set(cycle) == {"edgedistill.heads.probe", "edgedistill.cache"}
    assert layer_violations(graph) == ["edgedistill.heads.probe (layer 4) imports edgedistill.cache (layer 5) at "
                                       "src/edgedistill/heads/probe.py:2"]
    # without the function-local import, no cycle and no climb
    _write(tmp_path, "src/edgedistill/heads/probe.py", "def fit():\n    pass\n")
    graph = import_graph(pkg)
    assert find_cycle(graph) is None and not layer_violations(graph)


@pytest.mark.skipif(not TOOL.is_file(), reason="the shared import_cycles tool is not beside this checkout")
def test_shared_import_cycles_tool_agrees():
    res = subprocess.run([sys.executable, str(TOOL), str(PACKAGE)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
