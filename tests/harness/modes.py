"""File modes as another local account sees them: run a command as `nobody`, list what is loose."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

NOBODY = 65534


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def loose(folder: Path) -> list[str]:
    """Every entry under `folder` (and itself) that group or others may use."""
    found = [f"{folder} {mode(folder):o}"] if mode(folder) & 0o077 else []
    for path in folder.rglob("*"):
        if not path.is_symlink() and mode(path) & 0o077:
            found.append(f"{path} {mode(path):o}")
    return found


def as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    """`command` run as the user and group nobody, with no other groups (needs root)."""
    from conftest import require

    require(os.geteuid() == 0, "running a command as the user nobody needs root")
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command],
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
        timeout=30,
    )


@contextlib.contextmanager
def open_folder() -> Iterator[Path]:
    """A folder every account may pass through and list. pytest's own temp folder is private,
    which would hide what a program's own modes do; folders under test go in here."""
    parent = Path(tempfile.mkdtemp(prefix="hivemind-modes-"))
    parent.chmod(0o755)
    try:
        yield parent
    finally:
        shutil.rmtree(parent, ignore_errors=True)
