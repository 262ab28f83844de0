"""Files written whole or not at all: a reader (or a crash) never sees half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

PRIVATE = 0o600  # secrets: credentials, worker identities, keys


def atomic_write(path: Path, data: str | bytes, mode: int = PRIVATE) -> Path:
    """Write data to path atomically with the given mode (default: its owner only).

    The bytes go to a temporary file beside path, created 0600 so a secret is never readable by
    others, not even for a moment; it is fsynced, given its mode and renamed over path. On any
    failure path is left as it was and the temporary file is removed."""
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # The file is in place; a folder that cannot be fsynced (some network filesystems) only
    # makes the rename less durable, so it is not an error here.
    with contextlib.suppress(OSError):
        fsync_dir(path.parent)
    return path


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in folder survive a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
