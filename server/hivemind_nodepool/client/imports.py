"""Which top-level modules a task imports: from its code, its folder's .py files, its pushed objects.

Read with `ast`, never by running anything: `import a.b` and `from a.b import c` anywhere in the
code (inside functions too) give `a`; `importlib.import_module("a")` and `__import__("a")` with a
literal name count as well. Relative imports are the bundle's own. IPython syntax (magics, `!`
shell lines) is turned into Python first, with IPython's own transformer when it is installed.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

MAX_SOURCE_BYTES = 2 * 1024 * 1024  # a larger .py file is data, not code worth reading
MAX_FILES = 5000
# Cell magics whose body is Python that runs in the kernel.
_PYTHON_CELL_MAGICS = frozenset({"time", "timeit", "capture", "prun", "hivemind", "debug"})
_IMPORT_LINE = re.compile(r"^\s*(?:import|from)\s+[A-Za-z_]")
_DYNAMIC_IMPORTS = frozenset({"import_module", "__import__"})


def _transform(code: str) -> str:
    """IPython syntax as plain Python (magics become calls); lines IPython would not run as Python
    are dropped when IPython is not installed."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:
        return "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
    try:
        return str(TransformerManager().transform_cell(code))
    except Exception:  # IPython's transformer gave up on it: read what parses
        return code


def python_source(code: str) -> str:
    """A cell's code as Python: a `%%time`-like cell magic's body, other cell magics dropped."""
    first, _, body = code.lstrip("\n").partition("\n")
    if first.startswith("%%"):
        magic = first[2:].split(maxsplit=1)[0] if first[2:].strip() else ""
        return python_source(body) if magic in _PYTHON_CELL_MAGICS else ""
    return _transform(code)


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def _dynamic(node: ast.Call) -> str | None:
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if called not in _DYNAMIC_IMPORTS or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str) and first.value:
        return _top(first.value)
    return None


def modules_in_tree(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_top(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                found.add(_top(node.module))
        elif isinstance(node, ast.Call):
            dynamic = _dynamic(node)
            if dynamic:
                found.add(dynamic)
    return {name for name in found if name.isidentifier()}


def modules_in_python(source: str) -> set[str]:
    """The top-level modules plain Python source imports; code that does not parse is read line by
    line (its import lines only)."""
    try:
        return modules_in_tree(ast.parse(source))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        pass
    found: set[str] = set()
    for line in source.splitlines():
        if _IMPORT_LINE.match(line):
            try:
                found |= modules_in_tree(ast.parse(line.strip()))
            except (SyntaxError, ValueError):
                continue
    return found


def modules_in_code(code: str) -> set[str]:
    """The top-level modules a cell's code (IPython syntax allowed) imports."""
    return modules_in_python(python_source(code))


def notebook_code(data: bytes) -> list[str]:
    """The code cells of a notebook file ([] when it is not one)."""
    try:
        notebook = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return []
    cells = notebook.get("cells") if isinstance(notebook, dict) else None
    found = []
    for cell in cells if isinstance(cells, list) else []:
        if isinstance(cell, dict) and cell.get("cell_type") == "code":
            source = cell.get("source", "")
            found.append("".join(source) if isinstance(source, list) else str(source))
    return found


def modules_in_files(files: Iterable[tuple[str, Path]]) -> set[str]:
    """The modules imported by a bundle's .py files and notebooks (name in bundle, path on disk)."""
    found: set[str] = set()
    for count, (name, path) in enumerate(files):
        if count >= MAX_FILES:
            break
        if not name.endswith((".py", ".ipynb")):
            continue
        try:
            if path.stat().st_size > MAX_SOURCE_BYTES:
                continue
            data = path.read_bytes()
        except OSError:
            continue
        if name.endswith(".ipynb"):
            for code in notebook_code(data):
                found |= modules_in_code(code)
        else:
            found |= modules_in_python(data.decode("utf-8", errors="replace"))
    return found


def bundle_modules(names: Iterable[str]) -> set[str]:
    """The top-level modules a bundle itself provides to code run at its root: `a.py`, `a/...`."""
    provided: set[str] = set()
    for name in names:
        parts = PurePosixPath(name).parts
        if len(parts) > 1:
            provided.add(parts[0])
        elif name.endswith(".py") or name.endswith((".so", ".pyd")):
            provided.add(parts[0].split(".")[0])
    return {module for module in provided if module.isidentifier()}


def _value_modules(value: Any, found: set[str], depth: int) -> None:
    module = getattr(type(value), "__module__", None)
    if isinstance(module, str):
        found.add(_top(module))
    if depth <= 0:
        return
    if isinstance(value, Mapping):
        items: Iterable[Any] = [*list(value.keys())[:100], *list(value.values())[:100]]
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)[:100]
    else:
        return
    for item in items:
        _value_modules(item, found, depth - 1)


def modules_of_values(values: Iterable[Any]) -> set[str]:
    """The modules of pushed objects' types (a DataFrame: pandas), looking into plain containers."""
    found: set[str] = set()
    for value in values:
        _value_modules(value, found, depth=2)
    return found - {"builtins", "__main__"}
