"""The package's module-level import graph, read from the source with `ast` (nothing imported):

(a) it has no cycle, (b) the backends never import the exporter (export builds on the
backends, not the other way round), (c) only streamvlm.ros imports streamvlm.ros (the
core runs without ROS; test_core_without_ros.py checks the same by importing it).

Every `import` / `from ... import` of a streamvlm module counts, at the top of a module
or inside a function, except under `if TYPE_CHECKING:` (never run). `from streamvlm.x
import y` counts as importing streamvlm.x.y when y is a submodule, else streamvlm.x. A
package's parent `__init__` is not counted as imported (that it imports its own
submodules is no cycle between modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "streamvlm"

# Known exceptions to (c), each to be removed with its cause: the `streamvlm` command's
# `play` and `diagnostics` subcommands import the ROS layer inside their handlers, under
# an ImportError guard (so the core still imports without ROS). Their registration belongs
# in streamvlm.ros; moving it is part of the ROS layer's reorganisation.
ROS_IMPORTS_ALLOWED = {("streamvlm.cli", "streamvlm.ros.player"), ("streamvlm.cli", "streamvlm.ros.monitor")}


def _module_name(path: Path) -> str:
    parts = ("streamvlm",) + path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node except the bodies of `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The streamvlm modules that one import statement in `module` imports."""
    def nearest(name: str) -> str:  # the module itself, or the package that defines the name
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    if isinstance(node, ast.Import):
        return {nearest(a.name) for a in node.names if a.name.split(".")[0] == "streamvlm"}
    if not isinstance(node, ast.ImportFrom):
        return set()
    base = node.module or ""
    if node.level:  # relative: from the package of `module`
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
    if base.split(".")[0] != "streamvlm":
        return set()
    return {f"{base}.{a.name}" if f"{base}.{a.name}" in known else nearest(base) for a in node.names}


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in SOURCE.rglob("*.py")}
    known = set(files)
    graph = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        edges = set()
        for node in _runtime_nodes(tree):
            edges |= _imported(node, module, path.name == "__init__.py", known)
        graph[module] = edges - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, iterative)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif child not in state and child in graph:
                state[child] = 1
                path.append(child)
                stack.append(iter(sorted(graph[child])))
    return None


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_the_parser_counts_submodule_relative_and_function_level_imports():
    known = {"streamvlm.a", "streamvlm.a.b", "streamvlm.c"}

    def edges(code: str, module: str = "streamvlm.a.b", package: bool = False) -> set[str]:
        return set().union(*(_imported(n, module, package, known) for n in _runtime_nodes(ast.parse(code))))

    assert edges("from streamvlm.a import b, name") == {"streamvlm.a.b", "streamvlm.a"}
    assert edges("def f():\n    import streamvlm.c.d") == {"streamvlm.c"}
    assert edges("from . import b", module="streamvlm.a", package=True) == {"streamvlm.a.b"}
    assert edges("from ..c import x") == {"streamvlm.c"}
    assert edges("if TYPE_CHECKING:\n    import streamvlm.c") == set()
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_backends_do_not_import_export(graph):
    wrong = sorted(f"{m} -> {t}" for m, targets in graph.items() if m.startswith("streamvlm.backends")
                   for t in targets if t == "streamvlm.export" or t.startswith("streamvlm.export."))
    assert not wrong, "backends import the exporter: " + ", ".join(wrong)


def test_only_ros_imports_ros(graph):
    def ros(name: str) -> bool:
        return name == "streamvlm.ros" or name.startswith("streamvlm.ros.")

    wrong = sorted(f"{m} -> {t}" for m, targets in graph.items() if not ros(m) for t in targets
                   if ros(t) and (m, t) not in ROS_IMPORTS_ALLOWED)
    assert not wrong, "the core imports ROS modules: " + ", ".join(wrong)
