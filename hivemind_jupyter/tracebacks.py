"""A remote traceback as the user's own cell would show it, and hints for the common remote errors.

On the pool the cell's code is one cell of a generated notebook (after the pushed variables and
the parameters), so IPython there numbers it `Cell In[3], line 4`. Here the same code sits under
the `%%hivemind` line of the cell the user ran as `[7]`: frames of that cell are renumbered to
`Cell In[7], line 5`, their code listing too. Frames of other files are left as they are.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .packaging import TAG_CELL

log = logging.getLogger(__name__)

MAGIC_LINES = 1  # the `%%hivemind ...` line above the code in the user's cell

_A = r"(?:\x1b\[[0-9;]*m)*"  # any run of terminal colour codes, as IPython puts them
_HEADER = re.compile(rf"^(?P<pre>{_A}Cell{_A} {_A}In\[)(?P<count>\d+)(?P<mid>\]{_A}, line )(?P<line>\d+)")
_GUTTER = re.compile(rf"^(?P<pre>{_A}(?:-+> ?)?[ ]*{_A})(?P<number>\d+)(?P<post>{_A}(?: |$))")
_COUNTS = re.compile(rf"Cell{_A} {_A}In\[(\d+)\]")


def remote_cell_count(notebook: Path | None, traceback_lines: list[str]) -> int | None:
    """The execution count the user's code had on the pool: from the executed notebook when it
    came back, else the last cell the traceback names (the user's cell runs last)."""
    if notebook is not None:
        try:
            cells = json.loads(notebook.read_text()).get("cells", [])
        except (OSError, ValueError) as exc:
            log.debug("cannot read %s: %s", notebook, exc)
            cells = []
        for cell in cells:
            if isinstance(cell, dict) and TAG_CELL in (cell.get("metadata", {}).get("tags") or []):
                count = cell.get("execution_count")
                if isinstance(count, int):
                    return count
    found = [int(n) for line in traceback_lines for n in _COUNTS.findall(line)]
    return max(found) if found else None


def _renumber(match: re.Match[str], offset: int) -> str:
    """A code listing's line number moved by offset, in the same width where the padding allows."""
    old, new = match["number"], str(int(match["number"]) + offset)
    pre = match["pre"]
    extra = len(new) - len(old)
    if extra > 0 and pre.endswith(" " * (extra + 1)):  # keep one space before the number
        pre = pre[:-extra]
    return f"{pre}{new}{match['post']}"


def to_local_cell(lines: list[str], remote_count: int | None, local_count: int | None) -> list[str]:
    """The traceback with the user's cell's frames renumbered to the local cell: `In[local]`, and
    every line number (the header's and the listing's) moved down past the magic line."""
    if remote_count is None or local_count is None:
        return list(lines)
    return ["\n".join(_local_entry(entry.split("\n"), remote_count, local_count)) for entry in lines]


def _local_entry(lines: list[str], remote_count: int, local_count: int) -> list[str]:
    inside = False  # in a frame of the user's cell
    out: list[str] = []
    for line in lines:
        header = _HEADER.match(line)
        gutter = _GUTTER.match(line) if inside and not header else None
        if header:
            inside = int(header["count"]) == remote_count
            if inside:
                shifted = int(header["line"]) + MAGIC_LINES
                line_out = f"{header['pre']}{local_count}{header['mid']}{shifted}{line[header.end() :]}"
                out.append(line_out)
                continue
        elif gutter:
            out.append(_renumber(gutter, MAGIC_LINES) + line[gutter.end() :])
            continue
        elif line.strip():
            inside = False  # the listing ended (plain text carries every frame in one entry)
        out.append(line)
    return out


_NAME_ERROR = re.compile(r"^NameError: name '(?P<name>[A-Za-z_][A-Za-z0-9_]*)' is not defined")
_NO_MODULE = re.compile(r"^ModuleNotFoundError: No module named '(?P<module>[A-Za-z0-9_.]+)'")


def hints(error: str, user_ns: Mapping[str, Any]) -> list[str]:
    """What to do about a remote error (its `Name: message` line) that this kernel can explain."""
    found = _NAME_ERROR.match(error)
    if found:
        name = found["name"]
        if name not in user_ns:
            return []
        value = user_ns[name]
        if isinstance(value, types.ModuleType):
            alias = f" as {name}" if value.__name__ != name else ""
            module = f"{value.__name__}{alias}"
            return [f"`{name}` is imported here, not in the cell: add `import {module}` to it."]
        return [f"`{name}` is defined locally: add `--push {name}` to send it with the cell."]
    found = _NO_MODULE.match(error)
    if found:
        return _module_hint(found["module"].split(".")[0])
    return []


def _module_hint(module: str) -> list[str]:
    """How to get a module the task lacks that this kernel has: a requirement when it comes from a
    distribution, the folder to send along when it is the user's own file."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return []
    distributions = importlib.metadata.packages_distributions().get(module) or []
    if distributions:
        try:
            requirement = f"{distributions[0]}=={importlib.metadata.version(distributions[0])}"
        except importlib.metadata.PackageNotFoundError:
            requirement = distributions[0]
        return [
            f"`{module}` is installed here ({requirement}) but not where the task ran: with "
            "`--env auto` (the default) the cell takes your kernel's packages; with "
            f"`--requirements FILE`, add `{requirement}` to that file."
        ]
    if spec.submodule_search_locations:  # a package: the folder that holds it
        folder = Path(next(iter(spec.submodule_search_locations))).parent
    elif spec.origin and spec.has_location:
        folder = Path(spec.origin).parent
    else:
        return []
    try:
        shown = folder.resolve().relative_to(Path.cwd().resolve()).as_posix() or "."
    except ValueError:
        shown = str(folder)
    where = "this folder" if shown == "." else f"{shown}/"
    return [f"`{module}` is a module in {where} here: send it with the cell, `--dir {shown}`."]
