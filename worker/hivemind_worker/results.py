"""An attempt's result ZIP: the executed notebook, the requested output files and variables.

Layout (what the Jupyter side and `hivemind fetch` read):

    <entry notebook path>        the executed notebook, outputs included (also after an error)
    outputs/...                  files matching the manifest's output patterns (default outputs/**)
    .hivemind/result.json        outcome, error, metrics, the entry notebook's name, the file list
    .hivemind/variables.json     {name: {"type": ..., "json" | "npy" | "parquet" | "bytes" | "pickle": ...}
                                 | {"error": ...}}  (written by runtime/runner.py)

The task wrote these folders, so nothing in them is trusted: symbolic links and special files are
skipped (a link could point at the worker's own files), and the total size and the number of files
are capped, both checked before anything is packed (a sparse 10 GB file is refused by its size,
not read). Names are kept as the task wrote them, whatever their case or characters; only a name
that is not UTF-8 is stored with \\xNN escapes (listed under "renamed" in result.json).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pathspec

from hivemind_nodepool.protocol.bundle import (
    RESULT_META,
    BundleLimits,
    PackedBundle,
    pack,
    printable,
    stored_names,
)

from .errors import WorkerError

DEFAULT_OUTPUTS = ("outputs/**",)
VARIABLES = ".hivemind/variables.json"


def read_regular(path: Path, max_bytes: int) -> bytes | None:
    """A regular file's bytes, never through a symbolic link; None when absent or not regular."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise WorkerError(f"{path.name} is larger than {max_bytes} bytes")
    return data


def collect_outputs(
    task_dir: Path, patterns: Iterable[str], max_files: int | None = None
) -> list[tuple[str, Path]]:
    """(name, path) of the regular files under task_dir matching the patterns; links never followed.
    Raises WorkerError past max_files (the walk stops there)."""
    spec = pathspec.GitIgnoreSpec.from_lines(list(patterns) or list(DEFAULT_OUTPUTS))
    found: list[tuple[str, Path]] = []
    for folder, dirs, names in os.walk(task_dir, followlinks=False):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not (here / d).is_symlink())
        for name in sorted(names):
            path = here / name
            try:
                mode = path.lstat().st_mode
            except OSError:
                continue
            if not stat.S_ISREG(mode):
                continue
            rel = path.relative_to(task_dir).as_posix()
            if spec.match_file(rel):
                found.append((rel, path))
                if max_files is not None and len(found) > max_files:
                    raise WorkerError(
                        f"the task left more than {max_files} files under its output patterns; a "
                        f"result carries at most {max_files}. Write fewer, bigger files (an archive "
                        "of the many small ones, for example)."
                    )
    return found


def build_result(
    destination: Path,
    task_dir: Path,
    out_dir: Path,
    *,
    entry_notebook: str,
    patterns: Iterable[str],
    meta: dict[str, Any],
    max_bytes: int,
    limits: BundleLimits = BundleLimits(),
) -> PackedBundle:
    """Write the result ZIP; raises WorkerError when it would pass max_bytes or the file count of
    `limits` (what the pool and the user's side check again)."""
    extra: dict[str, bytes] = {}
    notebook = read_regular(out_dir / "executed.ipynb", max_bytes)
    if notebook is not None:
        extra[entry_notebook] = notebook
    variables = read_regular(out_dir / "variables.json", max_bytes)
    if variables is not None:
        extra[VARIABLES] = variables
    room = limits.max_files - len(extra) - 1  # the extras and result.json are entries too
    files = [
        (name, path)
        for name, path in collect_outputs(task_dir, patterns, max_files=room)
        if name != entry_notebook and not name.startswith(".hivemind/")
    ]
    renamed = stored_names((name for name, _ in files), [*extra, RESULT_META])
    stored = sorted([renamed.get(n, n) for n, _ in files] + list(extra))
    meta = dict(meta, entry_notebook=entry_notebook, files=stored)
    if renamed:
        # Keyed by the name's bytes as Python writes them (b'caf\\xe9.txt'): what the task wrote.
        meta["renamed"] = {ascii(os.fsencode(name)): new for name, new in renamed.items()}
    extra[RESULT_META] = json.dumps(meta, indent=1).encode()
    sizes = sorted(((path.stat().st_size, name) for name, path in files), reverse=True)
    total = sum(size for size, _ in sizes) + sum(len(data) for data in extra.values())
    if total > max_bytes:
        biggest = ", ".join(f"{printable(name)} ({size / 1024**2:.1f} MiB)" for size, name in sizes[:5])
        raise WorkerError(
            f"the result is too big to return: {total / 1024**2:.1f} MiB, over the "
            f"{max_bytes / 1024**2:.0f} MiB limit (biggest files: {biggest or 'none'})"
        )
    return pack(destination, files, extra)
