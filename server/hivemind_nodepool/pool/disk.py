"""The pool's disk: when it fills, the pool refuses new data and keeps working for everything else.

"Full" means the data folder's filesystem has less than `disk_min_free` left, or a write failed for
lack of space (ENOSPC, EDQUOT, SQLite's SQLITE_FULL). While full:
- what would grow the data (a task's bundle, a result's bytes, live events) is refused with
  DiskFull ("the pool's disk is full"), which clients and workers take as "retry later";
- reads, watches and small state changes go on: cancels, state reports, sign-ins. They use the room
  of a reserve file (`disk-reserve`, `disk_reserve` bytes) that the pool holds while the disk has
  room and gives up when it fills, so a full disk still leaves SQLite the pages those need;
- `GetPoolStatus` says so (`disk_full`), and so does the Prometheus gauge `hivemind_pool_disk_full`.
The gRPC health service stays SERVING: reads work, and a load balancer must not take the pool away.

A check every few seconds ends it by itself once there is room again (min free plus the reserve):
the reserve is taken back and new data is accepted.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sqlite3
import threading
from pathlib import Path

from hivemind_nodepool.protocol.errors import DiskFull

log = logging.getLogger(__name__)

MESSAGE = "the pool's disk is full"
RESERVE_NAME = "disk-reserve"
CHECK_EVERY = 2.0  # seconds between checks of the free space, full or not
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> bool:
    """Whether an error means "no space left" (from a file write or from SQLite)."""
    if isinstance(exc, DiskFull):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _NO_SPACE
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or (
            "database or disk is full" in str(exc)
        )
    return False


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem that holds `path`; 0 when no
    file can be created there any more (out of inodes; filesystems without a count never are)."""
    info = os.statvfs(path)
    if info.f_files > 0 and info.f_favail == 0:
        return 0
    return info.f_bavail * info.f_frsize


class DiskGuard:
    """Knows whether the data folder's disk is full; thread-safe (the store's writer reports too)."""

    def __init__(self, data_dir: Path, min_free: int, reserve_size: int) -> None:
        self.data_dir = data_dir
        self.min_free = max(0, min_free)
        self.reserve_size = max(0, reserve_size)
        self.reserve = data_dir / RESERVE_NAME
        self.full = False
        self.free = 0  # bytes free at the last look
        self._lock = threading.Lock()
        self._look()
        if not self.full and not self._take_reserve():
            self._fill("the disk has no room for the pool's reserve")

    # -- looking ------------------------------------------------------------------------------------

    def _look(self) -> int:
        try:
            self.free = free_bytes(self.data_dir)
        except OSError as exc:
            log.warning("cannot read the free space of %s: %s", self.data_dir, exc)
            return self.free
        if not self.full and self.free < self.min_free:
            self._fill(f"{self.free} bytes free, under the minimum of {self.min_free}")
        return self.free

    def check(self) -> bool:
        """Look at the free space now; end the full state when there is room again. Returns full."""
        self._look()
        room = self.full and self.free > self.min_free + self._missing_reserve()
        if room and self._take_reserve():
            with self._lock:
                self.full = False
            log.warning(
                "the pool's disk has room again (%d bytes free): new tasks and results are accepted",
                free_bytes(self.data_dir),
            )
        return self.full

    def require_space(self) -> None:
        """Raise DiskFull when new data cannot be stored now. Asks the filesystem each time (one
        statvfs), so a disk that filled since the last check is seen before the write."""
        if not self.full:
            self._look()
        if self.full:
            raise DiskFull(MESSAGE)

    def hit(self, exc: BaseException) -> DiskFull:
        """A write failed for lack of space: full now. Returns the error to raise in its place."""
        self._fill(f"a write failed: {exc}")
        return DiskFull(MESSAGE)

    # -- the full state and the reserve ---------------------------------------------------------

    def _fill(self, why: str) -> None:
        with self._lock:
            if self.full:
                return
            self.full = True
        released = self._give_reserve()
        log.error(
            "the pool's disk is full (%s): new tasks, results and live events are refused until "
            "space is freed in %s%s",
            why,
            self.data_dir,
            f"; released the {released}-byte reserve so that cancels and state changes still work"
            if released
            else "",
        )

    def _missing_reserve(self) -> int:
        try:
            return max(0, self.reserve_size - self.reserve.stat().st_size)
        except FileNotFoundError:
            return self.reserve_size

    def _give_reserve(self) -> int:
        try:
            size = self.reserve.stat().st_size
            self.reserve.unlink()
        except FileNotFoundError:
            return 0
        return size

    def _take_reserve(self) -> bool:
        """Hold `reserve_size` bytes in the reserve file (allocated, not sparse); False when the
        disk has no room for it, with nothing left behind."""
        if not self.reserve_size or self._missing_reserve() == 0:
            return True
        try:
            fd = os.open(self.reserve, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_size)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self.reserve.unlink(missing_ok=True)
            if exc.errno not in _NO_SPACE:
                log.warning("cannot hold the disk reserve %s: %s", self.reserve, exc)
                return True  # a filesystem without fallocate: go on without a reserve
            return False
        return True

    async def run(self, interval: float = CHECK_EVERY) -> None:
        """The periodic check (a background loop of the server)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.check)
            except Exception:
                log.exception("checking the pool's disk failed; retrying")
