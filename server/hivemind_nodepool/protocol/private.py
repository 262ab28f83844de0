"""Folders only their owner may read: the pool's data folder, the worker's state folder.

The pool and the worker set the umask 077 when they start, so what they create from then on is
0700 (folders) and 0600 (files). `make_private` creates the folder 0700 and takes group and other
permissions off what an earlier run (or another tool) left readable in it, so the files of one
user's tasks never reach another local account.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077
_OTHERS = 0o077  # group and other permission bits


def private_umask() -> int:
    """Set the process umask to 077 (new files 0600, new folders 0700); returns the old one."""
    return os.umask(PRIVATE_UMASK)


def make_private(folder: Path, what: str) -> int:
    """Create `folder` (0700) or tighten it: it and everything under it lose their group and other
    permissions (symbolic links are neither followed nor changed). A tightened folder is logged,
    naming `what` it is. Returns how many entries were tightened."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    tightened = 0
    for root, dirs, files in os.walk(folder):
        for path in (root, *(os.path.join(root, name) for name in (*dirs, *files))):
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(info.st_mode) or not info.st_mode & _OTHERS:
                continue
            if info.st_uid != os.geteuid() and os.geteuid() != 0:
                continue  # not ours to change (a task's file in a kept folder, say)
            os.chmod(path, stat.S_IMODE(info.st_mode) & ~_OTHERS)  # not a link: lstat said so
            tightened += 1
    if tightened:
        log.warning(
            "%s %s was readable by other local accounts: took group and other permissions off "
            "%d file(s) and folder(s); it is private to its owner now (0700/0600)",
            what,
            folder,
            tightened,
        )
    return tightened
