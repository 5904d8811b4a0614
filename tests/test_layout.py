"""The package's layout: imports point one way, core <- glue <- trained run <- tools <- cli, with no cycle.

Walks every module's imports with `ast` (function-local imports included: they are dependencies
all the same) and checks three rules: no import cycle; no `core` module imports nerfstudio; no
module imports from a layer above its own (the viewer panel, glue, may use `core` only).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parents[1] / "splatseg_ns"

LAYERS = [
    ("splatseg_ns", "splatseg_ns._torchvision_cpu"),
    ("splatseg_ns.core",),
    ("splatseg_ns.scenes", "splatseg_ns.testing"),
    ("splatseg_ns.nerfstudio_compat", "splatseg_ns.method_config", "splatseg_ns.model", "splatseg_ns.datamanager",
     "splatseg_ns.viewer"),
    ("splatseg_ns.trained_run",),
    ("splatseg_ns.tools",),
    ("splatseg_ns.cli",),
]
"""Lowest first; a module may import from its own layer and the ones below."""
CORE_ROOMS = ["splatseg_ns.core", "splatseg_ns.core.io", "splatseg_ns.core.render", "splatseg_ns.core.segment",
              "splatseg_ns.core.extract", "splatseg_ns.core.export"]
"""The core's rooms by the method's stages, lowest first (the foundation is core's own top-level modules); a core
module may import from its own room and the ones before it."""
ONLY_CORE = {"splatseg_ns.viewer"}
"""Glue that may use nothing of splatseg's but `core` (and nerfstudio's viewer API)."""


def module_names(root: Path = PACKAGE) -> Dict[str, Path]:
    names = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports_of(path: Path, modules: Set[str]) -> Set[str]:
    """The package modules `path` imports (`from pkg import mod` names the module mod)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in modules or name.split(".")[0] == "nerfstudio"}


def import_graph(root: Path = PACKAGE) -> Dict[str, Set[str]]:
    modules = module_names(root)
    return {name: imports_of(path, set(modules)) for name, path in modules.items()}


def layer_of(module: str) -> int:
    best = (-1, -1)  # (prefix length, layer): the longest matching prefix decides
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                best = max(best, (len(prefix), rank))
    return best[1]


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Each import cycle once, as the list of modules around it."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def room_of(module: str) -> int:
    """The rank of a core module's room in `CORE_ROOMS` (-1 outside core)."""
    parent = module.rsplit(".", 1)[0] if module not in CORE_ROOMS else module
    return CORE_ROOMS.index(parent) if parent in CORE_ROOMS else -1


def violations(graph: Dict[str, Set[str]]) -> List[str]:
    problems = [" -> ".join(cycle) + ": an import cycle" for cycle in cycles(graph)]
    for module, deps in sorted(graph.items()):
        for dep in sorted(deps):
            if dep.split(".")[0] == "nerfstudio":
                if layer_of(module) == 1:
                    problems.append(f"{module} imports {dep}: core must not depend on nerfstudio")
                continue
            if layer_of(dep) > layer_of(module):
                problems.append(f"{module} imports {dep}, a layer above it")
            if room_of(module) >= 0 and room_of(dep) > room_of(module):
                problems.append(f"{module} imports {dep}, a core room after its own")
            if module in ONLY_CORE and layer_of(dep) not in (1, layer_of("splatseg_ns")) and dep != module:
                problems.append(f"{module} imports {dep}: it may use only splatseg_ns.core")
    return problems


def test_every_module_belongs_to_a_layer():
    assert [name for name in module_names() if layer_of(name) < 0] == []


def test_every_core_module_is_in_a_room():
    core = [name for name in module_names() if name.startswith("splatseg_ns.core")]
    assert [name for name in core if room_of(name) < 0] == []
    assert {name.rsplit(".", 1)[0] for name in core if name not in CORE_ROOMS} <= set(CORE_ROOMS)


def test_no_relative_imports():
    """Relative imports would hide dependencies from these checks (and from readers)."""
    relative = [str(path) for path in module_names().values()
                for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom) and node.level]
    assert relative == []


def test_imports_point_one_way_without_cycles():
    assert violations(import_graph()) == []


def test_the_checks_catch_a_cycle_an_upward_import_and_nerfstudio_in_core():
    planted = {
        "splatseg_ns.core.a": {"splatseg_ns.core.b", "nerfstudio.models"},
        "splatseg_ns.core.b": {"splatseg_ns.core.a", "splatseg_ns.tools.select"},
        "splatseg_ns.tools.select": {"splatseg_ns.core.a"},
        "splatseg_ns.viewer": {"splatseg_ns.model", "splatseg_ns.core.a"},
        "splatseg_ns.model": set(),
        "splatseg_ns.core.io.x": {"splatseg_ns.core.segment.y"},
    }
    found = violations(planted)
    assert any("an import cycle" in p and "splatseg_ns.core.a" in p for p in found)
    assert "splatseg_ns.core.b imports splatseg_ns.tools.select, a layer above it" in found
    assert "splatseg_ns.core.a imports nerfstudio.models: core must not depend on nerfstudio" in found
    assert "splatseg_ns.viewer imports splatseg_ns.model: it may use only splatseg_ns.core" in found
    assert "splatseg_ns.core.io.x imports splatseg_ns.core.segment.y, a core room after its own" in found
    assert len(found) == 6  # two cycles: core.a <-> core.b, and core.a -> core.b -> tools.select -> core.a
