"""The executed notebook of an unpacked result, named after its task.

Every cell's task runs `main.ipynb`, so results unpacked under their entry notebook's name would
open as tabs that all read `main.ipynb`. Wherever a result is unpacked for a person (the magic's
result folder, the panel's "open result", `hivemind fetch`), the executed notebook is renamed
after the task instead: `analysis [4] - t-3f2a9c.ipynb` for the task `analysis.ipynb [4]`. The id
keeps two runs of one cell apart; the name is cut short so a tab title stays readable.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

MAX_NAME_CHARS = 60
MAX_NAME_BYTES = 160
# What no common filesystem (Windows included) lets a file name hold, and runs of blanks.
_NOT_IN_NAMES = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]+')
_BLANKS = re.compile(r"\s+")


def result_notebook_name(task_name: str, task_id: str) -> str:
    """'<task name> - <id>.ipynb', safe as one file name on any common filesystem."""
    name = _BLANKS.sub(" ", _NOT_IN_NAMES.sub("-", task_name)).strip()
    if name.lower().endswith(".ipynb"):
        name = name[: -len(".ipynb")]
    elif ".ipynb " in name.lower():  # 'analysis.ipynb [4]' reads better as 'analysis [4]'
        name = re.sub(r"\.ipynb ", " ", name, count=1, flags=re.I)
    name = name[:MAX_NAME_CHARS]
    while len(name.encode()) > MAX_NAME_BYTES:  # one file name holds 255 bytes, not characters
        name = name[:-1]
    name = name.strip(" .-") or "task"
    ident = _NOT_IN_NAMES.sub("-", task_id).strip(" .") or "task"
    return f"{name} - {ident}.ipynb"


def name_result_notebook(folder: Path, entry: str, task_name: str, task_id: str) -> str | None:
    """Rename the executed entry notebook (`entry`, relative to folder) after its task, in the
    same sub-folder; its relative path afterwards, or None when the result holds no such file.
    A name the result already uses is left alone (the notebook keeps its own name then)."""
    if not entry:
        return None
    source = folder / entry
    if source.is_symlink() or not source.is_file():
        return None
    renamed = PurePosixPath(entry).with_name(result_notebook_name(task_name, task_id))
    target = folder / renamed
    if target.exists() or target.is_symlink():
        return entry
    source.rename(target)
    return renamed.as_posix()
