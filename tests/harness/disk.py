"""A real small filesystem for disk-full tests: a tmpfs mounted for the test, filled and freed."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

FILLER = "test-filler"


@contextlib.contextmanager
def small_filesystem(path: Path, size: str = "24m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` for the block; unmounted after it (lazily when busy).
    Needs root, as CI runs; elsewhere the test is skipped, under CI it fails."""
    from conftest import require

    require(os.geteuid() == 0, "mounting a small filesystem for the disk-full test needs root")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    require(mounted.returncode == 0, f"cannot mount a tmpfs at {path}: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def free_bytes(path: Path) -> int:
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def fill(folder: Path, leave: int = 0) -> Path:
    """Write a file into `folder` until its filesystem has only `leave` bytes left (0: none at
    all, the writes end with ENOSPC); returns the file."""
    filler = folder / FILLER
    todo = max(0, free_bytes(folder) - leave) if leave else None
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for block in (1024**2, 4096, 1):
            while todo is None or todo >= block:
                try:
                    written = os.write(fd, b"\xa5" * block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
                if todo is not None:
                    todo -= written
                if written < block:
                    break
    finally:
        os.close(fd)
    return filler


def make_room(folder: Path) -> None:
    """Undo `fill`."""
    (folder / FILLER).unlink(missing_ok=True)
