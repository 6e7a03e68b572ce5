"""Imports point down the layers (../shared/DESIGN.md): no cycle between ppc packages,
and the torch-free layers import neither torch nor the executor nor measuring."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"ppc": ROOT / "ppc", "ppc.sim": ROOT / "sim", "ppc.exec": ROOT / "exec"}

LAYER = {
    "ppc.errors": 0, "ppc.inputs": 0, "ppc.ir": 0, "ppc.costs_schema": 1, "ppc.host": 1, "ppc.costs": 1, "ppc.balance": 1,
    "ppc.verify": 2, "ppc.lang": 2, "ppc.schedules": 2,
    "ppc.compiler": 3, "ppc.frontend": 3,
    "ppc.sim": 4, "ppc.exec": 4,
    "ppc.predict": 5,
    "ppc.search": 6, "ppc.plan": 7, "ppc.measure": 8,
    "ppc.cli": 9, "ppc": 10, "ppc.__main__": 10,
}
"""Each package's layer: a module imports its own layer or lower ones, never higher.
Compile-and-simulate (ppc.predict) serves search, planning and measuring; planning ranks
searched schedules among others; measuring (runs the executor, writes cost profiles)
sits on planning (reads them)."""

TORCH_FREE = ("ppc.ir", "ppc.verify", "ppc.lang", "ppc.compiler", "ppc.sim", "ppc.predict",
              "ppc.plan", "ppc.search", "ppc.costs", "ppc.errors")
FORBIDDEN_IN_TORCH_FREE = ("torch", "ppc.exec", "ppc.measure", "ppc.frontend")
APART = {frozenset(("ppc.sim", "ppc.exec"))}
"""Same-layer packages that must not import each other."""


def _modules():
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if package == "ppc" and parts and parts[0] in ("sim", "exec"):
                continue
            yield ".".join([package, *parts]), path


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _package(module: str) -> str | None:
    """The layered unit a module belongs to (longest LAYER key that prefixes it)."""
    best = None
    for key in LAYER:
        if (module == key or module.startswith(key + ".")) and (best is None or len(key) > len(best)):
            best = key
    return best


MODULES = dict(_modules())


def _edges():
    for module, path in MODULES.items():
        for name in _imports(path):
            yield module, name


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in MODULES if _package(m) is None)
    assert not missing, f"modules outside the layer table: {missing}"


def test_no_import_cycle_between_packages() -> None:
    graph = nx.DiGraph()
    for module, name in _edges():
        a, b = _package(module), _package(name)
        if a and b and a != b and b != "ppc":
            graph.add_edge(a, b)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles between packages: {cycles}"


def test_imports_point_down() -> None:
    bad = []
    for module, name in _edges():
        a, b = _package(module), _package(name)
        if a is None or b is None or a == b or b == "ppc":
            continue
        if LAYER[b] > LAYER[a] or frozenset((a, b)) in APART:
            bad.append(f"{module} imports {name}")
    assert not bad, "imports that point up or sideways:\n" + "\n".join(sorted(set(bad)))


@pytest.mark.parametrize("layer", TORCH_FREE)
def test_torch_free_layers_stay_torch_free(layer: str) -> None:
    bad = sorted({
        f"{module} imports {name}"
        for module, name in _edges()
        if _package(module) == layer
        and any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IN_TORCH_FREE)
    })
    assert not bad, "\n".join(bad)


def test_sim_depends_on_the_ir_costs_and_verifier_only() -> None:
    bad = sorted({f"{m} imports {n}" for m, n in _edges() if _package(m) == "ppc.sim"
                  and _package(n) not in (None, "ppc.sim", "ppc.ir", "ppc.costs", "ppc.errors", "ppc.verify")})
    assert not bad, "\n".join(bad)


def test_compiler_does_not_import_sim() -> None:
    bad = sorted({f"{m} imports {n}" for m, n in _edges() if _package(m) == "ppc.compiler"
                  and _package(n) == "ppc.sim"})
    assert not bad, "\n".join(bad)
