"""Code-size rules of the package that a linter does not check: no function over 60 lines."""
from __future__ import annotations

import ast
from pathlib import Path

import embedseg

MAX_FUNCTION_LINES = 60


def long_functions(source: str, limit: int) -> list[tuple[str, int]]:
    """(name, length in lines) of every function or method in `source` longer than `limit` lines."""
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= limit]


def test_long_functions_are_found():
    body = "\n".join(f"        x{i} = {i}" for i in range(61))
    assert long_functions(f"def short():\n    return 1\n\n\nclass A:\n    def long(self):\n{body}\n", 60) == [
        ("long", 62)]


def test_no_function_in_the_package_is_over_60_lines():
    package = Path(embedseg.__file__).parent
    found = {f"{path.relative_to(package)}:{name}": lines for path in sorted(package.rglob("*.py"))
             for name, lines in long_functions(path.read_text(), MAX_FUNCTION_LINES)}
    assert found == {}
