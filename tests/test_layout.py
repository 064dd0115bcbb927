"""The package's shape: no module over 600 lines and no function over 100 lines (issue 18's limits), read from the
source with :mod:`ast` so that the limits hold for every file that ships in the wheel."""

from __future__ import annotations

import ast
from pathlib import Path

import fire_plugin

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 100
ROOT = Path(fire_plugin.__file__).parent


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """``(qualified name, lines)`` of every function or method longer than ``limit`` lines (decorators and
    docstring included), nested ones too."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                    lines = int(child.end_lineno or child.lineno) - first + 1
                    if lines > limit:
                        found.append((name, lines))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def _modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def test_no_module_is_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in _modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_is_over_100_lines():
    long = {f"{p.relative_to(ROOT)}:{name}": n for p in _modules()
            for name, n in long_functions(p.read_text(encoding="utf-8"))}
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_length_reader_counts_decorators_nested_functions_and_methods():
    body = "\n".join(f"    x{i} = {i}" for i in range(4))
    source = (f"@staticmethod\ndef short():\n{body}\n\n"
              f"class A:\n    def method(self):\n        def inner():\n{body.replace('    ', '            ')}\n"
              f"{body.replace('    ', '        ')}\n")
    assert long_functions(source, limit=4) == [("short", 6), ("A.method", 10), ("A.method.inner", 5)]
    assert long_functions(source, limit=10) == []
