"""A task's disk: its files, outputs and /tmp in one folder with a size limit.

Two ways to hold a task to its limit, chosen per attempt:

- `mount` (the worker runs as root and the machine has loop devices): the folder is an ext4
  filesystem in a sparse image file, loop-mounted with nosuid,nodev. The kernel refuses writes a
  little past the limit (the image is sized limit + about 3 % + 8 MiB, for ext4's own blocks), so
  the host never holds more than that for the task, however fast it writes.
- `monitor` (no root, no loop devices, or asked for): a plain folder whose size is summed.

In both ways a watch thread measures the use every second or so and stops the task once it is past
its limit, and the attempt checks once more after the run, so a task that swallowed the kernel's
"no space left on device" still ends FAILED with "disk limit of N exceeded".
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hivemind_nodepool.protocol.units import format_size

log = logging.getLogger(__name__)

MOUNT, MONITOR, AUTO = "mount", "monitor", "auto"
DEFAULT_CAP = 20 * 1024**3  # the default limit is min(this, a quarter of the free space)
FREE_SHARE = 0.25
WATCH_INTERVAL = 1.0
ENTRY_COST = 256  # an inode's worth per entry, so a flood of empty files counts too
_SPACE_ERRORS = (errno.ENOSPC, errno.EDQUOT)


def human(size: int) -> str:
    """'100 MiB', '1.5 GiB': format_size without a trailing '.0'."""
    return format_size(size).replace(".0 ", " ")


def default_task_disk(state_dir: Path) -> int:
    """min(20 GiB, a quarter of the free space of the state dir's filesystem), in whole MiB: several
    tasks at once, the bundle cache and the environments still fit beside one task at its limit."""
    try:
        free = shutil.disk_usage(state_dir).free
    except OSError:
        free = 0
    share = int(free * FREE_SHARE) // 1024**2 * 1024**2
    return max(min(DEFAULT_CAP, share), 1024**2)


def exceeded_message(limit: int, used: int) -> str:
    return (
        f"disk limit of {human(limit)} exceeded: the task's files, outputs and /tmp took {human(used)} "
        "(a task may ask for more with --disk, up to the worker's --task-disk)"
    )


class DiskExceeded(Exception):
    """The task wrote past its disk limit (before or after its run)."""


def is_space_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _SPACE_ERRORS


def can_mount() -> str:
    """'' when this process can loop-mount images, else why not."""
    if os.geteuid() != 0:
        return "the worker does not run as root"
    missing = [tool for tool in ("mkfs.ext4", "mount", "umount") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found"
    if not os.path.exists("/dev/loop-control") and not os.path.exists("/dev/loop0"):
        return "no loop devices (/dev/loop-control)"
    return ""


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise OSError(f"{' '.join(command[:2])} failed: {(done.stderr or done.stdout).strip()[:300]}")


def folder_usage(root: Path) -> int:
    """Bytes allocated under root (blocks, not apparent sizes: a sparse file costs what it holds),
    each inode counted once, links never followed."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            entries = os.scandir(folder)
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                total += ENTRY_COST
                key = (info.st_dev, info.st_ino)
                if key in seen:
                    continue
                seen.add(key)
                total += info.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return total


class TaskDisk:
    """One attempt's disk at `root` (task/, out/, tmp/ inside). `open()` makes it, `close()`
    unmounts and removes what it made; `used()` is what the task has put there."""

    def __init__(self, root: Path, limit: int, mode: str = AUTO) -> None:
        self.root = root
        self.limit = limit
        self.wanted = mode
        self.mode = MONITOR
        self.image = root.with_name(root.name + ".img")
        self._baseline = 0
        self._mounted = False

    @property
    def task_dir(self) -> Path:
        return self.root / "task"

    @property
    def out_dir(self) -> Path:
        return self.root / "out"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def open(self) -> TaskDisk:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.wanted != MONITOR:
            why = can_mount()  # the daemon said so once at start
            if not why:
                try:
                    self._mount()
                except OSError as exc:
                    why = str(exc)
                    log.warning("task disk %s is watched, not mounted: %s", self.root, why)
            if why and self.wanted == MOUNT:
                raise OSError(f"cannot mount a size-limited disk for the task: {why}")
        for folder in (self.task_dir, self.out_dir, self.tmp_dir):
            folder.mkdir(mode=0o700, exist_ok=True)
        return self

    def _mount(self) -> None:
        size = self.limit + self.limit // 32 + 8 * 1024**2
        with open(self.image, "wb") as handle:
            handle.truncate(size)  # sparse: the host holds only what the task writes
        try:
            _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", str(self.image)])
            _run(["mount", "-o", "loop,nosuid,nodev,noatime", str(self.image), str(self.root)])
        except (OSError, subprocess.SubprocessError):
            self.image.unlink(missing_ok=True)
            raise
        self._mounted = True
        self.mode = MOUNT
        lost = self.root / "lost+found"
        with contextlib.suppress(OSError):
            lost.rmdir()
        self._baseline = self._fs_used()

    def _fs_used(self) -> int:
        stats = os.statvfs(self.root)
        return (stats.f_blocks - stats.f_bfree) * stats.f_frsize

    def used(self) -> int:
        if self.mode == MOUNT:
            return max(self._fs_used() - self._baseline, 0)
        return folder_usage(self.root)

    def exceeded(self) -> int:
        """The use when it is past the limit, else 0."""
        try:
            used = self.used()
        except OSError:
            return 0
        return used if used > self.limit else 0

    def close(self, keep: bool = False) -> None:
        """Unmount (the image stays when keep is set, for debugging) and remove."""
        if self._mounted:
            unmount(self.root)
            self._mounted = False
            if not keep:
                self.image.unlink(missing_ok=True)

    def __enter__(self) -> TaskDisk:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def unmount(path: Path) -> None:
    """Unmount, retrying while the last handles close; lazily as a last resort (the loop device is
    freed once nothing uses it)."""
    for _ in range(20):
        done = subprocess.run(["umount", str(path)], capture_output=True, text=True, check=False)
        if done.returncode == 0 or not os.path.ismount(path):
            return
        time.sleep(0.1)
    log.warning("%s stays busy; unmounting it lazily", path)
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or below root, deepest first."""
    prefix = str(root.resolve()) if root.exists() else str(root)
    found: list[Path] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        point = fields[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def release_leftovers(attempts_root: Path) -> int:
    """Unmount task disks left by an earlier run (one killed before it could); returns how many."""
    if os.geteuid() != 0:
        return 0
    points = mounts_under(attempts_root)
    for point in points:
        log.warning("unmounting a task disk left from an earlier run: %s", point)
        unmount(point)
    return len(points)


class DiskWatch:
    """Measures a task's disk every WATCH_INTERVAL (longer when measuring is slow) and calls
    on_exceeded once, with the message, when the task is past its limit."""

    def __init__(self, disk: TaskDisk, on_exceeded: Callable[[str], None]) -> None:
        self.disk = disk
        self.on_exceeded = on_exceeded
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"disk-{disk.root.parent.name}", daemon=True)

    def _watch(self) -> None:
        wait = WATCH_INTERVAL
        while not self._stop.wait(wait):
            began = time.monotonic()
            try:
                used = self.disk.used()
            except OSError as exc:
                log.debug("measuring %s: %s", self.disk.root, exc)
                continue
            self.peak = max(self.peak, used)
            if used > self.disk.limit:
                self.on_exceeded(exceeded_message(self.disk.limit, used))
                return
            # A folder with many files takes long to sum: never spend more than a third of the time.
            wait = max(WATCH_INTERVAL, 2 * (time.monotonic() - began))

    def __enter__(self) -> DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
