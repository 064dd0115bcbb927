"""The package's import graph, read from the source (function-level imports included), has no cycle; __all__ lists
are true."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import fire_plugin

PKG = Path(fire_plugin.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, source: str, *, is_package: bool) -> set[str]:
    """The package modules ``name`` imports anywhere in its source (module level, functions, methods), except in
    ``if TYPE_CHECKING:`` blocks (never run). ``from fire_plugin.x import y`` counts ``fire_plugin.x`` and, when
    ``y`` is a submodule, ``fire_plugin.x.y``; relative imports are resolved."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for stmt in child.orelse:
                    visit_one(stmt)
                continue
            visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        visit(node)

    visit(ast.parse(source))
    return {m for m in found if m in MODULES and m != name}


def import_graph() -> dict[str, set[str]]:
    """``module -> the package modules it imports``, for every module of the package."""
    return {name: imports_of(name, path.read_text(encoding="utf-8"), is_package=path.name == "__init__.py")
            for name, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_package_has_no_import_cycle():
    # Before: models <-> pretrained (a lazy shim and resnet18_cifar(pretrained=True)) and
    # gaussian -> gaussian_report -> plots -> gaussian, both hidden by function-level imports.
    graph = import_graph()
    found = cycles(graph)
    detail = [" -> ".join(c) + "  (" + "; ".join(f"{m} imports {sorted(graph[m] & set(c))}" for m in c) + ")"
              for c in found]
    assert found == [], detail


def test_the_graph_reader_sees_function_level_and_relative_imports_and_cycles():
    source = (
        "from typing import TYPE_CHECKING\n"
        "import fire_plugin.distances\n"
        "if TYPE_CHECKING:\n    from fire_plugin import engine\n"
        "def f():\n    from fire_plugin import losses\n    from . import models\n"
        "class A:\n    def g(self):\n        from .attacks import FRPGD\n"
    )
    got = imports_of("fire_plugin.margins", source, is_package=False)
    assert got == {"fire_plugin", "fire_plugin.distances", "fire_plugin.losses", "fire_plugin.models",
                   "fire_plugin.attacks"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_name_of_all_exists(name):
    module = importlib.import_module(name)
    names = getattr(module, "__all__", [])
    assert len(set(names)) == len(names), name
    missing = [n for n in names if not hasattr(module, n)]
    assert missing == [], (name, missing)


@pytest.mark.parametrize("name", ["fire_plugin.plots", "fire_plugin.data"])
def test_all_lists_every_public_function_and_class(name):
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    public = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef) and not n.name.startswith("_")}
    listed = set(importlib.import_module(name).__all__)
    assert public <= listed, sorted(public - listed)
